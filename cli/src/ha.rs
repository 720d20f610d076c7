//! `dbfleet coordinators` and `dbfleet voters`: the coordinator pair and
//! the lease's voters, as JSON (the contract in docs/cli.md) and as tables.

use dbfleet_proto::pb;
use serde_json::{Value, json};

fn epoch_json(e: Option<&pb::Epoch>) -> Value {
    match e {
        Some(e) => json!({ "term": e.term, "coordinator": e.coordinator }),
        None => Value::Null,
    }
}

fn epoch_text(v: &Value) -> String {
    match (v["term"].as_u64(), v["coordinator"].as_str()) {
        (Some(t), Some(c)) => format!("{t}/{c}"),
        _ => "-".into(),
    }
}

fn or_dash(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The `coordinators` JSON: one entry per configured coordinator, the
/// unreachable ones marked, with each one's op-log lag behind the active.
pub fn coordinators_json(statuses: &[(String, Result<pb::CoordinatorStatus, String>)]) -> Value {
    let answered: Vec<&pb::CoordinatorStatus> = statuses
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .collect();
    let active_applied = answered
        .iter()
        .filter(|s| s.role.starts_with("active"))
        .map(|s| s.applied_seq)
        .max()
        .or_else(|| answered.iter().map(|s| s.applied_seq).max())
        .unwrap_or(0);
    let list: Vec<Value> = statuses
        .iter()
        .map(|(address, r)| match r {
            Ok(s) => json!({
                "id": s.id,
                "address": address,
                "role": s.role,
                "epoch": epoch_json(s.epoch.as_ref()),
                "lease_remaining_ms": s.lease_remaining_ms,
                "applied_seq": s.applied_seq,
                "oplog_lag": active_applied.saturating_sub(s.applied_seq),
                "required_seq": s.required_seq,
                "max_seen_epoch": epoch_json(s.max_seen_epoch.as_ref()),
                "standby_acked_seq": s.standby_acked_seq,
                "lost_and_found": s.lost_and_found,
                "error": Value::Null,
            }),
            Err(e) => {
                let id = answered
                    .iter()
                    .find(|s| s.peer_address == *address)
                    .map(|s| s.peer_id.clone())
                    .unwrap_or_default();
                json!({
                    "id": id,
                    "address": address,
                    "role": "unreachable",
                    "epoch": Value::Null,
                    "lease_remaining_ms": Value::Null,
                    "applied_seq": Value::Null,
                    "oplog_lag": Value::Null,
                    "error": e,
                })
            }
        })
        .collect();
    json!({ "coordinators": list })
}

/// The `coordinators` table.
pub fn coordinators_table(v: &Value) -> String {
    let mut out = format!(
        "{:<8} {:<22} {:<16} {:<10} {:<11} {:<8} {}\n",
        "ID", "ADDRESS", "ROLE", "EPOCH", "LEASE LEFT", "APPLIED", "LAG"
    );
    for c in v["coordinators"].as_array().into_iter().flatten() {
        let lease = c["lease_remaining_ms"]
            .as_u64()
            .map_or("-".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0));
        out.push_str(&format!(
            "{:<8} {:<22} {:<16} {:<10} {:<11} {:<8} {}\n",
            or_dash(&c["id"]),
            or_dash(&c["address"]),
            or_dash(&c["role"]),
            epoch_text(&c["epoch"]),
            lease,
            or_dash(&c["applied_seq"]),
            or_dash(&c["oplog_lag"]),
        ));
        if let Some(e) = c["error"].as_str() {
            out.push_str(&format!("         ! {e}\n"));
        }
    }
    out
}

/// The `voters` JSON.
pub fn voters_json(r: &pb::ListVotersResponse) -> Value {
    let voters: Vec<Value> = r
        .voters
        .iter()
        .map(|v| {
            let s = v.state.as_ref();
            json!({
                "name": v.name,
                "address": v.address,
                "weight": v.weight,
                "reachable": v.reachable,
                "incoming": v.incoming,
                "witness": s.is_some_and(|s| s.witness),
                "promised": epoch_json(s.and_then(|s| s.promised.as_ref())),
                "holder": s.and_then(|s| s.holder.as_ref()).map(|h| h.coordinator.clone()),
                "grant_remaining_ms": s.and_then(|s| s.grant_remaining_ms),
                "quarantine_remaining_ms": s.and_then(|s| s.quarantine_remaining_ms),
                "committed_seq": s.map(|s| s.holder_committed_seq),
                "error": (!v.error.is_empty()).then(|| v.error.clone()),
            })
        })
        .collect();
    json!({ "version": r.version, "coordinator": r.coordinator_id, "voters": voters })
}

/// The `voters` table.
pub fn voters_table(v: &Value) -> String {
    let mut out = format!(
        "voter list version {} (as coordinator {} sees it)\n{:<12} {:<22} {:<7} {:<10} {:<10} {:<8} {}\n",
        or_dash(&v["version"]),
        or_dash(&v["coordinator"]),
        "NAME",
        "ADDRESS",
        "WEIGHT",
        "REACHABLE",
        "PROMISED",
        "HOLDER",
        "GRANT LEFT"
    );
    for x in v["voters"].as_array().into_iter().flatten() {
        let grant = x["grant_remaining_ms"]
            .as_u64()
            .map_or("-".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0));
        let mut name = or_dash(&x["name"]);
        if x["incoming"].as_bool() == Some(true) {
            name.push_str(" (new)");
        }
        if x["witness"].as_bool() == Some(true) {
            name.push_str(" (w)");
        }
        out.push_str(&format!(
            "{:<12} {:<22} {:<7} {:<10} {:<10} {:<8} {}\n",
            name,
            or_dash(&x["address"]),
            or_dash(&x["weight"]),
            if x["reachable"].as_bool() == Some(true) {
                "yes"
            } else {
                "no"
            },
            epoch_text(&x["promised"]),
            or_dash(&x["holder"]),
            grant,
        ));
    }
    out
}

/// Parses `NAME@IP:PORT` for `dbfleet voters set`.
pub fn parse_voter(s: &str, weights: &[(String, u32)]) -> Result<pb::VoterSpec, String> {
    let (name, address) = s
        .split_once('@')
        .ok_or_else(|| format!("{s:?} is not NAME@IP:PORT"))?;
    address
        .parse::<std::net::SocketAddr>()
        .map_err(|_| format!("{address:?} in {s:?} is not IP:PORT"))?;
    let weight = weights
        .iter()
        .find(|(n, _)| n == name)
        .map_or(1, |(_, w)| *w);
    Ok(pb::VoterSpec {
        name: name.to_string(),
        address: address.to_string(),
        weight,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(id: &str, role: &str, applied: u64, peer: (&str, &str)) -> pb::CoordinatorStatus {
        pb::CoordinatorStatus {
            id: id.into(),
            role: role.into(),
            applied_seq: applied,
            peer_id: peer.0.into(),
            peer_address: peer.1.into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_unreachable_coordinator_is_named_by_its_peer_and_lag_is_behind_the_active() {
        let v = coordinators_json(&[
            (
                "10.0.0.21:7200".into(),
                Ok(status("c1", "active", 9, ("c2", "10.0.0.22:7200"))),
            ),
            (
                "10.0.0.22:7200".into(),
                Err("Unavailable: connection refused".into()),
            ),
        ]);
        let c = v["coordinators"].as_array().unwrap();
        assert_eq!(c[0]["oplog_lag"], 0);
        assert_eq!(c[1]["id"], "c2");
        assert_eq!(c[1]["role"], "unreachable");
        let v = coordinators_json(&[
            ("a".into(), Ok(status("c1", "active", 9, ("c2", "b")))),
            ("b".into(), Ok(status("c2", "standby", 6, ("c1", "a")))),
        ]);
        assert_eq!(v["coordinators"][1]["oplog_lag"], 3);
        assert!(coordinators_table(&v).contains("standby"));
    }

    #[test]
    fn voter_specs_need_an_ip_and_port() {
        let w = vec![("db2".to_string(), 3)];
        assert_eq!(parse_voter("db2@127.0.0.1:7100", &w).unwrap().weight, 3);
        assert!(
            parse_voter("db2@localhost:7100", &w)
                .unwrap_err()
                .contains("IP:PORT")
        );
        assert!(parse_voter("db2", &w).is_err());
    }
}
