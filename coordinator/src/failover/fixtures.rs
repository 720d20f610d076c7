//! What the failover step tests share: a cluster of MariaDB members fed
//! with reports (a primary and replicas at chosen positions), a
//! coordinator that holds the lease with an in-memory store, and agents
//! answering from a script. No server, no network: a whole operation runs
//! in milliseconds.

use std::sync::Arc;

use dbfleet_lease::Epoch;
use dbfleet_proto::model::{
    AgentState, Flavor, GtidState, IoThread, MysqlAddress, MysqlObservation, Name, Replication,
    Report, SEMI_SYNC_NO_FALLBACK_MS, SemiSync, ServerState,
};
use dbfleet_proto::pb;

use super::Failovers;
use crate::agent_commands::Scripted;
use crate::config::FailoverConfig;
use crate::fleet::Fleet;
use crate::membership::Admission;
use crate::store::{SledStore, Store};

/// How a member's agent last saw it.
#[derive(Debug, Clone, Copy)]
pub(super) enum Seen {
    /// The writable primary at `0-1-POS`.
    Primary(u64),
    /// A replica of `db1` at `0-1-POS`, its IO thread lost (it confirms
    /// the primary's death).
    LostReplica(u64),
    /// The agent reports mysqld unreachable.
    Down,
}

/// `host`'s MySQL address: `db2` is 127.0.0.2:3306.
pub(super) fn address(host: &str) -> String {
    format!("127.0.0.{}:3306", &host[2..])
}

/// A MariaDB server as `seen` describes it, lossless semi-sync.
pub(super) fn server(host: &str, seen: Seen) -> Option<ServerState> {
    let (pos, replica) = match seen {
        Seen::Primary(pos) => (pos, false),
        Seen::LostReplica(pos) => (pos, true),
        Seen::Down => return None,
    };
    let gtid = format!("0-1-{pos}");
    Some(ServerState {
        tls: None,
        version: "10.11.19-MariaDB".into(),
        flavor: Flavor::MariaDb,
        server_id: host[2..].parse().expect("dbN"),
        server_uuid: String::new(),
        read_only: replica,
        super_read_only: false,
        gtid: GtidState {
            executed: gtid.clone(),
            current_pos: gtid.clone(),
            binlog_pos: gtid.clone(),
            slave_pos: if replica { gtid.clone() } else { String::new() },
        },
        replication: replica.then(|| Replication {
            tls: None,
            source: MysqlAddress::parse(&address("db1")).expect("address"),
            io_thread: IoThread::Connecting,
            sql_running: true,
            last_io_error: "Connection refused".into(),
            last_sql_error: String::new(),
            seconds_behind: None,
            auto_position: true,
            received_gtid: gtid.clone(),
            heartbeat_ms: Some(1000),
            net_timeout_ms: Some(4000),
        }),
        semi_sync: SemiSync {
            source_enabled: !replica,
            source_active: !replica,
            replica_enabled: true,
            replica_active: false,
            timeout_ms: SEMI_SYNC_NO_FALLBACK_MS,
            wait_no_replica: true,
            clients: 0,
        },
        binlog: Default::default(),
        replicas_connected: 0,
        replica_server_ids: vec![],
    })
}

/// A successful reply carrying `state`.
pub(super) fn reply(state: Option<ServerState>, detail: &str) -> Result<pb::CommandReply, String> {
    Ok(pb::CommandReply {
        promised: None,
        mysql: state.map(Into::into),
        fence_method: pb::FenceMethod::Stopped as i32,
        detail: detail.into(),
    })
}

/// A cluster `main` with an active coordinator and scripted agents.
pub(super) struct Scene {
    /// Observed and desired state.
    pub(super) fleet: Arc<Fleet>,
    /// The agents' script and what was sent.
    pub(super) agents: Arc<Scripted>,
    /// The machinery under test.
    pub(super) failovers: Arc<Failovers>,
    /// The epoch this coordinator holds.
    pub(super) epoch: Epoch,
}

impl Scene {
    /// `members` reporting as seen, with `cfg`.
    pub(super) async fn new(members: &[(&str, Seen)], cfg: FailoverConfig) -> Scene {
        let store: Arc<dyn Store> = Arc::new(SledStore::temporary().expect("in-memory sled"));
        let fleet = crate::testing::active_fleet(store, Admission::FirstReport);
        let agents = Arc::new(Scripted::default());
        let failovers = Failovers::new(fleet.clone(), agents.clone(), cfg);
        let epoch = fleet.ha().write_epoch().expect("the lease is held");
        let scene = Scene {
            fleet,
            agents,
            failovers,
            epoch,
        };
        for (host, seen) in members {
            scene.report(host, *seen).await;
        }
        scene
    }

    /// `host`'s agent reports `seen`.
    pub(super) async fn report(&self, host: &str, seen: Seen) {
        self.report_state(host, server(host, seen)).await;
    }

    /// This coordinator notes every member's current state, as its loop
    /// does each tick (what it last saw of a server that then died).
    pub(super) fn remember(&self) {
        self.failovers
            .remember_semi_sync(&self.fleet.members("main"));
    }

    /// `host`'s agent reports `state` (`None`: mysqld unreachable).
    pub(super) async fn report_state(&self, host: &str, state: Option<ServerState>) {
        let mysql = match state {
            Some(s) => MysqlObservation::Reachable(Box::new(s)),
            None => MysqlObservation::Unreachable {
                error: "Connection refused".into(),
            },
        };
        let report = Report {
            host: Name::parse(host).expect("name"),
            cluster: Name::parse("main").expect("name"),
            agent_instance: format!("{host}-1"),
            sequence: 1,
            observed_at_unix_ms: 0,
            agent_version: "test".into(),
            mysql_address: MysqlAddress::parse(&address(host)).expect("address"),
            mysql,
            agent: AgentState {
                address: format!("127.0.0.{}:7100", &host[2..]),
                report_interval_ms: 1000,
                ..AgentState::default()
            },
        };
        self.fleet
            .accept_report(host, report)
            .await
            .expect("report accepted");
    }
}
