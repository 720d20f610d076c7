//! The controls around failover with real processes: the anti-flap budget
//! and `dbfleet ack`, a pre-hook's veto, the post-hook's payload, a STONITH
//! hook as the fence proof, the operator's `--confirm-fenced` and
//! `--allow-data-loss`. Three (or four) real mariadbd with lossless
//! semi-sync, their agents, two coordinators, a writer that records every
//! acknowledged write and a sampler that checks every 50 ms how many
//! members accept writes.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use dbfleet_integration_tests::failover::{
    check_witnesses, cut_off_db1, evidence_of, loaded_fleet, loaded_fleet_of, new_primary,
    semi_sync_may_fall_back, wait_acked,
};
use dbfleet_integration_tests::workload::{Writer, ids_on};
use dbfleet_integration_tests::{PATIENCE, TestFleet, bin, member, sole_active};
use dbfleet_proto::pb;
use serde_json::Value;

/// Runs the real CLI without blocking the runtime, so the writer and the
/// sampler keep running while it waits.
async fn cli(fleet: &TestFleet, args: &[&str]) -> Output {
    tokio::process::Command::new(bin("dbfleet"))
        .args(args)
        .env("DBFLEET_CONFIG", fleet.cli_config())
        .output()
        .await
        .expect("run dbfleet")
}

/// [`cli`] with `--output json`; panics unless it succeeded.
async fn cli_json(fleet: &TestFleet, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    let out = cli(fleet, &all).await;
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Every event, oldest first.
async fn all_events(fleet: &TestFleet) -> Vec<Value> {
    cli_json(fleet, &["events"]).await["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits for an event of `kind` that satisfies `pred` and returns it.
async fn wait_event(fleet: &TestFleet, kind: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let give_up = tokio::time::Instant::now() + PATIENCE;
    loop {
        let events = all_events(fleet).await;
        if let Some(e) = events.iter().rev().find(|e| e["kind"] == kind && pred(e)) {
            return e.clone();
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "no {kind} event as wanted in {events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The kinds among `kinds` in the history, in order, with repeats of the
/// same kind in a row collapsed.
fn sequence(events: &[Value], kinds: &[&str]) -> Vec<String> {
    let mut seq: Vec<String> = Vec::new();
    for k in events.iter().filter_map(|e| e["kind"].as_str()) {
        if kinds.contains(&k) && seq.last().is_none_or(|l| l != k) {
            seq.push(k.to_string());
        }
    }
    seq
}

/// Writes an executable `#!/bin/sh` script `dir/name` running `body`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The payloads a hook appended to `path`, one JSON document a line.
fn payloads(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("payload {l:?}: {e}")))
        .collect()
}

/// A `[failover]` section running `path` as `key`.
fn hook_section(key: &str, path: &Path) -> String {
    format!("[failover]\n{key} = [{:?}]\n", path.display().to_string())
}

/// The active coordinator's id.
async fn active_id(fleet: &TestFleet) -> String {
    let c = fleet
        .wait_coordinators("an active coordinator", |c| sole_active(c).is_some())
        .await;
    sole_active(&c).unwrap()["id"].as_str().unwrap().to_string()
}

/// Waits until the failover stopped without a fence proof, the replicas
/// frozen and automatic failover held.
async fn blocked(fleet: &TestFleet) -> pb::ClusterView {
    fleet
        .wait_until("the failover blocked with the replicas frozen", |c| {
            c.control.as_ref().is_some_and(|k| {
                k.needs_ack && k.operation.is_empty() && k.frozen == ["db2", "db3"]
            })
        })
        .await
}

/// Whether process `pid` runs (a killed child not yet reaped does not).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let state = s.rsplit_once(')')?.1.trim_start().chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

#[tokio::test]
async fn a_spent_anti_flap_budget_holds_the_next_failover_until_ack() {
    let (mut fleet, writer, sampler) =
        loaded_fleet("[failover]\nbudget = 1\nwindow = \"2h\"\n").await;
    // db1 dies between writes: it holds no unacknowledged transaction
    // (which would have it marked for rebuild), so it can rejoin
    let first_acked = writer.stop().await;
    fleet.kill("mariadbd-db1");
    let second = new_primary(&fleet, "db1", &["db2", "db3"]).await.primary;
    let writer = Writer::start(&fleet, &second).await;
    // the old primary comes back and rejoins under the second primary
    fleet.start_mysqld("db1").unwrap();
    let view = new_primary(&fleet, "db1", &["db1", "db2", "db3"]).await;
    assert_eq!(view.primary, second);
    wait_event(&fleet, "rejoined", |e| e["host"] == "db1").await;
    let n = writer.acked_count();
    wait_acked(&writer, n + 20).await;

    // the second primary dies within the window: the budget is spent
    fleet.kill(&format!("mariadbd-{second}"));
    let held = wait_event(&fleet, "failover-held", |e| e["host"] == second.as_str()).await;
    let why = held["message"].as_str().unwrap();
    assert!(
        why.contains("anti-flap budget spent: 1 automatic failover(s) within 2h")
            && why.contains("dbfleet ack --cluster main"),
        "{held}"
    );
    let view = fleet
        .wait_until("automatic failover held until ack", |c| {
            c.control.as_ref().is_some_and(|k| k.needs_ack)
        })
        .await;
    assert!(
        view.members.iter().all(|m| !m.writable),
        "nobody was promoted: {view:?}"
    );
    let control = view.control.as_ref().unwrap();
    assert!(control.operation.is_empty(), "{control:?}");
    assert_eq!(control.budget, 1);

    // the operator re-arms it: the held failover runs now
    let acked = cli_json(&fleet, &["ack", "--cluster", "main"]).await;
    assert_eq!(acked["needs_ack"], false, "{acked}");
    let others: Vec<&str> = ["db1", "db2", "db3"]
        .into_iter()
        .filter(|h| *h != second)
        .collect();
    let third = new_primary(&fleet, &second, &others).await;
    check_witnesses(&fleet, writer, sampler, &third.primary).await;
    let present = ids_on(&fleet, &third.primary).await;
    assert!(
        first_acked.iter().all(|id| present.contains(id)),
        "the first writer's acknowledged writes are on {}",
        third.primary
    );

    let events = all_events(&fleet).await;
    assert_eq!(
        sequence(
            &events,
            &[
                "failover-started",
                "failover-completed",
                "failover-held",
                "acknowledged",
            ]
        ),
        [
            "failover-started",
            "failover-completed",
            "failover-held",
            "acknowledged",
            "failover-started",
            "failover-completed",
        ],
        "one failover, held until the ack, then the second: {events:#?}"
    );
    let done = evidence_of(&fleet, "failover-completed");
    assert!(
        done.contains(&format!("replaced {second} as primary")),
        "{done}"
    );
}

#[tokio::test]
async fn with_automatic_failover_off_a_dead_primary_is_reported_and_only_an_operator_fails_over() {
    let (mut fleet, writer, sampler) = loaded_fleet("").await;
    let control = cli_json(
        &fleet,
        &["failover-policy", "--cluster", "main", "--auto", "off"],
    )
    .await;
    assert_eq!(control["auto_failover"], false, "{control}");
    let status = fleet.status_json();
    assert_eq!(
        status["clusters"][0]["control"]["auto_failover"], false,
        "status shows the controls: {status}"
    );
    // and that a dead primary would not be failed over
    let ready = &status["clusters"][0]["readiness"];
    assert_eq!(ready["ready"], false, "{ready}");
    assert_eq!(
        ready["not_ready"][0], "automatic failover is off",
        "{ready}"
    );
    let problems = status["clusters"][0]["problems"].as_array().unwrap();
    assert!(
        problems.iter().any(|p| p["kind"] == "failover-not-ready"
            && p["message"]
                .as_str()
                .unwrap()
                .contains("automatic failover is off")),
        "{problems:?}"
    );
    fleet.kill("mariadbd-db1");
    let skipped = wait_event(&fleet, "failover-skipped", |e| e["host"] == "db1").await;
    assert!(
        skipped["message"]
            .as_str()
            .unwrap()
            .contains("db1 is down; no failover: automatic failover off"),
        "{skipped}"
    );
    // The detection is decided: nothing may start while we watch well
    // past the fast path's 1 s window.
    let until = std::time::Instant::now() + 2 * dbfleet_integration_tests::AGENT_TIMEOUT;
    while std::time::Instant::now() < until {
        let view = fleet.wait_until("a view", |_| true).await;
        assert!(
            view.members.iter().all(|m| !m.writable),
            "nobody may be promoted with automatic failover off: {view:?}"
        );
        assert!(
            view.control
                .as_ref()
                .is_some_and(|k| k.operation.is_empty()),
            "{view:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The operator's failover runs and says so.
    let result = cli_json(&fleet, &["failover", "--cluster", "main"]).await;
    assert_eq!(result["outcome"], "completed", "{result}");
    let view = new_primary(&fleet, "db1", &["db2", "db3"]).await;
    check_witnesses(&fleet, writer, sampler, &view.primary).await;
    let events = all_events(&fleet).await;
    assert_eq!(
        sequence(
            &events,
            &["failover-skipped", "failover-started", "failover-completed"]
        ),
        ["failover-skipped", "failover-started", "failover-completed"],
        "{events:#?}"
    );
    let started = events
        .iter()
        .find(|e| e["kind"] == "failover-started")
        .unwrap();
    assert!(
        started["message"]
            .as_str()
            .unwrap()
            .contains("operator sandbox requested a failover"),
        "the failover was the operator's: {started}"
    );
}

#[tokio::test]
async fn a_pre_hook_veto_holds_automatic_failover_until_ack() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("payloads.jsonl");
    let verdict = dir.path().join("verdict");
    std::fs::write(&verdict, "1").unwrap();
    let hook = script(
        dir.path(),
        "pre-hook",
        &format!(
            "cat >> {log:?}\necho >> {log:?}\nv=$(cat {verdict:?})\n\
             [ \"$v\" = 0 ] || echo 'not now: routing is being changed' >&2\nexit \"$v\""
        ),
    );
    let (mut fleet, writer, sampler) = loaded_fleet(&hook_section("pre_hook", &hook)).await;
    let active = active_id(&fleet).await;
    fleet.kill("mariadbd-db1");

    let veto = wait_event(&fleet, "hook-veto", |_| true).await;
    let message = veto["message"].as_str().unwrap();
    assert!(
        message.contains("pre-failover hook")
            && message.contains("exited with exit status: 1")
            && message.contains("not now: routing is being changed"),
        "{veto}"
    );
    let held = wait_event(&fleet, "failover-held", |e| e["host"] == "db1").await;
    let why = held["message"].as_str().unwrap();
    assert!(
        why.contains("vetoed") && why.contains("not now: routing is being changed"),
        "the veto is the reason: {held}"
    );
    let view = fleet
        .wait_until("automatic failover held by the veto", |c| {
            c.control.as_ref().is_some_and(|k| k.needs_ack)
        })
        .await;
    assert_eq!(view.primary, "db1", "nobody was promoted");
    assert!(view.members.iter().all(|m| !m.writable), "{view:?}");
    assert!(
        !all_events(&fleet)
            .await
            .iter()
            .any(|e| e["kind"] == "failover-started"),
        "no failover started"
    );

    let p = payloads(&log);
    assert_eq!(p.len(), 1, "the hook ran once: {p:?}");
    let first = &p[0];
    assert_eq!(first["hook"], "pre-failover", "{first}");
    assert_eq!(first["cluster"], "main", "{first}");
    assert_eq!(first["kind"], "failover", "{first}");
    assert_eq!(first["old_primary"], "db1", "{first}");
    assert_eq!(first["new_primary"], "", "not chosen yet: {first}");
    assert_eq!(first["epoch_term"], veto["epoch"]["term"], "{first}");
    assert!(first["epoch_term"].as_u64().unwrap() > 0, "{first}");
    assert_eq!(first["epoch_coordinator"], active.as_str(), "{first}");
    assert_eq!(first["operation_id"], veto["operation_id"], "{first}");
    assert!(
        first["reason"]
            .as_str()
            .unwrap()
            .contains("db1 detected dead"),
        "{first}"
    );

    // the hook agrees now, and the operator re-arms automatic failover
    std::fs::write(&verdict, "0").unwrap();
    let acked = cli_json(&fleet, &["ack", "--cluster", "main"]).await;
    assert_eq!(acked["needs_ack"], false, "{acked}");
    let view = new_primary(&fleet, "db1", &["db2", "db3"]).await;
    check_witnesses(&fleet, writer, sampler, &view.primary).await;
    let done = wait_event(&fleet, "failover-completed", |_| true).await;
    let p = payloads(&log);
    assert_eq!(p.len(), 2, "the hook ran again before the failover: {p:?}");
    assert_eq!(p[1]["old_primary"], "db1", "{}", p[1]);
    assert_eq!(
        p[1]["operation_id"], done["operation_id"],
        "the hook that agreed ran for the failover that completed: {}",
        p[1]
    );
}

#[tokio::test]
async fn the_post_hook_gets_the_new_primary_its_address_epoch_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("payloads.jsonl");
    let hook = script(
        dir.path(),
        "post-hook",
        &format!("cat >> {log:?}\necho >> {log:?}"),
    );
    let (mut fleet, writer, sampler) = loaded_fleet(&hook_section("post_hook", &hook)).await;
    let active = active_id(&fleet).await;
    fleet.kill("mariadbd-db1");
    let view = new_primary(&fleet, "db1", &["db2", "db3"]).await;
    check_witnesses(&fleet, writer, sampler, &view.primary).await;
    // the completion is recorded once the post hook has finished
    let done = wait_event(&fleet, "failover-completed", |_| true).await;

    let status = fleet.status_json();
    let cluster = &status["clusters"][0];
    let primary = cluster["primary"].as_str().unwrap().to_string();
    assert_eq!(primary, view.primary);
    let address = cluster["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["host"] == primary.as_str())
        .unwrap()["mysql_address"]
        .clone();

    let p = payloads(&log);
    assert_eq!(p.len(), 1, "the post hook ran once: {p:?}");
    let p = &p[0];
    assert_eq!(p["hook"], "post-failover", "{p}");
    assert_eq!(p["cluster"], "main", "{p}");
    assert_eq!(p["kind"], "failover", "{p}");
    assert_eq!(p["old_primary"], "db1", "{p}");
    assert_eq!(p["new_primary"], primary.as_str(), "{p}");
    assert_eq!(p["new_primary_address"], address, "{p}");
    assert_eq!(
        p["new_primary_address"],
        member(&view, &primary).mysql_address.as_str(),
        "{p}"
    );
    assert_eq!(p["epoch_term"], done["epoch"]["term"], "{p}");
    assert!(p["epoch_term"].as_u64().unwrap() > 0, "{p}");
    assert_eq!(p["epoch_coordinator"], active.as_str(), "{p}");
    assert_eq!(p["operation_id"], done["operation_id"], "{p}");
    let reason = p["reason"].as_str().unwrap();
    assert!(
        reason.contains("db1 detected dead") && reason.contains("fast path"),
        "{p}"
    );
}

#[tokio::test]
async fn a_stonith_hook_that_kills_the_cut_off_primary_is_the_fence_proof() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stonith.jsonl");
    // the coordinators refuse a hook that is not there to run; the real
    // body needs db1's pid file, known once the fleet runs
    let hook = script(dir.path(), "stonith", "exit 1");
    let (fleet, writer, sampler) = loaded_fleet(&hook_section("stonith_hook", &hook)).await;
    // the hook knows where db1's mysqld writes its pid, known once it runs
    let pid_file = fleet.dir.join("run/mariadbd-db1.pid");
    script(
        dir.path(),
        "stonith",
        &format!("cat >> {log:?}\necho >> {log:?}\nkill -9 \"$(cat {pid_file:?})\""),
    );
    let db1 = fleet.pid("mariadbd-db1").expect("db1's mysqld runs");
    semi_sync_may_fall_back(&fleet).await;

    let cut = cut_off_db1(&fleet);
    let view = new_primary(&fleet, "db1", &["db2", "db3"]).await;
    // the sampler cannot see the cut-off host; it checks the rest while cut
    check_witnesses(&fleet, writer, sampler, &view.primary).await;
    let done = wait_event(&fleet, "failover-completed", |_| true).await;
    assert!(
        format!("{done}").contains("fence proof: STONITH hook fenced db1"),
        "{done}"
    );
    assert!(!running(db1), "the hook killed db1's mysqld ({db1})");
    let p = payloads(&log);
    assert_eq!(p.len(), 1, "the STONITH hook ran once: {p:?}");
    assert_eq!(p[0]["hook"], "stonith", "{}", p[0]);
    assert_eq!(p[0]["old_primary"], "db1", "{}", p[0]);
    assert_eq!(p[0]["operation_id"], done["operation_id"], "{}", p[0]);
    drop(cut);
}

#[tokio::test]
async fn an_operator_confirming_the_fence_completes_a_blocked_failover() {
    let (mut fleet, writer, sampler) = loaded_fleet("").await;
    semi_sync_may_fall_back(&fleet).await;
    let cut = cut_off_db1(&fleet);
    let view = blocked(&fleet).await;
    assert_eq!(view.primary, "db1", "nobody was promoted");
    let why = evidence_of(&fleet, "failover-blocked");
    assert!(
        why.contains("no fence proof for db1") && why.contains("--confirm-fenced db1"),
        "{why}"
    );

    // the operator fences db1 by hand, then says so
    fleet.kill("mariadbd-db1");
    let r = cli_json(
        &fleet,
        &["failover", "--cluster", "main", "--confirm-fenced", "db1"],
    )
    .await;
    assert_eq!(r["outcome"], "completed", "{r}");
    assert_eq!(r["old_primary"], "db1", "{r}");
    assert_eq!(
        r["fence_proof"], "operator confirmed db1 is fenced",
        "the proof is the operator's confirmation: {r}"
    );
    let new = r["new_primary"].as_str().unwrap().to_string();
    assert!(new == "db2" || new == "db3", "{r}");
    let view = new_primary(&fleet, "db1", &["db2", "db3"]).await;
    assert_eq!(view.primary, new);
    assert!(
        view.control
            .as_ref()
            .is_some_and(|k| !k.needs_ack && k.frozen.is_empty()),
        "re-armed and nobody left frozen: {view:?}"
    );
    check_witnesses(&fleet, writer, sampler, &new).await;
    let done = evidence_of(&fleet, "failover-completed");
    assert!(
        done.contains("fence proof: operator confirmed db1 is fenced"),
        "{done}"
    );
    drop(cut);
}

#[tokio::test]
async fn a_failover_blocked_by_an_unreachable_replica_completes_with_allow_data_loss() {
    let (mut fleet, writer, sampler) = loaded_fleet_of(3, "").await;
    // db4's host dies: a semi-sync replica that may have acknowledged the
    // last writes, now unreachable
    fleet.kill("agent-db4");
    fleet.kill("mariadbd-db4");
    fleet
        .wait_until("db4 silent", |c| !member(c, "db4").reporting)
        .await;
    let n = writer.acked_count();
    wait_acked(&writer, n + 20).await;
    fleet.kill("mariadbd-db1");
    let view = fleet
        .wait_until("the failover blocked with db2 and db3 frozen", |c| {
            c.control.as_ref().is_some_and(|k| {
                k.needs_ack && k.operation.is_empty() && k.frozen == ["db2", "db3"]
            })
        })
        .await;
    assert_eq!(view.primary, "db1", "nobody was promoted");
    assert!(view.members.iter().all(|m| !m.writable), "{view:?}");
    let why = evidence_of(&fleet, "failover-blocked");
    assert!(
        why.contains("unreachable replica(s) db4 may hold the last acknowledged writes")
            && why.contains("--allow-data-loss"),
        "{why}"
    );

    let r = cli_json(
        &fleet,
        &["failover", "--cluster", "main", "--allow-data-loss"],
    )
    .await;
    assert_eq!(r["outcome"], "completed", "{r}");
    let new = r["new_primary"].as_str().unwrap().to_string();
    assert!(new == "db2" || new == "db3", "{r}");
    let view = new_primary(&fleet, "db1", &["db2", "db3"]).await;
    assert_eq!(view.primary, new);
    // every write was acknowledged by db2 or db3 once db4 was gone, and
    // db1 had sent them everything before: nothing is lost here
    check_witnesses(&fleet, writer, sampler, &new).await;
    let done = evidence_of(&fleet, "failover-completed");
    assert!(
        done.contains(
            "db4 may hold the last acknowledged writes; proceeding with --allow-data-loss"
        ),
        "{done}"
    );
}

/// Every operator write is attributed: the audit log names the
/// certificate, its address, the request in words and how it ended (a
/// refusal too), and the cluster events of operator changes name the
/// operator.
#[tokio::test]
async fn operator_writes_are_attributed_in_the_audit_log_and_the_events() {
    let fleet = TestFleet::start_active(2, 1).await;
    let run = |args: &[&str]| {
        let out = fleet.cli(args);
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (ok, out) = run(&["maintenance", "on", "--cluster", "main"]);
    assert!(ok, "{out}");
    let (ok, out) = run(&["maintenance", "off", "--cluster", "main"]);
    assert!(ok, "{out}");
    let (ok, out) = run(&["switchover", "--cluster", "main", "--to", "db9"]);
    assert!(!ok, "{out}");
    let (ok, out) = run(&["switchover", "--cluster", "main", "--to", "db2"]);
    assert!(ok, "{out}");

    let (ok, audit) = fleet.cli_json(&["audit"]);
    assert!(ok, "{audit}");
    let entries = audit["entries"].as_array().unwrap();
    let actions: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        actions.iter().map(|(a, _)| *a).collect::<Vec<_>>(),
        [
            "maintenance on for cluster main",
            "maintenance off for cluster main",
            "switchover of cluster main to db9",
            "switchover of cluster main to db2",
        ],
        "{audit}"
    );
    assert_eq!(actions[0].1, "done");
    assert!(
        actions[2].1.contains("db9"),
        "the refusal says why: {audit}"
    );
    assert_eq!(actions[3].1, "done");
    for e in entries {
        assert_eq!(e["operator"], "dbfleet://operator/sandbox", "{e}");
        assert!(
            e["source"].as_str().unwrap().starts_with("127."),
            "from where: {e}"
        );
    }
    let (ok, table) = run(&["audit"]);
    assert!(
        ok && table.contains("operator/sandbox") && table.contains("refused"),
        "{table}"
    );

    let events = fleet.cli(&["events", "--cluster", "main"]);
    let text = String::from_utf8_lossy(&events.stdout);
    assert!(
        text.contains("maintenance on (by operator sandbox)")
            && text.contains("operator sandbox requested a switchover to db2"),
        "{text}"
    );
    assert!(!text.contains("Some(") && !text.contains("None"), "{text}");
}
