//! The coordinator pair with real processes: two coordinators, three
//! agents voting, real mariadbd, real mTLS. Faults are real: kill -9,
//! SIGSTOP, iptables cuts between 127.1.N.x addresses, restarts.

use std::time::{Duration, Instant};

use dbfleet_common::identity::Role;
use dbfleet_common::tls::{TlsContext, TlsPaths, channel_to};
use dbfleet_integration_tests::{Partition, TestFleet, scrape, sole_active, term, with_role};
use dbfleet_proto::lease::{PROMISED_EPOCH_METADATA, epoch_from_metadata};
use dbfleet_proto::pb;
use serde_json::Value;

/// Starts a fleet and waits until one coordinator is active and the
/// standby has caught up; returns (active id, standby id).
async fn started() -> (TestFleet, String, String) {
    let fleet = TestFleet::start(2, 2).await;
    let c = fleet
        .wait_settled("one active and a caught-up standby", |c| {
            with_role(c, "standby").len() == 1 && c.iter().all(|x| x["oplog_lag"] == 0)
        })
        .await;
    let active = sole_active(&c).unwrap()["id"].as_str().unwrap().to_string();
    let standby = with_role(&c, "standby")[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    (fleet, active, standby)
}

fn by_id<'a>(c: &'a [Value], id: &str) -> &'a Value {
    c.iter()
        .find(|x| x["id"] == id)
        .unwrap_or_else(|| panic!("no {id} in {c:#?}"))
}

fn policy_of(fleet: &TestFleet) -> u64 {
    fleet.status_json()["clusters"][0]["max_lag_seconds"]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_the_active_hands_over_with_acknowledged_writes_and_a_complete_view() {
    let (mut fleet, active, standby) = started().await;
    // Acknowledged by the CLI only once the standby has it too.
    let out = fleet.cli(&["policy", "--cluster", "main", "--max-lag-seconds", "42"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let old_term = term(&by_id(&fleet.coordinators(), &active)["epoch"]);
    fleet.kill(&format!("coordinator-{active}"));
    let killed_at = Instant::now();

    let c = fleet
        .wait_coordinators("the standby to take over", |c| {
            by_id(c, &standby)["role"] == "active" && by_id(c, &active)["role"] == "unreachable"
        })
        .await;
    eprintln!("takeover observed after {:?}", killed_at.elapsed());
    assert!(term(&by_id(&c, &standby)["epoch"]) > old_term);
    // The fleet view stays complete, served by the new active.
    let view = fleet
        .wait_until("every member reporting to the new active", |v| {
            v.members.len() == 3 && v.members.iter().all(|m| m.reporting)
        })
        .await;
    assert_eq!(view.primary, "db1");
    assert_eq!(
        policy_of(&fleet),
        42,
        "the acknowledged write survived the kill"
    );
    // Its metrics say so too, in Prometheus' text format.
    let metrics = scrape(&fleet.coordinator(&standby).metrics_address);
    assert!(
        metrics.contains("dbfleet_coordinator_role{role=\"active\"} 1"),
        "{metrics}"
    );
    let epoch_line = format!(
        "dbfleet_coordinator_epoch_term {}",
        term(&by_id(&c, &standby)["epoch"])
    );
    assert!(metrics.contains(&epoch_line), "{metrics}");
    for name in [
        "dbfleet_coordinator_lease_remaining_seconds",
        "dbfleet_coordinator_oplog_lag",
        "dbfleet_coordinator_oplog_applied_seq",
    ] {
        assert!(metrics.contains(name), "{name} missing: {metrics}");
    }
    // Writes go to the new active, from a CLI that lists the dead one first.
    let out = fleet.cli(&["policy", "--cluster", "main", "--max-lag-seconds", "43"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The old active returns as a standby and catches up.
    fleet.start_coordinator(&active).unwrap();
    fleet
        .wait_coordinators("the restarted coordinator to follow", |c| {
            by_id(c, &active)["role"] == "standby" && by_id(c, &active)["oplog_lag"] == 0
        })
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_active_issues_nothing_and_steps_down_when_resumed() {
    let (mut fleet, active, standby) = started().await;
    // The active's own barrier is a command too: it must be done before the
    // stop, so that every command after it is one the test provoked.
    let c = fleet.coordinators();
    let old_term = term(&by_id(&c, &active)["epoch"]);
    fleet
        .wait_log_line(
            &format!("coordinator-{active}"),
            &["epoch barrier done", &format!("epoch={old_term}/{active}")],
        )
        .await;
    let pid = fleet.pid(&format!("coordinator-{active}")).unwrap();
    let stop = |sig| {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).unwrap();
    };
    let before_stop = fleet.log_marks();
    stop(nix::sys::signal::Signal::SIGSTOP);
    let c = fleet
        .wait_coordinators("the standby to take over from the stopped active", |c| {
            by_id(c, &standby)["role"] == "active"
        })
        .await;
    let new_term = term(&by_id(&c, &standby)["epoch"]);
    stop(nix::sys::signal::Signal::SIGCONT);
    let c = fleet
        .wait_coordinators(
            "the resumed coordinator to be a standby that knows the new epoch",
            |c| {
                by_id(c, &active)["role"] == "standby"
                    && term(&by_id(c, &active)["max_seen_epoch"]) >= new_term
            },
        )
        .await;
    assert_eq!(sole_active(&c).unwrap()["id"], standby.as_str());
    let log =
        std::fs::read_to_string(fleet.dir.join(format!("logs/coordinator-{active}.log"))).unwrap();
    assert!(
        log.contains("lease expired without a majority renewing it"),
        "{log}"
    );
    // No agent saw a command from the stale coordinator.
    let refused: Vec<String> = fleet
        .logs_after(&before_stop)
        .lines()
        .filter(|l| l.contains("refused a command of a stale epoch"))
        .map(str::to_string)
        .collect();
    assert!(refused.is_empty(), "{refused:#?}");
    fleet.kill(&format!("coordinator-{active}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_active_cut_off_from_every_agent_is_replaced_and_steps_down() {
    let (fleet, active, standby) = started().await;
    let old_term = term(&by_id(&fleet.coordinators(), &active)["epoch"]);
    let active_ip = fleet
        .coordinator(&active)
        .address
        .split(':')
        .next()
        .unwrap()
        .to_string();
    let agents: Vec<String> = fleet
        .info
        .members
        .iter()
        .map(|m| m.address.clone())
        .collect();
    let cut = Partition::cut(&fleet.slot, &[active_ip], &agents);
    let c = fleet
        .wait_coordinators(
            "the standby to take over and the cut-off active to step down",
            |c| by_id(c, &standby)["role"] == "active" && by_id(c, &active)["role"] == "standby",
        )
        .await;
    assert!(term(&by_id(&c, &standby)["epoch"]) > old_term);
    drop(cut);
    let c = fleet
        .wait_coordinators("the healed coordinator to follow the new active", |c| {
            by_id(c, &active)["role"] == "standby" && by_id(c, &active)["oplog_lag"] == 0
        })
        .await;
    assert_eq!(sole_active(&c).unwrap()["id"], standby.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn coordinators_cut_off_from_each_other_keep_one_active_and_a_lagging_takeover_is_degraded() {
    let (mut fleet, active, standby) = started().await;
    let ip = |id: &str| {
        fleet
            .coordinator(id)
            .address
            .split(':')
            .next()
            .unwrap()
            .to_string()
    };
    let cut = Partition::cut(&fleet.slot, &[ip(&active)], &[ip(&standby)]);
    let before = by_id(&fleet.coordinators(), &active)["epoch"].clone();
    // Watch for two takeover bounds: the voters keep granting the active,
    // so the standby never gets a lease.
    let window = dbfleet_cli::sandbox::sandbox_lease().takeover_bound() * 2;
    let until = Instant::now() + window;
    while Instant::now() < until {
        let c = fleet.coordinators();
        assert_eq!(by_id(&c, &active)["epoch"], before, "{c:#?}");
        assert!(by_id(&c, &active)["role"] == "active", "{c:#?}");
        // It may ask for the lease (candidate); the voters refuse it.
        let role = by_id(&c, &standby)["role"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(role == "standby" || role == "candidate", "{c:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A write the standby cannot acknowledge is still committed on the
    // active (after the acknowledgement timeout), and the voters learn its
    // sequence from the renewals.
    let out = fleet.cli(&["policy", "--cluster", "main", "--max-lag-seconds", "77"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let committed = by_id(&fleet.coordinators(), &active)["applied_seq"]
        .as_u64()
        .unwrap();
    let voters_know = || {
        let out = fleet.cli(&["voters", "--output", "json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["voters"].as_array().is_some_and(|vs| {
            vs.iter()
                .filter(|x| x["committed_seq"].as_u64() >= Some(committed))
                .count()
                >= 2
        })
    };
    let give_up = Instant::now() + dbfleet_integration_tests::PATIENCE;
    while !voters_know() {
        assert!(
            Instant::now() < give_up,
            "voters never learned seq {committed}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The active dies: the standby takes over knowing it is behind.
    fleet.kill(&format!("coordinator-{active}"));
    fleet
        .wait_coordinators("the lagging standby to take over degraded", |c| {
            by_id(c, &standby)["role"] == "active-degraded"
        })
        .await;
    let out = fleet.cli(&["policy", "--cluster", "main", "--max-lag-seconds", "78"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("active-degraded") && err.contains("accept-gap"),
        "{err}"
    );

    // The old active comes back (healed): the degraded one fetches the
    // missing op from it and becomes fully active, with the write kept.
    drop(cut);
    fleet.start_coordinator(&active).unwrap();
    fleet
        .wait_coordinators("the degraded coordinator to catch up", |c| {
            by_id(c, &standby)["role"] == "active" && by_id(c, &active)["role"] == "standby"
        })
        .await;
    assert_eq!(policy_of(&fleet), 77);
}

/// Kills both coordinators and starts them again; returns the view once
/// exactly one is active and the other standby.
async fn cold_start(fleet: &mut TestFleet, active: &str, standby: &str) -> Vec<Value> {
    fleet.kill(&format!("coordinator-{active}"));
    fleet.kill(&format!("coordinator-{standby}"));
    fleet.start_coordinator(active).unwrap();
    fleet.start_coordinator(standby).unwrap();
    fleet
        .wait_coordinators("exactly one active after the cold start", |c| {
            sole_active(c).is_some() && with_role(c, "standby").len() == 1
        })
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn both_coordinators_restarted_elect_exactly_one_under_a_higher_epoch() {
    let (mut fleet, active, standby) = started().await;
    let old_term = term(&by_id(&fleet.coordinators(), &active)["epoch"]);
    let c = cold_start(&mut fleet, &active, &standby).await;
    assert!(
        term(&sole_active(&c).unwrap()["epoch"]) > old_term,
        "{c:#?}"
    );
    // And it stays that way while the standby follows.
    for _ in 0..20 {
        let c = fleet.coordinators();
        assert!(sole_active(&c).is_some(), "{c:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A client holding coordinator `id`'s real certificate, talking straight
/// to an agent, as a stale coordinator process would.
fn as_coordinator(
    fleet: &TestFleet,
    id: &str,
    agent: &str,
    address: &str,
) -> tonic::transport::Channel {
    let certs = fleet.dir.join("certs");
    let tls = TlsContext::load(&TlsPaths {
        ca: certs.join("ca.pem"),
        cert: certs.join(format!("coordinator-{id}.pem")),
        key: certs.join(format!("coordinator-{id}.key")),
    })
    .unwrap();
    channel_to(
        tls,
        address,
        &dbfleet_common::identity::Identity::new(Role::Agent, agent),
        Duration::from_secs(5),
    )
}

/// A throwaway coordinator certificate from the fleet's own CA (a leaked
/// test certificate, say) commands nothing: no fence, no vote, no peer
/// stream. A listed coordinator's certificate cannot push the term space
/// to its end either (a `u64::MAX` once made both coordinators panic at
/// every restart). The pair keeps working through a cold restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_stray_coordinator_certificate_and_a_forged_term_change_nothing() {
    let (mut fleet, active, standby) = started().await;
    let primary = fleet.status_json()["clusters"][0]["primary"]
        .as_str()
        .unwrap()
        .to_string();
    let certs = fleet.dir.join("certs");
    dbfleet_cli::cert::issue(&certs, Role::Coordinator, "zz", &[], &[], 1).unwrap();
    let member = fleet
        .info
        .members
        .iter()
        .find(|m| m.host == primary)
        .unwrap()
        .clone();
    let command =
        |term: u64, who: &str, command: pb::command_request::Command| pb::CommandRequest {
            epoch: Some(pb::Epoch {
                term,
                coordinator: who.into(),
            }),
            holder: Some(pb::HolderId {
                coordinator: who.into(),
                incarnation: 7,
            }),
            operation_id: String::new(),
            step: 0,
            lease_remaining_ms: 5000,
            command: Some(command),
        };
    let prepare = |term: u64, who: &str| pb::VoteRequest {
        epoch: Some(pb::Epoch {
            term,
            coordinator: who.into(),
        }),
        holder: Some(pb::HolderId {
            coordinator: who.into(),
            incarnation: 7,
        }),
        kind: Some(pb::vote_request::Kind::Prepare(pb::Prepare {
            timing: Some(dbfleet_cli::sandbox::sandbox_lease().into()),
            voter_config_version: u64::MAX,
        })),
    };
    let not_named = "is not a coordinator this server's configuration names";
    let denied = |r: Result<(), tonic::Status>, needle: &str| {
        let e = r.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains(needle), "{e:?}");
    };

    // The stray certificate: fence the primary, promise it the last term,
    // replicate the active's desired state.
    let stray = as_coordinator(&fleet, "zz", &member.host, &member.agent_address);
    let fence = pb::command_request::Command::Fence(pb::Fence {
        kill_if_unresponsive: false,
    });
    denied(
        pb::agent_service_client::AgentServiceClient::new(stray.clone())
            .execute(command(u64::MAX, "zz", fence))
            .await
            .map(|_| ()),
        not_named,
    );
    denied(
        pb::voter_service_client::VoterServiceClient::new(stray)
            .vote(prepare(u64::MAX, "zz"))
            .await
            .map(|_| ()),
        not_named,
    );
    let tls = TlsContext::load(&TlsPaths {
        ca: certs.join("ca.pem"),
        cert: certs.join("coordinator-zz.pem"),
        key: certs.join("coordinator-zz.key"),
    })
    .unwrap();
    let peer = channel_to(
        tls,
        &fleet.coordinator(&active).address,
        &dbfleet_common::identity::Identity::new(Role::Coordinator, active.clone()),
        Duration::from_secs(5),
    );
    denied(
        pb::peer_service_client::PeerServiceClient::new(peer)
            .replicate(tokio_stream::empty())
            .await
            .map(|_| ()),
        not_named,
    );

    // A listed coordinator's certificate, the last term.
    let listed = as_coordinator(&fleet, "c1", &member.host, &member.agent_address);
    denied(
        pb::agent_service_client::AgentServiceClient::new(listed.clone())
            .execute(command(
                u64::MAX,
                "c1",
                pb::command_request::Command::Barrier(pb::EpochBarrier {}),
            ))
            .await
            .map(|_| ()),
        "implausibly far above",
    );
    let reply = pb::voter_service_client::VoterServiceClient::new(listed)
        .vote(prepare(u64::MAX, "c1"))
        .await
        .unwrap()
        .into_inner();
    match reply.kind {
        Some(pb::vote_reply::Kind::Rejected(r)) => {
            assert_eq!(r.reason(), pb::RejectReason::ImplausibleEpoch);
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(
        fleet
            .query_one(&primary, "SELECT @@read_only")
            .await
            .as_deref(),
        Some("0"),
        "the primary was never fenced"
    );

    // Both coordinators restarted: one active again, at an honest term.
    let c = cold_start(&mut fleet, &active, &standby).await;
    assert!(term(&sole_active(&c).unwrap()["epoch"]) < 1 << 32, "{c:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_restarted_with_its_record_refuses_an_older_epoch() {
    let (mut fleet, active, _) = started().await;
    let epoch = by_id(&fleet.coordinators(), &active)["epoch"].clone();
    let promised = pb::Epoch {
        term: term(&epoch),
        coordinator: epoch["coordinator"].as_str().unwrap().into(),
    };
    fleet.kill("agent-db2");
    fleet.start_agent("db2").unwrap();
    let address = fleet.info.members[1].agent_address.clone();
    fleet
        .wait_listening("agent-db2", &address, Duration::from_secs(30))
        .await
        .unwrap();

    // A command under an older epoch, from a genuine coordinator certificate.
    let older = pb::Epoch {
        term: promised.term - 1,
        coordinator: "c1".into(),
    };
    let holder = pb::HolderId {
        coordinator: "c1".into(),
        incarnation: 7,
    };
    let mut agent = pb::agent_service_client::AgentServiceClient::new(as_coordinator(
        &fleet, "c1", "db2", &address,
    ));
    let status = agent
        .execute(pb::CommandRequest {
            epoch: Some(older.clone()),
            holder: Some(holder.clone()),
            operation_id: String::new(),
            step: 0,
            lease_remaining_ms: 5000,
            command: Some(pb::command_request::Command::Barrier(pb::EpochBarrier {})),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
    let told = status
        .metadata()
        .get(PROMISED_EPOCH_METADATA)
        .and_then(|v| v.to_str().ok())
        .and_then(epoch_from_metadata);
    let told = told.expect("the refusal names the promised epoch");
    assert!(told.term >= promised.term, "{told:?} vs {promised:?}");

    // Nor will it promise that epoch as a voter.
    let mut voter = pb::voter_service_client::VoterServiceClient::new(as_coordinator(
        &fleet, "c1", "db2", &address,
    ));
    let reply = voter
        .vote(pb::VoteRequest {
            epoch: Some(older),
            holder: Some(holder),
            kind: Some(pb::vote_request::Kind::Prepare(pb::Prepare {
                timing: Some(dbfleet_cli::sandbox::sandbox_lease().into()),
                voter_config_version: 1,
            })),
        })
        .await
        .unwrap()
        .into_inner();
    match reply.kind {
        Some(pb::vote_reply::Kind::Rejected(r)) => {
            assert_eq!(r.reason(), pb::RejectReason::StaleEpoch);
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    let record =
        std::fs::read_to_string(fleet.dir.join("db2/agent-state/voter/fence-record.json")).unwrap();
    assert!(record.contains("\"promised\""), "{record}");
}

#[tokio::test(flavor = "multi_thread")]
async fn voter_changes_need_majorities_of_both_lists() {
    let (mut fleet, _, _) = started().await;
    let addr = |h: &str| {
        let m = fleet.info.members.iter().find(|m| m.host == h).unwrap();
        format!("{h}@{}", m.agent_address)
    };
    let (db1, db2, db3) = (addr("db1"), addr("db2"), addr("db3"));
    fleet.kill("agent-db3");
    // {db1, db3} has no reachable majority while db3 is down: refused,
    // and nothing changed.
    let out = fleet.cli(&["voters", "set", &db1, &db3]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("majority"), "{err}");
    let v: Value =
        serde_json::from_slice(&fleet.cli(&["voters", "--output", "json"]).stdout).unwrap();
    assert_eq!(v["version"], 1);
    assert_eq!(v["voters"].as_array().unwrap().len(), 3);

    fleet.start_agent("db3").unwrap();
    let out = fleet.cli(&["voters", "set", &db1, &db2, "--output", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["version"], 3, "joint then final: {v}");
    let names: Vec<&str> = v["voters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["db1", "db2"]);
    // Both coordinators hold the new list (replicated desired state).
    fleet
        .wait_coordinators("the standby to apply the voter change", |c| {
            c.iter().all(|x| x["oplog_lag"] == 0)
        })
        .await;
}

/// The CLI reads the active coordinator's view, even when the standby is
/// listed first: with db2's agent cut off from the active only, status
/// shows db2 not reporting (the standby would call it healthy). When the
/// active does not answer, the standby does and the CLI says it is not
/// the active.
#[tokio::test(flavor = "multi_thread")]
async fn status_reads_the_active_first_and_says_when_only_the_standby_answers() {
    let (fleet, active, standby) = started().await;
    let (a, s) = (
        fleet.coordinator(&active).address,
        fleet.coordinator(&standby).address,
    );
    let text = std::fs::read_to_string(fleet.cli_config()).unwrap();
    let listed = format!(
        "[\"{}\", \"{}\"]",
        fleet.info.coordinators[0].address, fleet.info.coordinators[1].address
    );
    assert!(text.contains(&listed), "{text}");
    let config = |name: &str, first: &str, second: &str| {
        let path = fleet.dir.join(name);
        std::fs::write(
            &path,
            text.replace(&listed, &format!("[\"{first}\", \"{second}\"]")),
        )
        .unwrap();
        path
    };
    let standby_first = config("standby-first.toml", &s, &a);
    // Where the active was, nothing listens.
    let active_gone = config(
        "active-gone.toml",
        &s,
        &format!("{}:7200", fleet.slot.ip(99)),
    );
    let status = |config: &std::path::Path| {
        let out = std::process::Command::new(dbfleet_integration_tests::bin("dbfleet"))
            .arg("--config")
            .arg(config)
            .args(["status", "--output", "json"])
            .output()
            .unwrap();
        (
            serde_json::from_slice::<Value>(&out.stdout).unwrap_or(Value::Null),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let db2 = fleet.info.members[1].address.clone();
    let active_ip = a.split(':').next().unwrap().to_string();
    let cut = Partition::cut(&fleet.slot, &[db2], &[active_ip]);
    let give_up = Instant::now() + dbfleet_integration_tests::PATIENCE;
    loop {
        let (v, err) = status(&standby_first);
        let db2_silent = v["clusters"][0]["problems"].as_array().is_some_and(|p| {
            p.iter()
                .any(|p| p["kind"] == "agent-not-reporting" && p["host"] == "db2")
        });
        assert_eq!(v["coordinator"], active.as_str(), "{v} {err}");
        assert!(!err.contains("not the active coordinator"), "{err}");
        if db2_silent {
            break;
        }
        assert!(
            Instant::now() < give_up,
            "status never showed the active's view of db2: {v} {err}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(cut);
    let (v, err) = status(&active_gone);
    assert_eq!(v["coordinator"], standby.as_str(), "{v} {err}");
    assert!(
        err.contains(&format!("{s} answered; it is not the active coordinator")),
        "{err}"
    );
}
