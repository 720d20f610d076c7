//! Who asked for what: every operator write is written, with the caller's
//! certificate, its address, what it asked in words and how it ended, to
//! an append-only log in the coordinator's data directory
//! (`audit.jsonl`, 0600, each line synced before the reply). `dbfleet audit`
//! reads it; the cluster events of operator changes name the operator too.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use dbfleet_common::identity::{Identity, request_identity};
use dbfleet_proto::model::clip;
use dbfleet_proto::pb;
use serde::{Deserialize, Serialize};
use tracing::{error, info};

/// File name of the log in the data directory.
const FILE: &str = "audit.jsonl";
/// The longest outcome kept (an error quoting input is clipped).
const MAX_OUTCOME: usize = 512;
/// Entries `ListAudit` returns unless asked for fewer.
const DEFAULT_LIMIT: usize = 100;

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Line {
    at_unix_ms: i64,
    operator: String,
    source: String,
    action: String,
    outcome: String,
}

/// What an operator request says it wants, in words for the log.
pub(crate) trait Action {
    /// E.g. "switchover of cluster main to db2".
    fn action(&self) -> String;
}

/// A request being served: who, from where, what.
#[derive(Debug)]
pub(crate) struct Asked {
    at_unix_ms: i64,
    /// The caller.
    pub(crate) operator: Identity,
    source: String,
    action: String,
}

/// The log.
#[derive(Debug)]
pub(crate) struct AuditLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl AuditLog {
    /// Opens (or creates, 0600) the log in `data_dir`.
    pub(crate) fn open(data_dir: &Path) -> std::io::Result<AuditLog> {
        let path = data_dir.join(FILE);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Ok(AuditLog {
            path,
            file: Mutex::new(file),
        })
    }

    /// Notes who asked for what, before it is done.
    pub(crate) fn asked<T: Action>(
        &self,
        request: &tonic::Request<T>,
    ) -> Result<Asked, tonic::Status> {
        Ok(Asked {
            at_unix_ms: dbfleet_common::clock::unix_ms(),
            operator: request_identity(request)?,
            source: request
                .remote_addr()
                .map_or_else(|| "an unknown address".to_string(), |a| a.ip().to_string()),
            action: request.get_ref().action(),
        })
    }

    /// Writes the request with its outcome, and passes the outcome on.
    pub(crate) fn done<R>(
        &self,
        asked: Asked,
        result: Result<R, tonic::Status>,
    ) -> Result<R, tonic::Status> {
        let outcome = match &result {
            Ok(_) => "done".to_string(),
            Err(s) => clip(s.message(), MAX_OUTCOME),
        };
        info!(
            operator = %asked.operator,
            source = asked.source,
            action = asked.action,
            outcome,
            "operator request"
        );
        let line = Line {
            at_unix_ms: asked.at_unix_ms,
            operator: asked.operator.uri(),
            source: asked.source,
            action: asked.action,
            outcome,
        };
        let mut text = serde_json::to_string(&line).expect("audit lines encode");
        text.push('\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = file
            .write_all(text.as_bytes())
            .and_then(|()| file.sync_data())
        {
            error!(path = %self.path.display(), error = %e, "cannot write the audit log");
        }
        result
    }

    /// The last `limit` entries (0: [`DEFAULT_LIMIT`]), oldest first.
    pub(crate) fn recent(&self, limit: u32) -> Result<Vec<pb::AuditEntry>, tonic::Status> {
        let limit = match limit {
            0 => DEFAULT_LIMIT,
            n => n as usize,
        };
        let file = File::open(&self.path).map_err(|e| {
            tonic::Status::unavailable(format!("cannot read {}: {e}", self.path.display()))
        })?;
        let mut last = std::collections::VecDeque::with_capacity(limit);
        for line in BufReader::new(file).lines() {
            let Ok(line) = line else { break };
            // a line cut short by a crash is skipped
            let Ok(l) = serde_json::from_str::<Line>(&line) else {
                continue;
            };
            if last.len() == limit {
                last.pop_front();
            }
            last.push_back(pb::AuditEntry {
                at_unix_ms: l.at_unix_ms,
                operator: l.operator,
                source: l.source,
                action: l.action,
                outcome: l.outcome,
            });
        }
        Ok(last.into())
    }
}

fn or<'a>(s: &'a str, default: &'a str) -> &'a str {
    if s.is_empty() { default } else { s }
}

impl Action for pb::RunBackupRequest {
    fn action(&self) -> String {
        format!(
            "{} backup of cluster {} on {}",
            if self.incremental {
                "an incremental"
            } else {
                "a full"
            },
            self.cluster,
            or(&self.host, "a replica the coordinator picks")
        )
    }
}

impl Action for pb::VerifyBackupRequest {
    fn action(&self) -> String {
        format!(
            "verification of backup {} on {}",
            self.id,
            or(&self.host, "a host the coordinator picks")
        )
    }
}

impl Action for pb::RestoreBackupRequest {
    fn action(&self) -> String {
        let to = if !self.to_gtid.is_empty() {
            format!(" to GTID {}", self.to_gtid)
        } else if self.to_time_unix != 0 {
            format!(" to Unix time {}", self.to_time_unix)
        } else {
            String::new()
        };
        format!("restore of backup {} onto {}{to}", self.id, self.host)
    }
}

impl Action for pb::RebuildMemberRequest {
    fn action(&self) -> String {
        format!(
            "rebuild of {} from {}",
            self.host,
            or(&self.from, "what the coordinator picks")
        )
    }
}

impl Action for pb::SetBackupPolicyRequest {
    fn action(&self) -> String {
        format!(
            "backup policy of cluster {}",
            self.policy
                .as_ref()
                .map_or("(none given)", |p| p.cluster.as_str())
        )
    }
}

impl Action for pb::FailoverRequest {
    fn action(&self) -> String {
        format!(
            "failover of cluster {} to {}{}{}",
            self.cluster,
            or(&self.to, "the best candidate"),
            if self.allow_data_loss {
                ", allowing data loss"
            } else {
                ""
            },
            if self.confirm_fenced.is_empty() {
                String::new()
            } else {
                format!(", vouching that {} is fenced", self.confirm_fenced)
            }
        )
    }
}

impl Action for pb::SwitchoverRequest {
    fn action(&self) -> String {
        format!(
            "switchover of cluster {} to {}",
            self.cluster,
            or(&self.to, "the best candidate")
        )
    }
}

impl Action for pb::SetMaintenanceRequest {
    fn action(&self) -> String {
        format!(
            "maintenance {} for cluster {}",
            if self.on { "on" } else { "off" },
            self.cluster
        )
    }
}

impl Action for pb::SetFailoverPolicyRequest {
    fn action(&self) -> String {
        format!(
            "failover policy of cluster {}: {}",
            self.cluster,
            crate::service::control::policy_words(self)
        )
    }
}

impl Action for pb::SetPromotionRuleRequest {
    fn action(&self) -> String {
        format!("promotion rule of {}: {}", self.host, self.rule)
    }
}

impl Action for pb::AcknowledgeRequest {
    fn action(&self) -> String {
        format!("re-arming automatic failover of cluster {}", self.cluster)
    }
}

impl Action for pb::SetClusterPolicyRequest {
    fn action(&self) -> String {
        let mut parts = Vec::new();
        if let Some(v) = self.max_lag_seconds {
            parts.push(format!("max lag {v}s"));
        }
        if let Some(v) = self.replica_heartbeat_ms {
            parts.push(format!("replica heartbeat {v}ms"));
        }
        if let Some(v) = self.replica_net_timeout_ms {
            parts.push(format!("replica net timeout {v}ms"));
        }
        if let Some(v) = &self.semi_sync {
            parts.push(format!("semi-sync {v}"));
        }
        if let Some(v) = &self.mysql_tls {
            parts.push(format!("TLS to MySQL {v}"));
        }
        format!(
            "cluster policy of {}: {}",
            self.cluster,
            if parts.is_empty() {
                "nothing changed".to_string()
            } else {
                parts.join(", ")
            }
        )
    }
}

impl Action for pb::ForgetAgentRequest {
    fn action(&self) -> String {
        format!("forgetting agent {}", self.host)
    }
}

impl Action for pb::AdmitAgentRequest {
    fn action(&self) -> String {
        if self.cluster.is_empty() && self.mysql_address.is_empty() {
            format!("admitting agent {} where it reports", self.host)
        } else {
            format!(
                "admitting agent {} to cluster {} at {}",
                self.host, self.cluster, self.mysql_address
            )
        }
    }
}

impl Action for pb::SetVotersRequest {
    fn action(&self) -> String {
        let list: Vec<String> = self
            .voters
            .iter()
            .map(|v| format!("{}@{}", v.name, v.address))
            .collect();
        format!("voters {}", list.join(", "))
    }
}

impl Action for pb::AcceptOplogGapRequest {
    fn action(&self) -> String {
        "accepting the loss of the previous active's last desired-state changes".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_as_sentences() {
        let s = pb::SwitchoverRequest {
            cluster: "main".into(),
            to: String::new(),
        };
        assert_eq!(
            s.action(),
            "switchover of cluster main to the best candidate"
        );
        let p = pb::SetFailoverPolicyRequest {
            cluster: "main".into(),
            auto_failover: Some(false),
            budget: None,
            window_seconds: Some(600),
        };
        let a = p.action();
        assert_eq!(
            a,
            "failover policy of cluster main: automatic failover off, window 600s"
        );
        assert!(!a.contains("Some") && !a.contains("None"));
    }

    #[test]
    fn the_log_keeps_the_last_entries_and_skips_a_torn_line() {
        let d = tempfile::tempdir().unwrap();
        let log = AuditLog::open(d.path()).unwrap();
        for i in 0..3 {
            let asked = Asked {
                at_unix_ms: i,
                operator: Identity::new(dbfleet_common::identity::Role::Operator, "alice"),
                source: "127.0.0.1".into(),
                action: format!("action {i}"),
            };
            let r: Result<(), tonic::Status> = if i == 2 {
                Err(tonic::Status::failed_precondition("x".repeat(5000)))
            } else {
                Ok(())
            };
            let _ = log.done(asked, r);
        }
        std::fs::OpenOptions::new()
            .append(true)
            .open(d.path().join(FILE))
            .unwrap()
            .write_all(b"{\"at_unix_ms\": 9, \"oper")
            .unwrap();
        let last = log.recent(2).unwrap();
        assert_eq!(last.len(), 2);
        assert_eq!(last[0].action, "action 1");
        assert_eq!(last[0].outcome, "done");
        assert_eq!(last[0].operator, "dbfleet://operator/alice");
        assert!(last[1].outcome.len() < 600, "a long error is clipped");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.path().join(FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
