//! When a sandbox is up: the status it waits for before handing the fleet
//! over, for `sandbox up` and the tests alike.

use std::time::{Duration, Instant};

use dbfleet_proto::pb;

use super::{Fleet, SandboxError, SandboxFile};

impl Fleet {
    /// Waits until `done` holds for the status, or fails with the last
    /// status seen (or the last error) after `timeout`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&pb::ListClustersResponse) -> bool,
    ) -> Result<pb::ListClustersResponse, SandboxError> {
        let client = self
            .client()
            .map_err(|e| SandboxError::Usage(e.to_string()))?;
        let start = Instant::now();
        loop {
            let last = match client.list_clusters(None).await {
                Ok(r) if done(&r) => return Ok(r),
                Ok(r) => describe_status(&r),
                Err(e) => e.to_string(),
            };
            if start.elapsed() > timeout {
                return Err(SandboxError::Unhealthy {
                    timeout,
                    last: format!("({what}) {last}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every cluster is healthy: its first member the writable
    /// primary, every other one read-only and replicating, no problems.
    pub async fn wait_healthy(&self, timeout: Duration) -> Result<(), SandboxError> {
        self.wait_for(timeout, "healthy", |r| healthy(r, &self.info))
            .await
            .map(|_| ())
    }
}

/// Problems and member states in one line, for failure messages.
pub fn describe_status(r: &pb::ListClustersResponse) -> String {
    let j = crate::status::to_json(r);
    serde_json::to_string(&j).unwrap_or_default()
}

/// The sandbox's health rule, also used by tests: exactly the clusters of
/// `info`, each with exactly its members, its first member the writable
/// primary and the others read-only replicas with both threads running.
pub fn healthy(r: &pb::ListClustersResponse, info: &SandboxFile) -> bool {
    let cluster_of = |m: &super::MemberInfo| {
        if m.cluster.is_empty() {
            info.cluster.clone()
        } else {
            m.cluster.clone()
        }
    };
    let mut names: Vec<String> = info.members.iter().map(cluster_of).collect();
    names.dedup();
    r.clusters.len() == names.len()
        && names.iter().all(|name| {
            let expected: Vec<&str> = info
                .members
                .iter()
                .filter(|m| cluster_of(m) == *name)
                .map(|m| m.host.as_str())
                .collect();
            r.clusters
                .iter()
                .find(|c| c.name == *name)
                .is_some_and(|c| cluster_healthy(c, &expected))
        })
}

/// `expected[0]` the writable primary of `c` and the rest its replicas.
fn cluster_healthy(c: &pb::ClusterView, expected: &[&str]) -> bool {
    let Some(primary) = expected.first() else {
        return false;
    };
    c.problems.is_empty()
        && c.primary == *primary
        && c.members.len() == expected.len()
        && c.members.iter().all(|m| {
            expected.contains(&m.host.as_str())
                && m.reporting
                && m.reachable
                && if m.host == *primary {
                    m.writable
                } else {
                    !m.writable && m.io_running && m.sql_running
                }
        })
}
