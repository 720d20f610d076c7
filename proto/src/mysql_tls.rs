//! TLS to MySQL as the protocol carries it: the cluster's policy, how a
//! replica's link to its source is secured, and how an agent reaches its
//! own server.
//!
//! Kept apart from `model` because all of it answers one question a
//! security review asks: can anyone on the network read the replication
//! stream or stand in for a source?

use crate::model::ProtocolError;
use crate::pb;

/// TLS to MySQL as a cluster's policy asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MysqlTlsMode {
    /// Replicas reach their source over TLS, the source's certificate
    /// checked against the replica's CA and the source's address; agents
    /// that reach their server over TCP use verified TLS too. Members that
    /// do not are shown as problems.
    Required,
    /// Plain TCP is accepted.
    Off,
}

impl MysqlTlsMode {
    /// As the CLI, configs and JSON spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            MysqlTlsMode::Required => "required",
            MysqlTlsMode::Off => "off",
        }
    }

    /// The mode `s` names.
    pub fn parse(s: &str) -> Result<MysqlTlsMode, String> {
        match s {
            "required" => Ok(MysqlTlsMode::Required),
            "off" => Ok(MysqlTlsMode::Off),
            other => Err(format!(
                "\"{other}\" is not a MySQL TLS mode: use required or off"
            )),
        }
    }
}

/// How a replica's connection to its source is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkTls {
    /// Plain TCP.
    Off,
    /// TLS, the source's certificate not checked: safe from readers, not
    /// from whoever answers at the source's address.
    Encrypted,
    /// TLS, the source's certificate checked against a CA and its name.
    Verified,
}

impl LinkTls {
    /// As events and `status` say it.
    pub fn describe(self) -> &'static str {
        match self {
            LinkTls::Off => "plain TCP",
            LinkTls::Encrypted => "TLS without checking the source's certificate",
            LinkTls::Verified => "verified TLS",
        }
    }

    /// From the wire; `None` when the agent did not say.
    pub fn from_pb(v: i32) -> Result<Option<LinkTls>, ProtocolError> {
        match pb::LinkTls::try_from(v) {
            Ok(pb::LinkTls::Unspecified) => Ok(None),
            Ok(pb::LinkTls::Off) => Ok(Some(LinkTls::Off)),
            Ok(pb::LinkTls::Encrypted) => Ok(Some(LinkTls::Encrypted)),
            Ok(pb::LinkTls::Verified) => Ok(Some(LinkTls::Verified)),
            Err(_) => Err(ProtocolError::invalid(
                "mysql.replication.tls",
                format!("unknown value {v}"),
            )),
        }
    }

    /// To the wire; `None` is "unspecified".
    pub fn to_pb(v: Option<LinkTls>) -> i32 {
        (match v {
            None => pb::LinkTls::Unspecified,
            Some(LinkTls::Off) => pb::LinkTls::Off,
            Some(LinkTls::Encrypted) => pb::LinkTls::Encrypted,
            Some(LinkTls::Verified) => pb::LinkTls::Verified,
        }) as i32
    }
}

/// How the agent reaches its mysqld.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentConnection {
    /// Over the server's Unix socket.
    Socket,
    /// Over TCP with TLS, the server's certificate checked.
    Tls,
    /// Over plain TCP.
    Plain,
}

/// TLS of a server and of the agent's connection to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    /// `@@ssl_ca`: what the server's replication connections check their
    /// source against; empty when none.
    pub ca: String,
    /// `@@require_secure_transport`.
    pub require_secure_transport: bool,
    /// How the agent reached the server for this observation.
    pub agent_connection: AgentConnection,
}

impl ServerTls {
    /// From the wire; `None` when the agent did not say.
    pub fn from_pb(m: Option<pb::MysqlTlsState>) -> Result<Option<ServerTls>, ProtocolError> {
        let Some(m) = m else { return Ok(None) };
        let agent_connection = match pb::AgentConnection::try_from(m.agent_connection) {
            Ok(pb::AgentConnection::Socket) => AgentConnection::Socket,
            Ok(pb::AgentConnection::Tls) => AgentConnection::Tls,
            Ok(pb::AgentConnection::Plain) => AgentConnection::Plain,
            Ok(pb::AgentConnection::Unspecified) => {
                return Err(ProtocolError::Missing("mysql.tls.agent_connection"));
            }
            Err(_) => {
                return Err(ProtocolError::invalid(
                    "mysql.tls.agent_connection",
                    format!("unknown value {}", m.agent_connection),
                ));
            }
        };
        Ok(Some(ServerTls {
            ca: m.ca,
            require_secure_transport: m.require_secure_transport,
            agent_connection,
        }))
    }
}

impl From<ServerTls> for pb::MysqlTlsState {
    fn from(t: ServerTls) -> Self {
        pb::MysqlTlsState {
            ca: t.ca,
            require_secure_transport: t.require_secure_transport,
            agent_connection: (match t.agent_connection {
                AgentConnection::Socket => pb::AgentConnection::Socket,
                AgentConnection::Tls => pb::AgentConnection::Tls,
                AgentConnection::Plain => pb::AgentConnection::Plain,
            }) as i32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_round_trip_and_bad_ones_name_the_choices() {
        for m in [MysqlTlsMode::Required, MysqlTlsMode::Off] {
            assert_eq!(MysqlTlsMode::parse(m.as_str()), Ok(m));
        }
        let e = MysqlTlsMode::parse("yes").unwrap_err();
        assert!(e.contains("required or off"), "{e}");
    }

    #[test]
    fn link_tls_round_trips_and_refuses_unknown_values() {
        for v in [
            None,
            Some(LinkTls::Off),
            Some(LinkTls::Encrypted),
            Some(LinkTls::Verified),
        ] {
            assert_eq!(LinkTls::from_pb(LinkTls::to_pb(v)).unwrap(), v);
        }
        assert!(LinkTls::from_pb(99).is_err());
    }

    #[test]
    fn server_tls_round_trips_and_needs_the_connection_kind() {
        for c in [
            AgentConnection::Socket,
            AgentConnection::Tls,
            AgentConnection::Plain,
        ] {
            let t = ServerTls {
                ca: "/etc/mysql/ca.pem".into(),
                require_secure_transport: true,
                agent_connection: c,
            };
            assert_eq!(
                ServerTls::from_pb(Some(pb::MysqlTlsState::from(t.clone()))).unwrap(),
                Some(t)
            );
        }
        assert_eq!(ServerTls::from_pb(None).unwrap(), None);
        assert!(ServerTls::from_pb(Some(pb::MysqlTlsState::default())).is_err());
        let bad = pb::MysqlTlsState {
            agent_connection: 42,
            ..Default::default()
        };
        assert!(ServerTls::from_pb(Some(bad)).is_err());
    }
}
