//! Every peer is bounded, with real processes: thousands of sockets that
//! connect and say nothing, slowloris clients on `/metrics`, a flood of
//! streams from one authenticated agent and an oversized report. Through
//! all of it the fleet keeps reporting, voting and failing over, and the
//! servers close what the attackers hold.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use dbfleet_common::identity::Role;
use dbfleet_common::tls::{self, TlsContext};
use dbfleet_integration_tests::{
    PATIENCE, TestFleet, scrape, scraper_certificate, sole_active, term,
};
use dbfleet_proto::pb;
use dbfleet_proto::pb::report_service_client::ReportServiceClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Opens up to `n` TCP connections to `to` from `from` that never send a
/// byte; returns those the kernel completed.
async fn stall(from: IpAddr, to: &str, n: usize) -> Vec<TcpStream> {
    let to: SocketAddr = to.parse().unwrap();
    let mut held = Vec::new();
    for _ in 0..n {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(from, 0)).unwrap();
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(2), socket.connect(to)).await {
            held.push(s);
        }
    }
    held
}

/// A slowloris on `to` from `from`: a request line, then a header line now
/// and then, never the end of the headers. Returns when the server closed
/// the connection.
async fn slowloris(from: IpAddr, to: SocketAddr) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let Ok(mut s) = socket.connect(to).await else {
        return;
    };
    if s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .is_err()
    {
        return;
    }
    let mut buf = [0u8; 256];
    loop {
        tokio::select! {
            r = s.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                if s.write_all(b"X-Slow: 1\r\n").await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Waits until every socket in `held` is closed by the server.
async fn all_closed(held: Vec<TcpStream>, what: &str) {
    let n = held.len();
    let waits = held.into_iter().map(|mut s| async move {
        let mut buf = [0u8; 64];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });
    tokio::time::timeout(PATIENCE, futures::future::join_all(waits))
        .await
        .unwrap_or_else(|_| panic!("{what}: not all of {n} stalled sockets were closed"));
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_sockets_and_slowloris_leave_the_fleet_reporting_voting_and_failing_over() {
    let mut fleet = TestFleet::start_active(2, 1).await;
    let attacker: IpAddr = fleet.slot.ip(250).parse().unwrap();
    let c = fleet.coordinators();
    let lease_term = term(&sole_active(&c).unwrap()["epoch"]);
    let db1 = fleet.info.members[0].clone();
    assert_eq!(db1.host, "db1");
    let coordinator = fleet.info.coordinators[0].clone();

    // 2,000 silent sockets against the primary's agent and against the
    // coordinator, and slowloris clients on both metrics endpoints.
    let on_agent = stall(attacker, &db1.agent_address, 2000).await;
    let on_coordinator = stall(attacker, &coordinator.address, 2000).await;
    assert!(!on_agent.is_empty() && !on_coordinator.is_empty());
    // Closed at once beyond the caps: neither process holds them all.
    for (process, held) in [
        ("agent-db1", on_agent.len()),
        (
            format!("coordinator-{}", coordinator.id).as_str(),
            on_coordinator.len(),
        ),
    ] {
        let pid = fleet.pid(process).unwrap();
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count();
        assert!(
            fds < held,
            "{process} holds {fds} file descriptors for the attacker's {held} sockets"
        );
    }
    let mut slow = Vec::new();
    for to in [&db1.metrics_address, &coordinator.metrics_address] {
        let to: SocketAddr = to.parse().unwrap();
        for _ in 0..50 {
            slow.push(tokio::spawn(slowloris(attacker, to)));
        }
    }

    // Meanwhile: scrapes answer, and a kill -9 of the primary's mysqld is
    // failed over under the same lease.
    scrape(&db1.metrics_address);
    scrape(&coordinator.metrics_address);
    fleet.kill("mariadbd-db1");
    let view = fleet
        .wait_until("a new primary while the sockets stall", |c| {
            !c.primary.is_empty() && c.primary != "db1"
        })
        .await;
    fleet
        .sql(&view.primary, "CREATE DATABASE IF NOT EXISTS after_flood")
        .await
        .unwrap();
    let c = fleet.coordinators();
    assert_eq!(
        term(&sole_active(&c).unwrap()["epoch"]),
        lease_term,
        "the coordinator kept its lease: {c:#?}"
    );

    // What the attacker holds is closed by the servers: handshakes time
    // out, headers that never end time out.
    all_closed(on_agent, "agent").await;
    all_closed(on_coordinator, "coordinator").await;
    tokio::time::timeout(PATIENCE, futures::future::join_all(slow))
        .await
        .expect("every slowloris connection was closed");

    // Thousands of refusals, a few log lines.
    let logs = fleet.all_logs();
    let lines = logs
        .lines()
        .filter(|l| l.contains("connections closed at once"))
        .count();
    assert!(
        (1..100).contains(&lines),
        "{lines} lines about refused connections"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_flood_and_an_oversized_report_from_an_agent_take_nothing_from_anyone() {
    let fleet = TestFleet::start_active(1, 1).await;
    let c = fleet.coordinators();
    let lease_term = term(&sole_active(&c).unwrap()["epoch"]);
    let coordinator = fleet.info.coordinators[0].address.clone();
    // An agent certificate of the fleet's CA, as a compromised host holds.
    let paths = scraper_certificate(&fleet.dir, Role::Agent, "db9");
    let ctx = TlsContext::load(&paths).unwrap();
    let channel = tls::channel(ctx, &coordinator, Role::Coordinator, Duration::from_secs(3));

    // 20,000 report streams on one connection, none of them sending.
    let mut floods = Vec::new();
    for _ in 0..20_000 {
        let mut client = ReportServiceClient::new(channel.clone());
        floods.push(tokio::spawn(async move {
            let _ = client
                .stream_reports(futures::stream::pending::<pb::AgentReport>())
                .await;
        }));
    }
    // An oversized report: a 3 MB address.
    let huge = pb::AgentReport {
        host: "db9".into(),
        cluster: "main".into(),
        agent_instance: "x".into(),
        mysql_address: format!("{}:3306", "$".repeat(3 << 20)),
        ..Default::default()
    };
    let mut client = ReportServiceClient::new(tls::channel(
        TlsContext::load(&paths).unwrap(),
        &coordinator,
        Role::Coordinator,
        Duration::from_secs(3),
    ));
    let refused = async {
        let mut acks = client
            .stream_reports(tokio_stream::iter(vec![huge]))
            .await?
            .into_inner();
        acks.message().await
    }
    .await;
    let e = refused.expect_err("a 3 MB report is refused");
    assert!(
        e.message().contains("too large") || e.code() == tonic::Code::ResourceExhausted,
        "{e:?}"
    );

    // Status answers, the lease is untouched, nothing of the refused
    // input is in the logs.
    let out = fleet.cli(&["status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = fleet.coordinators();
    assert_eq!(
        term(&sole_active(&c).unwrap()["epoch"]),
        lease_term,
        "{c:#?}"
    );
    assert!(
        !fleet.all_logs().contains(&"$".repeat(1000)),
        "the refused input was logged"
    );
    for f in floods {
        f.abort();
    }
}
