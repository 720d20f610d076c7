//! Rendering failover and switchover outcomes, cluster controls and the
//! event history (documented in docs/cli.md).

use dbfleet_proto::pb;
use serde_json::{Value, json};

fn epoch(e: Option<&pb::Epoch>) -> Value {
    e.map_or(
        Value::Null,
        |e| json!({ "term": e.term, "coordinator": e.coordinator }),
    )
}

/// An operation's outcome as JSON.
pub fn result_json(r: &pb::OperationResult) -> Value {
    json!({
        "id": r.id, "cluster": r.cluster, "kind": r.kind, "outcome": r.outcome,
        "old_primary": r.old_primary, "new_primary": r.new_primary,
        "epoch": epoch(r.epoch.as_ref()), "reason": r.reason,
        "fence_proof": r.fence_proof, "message": r.message,
        "duration_ms": r.duration_ms, "write_gap_ms": r.write_gap_ms,
    })
}

/// An operation's outcome in words.
pub fn result_text(r: &pb::OperationResult) -> String {
    let mut s = format!(
        "{} of {}: {} ({} ms)\n  {}\n",
        r.kind, r.cluster, r.outcome, r.duration_ms, r.message
    );
    if !r.fence_proof.is_empty() {
        s += &format!("  fence proof: {}\n", r.fence_proof);
    }
    if r.kind == "switchover" && r.outcome == "completed" {
        s += &format!("  writes refused for {} ms\n", r.write_gap_ms);
    }
    s
}

/// A cluster's controls as JSON.
pub fn control_json(c: &pb::ClusterControl) -> Value {
    json!({
        "cluster": c.cluster, "auto_failover": c.auto_failover, "maintenance": c.maintenance,
        "budget": c.budget, "window_seconds": c.window_seconds, "needs_ack": c.needs_ack,
        "promotion_rules": c.promotion_rules, "needs_rebuild": c.needs_rebuild, "frozen": c.frozen,
        "operation": c.operation,
    })
}

/// A cluster's controls in words.
pub fn control_text(c: &pb::ClusterControl) -> String {
    format!(
        "cluster {}: automatic failover {}, maintenance {}, budget {} per {} s{}\n",
        c.cluster,
        if c.auto_failover { "on" } else { "off" },
        if c.maintenance { "on" } else { "off" },
        c.budget,
        c.window_seconds,
        if c.needs_ack {
            ", held until `dbfleet ack`"
        } else {
            ""
        }
    )
}

/// Events as JSON.
pub fn events_json(r: &pb::ListEventsResponse) -> Value {
    let events: Vec<Value> = r
        .events
        .iter()
        .map(|e| {
            json!({
                "at_unix_ms": e.at_unix_ms, "cluster": e.cluster, "kind": e.kind,
                "host": e.host, "message": e.message, "operation_id": e.operation_id,
                "epoch": epoch(e.epoch.as_ref()), "evidence": e.evidence,
            })
        })
        .collect();
    json!({ "events": events })
}

/// Unix milliseconds as RFC 3339 UTC, to the millisecond.
fn rfc3339(at_unix_ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(at_unix_ms.max(0) as u64);
    humantime::format_rfc3339_millis(at).to_string()
}

/// `dbfleet audit` as a table: when, who, from where, what, how it ended.
pub fn audit_table(r: &pb::ListAuditResponse) -> String {
    let mut s = format!(
        "{:<24} {:<28} {:<16} {:<8} ACTION\n",
        "TIME", "OPERATOR", "FROM", "OUTCOME"
    );
    for e in &r.entries {
        let at = rfc3339(e.at_unix_ms);
        let who = e.operator.trim_start_matches("dbfleet://");
        let (outcome, why) = if e.outcome == "done" {
            ("done", String::new())
        } else {
            ("refused", format!("\n{:<24}   refused: {}", "", e.outcome))
        };
        s += &format!(
            "{at:<24} {who:<28} {:<16} {outcome:<8} {}{why}\n",
            e.source, e.action
        );
    }
    s
}

/// `dbfleet audit --output json`.
pub fn audit_json(r: &pb::ListAuditResponse) -> serde_json::Value {
    serde_json::json!({
        "coordinator": r.coordinator_id,
        "entries": r.entries.iter().map(|e| serde_json::json!({
            "at_unix_ms": e.at_unix_ms,
            "operator": e.operator,
            "source": e.source,
            "action": e.action,
            "outcome": e.outcome,
        })).collect::<Vec<_>>(),
    })
}

/// Events as a table, one line each plus their evidence.
pub fn events_table(r: &pb::ListEventsResponse) -> String {
    let mut s = format!(
        "{:<24} {:<12} {:<24} {:<10} MESSAGE\n",
        "TIME", "CLUSTER", "KIND", "HOST"
    );
    for e in &r.events {
        let at = rfc3339(e.at_unix_ms);
        s += &format!(
            "{at:<24} {:<12} {:<24} {:<10} {}\n",
            e.cluster, e.kind, e.host, e.message
        );
        for ev in &e.evidence {
            s += &format!("{:<24}   - {ev}\n", "");
        }
    }
    s
}
