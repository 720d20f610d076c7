//! The CLI's view of the coordinators: its config file and the calls it
//! makes, trying each coordinator in turn.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dbfleet_common::config::{ConfigError, load_toml};
use dbfleet_common::identity::Role;
use dbfleet_common::tls::{self, TlsContext, TlsError, TlsPaths};
use dbfleet_proto::lease::ACTIVE_ADDRESS_METADATA;
use dbfleet_proto::pb;
use dbfleet_proto::pb::admin_service_client::AdminServiceClient;
use serde::{Deserialize, Serialize};

/// Environment variable naming the CLI config file.
pub const CONFIG_ENV: &str = "DBFLEET_CONFIG";

const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a read waits to learn which coordinator is active.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
const VOTER_CHANGE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a failover or switchover may take before the CLI stops waiting.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(180);
/// A write may wait for the standby, then for a lease renewal.
const WRITE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a write keeps looking for an active coordinator (a takeover
/// takes at most about lease × 1.4).
const FIND_ACTIVE_FOR: Duration = Duration::from_secs(20);

/// `dbfleet --config FILE` (or `DBFLEET_CONFIG`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CliConfig {
    /// Coordinator addresses, `host:port`, tried in order.
    pub coordinators: Vec<String>,
    /// The operator's (or viewer's) certificates.
    pub tls: CliTls,
}

/// TLS paths as written in the CLI config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CliTls {
    /// CA certificate.
    pub ca: PathBuf,
    /// Our certificate.
    pub cert: PathBuf,
    /// Our key.
    pub key: PathBuf,
}

/// Why a CLI call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The config file is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The certificates are unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// No config given.
    #[error(
        "no CLI config: pass --config FILE, set {CONFIG_ENV}, or put it in ~/.config/dbfleet.toml or /etc/dbfleet/dbfleet.toml"
    )]
    NoConfig,
    /// Every coordinator failed; each failure is listed.
    #[error("no coordinator answered: {}", .0.join("; "))]
    NoCoordinator(Vec<String>),
    /// A coordinator answered with an error that retrying elsewhere would not fix.
    #[error("{address}: {status}")]
    Refused {
        /// Which coordinator.
        address: String,
        /// Its answer.
        status: String,
    },
}

/// A connected CLI: config plus TLS material.
#[derive(Debug, Clone)]
pub struct Client {
    config: CliConfig,
    tls: Arc<TlsContext>,
}

/// Where the CLI config is when neither `--config` nor the environment
/// says: the user's (`$XDG_CONFIG_HOME/dbfleet.toml`, else
/// `~/.config/dbfleet.toml`), then the host's (`/etc/dbfleet/dbfleet.toml`);
/// the first that exists.
fn default_config() -> Option<PathBuf> {
    let user = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .map(|d| d.join("dbfleet.toml"));
    user.into_iter()
        .chain(std::iter::once(PathBuf::from("/etc/dbfleet/dbfleet.toml")))
        .find(|p| p.is_file())
}

/// The largest reply the CLI reads.
const MAX_REPLY_BYTES: usize = 256 << 20;

impl Client {
    /// Loads the CLI config and certificates.
    pub fn from_file(path: Option<&Path>) -> Result<Client, ClientError> {
        let found = path.map(Path::to_path_buf).or_else(default_config);
        let path = found.as_deref().ok_or(ClientError::NoConfig)?;
        let config: CliConfig = load_toml(path)?;
        let tls = TlsContext::load(&TlsPaths {
            ca: config.tls.ca.clone(),
            cert: config.tls.cert.clone(),
            key: config.tls.key.clone(),
        })?;
        Ok(Client { config, tls })
    }

    /// A client of the coordinator at `address`. Replies may be larger than
    /// gRPC's default 4 MiB: a status of thousands of hosts is (each
    /// report is capped by the coordinator, so the total is bounded by the
    /// fleet's size).
    fn admin(&self, address: &str) -> AdminServiceClient<tonic::transport::Channel> {
        AdminServiceClient::new(tls::channel(
            self.tls.clone(),
            address,
            Role::Coordinator,
            Duration::from_secs(3),
        ))
        .max_decoding_message_size(MAX_REPLY_BYTES)
    }

    /// Runs a read against the active coordinator, whose view is the one
    /// that acts: a standby's can differ (an agent may reach only one of
    /// them). The standby answers only when the active does not, and the
    /// CLI says so on stderr. Every attempt has its own deadline, so a hung
    /// coordinator costs one deadline and the next is tried.
    async fn read<T, F, Fut>(&self, call: F) -> Result<T, ClientError>
    where
        F: Fn(AdminServiceClient<tonic::transport::Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let (order, active) = self.read_order().await;
        let mut failures = Vec::new();
        for address in &order {
            match tokio::time::timeout(CALL_TIMEOUT, call(self.admin(address))).await {
                Ok(Ok(r)) => {
                    if active.as_deref() != Some(address.as_str()) && order.len() > 1 {
                        eprintln!(
                            "dbfleet: {address} answered; it is not the active coordinator, so its view may differ from the one that acts"
                        );
                    }
                    return Ok(r.into_inner());
                }
                Ok(Err(s)) if is_refusal(&s) => {
                    return Err(ClientError::Refused {
                        address: address.clone(),
                        status: describe(&s),
                    });
                }
                Ok(Err(s)) => failures.push(format!("{address}: {}", describe(&s))),
                Err(_) => failures.push(format!("{address}: no answer within {CALL_TIMEOUT:?}")),
            }
        }
        Err(ClientError::NoCoordinator(failures))
    }

    /// The configured coordinators, the one that says it is active first
    /// (asked all at once, each within [`STATUS_TIMEOUT`]), and that one.
    async fn read_order(&self) -> (Vec<String>, Option<String>) {
        let mut order = self.config.coordinators.clone();
        if order.len() < 2 {
            let only = order.first().cloned();
            return (order, only);
        }
        let asks = order.iter().map(|address| async move {
            let mut c = self.admin(address);
            let r = tokio::time::timeout(
                STATUS_TIMEOUT,
                c.get_coordinator_status(pb::GetCoordinatorStatusRequest {}),
            )
            .await;
            matches!(r, Ok(Ok(s)) if s.get_ref().role == "active").then(|| address.clone())
        });
        let active = futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .next();
        if let Some(a) = &active {
            order.retain(|x| x != a);
            order.insert(0, a.clone());
        }
        (order, active)
    }

    /// Runs a write against the active coordinator: follows redirects from
    /// a standby, and waits through a takeover for an active to appear.
    async fn write<T, F, Fut>(&self, deadline: Duration, call: F) -> Result<T, ClientError>
    where
        F: Fn(AdminServiceClient<tonic::transport::Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let give_up = tokio::time::Instant::now() + FIND_ACTIVE_FOR;
        loop {
            let mut queue: std::collections::VecDeque<String> =
                self.config.coordinators.iter().cloned().collect();
            let mut tried: Vec<String> = Vec::new();
            let mut failures = Vec::new();
            let mut heard_not_active = false;
            while let Some(address) = queue.pop_front() {
                if tried.contains(&address) {
                    continue;
                }
                tried.push(address.clone());
                match tokio::time::timeout(deadline, call(self.admin(&address))).await {
                    Ok(Ok(r)) => return Ok(r.into_inner()),
                    Ok(Err(s)) if is_not_active(&s) => {
                        heard_not_active = true;
                        if let Some(a) = s
                            .metadata()
                            .get(ACTIVE_ADDRESS_METADATA)
                            .and_then(|v| v.to_str().ok())
                        {
                            queue.push_front(a.to_string());
                        }
                        failures.push(format!("{address}: {}", s.message()));
                    }
                    Ok(Err(s)) if is_refusal(&s) => {
                        return Err(ClientError::Refused {
                            address: address.clone(),
                            status: describe(&s),
                        });
                    }
                    Ok(Err(s)) => {
                        failures.push(format!("{address}: {}", describe(&s)));
                    }
                    Err(_) => {
                        failures.push(format!("{address}: no answer within {deadline:?}"));
                    }
                }
            }
            // A coordinator that says "not active" is alive and waiting for
            // (or following) an active one: keep trying through a takeover.
            if !heard_not_active || tokio::time::Instant::now() >= give_up {
                return Err(ClientError::NoCoordinator(failures));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Each configured coordinator's status, or why it did not answer.
    pub async fn coordinator_statuses(
        &self,
    ) -> Vec<(String, Result<pb::CoordinatorStatus, String>)> {
        let calls = self.config.coordinators.iter().map(|address| async move {
            let mut c = self.admin(address);
            let r = match tokio::time::timeout(
                CALL_TIMEOUT,
                c.get_coordinator_status(pb::GetCoordinatorStatusRequest {}),
            )
            .await
            {
                Ok(Ok(r)) => Ok(r.into_inner()),
                Ok(Err(s)) => Err(describe(&s)),
                Err(_) => Err(format!("no answer within {CALL_TIMEOUT:?}")),
            };
            (address.clone(), r)
        });
        futures::future::join_all(calls).await
    }

    /// The voter list as a coordinator sees it.
    pub async fn list_voters(&self) -> Result<pb::ListVotersResponse, ClientError> {
        self.read(|mut c| async move { c.list_voters(pb::ListVotersRequest {}).await })
            .await
    }

    /// Replaces the voter list (joint majorities).
    pub async fn set_voters(
        &self,
        voters: Vec<pb::VoterSpec>,
    ) -> Result<pb::ListVotersResponse, ClientError> {
        let req = pb::SetVotersRequest { voters };
        // A voter change waits for a lease renewal under the joint list.
        self.write(VOTER_CHANGE_TIMEOUT, |mut c| {
            let req = req.clone();
            async move { c.set_voters(req).await }
        })
        .await
    }

    /// Accepts the op-log gap of an active-degraded coordinator.
    pub async fn accept_oplog_gap(&self) -> Result<pb::CoordinatorStatus, ClientError> {
        self.write(WRITE_TIMEOUT, |mut c| async move {
            c.accept_oplog_gap(pb::AcceptOplogGapRequest {}).await
        })
        .await
    }

    /// Changes a cluster's policy; returns the policy in force after it.
    pub async fn set_cluster_policy(
        &self,
        req: pb::SetClusterPolicyRequest,
    ) -> Result<pb::ClusterPolicy, ClientError> {
        self.write(WRITE_TIMEOUT, |mut c| {
            let req = req.clone();
            async move { c.set_cluster_policy(req).await }
        })
        .await
    }

    /// Fails over a cluster and waits for the outcome.
    pub async fn failover(
        &self,
        req: pb::FailoverRequest,
    ) -> Result<pb::OperationResult, ClientError> {
        self.write(OPERATION_TIMEOUT, |mut c| {
            let req = req.clone();
            async move { c.failover(req).await }
        })
        .await
    }

    /// Switches a cluster over and waits for the outcome.
    pub async fn switchover(
        &self,
        req: pb::SwitchoverRequest,
    ) -> Result<pb::OperationResult, ClientError> {
        self.write(OPERATION_TIMEOUT, |mut c| {
            let req = req.clone();
            async move { c.switchover(req).await }
        })
        .await
    }

    /// Maintenance on or off.
    pub async fn set_maintenance(
        &self,
        cluster: &str,
        on: bool,
    ) -> Result<pb::ClusterControl, ClientError> {
        let req = pb::SetMaintenanceRequest {
            cluster: cluster.to_string(),
            on,
        };
        self.write(WRITE_TIMEOUT, |mut c| {
            let req = req.clone();
            async move { c.set_maintenance(req).await }
        })
        .await
    }

    /// Automatic failover switch and anti-flap budget.
    pub async fn set_failover_policy(
        &self,
        req: pb::SetFailoverPolicyRequest,
    ) -> Result<pb::ClusterControl, ClientError> {
        self.write(WRITE_TIMEOUT, |mut c| {
            let req = req.clone();
            async move { c.set_failover_policy(req).await }
        })
        .await
    }

    /// A host's candidate priority.
    pub async fn set_promotion_rule(
        &self,
        host: &str,
        rule: &str,
    ) -> Result<pb::ClusterControl, ClientError> {
        let req = pb::SetPromotionRuleRequest {
            host: host.to_string(),
            rule: rule.to_string(),
        };
        self.write(WRITE_TIMEOUT, |mut c| {
            let req = req.clone();
            async move { c.set_promotion_rule(req).await }
        })
        .await
    }

    /// Re-arms automatic failover.
    pub async fn acknowledge(&self, cluster: &str) -> Result<pb::ClusterControl, ClientError> {
        let req = pb::AcknowledgeRequest {
            cluster: cluster.to_string(),
        };
        self.write(WRITE_TIMEOUT, |mut c| {
            let req = req.clone();
            async move { c.acknowledge(req).await }
        })
        .await
    }

    /// The event history.
    pub async fn list_events(
        &self,
        cluster: Option<&str>,
        limit: u32,
    ) -> Result<pb::ListEventsResponse, ClientError> {
        let req = pb::ListEventsRequest {
            cluster: cluster.unwrap_or_default().to_string(),
            limit,
        };
        self.read(|mut c| {
            let req = req.clone();
            async move { c.list_events(req).await }
        })
        .await
    }

    /// The active coordinator's audit log.
    pub async fn list_audit(&self, limit: u32) -> Result<pb::ListAuditResponse, ClientError> {
        self.read(|mut c| async move { c.list_audit(pb::ListAuditRequest { limit }).await })
            .await
    }

    /// Starts a backup.
    pub async fn run_backup(
        &self,
        req: pb::RunBackupRequest,
    ) -> Result<pb::BackupView, ClientError> {
        self.write(WRITE_TIMEOUT, |mut c| {
            let req = req.clone();
            async move { c.run_backup(req).await }
        })
        .await
    }

    /// Starts verifying a backup.
    pub async fn verify_backup(
        &self,
        id: &str,
        host: Option<&str>,
    ) -> Result<pb::BackupView, ClientError> {
        let req = pb::VerifyBackupRequest {
            id: id.to_string(),
            host: host.unwrap_or_default().to_string(),
        };
        self.write(WRITE_TIMEOUT, |mut c| {
            let req = req.clone();
            async move { c.verify_backup(req).await }
        })
        .await
    }

    /// The catalog, optionally of one cluster.
    pub async fn list_backups(
        &self,
        cluster: Option<&str>,
    ) -> Result<pb::ListBackupsResponse, ClientError> {
        let req = pb::ListBackupsRequest {
            cluster: cluster.unwrap_or_default().to_string(),
        };
        self.read(|mut c| {
            let req = req.clone();
            async move { c.list_backups(req).await }
        })
        .await
    }

    /// One catalog entry.
    /// Restores a backup onto a host, optionally to a point in time.
    pub async fn restore_backup(
        &self,
        req: pb::RestoreBackupRequest,
    ) -> Result<pb::RestoreView, ClientError> {
        self.write(WRITE_TIMEOUT, |mut c| {
            let req = req.clone();
            async move { c.restore_backup(req).await }
        })
        .await
    }

    /// Rebuilds a member (CLONE on MySQL, the newest verified backup on
    /// MariaDB).
    pub async fn rebuild_member(
        &self,
        req: pb::RebuildMemberRequest,
    ) -> Result<pb::RestoreView, ClientError> {
        self.write(WRITE_TIMEOUT, |mut c| {
            let req = req.clone();
            async move { c.rebuild_member(req).await }
        })
        .await
    }

    /// One restore.
    pub async fn get_restore(&self, id: &str) -> Result<pb::RestoreView, ClientError> {
        let req = pb::GetRestoreRequest { id: id.to_string() };
        self.read(|mut c| {
            let req = req.clone();
            async move { c.get_restore(req).await }
        })
        .await
    }

    /// A cluster's backup policy.
    pub async fn get_backup_policy(&self, cluster: &str) -> Result<pb::BackupPolicy, ClientError> {
        let req = pb::GetBackupPolicyRequest {
            cluster: cluster.to_string(),
        };
        self.read(|mut c| {
            let req = req.clone();
            async move { c.get_backup_policy(req).await }
        })
        .await
    }

    /// Sets a cluster's backup policy.
    pub async fn set_backup_policy(
        &self,
        policy: pb::BackupPolicy,
    ) -> Result<pb::BackupPolicy, ClientError> {
        let req = pb::SetBackupPolicyRequest {
            policy: Some(policy),
        };
        self.write(WRITE_TIMEOUT, |mut c| {
            let req = req.clone();
            async move { c.set_backup_policy(req).await }
        })
        .await
    }

    /// One backup.
    pub async fn get_backup(&self, id: &str) -> Result<pb::BackupView, ClientError> {
        let req = pb::GetBackupRequest { id: id.to_string() };
        self.read(|mut c| {
            let req = req.clone();
            async move { c.get_backup(req).await }
        })
        .await
    }

    /// Clusters, optionally one.
    pub async fn list_clusters(
        &self,
        cluster: Option<&str>,
    ) -> Result<pb::ListClustersResponse, ClientError> {
        let req = pb::ListClustersRequest {
            cluster: cluster.unwrap_or_default().to_string(),
        };
        self.read(|mut c| {
            let req = req.clone();
            async move { c.list_clusters(req).await }
        })
        .await
    }

    /// Registered agents.
    pub async fn list_agents(&self) -> Result<pb::ListAgentsResponse, ClientError> {
        self.read(|mut c| async move { c.list_agents(pb::ListAgentsRequest {}).await })
            .await
    }

    /// Forgets an agent: it has no voice, even while it reports, until it
    /// is admitted again.
    pub async fn forget_agent(&self, host: &str) -> Result<pb::ForgetAgentResponse, ClientError> {
        let req = pb::ForgetAgentRequest {
            host: host.to_string(),
        };
        self.write(WRITE_TIMEOUT, |mut c| {
            let req = req.clone();
            async move { c.forget_agent(req).await }
        })
        .await
    }

    /// Admits an agent where it reports, or at `place` (cluster, MySQL
    /// address): a move.
    pub async fn admit_agent(
        &self,
        host: &str,
        place: Option<(&str, &str)>,
    ) -> Result<pb::AdmitAgentResponse, ClientError> {
        let (cluster, mysql_address) = place.unwrap_or_default();
        let req = pb::AdmitAgentRequest {
            host: host.to_string(),
            cluster: cluster.to_string(),
            mysql_address: mysql_address.to_string(),
        };
        self.write(WRITE_TIMEOUT, |mut c| {
            let req = req.clone();
            async move { c.admit_agent(req).await }
        })
        .await
    }
}

/// A standby's (or candidate's) answer to a write: ask the active instead.
fn is_not_active(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::FailedPrecondition
        && (s.metadata().contains_key(ACTIVE_ADDRESS_METADATA)
            || s.message().contains("is not the active coordinator"))
}

/// Answers that another coordinator would give just the same.
fn is_refusal(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::InvalidArgument
            | tonic::Code::PermissionDenied
            | tonic::Code::Unauthenticated
            | tonic::Code::NotFound
            | tonic::Code::FailedPrecondition
            | tonic::Code::Unknown
            | tonic::Code::Aborted
    )
}

/// A status as one readable line, including the transport cause.
pub fn describe(s: &tonic::Status) -> String {
    use std::error::Error;
    let mut out = format!("{:?}: {}", s.code(), s.message());
    let mut src = s.source();
    while let Some(e) = src {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        src = e.source();
    }
    out
}
