//! The witnesses of a failover test: a writer that records every write
//! the database acknowledged, and a sampler that watches how many members
//! accept writes.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dbfleet_cli::sandbox::Fleet;
use dbfleet_cli::sandbox::mariadb::{APP_DATABASE, APP_USER, Server};
use futures::future::join_all;
use mysql_async::Conn;
use mysql_async::prelude::Queryable;

/// Table the writer inserts into.
pub const TABLE: &str = "writer_log";

async fn connect(s: &Server, password: &str, timeout: Duration) -> Option<Conn> {
    let opts = s.tcp_opts(APP_USER, password).db_name(Some(APP_DATABASE));
    tokio::time::timeout(timeout, Conn::new(opts))
        .await
        .ok()?
        .ok()
}

/// Inserts increasing ids into [`TABLE`] on whichever member takes them,
/// recording each id whose INSERT (autocommit) was acknowledged.
#[derive(Debug)]
pub struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<u64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    /// Creates the table on `primary` and starts writing.
    pub async fn start(fleet: &Fleet, primary: &str) -> Writer {
        let cluster = &fleet.server(primary).expect("primary").cluster;
        // A failover moves the writes within the primary's cluster only.
        let servers: Vec<_> = fleet
            .servers
            .iter()
            .filter(|s| s.cluster == *cluster)
            .cloned()
            .collect();
        Writer::start_on(servers, fleet.credentials.app.clone(), primary).await
    }

    /// [`Writer::start`] on `servers` (one cluster) with the application
    /// account's `password`, for fleets not built by the sandbox.
    pub async fn start_on(servers: Vec<Server>, password: String, primary: &str) -> Writer {
        let p = servers.iter().find(|s| s.host == primary).expect("primary");
        let mut c = connect(p, &password, Duration::from_secs(5))
            .await
            .expect("connect");
        c.query_drop(format!(
            "CREATE TABLE IF NOT EXISTS {TABLE} (id BIGINT PRIMARY KEY)"
        ))
        .await
        .expect("create table");
        drop(c);
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let (s, a) = (stop.clone(), acked.clone());
        let start = servers.iter().position(|x| x.host == primary).unwrap_or(0);
        let task = tokio::spawn(async move {
            let mut target = start;
            let mut conn: Option<Conn> = None;
            let mut id = 0u64;
            while !s.load(Ordering::Relaxed) {
                if conn.is_none() {
                    conn = connect(&servers[target], &password, Duration::from_millis(500)).await;
                    if conn.is_none() {
                        target = (target + 1) % servers.len();
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                }
                id += 1;
                let c = conn.as_mut().expect("set above");
                let r = tokio::time::timeout(
                    Duration::from_secs(2),
                    c.query_drop(format!("INSERT INTO {TABLE} (id) VALUES ({id})")),
                )
                .await;
                match r {
                    Ok(Ok(())) => a.lock().unwrap().push(id),
                    _ => {
                        // Refused (read-only), failed or hung: not
                        // acknowledged; try the next member.
                        conn = None;
                        target = (target + 1) % servers.len();
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        Writer { stop, acked, task }
    }

    /// How many writes were acknowledged so far.
    pub fn acked_count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Stops and returns the acknowledged ids.
    pub async fn stop(self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.acked.lock().unwrap().clone()
    }
}

/// The ids present in [`TABLE`] on `host`.
pub async fn ids_on(fleet: &Fleet, host: &str) -> BTreeSet<u64> {
    ids_on_server(fleet.server(host).expect("host"), &fleet.credentials.app).await
}

/// The ids present in [`TABLE`] on `s`, read with the application
/// account's `password`, on new sessions while the fleet ends them
/// ([`crate::on_new_sessions`]).
pub async fn ids_on_server(s: &Server, password: &str) -> BTreeSet<u64> {
    let what = format!("read the writer's table on {}", s.host);
    crate::on_new_sessions(&what, || async move {
        let mut c = connect(s, password, Duration::from_secs(5))
            .await
            .expect("connect for the check");
        let ids: Vec<u64> = c.query(format!("SELECT id FROM {TABLE}")).await?;
        Ok(ids.into_iter().collect())
    })
    .await
}

/// Samples every member's `read_only` at once, every 50 ms (well within
/// the 100 ms the tests promise), and keeps the largest number of members
/// of one cluster seen writable in one sample.
#[derive(Debug)]
pub struct Sampler {
    stop: Arc<AtomicBool>,
    worst: Arc<Mutex<(usize, Vec<String>)>>,
    samples: Arc<Mutex<u64>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    /// Starts sampling.
    pub fn start(fleet: &Fleet) -> Sampler {
        Sampler::start_on(fleet.servers.clone(), fleet.credentials.app.clone())
    }

    /// [`Sampler::start`] on `servers` with the application account's
    /// `password`, for fleets not built by the sandbox.
    pub fn start_on(servers: Vec<Server>, password: String) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let worst = Arc::new(Mutex::new((0usize, Vec::new())));
        let samples = Arc::new(Mutex::new(0u64));
        let (s, w, n) = (stop.clone(), worst.clone(), samples.clone());
        let task = tokio::spawn(async move {
            let mut conns: Vec<Option<Conn>> = servers.iter().map(|_| None).collect();
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            while !s.load(Ordering::Relaxed) {
                tick.tick().await;
                let probes = conns.iter_mut().zip(&servers).map(|(slot, server)| {
                    let password = password.clone();
                    async move {
                        if slot.is_none() {
                            *slot = connect(server, &password, Duration::from_millis(100)).await;
                        }
                        let c = slot.as_mut()?;
                        let r = tokio::time::timeout(
                            Duration::from_millis(200),
                            c.query_first::<u8, _>("SELECT @@read_only"),
                        )
                        .await;
                        match r {
                            Ok(Ok(Some(ro))) => {
                                Some((server.cluster.clone(), server.host.clone(), ro == 0))
                            }
                            _ => {
                                *slot = None;
                                None
                            }
                        }
                    }
                });
                let seen: Vec<(String, String, bool)> =
                    join_all(probes).await.into_iter().flatten().collect();
                // Writable members per cluster: each cluster may have one.
                let mut by_cluster: HashMap<String, Vec<String>> = HashMap::new();
                for (cluster, host, writable) in seen {
                    if writable {
                        by_cluster.entry(cluster).or_default().push(host);
                    }
                }
                *n.lock().unwrap() += 1;
                let mut worst = w.lock().unwrap();
                for writable in by_cluster.into_values() {
                    if writable.len() > worst.0 {
                        *worst = (writable.len(), writable);
                    }
                }
            }
        });
        Sampler {
            stop,
            worst,
            samples,
            task,
        }
    }

    /// Stops; returns the most members seen writable at once (and which)
    /// and the number of samples taken.
    pub async fn stop(self) -> ((usize, Vec<String>), u64) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let worst = self.worst.lock().unwrap().clone();
        let n = *self.samples.lock().unwrap();
        (worst, n)
    }
}
