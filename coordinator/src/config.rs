//! The coordinator's TOML config, validated before anything starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dbfleet_common::config::{ConfigError, load_toml};
use dbfleet_common::tls::TlsPaths;
use dbfleet_proto::model::Name;
use serde::Deserialize;

/// `dbfleet-coordinator --config FILE`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// This coordinator's id; its certificate must be `dbfleet://coordinator/ID`.
    pub id: String,
    /// gRPC address agents and operators connect to.
    pub listen: SocketAddr,
    /// Directory of the sled database (created if missing).
    pub data_dir: PathBuf,
    /// Certificates.
    pub tls: TlsPaths,
    /// How often certificate files are checked for changes.
    #[serde(default = "default_cert_reload", with = "humantime_serde")]
    pub cert_reload_interval: Duration,
    /// How long a graceful stop may take before it is cut short.
    #[serde(default = "default_shutdown", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Topology rules.
    #[serde(default)]
    pub topology: TopologyConfig,
}

/// Thresholds for judging members.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyConfig {
    /// An agent silent for longer is flagged as not reporting.
    #[serde(default = "default_agent_timeout", with = "humantime_serde")]
    pub agent_timeout: Duration,
    /// Lag threshold for clusters without their own policy.
    #[serde(default = "default_max_lag")]
    pub default_max_lag_seconds: u64,
}

impl Default for TopologyConfig {
    fn default() -> Self {
        TopologyConfig {
            agent_timeout: default_agent_timeout(),
            default_max_lag_seconds: default_max_lag(),
        }
    }
}

fn default_cert_reload() -> Duration {
    Duration::from_secs(60)
}
fn default_shutdown() -> Duration {
    Duration::from_secs(10)
}
fn default_agent_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_max_lag() -> u64 {
    60
}

impl CoordinatorConfig {
    /// Loads and validates `path`.
    pub fn load(path: &Path) -> Result<CoordinatorConfig, ConfigError> {
        let c: CoordinatorConfig = load_toml(path)?;
        let invalid = |field: &str, reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            field: field.to_string(),
            reason,
        };
        Name::parse(&c.id).map_err(|r| invalid("id", r))?;
        if c.topology.agent_timeout < Duration::from_millis(500) {
            return Err(invalid(
                "topology.agent_timeout",
                "must be at least 500ms (several agent report intervals)".into(),
            ));
        }
        if c.topology.default_max_lag_seconds == 0 {
            return Err(invalid(
                "topology.default_max_lag_seconds",
                "must be at least 1".into(),
            ));
        }
        if c.cert_reload_interval < Duration::from_secs(1) {
            return Err(invalid(
                "cert_reload_interval",
                "must be at least 1s".into(),
            ));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_example_is_valid() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/coordinator.toml");
        let c = CoordinatorConfig::load(&p).unwrap();
        assert_eq!(c.topology.agent_timeout, Duration::from_secs(5));
    }
}
