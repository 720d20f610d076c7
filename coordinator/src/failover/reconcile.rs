//! The active's loop over every cluster: resume a journaled operation,
//! detect a dead primary and fail over when policy allows, and bring
//! observed state back to desired state (a returned member rejoins the
//! primary or is marked for rebuild; a primary that came back read-only
//! after a crash nobody failed over is made writable again).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use dbfleet_lease::Epoch;
use dbfleet_proto::model::{
    ConfigProblemKind, IoThread, MysqlAddress, Replication, SEMI_SYNC_NO_FALLBACK_MS, SemiSync,
    SemiSyncMode, ServerState,
};
use dbfleet_proto::mysql_tls::LinkTls;
use dbfleet_proto::pb;
use dbfleet_proto::pb::command_request::Command;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Failovers;
use super::detect::{self, DownPath, Health, MemberSeen};
use super::journal::{Event, Operation, OperationKind, Step};
use super::positions;
use super::procedure::now_unix_ms;
use crate::fleet::{MemberState, ReplicaTuning};
use crate::metrics::Detection;
use crate::store::{ClusterControl, ClusterRecord};
use dbfleet_proto::model::Flavor;

/// How often the loop runs.
pub(crate) const INTERVAL: Duration = Duration::from_millis(200);

/// Runs the loop until `cancel`.
pub(crate) async fn run(f: Arc<Failovers>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(INTERVAL) => {}
        }
        f.tick().await;
    }
}

/// How a replica's settings differ from the cluster's (its failure
/// detection, and verified TLS when the policy requires it), in words;
/// `None` when they match or the agent does not report them. MariaDB
/// keeps the heartbeat in milliseconds and the net timeout in whole
/// seconds (at least one). A link with more TLS than the policy asks is
/// left alone.
fn untuned(r: &Replication, tuning: &ReplicaTuning) -> Option<String> {
    let want_hb = tuning.heartbeat.as_millis() as u64;
    let want_net = tuning.net_timeout.as_secs().max(1) * 1000;
    let mut diffs = Vec::new();
    if let Some(hb) = r.heartbeat_ms.filter(|hb| *hb != want_hb) {
        diffs.push(format!("heartbeat {hb} ms (wanted {want_hb} ms)"));
    }
    if let Some(net) = r.net_timeout_ms.filter(|n| *n != want_net) {
        diffs.push(format!("net timeout {net} ms (wanted {want_net} ms)"));
    }
    if tuning.tls()
        && let Some(tls) = r.tls.filter(|t| *t != LinkTls::Verified)
    {
        diffs.push(format!(
            "replication over {} (wanted verified TLS)",
            tls.describe()
        ));
    }
    (!diffs.is_empty()).then(|| diffs.join(", "))
}

/// Whether the repair loop makes `primary` (read-only `ps`) writable
/// again: a primary that came back read-only with no failover under way
/// (a restarted mysqld the agent kept read-only). Only the primary desired
/// state names: right after a switchover the old primary, read-only and
/// not yet repointed, is still what stale reports of the replicas point
/// at, and making it writable would drop what the new one committed.
/// Never with a failover held, or another member writable.
fn restores(
    primary: &str,
    desired: Option<&str>,
    ps: &ServerState,
    others_writable: bool,
    held: bool,
) -> bool {
    !ps.writable()
        && ps.replication.is_none()
        && !others_writable
        && !held
        && desired.is_none_or(|d| d == primary)
}

/// Whether `s` is semi-sync as `mode` asks of a member (`primary`: the
/// source side too). Under lossless every member also acknowledges and
/// carries the no-fallback settings, so whichever is promoted next waits
/// losslessly from its first commit.
fn semi_sync_as_asked(mode: SemiSyncMode, s: &SemiSync, primary: bool) -> bool {
    match mode {
        SemiSyncMode::Lossless => {
            s.replica_enabled
                && s.wait_no_replica
                && s.timeout_ms >= SEMI_SYNC_NO_FALLBACK_MS
                && s.source_enabled == primary
        }
        SemiSyncMode::Off => !s.source_enabled && !s.replica_enabled,
    }
}

/// The members to set, each with whether it is the primary, so semi-sync
/// is as `mode` asks: `members` are the primary's (host, state, whether
/// it is the primary) as reported. Lossless: the replicas acknowledge
/// before the primary waits, and the primary waits only once one of them
/// is acknowledging; off: the primary stops waiting before the replicas
/// stop acknowledging. Either way a commit never waits for acks
/// nobody can send, and no commit is acknowledged unreplicated while
/// lossless is asked.
fn semi_sync_changes(
    mode: SemiSyncMode,
    members: &[(&str, &SemiSync, bool)],
) -> Vec<(String, bool)> {
    let off = |primary: bool| {
        members
            .iter()
            .filter(|(_, s, p)| *p == primary && !semi_sync_as_asked(mode, s, *p))
            .map(|(h, _, p)| (h.to_string(), *p))
            .collect::<Vec<_>>()
    };
    let (replicas, primary) = (off(false), off(true));
    // The primary waits only once a replica really acknowledges (its IO
    // thread connected with semi-sync on): with none, every commit would
    // block.
    let acknowledged = members.iter().any(|(_, s, p)| !p && s.replica_active);
    match mode {
        SemiSyncMode::Lossless if !replicas.is_empty() => replicas,
        SemiSyncMode::Lossless if acknowledged => primary,
        SemiSyncMode::Lossless => Vec::new(),
        SemiSyncMode::Off if !primary.is_empty() => primary,
        SemiSyncMode::Off => replicas,
    }
}

/// What detection found on one cluster this tick.
enum Detected {
    /// The primary answers its agent (or there is no primary to judge).
    Alive,
    /// The primary is down from our side, but the rule does not hold
    /// (a replica still receives from it, or too few confirm): no
    /// failover, though it counts for the breaker.
    Unconfirmed,
    /// The primary is dead under the rule; `Some` once that has held for
    /// its window: the primary, the path and the evidence.
    Down(Option<(String, DownPath, Vec<String>)>),
}

impl Failovers {
    pub(super) fn remember_semi_sync(&self, members: &[MemberState]) {
        let mut seen = crate::ha::relock(&self.last_seen);
        for m in members {
            if let Some(s) = m.server() {
                seen.insert(m.host.clone(), s.clone());
            }
        }
    }

    /// Whether `m`, left behind by an operation, is provably apart from
    /// `primary` (at `address`, among `members`): [`ClusterControl::apart`] on `m`'s fresh
    /// report, or its server id and the replicas registered with the
    /// primary as last seen.
    pub(super) fn apart(
        &self,
        control: &ClusterControl,
        members: &[MemberState],
        m: &MemberState,
        primary: &str,
        address: Option<&MysqlAddress>,
    ) -> bool {
        if !control.rejoining.contains_key(&m.host) {
            return false;
        }
        let fresh_follows = m.server().map(|_| address.is_some_and(|a| m.follows(a)));
        let server_id = m
            .server()
            .map(|s| s.server_id)
            .or_else(|| self.last_server(&m.host).map(|s| s.server_id));
        let registered = members
            .iter()
            .find(|p| p.host == primary)
            .and_then(|p| p.server().map(|s| s.replica_server_ids.clone()))
            .or_else(|| self.last_server(primary).map(|s| s.replica_server_ids));
        control.apart(&m.host, fresh_follows, server_id, registered.as_deref())
    }

    /// The holistic rule on one cluster now.
    pub(crate) fn assess(&self, cluster: &str) -> Option<(String, Health)> {
        let primary = self.primary_of(cluster)?;
        let control = self.fleet.cluster_record(cluster).control;
        self.assess_members(primary, &self.fleet.members(cluster), &control)
    }

    /// The holistic rule on `members` with `primary`.
    fn assess_members(
        &self,
        primary: String,
        members: &[MemberState],
        control: &ClusterControl,
    ) -> Option<(String, Health)> {
        let address =
            MysqlAddress::parse(&members.iter().find(|m| m.host == primary)?.mysql_address).ok()?;
        let now = Instant::now();
        let seen: Vec<MemberSeen<'_>> = members
            .iter()
            .map(|m| MemberSeen {
                host: &m.host,
                reporting: m.reporting,
                server: m.server(),
                mysql_error: m.mysql_error(),
                in_service: !control.out_of_service(&m.host),
                apart: self.apart(control, members, m, &primary, Some(&address)),
                silent_for: m.received_at.map(|at| now.saturating_duration_since(at)),
                report_interval: m.report.as_ref().map_or(Duration::from_secs(1), |r| {
                    Duration::from_millis(r.agent.report_interval_ms)
                }),
            })
            .collect();
        Some((primary.clone(), detect::assess(&primary, &address, &seen)))
    }

    pub(super) async fn tick(self: &Arc<Self>) {
        // One read of each cluster's members and primary per tick.
        let clusters: Vec<(String, Vec<MemberState>, Option<String>)> = self
            .fleet
            .cluster_names()
            .into_iter()
            .map(|c| {
                let members = self.fleet.members(&c);
                let primary = self.primary_of(&c);
                (c, members, primary)
            })
            .collect();
        for (_, members, _) in &clusters {
            self.remember_semi_sync(members);
        }
        let Some(epoch) = self.fleet.ha().automatic_epoch() else {
            *crate::ha::relock(&self.active_since) = None;
            crate::ha::relock(&self.down_since).clear();
            self.breaker_on.store(false, Ordering::Relaxed);
            return;
        };
        let since = {
            let mut a = crate::ha::relock(&self.active_since);
            match &*a {
                Some((e, at)) if *e == epoch => *at,
                _ => {
                    *a = Some((epoch.clone(), Instant::now()));
                    Instant::now()
                }
            }
        };
        // Every cluster whose primary is down from our side now counts for
        // the breaker: dead under the rule or not (yet), inside its window
        // or past it. Primaries that die together are seen a report apart,
        // or confirmed by their replicas a net timeout apart, and the first
        // must not be failed over before the others are counted.
        let mut looks_dead = 0;
        let mut dead = Vec::new();
        for (c, members, primary) in &clusters {
            let rec = self.fleet.cluster_record(c);
            if let Some(op) = rec.control.operation.clone() {
                self.resume(op, &epoch).await;
                continue;
            }
            // Neither detection nor repair on reports from before the last
            // operation here ended: they show the old roles.
            if !self.settled(c, members) {
                continue;
            }
            match self.detect(c, &rec.control, primary.as_deref(), members, since) {
                Detected::Alive => {}
                // No repairs either: they act on the primary's last report,
                // which a late agent's may still count as fresh (a thaw on
                // it would restart replicas a blocked failover froze).
                Detected::Unconfirmed | Detected::Down(None) => {
                    looks_dead += 1;
                    continue;
                }
                Detected::Down(Some((primary, path, evidence))) => {
                    looks_dead += 1;
                    dead.push((c.clone(), primary, path, evidence));
                    continue;
                }
            }
            if !rec.control.maintenance {
                self.repair(c, primary.as_deref(), members, &rec, &epoch)
                    .await;
            }
        }
        let tripped = looks_dead > self.cfg.breaker_max_dead_clusters;
        if self.breaker_on.swap(tripped, Ordering::Relaxed) != tripped {
            if tripped {
                warn!(
                    looks_dead,
                    max = self.cfg.breaker_max_dead_clusters,
                    "breaker: too many clusters look dead at once; no automatic failover"
                );
            } else {
                info!(
                    looks_dead,
                    "breaker released: automatic failover allowed again"
                );
            }
        }
        if tripped {
            for (c, primary, _, evidence) in &dead {
                self.decided(
                    Detection::Breaker,
                    c,
                    &epoch,
                    Event::new(
                        "failover-breaker",
                        primary,
                        format!(
                            "{looks_dead} clusters look dead at once (more than {}): automatic failover held; check the coordinator's network",
                            self.cfg.breaker_max_dead_clusters
                        ),
                        &epoch,
                        evidence.clone(),
                    ),
                )
                .await;
            }
            return;
        }
        for (c, primary, path, evidence) in dead {
            self.automatic(&c, &primary, path, evidence, &epoch).await;
        }
    }

    /// Notes each member's last report as an operation on `cluster` ends;
    /// a primary that looks down afterwards starts a new window.
    pub(super) fn mark_ended(&self, cluster: &str) {
        crate::ha::relock(&self.down_since).remove(cluster);
        let seen = self
            .fleet
            .members(cluster)
            .into_iter()
            .filter_map(|m| {
                let r = m.report?;
                Some((m.host, (r.agent_instance, r.sequence)))
            })
            .collect();
        crate::ha::relock(&self.ended).insert(cluster.to_string(), seen);
    }

    /// Whether detection and repairs may act on `cluster`: every member
    /// reporting has sent two reports since the last operation here ended
    /// (or restarted, or stopped reporting). The first may have been made
    /// before the end and still show a replica not yet repointed or a new
    /// primary not yet writable: repairing on that undoes the operation,
    /// and detecting on it sees the old, dead primary still in charge.
    fn settled(&self, cluster: &str, members: &[MemberState]) -> bool {
        let mut ended = crate::ha::relock(&self.ended);
        let Some(seen) = ended.get(cluster) else {
            return true;
        };
        let settled =
            members
                .iter()
                .filter(|m| m.reporting)
                .all(|m| match (seen.get(&m.host), &m.report) {
                    (Some((instance, seq)), Some(r)) => {
                        r.agent_instance != *instance || r.sequence >= seq + 2
                    }
                    _ => true,
                });
        if settled {
            ended.remove(cluster);
        }
        settled
    }

    /// Whether the primary of `cluster` is dead under the full rule, and
    /// whether that has held for its window with fresh observation since
    /// we became active.
    fn detect(
        &self,
        cluster: &str,
        control: &ClusterControl,
        primary: Option<&str>,
        members: &[MemberState],
        active_since: Instant,
    ) -> Detected {
        let Some((primary, health)) =
            primary.and_then(|p| self.assess_members(p.to_string(), members, control))
        else {
            return Detected::Alive;
        };
        let mut down = crate::ha::relock(&self.down_since);
        let (path, evidence) = match health {
            Health::Down { path, evidence } => (path, evidence),
            Health::Up => {
                down.remove(cluster);
                return Detected::Alive;
            }
            Health::UnreachablePrimary { .. } | Health::Unconfirmed { .. } => {
                down.remove(cluster);
                return Detected::Unconfirmed;
            }
        };
        let first_seen = *down.entry(cluster.to_string()).or_insert_with(Instant::now);
        // The host path's window runs from the primary's last report: the
        // two reports its agent missed are already part of the wait.
        let since = match path {
            DownPath::Host => members
                .iter()
                .find(|m| m.host == primary)
                .and_then(|m| m.received_at)
                .map_or(first_seen, |at| at.min(first_seen)),
            DownPath::Fast | DownPath::Slow => first_seen,
        };
        let window = match path {
            DownPath::Fast | DownPath::Host => self.cfg.fast_window,
            DownPath::Slow => self.cfg.slow_window,
        };
        // Fresh observation: every member reported since we took over, or
        // has been silent since then for the whole agent timeout.
        let fresh = members.iter().all(|m| {
            m.received_at.is_some_and(|at| at > active_since)
                || active_since.elapsed() > self.fleet.rules().agent_timeout
        });
        // Seen dead on two ticks at least: every cluster whose primary died
        // at the same moment looks dead (late) by then and is counted by
        // the breaker before any is failed over.
        let counted = first_seen.elapsed() >= 2 * INTERVAL;
        Detected::Down(
            (fresh && counted && since.elapsed() >= window).then_some((primary, path, evidence)),
        )
    }

    /// Records `e`, a decision about a dead primary, as [`Self::note_once`]
    /// does, and counts it when recorded: the same decision taken again on
    /// the next tick is neither recorded nor counted twice.
    async fn decided(&self, outcome: Detection, cluster: &str, epoch: &Epoch, e: Event) {
        if self.note_once(cluster, epoch, e).await {
            self.fleet.counters().detected(cluster, outcome);
        }
    }

    /// Records `e` unless the last event of the cluster is the same kind;
    /// says whether it did.
    async fn note_once(&self, cluster: &str, epoch: &Epoch, e: Event) -> bool {
        let rec = self.fleet.cluster_record(cluster);
        if rec.control.events.back().is_some_and(|l| l.kind == e.kind) {
            return false;
        }
        info!(cluster, kind = e.kind, detail = e.message, "event");
        self.record_event(cluster, epoch, e).await.is_ok()
    }

    async fn automatic(
        self: &Arc<Self>,
        cluster: &str,
        primary: &str,
        path: DownPath,
        evidence: Vec<String>,
        epoch: &Epoch,
    ) {
        let rec = self.fleet.cluster_record(cluster);
        let skip =
            |kind: &str, why: String| Event::new(kind, primary, why, epoch, evidence.clone());
        if rec.control.maintenance || !rec.control.auto_failover {
            let why = if rec.control.maintenance {
                "maintenance mode"
            } else {
                "automatic failover off"
            };
            self.decided(
                Detection::Skipped,
                cluster,
                epoch,
                skip(
                    "failover-skipped",
                    format!("{primary} is down; no failover: {why}"),
                ),
            )
            .await;
            return;
        }
        if let Some(held) = &rec.control.held {
            self.decided(Detection::Held, cluster, epoch, skip("failover-held", format!("{primary} is down; automatic failover is held ({held}); run `dbfleet ack --cluster {cluster}` or `dbfleet failover`"))).await;
            return;
        }
        if let Err(e) = Failovers::cluster_flavor(&self.fleet.members(cluster)) {
            self.decided(
                Detection::Skipped,
                cluster,
                epoch,
                skip("failover-skipped", e.to_string()),
            )
            .await;
            return;
        }
        let (recent, budget, window) = self.spent(&rec);
        if recent >= budget as usize {
            let why = format!(
                "anti-flap budget spent: {recent} automatic failover(s) within {}; run `dbfleet ack --cluster {cluster}` to re-arm",
                humantime::format_duration(window)
            );
            let e = skip("failover-held", format!("{primary} is down; {why}"));
            let held = self
                .fleet
                .update_cluster(cluster, epoch.clone(), move |r| {
                    r.control.held = Some(why);
                    r.control.record(e);
                    Ok(())
                })
                .await;
            // Counted once recorded: a failed write is decided again next tick.
            if held.is_ok() {
                self.fleet.counters().detected(cluster, Detection::Budget);
            }
            return;
        }
        let op = Operation {
            automatic: true,
            evidence,
            ..Operation::new(
                Failovers::new_id(cluster, OperationKind::Failover, epoch),
                OperationKind::Failover,
                epoch.clone(),
                primary.to_string(),
                format!("{primary} detected dead ({})", path.describe()),
                now_unix_ms(),
            )
        };
        if let Err(e) = self.pre_hook(&op).await {
            warn!(cluster, error = %e, "automatic failover vetoed");
            let why = e.to_string();
            let held = self
                .fleet
                .update_cluster(cluster, epoch.clone(), move |r| {
                    r.control.held = Some(why);
                    Ok(())
                })
                .await;
            if held.is_ok() {
                self.fleet.counters().detected(cluster, Detection::Vetoed);
            }
            return;
        }
        info!(cluster, primary, "starting automatic failover");
        match self.start(op).await {
            Ok(_) => self.fleet.counters().detected(cluster, Detection::Failover),
            Err(e) => warn!(cluster, error = %e, "cannot start the failover"),
        }
        crate::ha::relock(&self.down_since).remove(cluster);
    }

    /// Takes over a journaled operation this process is not running.
    async fn resume(self: &Arc<Self>, mut op: Operation, epoch: &Epoch) {
        let cluster = op.id.split('/').next().unwrap_or_default().to_string();
        {
            let running = crate::ha::relock(&self.running);
            if running
                .get(&cluster)
                .is_some_and(|rx| rx.borrow().is_none())
            {
                return;
            }
        }
        if op.epoch != *epoch {
            info!(operation = op.id, step = ?op.step, from = %op.epoch, "resuming an operation journaled by an earlier active");
            op.epoch = epoch.clone();
            let o = op.clone();
            let e = Event::new(
                &format!("{}-resumed", op.kind.as_str()),
                &op.old_primary,
                format!("resumed at step {:?} under a new epoch", op.step),
                epoch,
                vec![],
            );
            if let Err(err) = self
                .fleet
                .update_cluster(&cluster, epoch.clone(), move |r| {
                    r.control.operation = Some(o);
                    r.control.record(e);
                    Ok(())
                })
                .await
            {
                warn!(operation = op.id, error = %err, "cannot journal the resumption; retrying");
                return;
            }
        }
        self.spawn(op, true);
    }

    /// One command outside an operation (repairs), under `epoch`.
    async fn repair_command(
        &self,
        cluster: &str,
        epoch: &Epoch,
        m: &MemberState,
        cmd: Command,
    ) -> Result<pb::CommandReply, String> {
        let op = Operation {
            automatic: true,
            step: Step::Repoint,
            ..Operation::new(
                format!("{cluster}/repair-{}", now_unix_ms()),
                OperationKind::Failover,
                epoch.clone(),
                String::new(),
                String::new(),
                now_unix_ms(),
            )
        };
        self.command(&op, m, cmd, Duration::from_secs(20)).await
    }

    fn may_try(&self, key: &str) -> bool {
        let mut last = crate::ha::relock(&self.repair_tried);
        match last.get(key) {
            Some(at) if at.elapsed() < Duration::from_secs(5) => false,
            _ => {
                last.insert(key.to_string(), Instant::now());
                true
            }
        }
    }

    /// Fences every member other than the writable `primary` that accepts
    /// writes (an old primary back on the network, say).
    async fn fence_stale(
        &self,
        cluster: &str,
        epoch: &Epoch,
        primary: &str,
        members: &[MemberState],
    ) {
        for m in members.iter().filter(|m| m.host != primary) {
            if !m.server().is_some_and(|s| s.writable())
                || !self.may_try(&format!("fence:{}", m.host))
            {
                continue;
            }
            warn!(
                cluster,
                host = m.host,
                primary,
                "a member other than the primary accepts writes; fencing it"
            );
            let r = self
                .repair_command(
                    cluster,
                    epoch,
                    m,
                    Command::Fence(pb::Fence {
                        kill_if_unresponsive: false,
                    }),
                )
                .await;
            let message = match &r {
                Ok(reply) => format!(
                    "{} accepted writes next to the primary {primary}; fenced: {}",
                    m.host, reply.detail
                ),
                Err(e) => format!(
                    "{} accepts writes next to the primary {primary}; fencing failed: {e}",
                    m.host
                ),
            };
            self.note_once(
                cluster,
                epoch,
                Event::new("stale-primary-fenced", &m.host, message, epoch, vec![]),
            )
            .await;
        }
    }

    /// Sets semi-sync on the members that are not as the cluster's policy
    /// asks (see [`semi_sync_changes`]); members out of service and
    /// replicas of another source are left alone.
    async fn keep_semi_sync(
        &self,
        cluster: &str,
        epoch: &Epoch,
        mode: SemiSyncMode,
        primary: &str,
        p_addr: &MysqlAddress,
        members: &[MemberState],
    ) {
        let rec = self.fleet.cluster_record(cluster);
        let states: Vec<(&str, &SemiSync, bool)> = members
            .iter()
            .filter(|m| !rec.control.out_of_service(&m.host))
            .filter_map(|m| {
                let s = m.server()?;
                let is_primary = m.host == primary;
                let follows = s
                    .replication
                    .as_ref()
                    .is_some_and(|r| r.source.same_endpoint(p_addr));
                (is_primary || follows).then_some((m.host.as_str(), &s.semi_sync, is_primary))
            })
            .collect();
        for (host, source) in semi_sync_changes(mode, &states) {
            let Some(m) = members.iter().find(|m| m.host == host) else {
                continue;
            };
            if !self.may_try(&format!("semi-sync:{host}")) {
                continue;
            }
            let cmd = Command::SetSemiSync(pb::SetSemiSync {
                lossless: mode == SemiSyncMode::Lossless,
                source,
            });
            match self.repair_command(cluster, epoch, m, cmd).await {
                Ok(reply) => {
                    let e = Event::new(
                        "semi-sync-set",
                        &host,
                        format!(
                            "{host}: {} (the cluster's policy is semi-sync {})",
                            reply.detail,
                            mode.as_str()
                        ),
                        epoch,
                        vec![],
                    );
                    info!(cluster, host, mode = mode.as_str(), "semi-sync set");
                    let _ = self.record_event(cluster, epoch, e).await;
                }
                Err(e) => warn!(cluster, host, error = e, "cannot set semi-sync"),
            }
        }
    }

    /// `host`, left behind by an operation, replicates from `primary` (or
    /// is about to be repointed to it): it counts for detection and
    /// failover again. Decided again inside the change: an operation that
    /// started since this tick's snapshot marks afresh, and is not undone.
    /// Says whether it was unmarked.
    async fn rejoined(&self, cluster: &str, epoch: &Epoch, host: &str, primary: &str) -> bool {
        let (h, p) = (host.to_string(), primary.to_string());
        match self
            .fleet
            .update_cluster(cluster, epoch.clone(), move |r| {
                let same = r.control.operation.is_none()
                    && r.last_primary.as_deref().is_none_or(|l| l == p);
                if same {
                    r.control.rejoining.remove(&h);
                }
                Ok(same)
            })
            .await
        {
            Ok(true) => {
                info!(
                    cluster,
                    host, "member follows the primary again; it counts for detection"
                );
                true
            }
            Ok(false) => false,
            Err(e) => {
                warn!(cluster, host, error = %e, "cannot record that the member rejoined");
                false
            }
        }
    }

    /// Marks `host` left behind again at `fork` (its repoint failed, so it
    /// follows nobody still), unless an operation started meanwhile.
    async fn left_behind_again(&self, cluster: &str, epoch: &Epoch, host: &str, fork: String) {
        let h = host.to_string();
        let again = self
            .fleet
            .update_cluster(cluster, epoch.clone(), move |r| {
                if r.control.operation.is_none() {
                    r.control.rejoining.insert(h, fork);
                }
                Ok(())
            })
            .await;
        if let Err(e) = again {
            warn!(cluster, host, error = %e, "cannot mark the member left behind again");
        }
    }

    /// Repoints a replica of the primary whose heartbeat or net timeout
    /// differs from the cluster's policy (set up by hand, say): with
    /// MariaDB's defaults a replica notices a dead primary only after a
    /// minute, and detection waits for every replica to notice.
    async fn tune(
        &self,
        cluster: &str,
        epoch: &Epoch,
        m: &MemberState,
        r: &Replication,
        source: &MysqlAddress,
    ) {
        // Replication an operator stopped stays stopped.
        if r.io_thread == IoThread::Stopped || !r.sql_running {
            return;
        }
        let tuning = self.fleet.replica_tuning(cluster);
        let Some(why) = untuned(r, &tuning) else {
            return;
        };
        if !self.may_try(&format!("tune:{}", m.host)) {
            return;
        }
        let cmd = self.repoint_to(cluster, source);
        match self.repair_command(cluster, epoch, m, cmd).await {
            Ok(_) => {
                let e = Event::new(
                    "replication-tuned",
                    &m.host,
                    format!(
                        "{} had {why}; replication restarted with the cluster's settings",
                        m.host
                    ),
                    epoch,
                    vec![],
                );
                info!(
                    cluster,
                    host = m.host,
                    why,
                    "replica's detection settings tuned"
                );
                let _ = self.record_event(cluster, epoch, e).await;
            }
            Err(e) => warn!(cluster, host = m.host, error = e, "cannot tune the replica"),
        }
    }

    /// Restarts the replicas a failover froze and did not complete, now
    /// that the primary they replicate from accepts writes again (it was
    /// never replaced). Replicas found replicating, or pointed elsewhere,
    /// just leave the list.
    async fn thaw(
        &self,
        cluster: &str,
        epoch: &Epoch,
        primary: &str,
        p_addr: &MysqlAddress,
        members: &[MemberState],
        rec: &ClusterRecord,
    ) {
        for host in &rec.control.frozen {
            let Some(m) = members.iter().find(|m| &m.host == host) else {
                continue;
            };
            let Some(s) = m.server() else { continue };
            let stopped_here = s.replication.as_ref().is_some_and(|r| {
                r.source.same_endpoint(p_addr) && r.io_thread == IoThread::Stopped
            });
            let message = if stopped_here {
                if !self.may_try(&format!("thaw:{host}")) {
                    continue;
                }
                match self
                    .repair_command(cluster, epoch, m, Command::Thaw(pb::Thaw {}))
                    .await
                {
                    Ok(_) => format!(
                        "{host} replicates from {primary} again: the failover that stopped it did not complete"
                    ),
                    Err(e) => {
                        warn!(cluster, host, error = e, "cannot restart a frozen replica");
                        continue;
                    }
                }
            } else {
                format!("{host} is no longer stopped by the failover that did not complete")
            };
            info!(cluster, host, "frozen replica released");
            let e = Event::new("thawed", host, message, epoch, vec![]);
            let h = host.clone();
            let _ = self
                .fleet
                .update_cluster(cluster, epoch.clone(), move |r| {
                    r.control.frozen.remove(&h);
                    r.control.record(e);
                    Ok(())
                })
                .await;
        }
    }

    async fn repair(
        &self,
        cluster: &str,
        derived_primary: Option<&str>,
        members: &[MemberState],
        rec: &ClusterRecord,
        epoch: &Epoch,
    ) {
        // Desired state names the primary when observation is ambiguous
        // (an old primary came back writable next to the new one).
        let Some(primary) = derived_primary
            .map(str::to_string)
            .or_else(|| rec.last_primary.clone())
        else {
            return;
        };
        let Some(p) = members.iter().find(|m| m.host == primary) else {
            return;
        };
        let Some(ps) = p.server() else { return };
        if ps.writable() {
            self.fence_stale(cluster, epoch, &primary, members).await;
        }
        let Ok(p_addr) = MysqlAddress::parse(&p.mysql_address) else {
            return;
        };
        let others_writable = members
            .iter()
            .any(|m| m.host != primary && m.server().is_some_and(|s| s.writable()));
        if restores(
            &primary,
            rec.last_primary.as_deref(),
            ps,
            others_writable,
            rec.control.held.is_some(),
        ) {
            if !self.may_try(&primary) {
                return;
            }
            let reason = p
                .report
                .as_ref()
                .map(|r| r.agent.fence_reason.clone())
                .unwrap_or_default();
            match self
                .repair_command(
                    cluster,
                    epoch,
                    p,
                    // A restarted MariaDB forgot the semi-sync settings:
                    // the Promote sets them before the first write.
                    Command::Promote(self.promote_command(cluster)),
                )
                .await
            {
                Ok(_) => {
                    let e = Event::new(
                        "primary-restored",
                        &primary,
                        format!(
                            "{primary} was read-only with no failover under way ({reason}); made writable again"
                        ),
                        epoch,
                        vec![],
                    );
                    self.note_once(cluster, epoch, e).await;
                }
                Err(e) => warn!(cluster, primary, error = e, "cannot restore the primary"),
            }
            return;
        }
        if !ps.writable() {
            return;
        }
        // Replicas are never pointed at an address that does not reach
        // the primary (the problem mysql-address-mismatch says so).
        if p.has_config_problem(&ConfigProblemKind::MysqlAddressMismatch) {
            return;
        }
        if !rec.control.frozen.is_empty() {
            self.thaw(cluster, epoch, &primary, &p_addr, members, rec)
                .await;
        }
        if let Some(mode) = rec.semi_sync {
            self.keep_semi_sync(cluster, epoch, mode, &primary, &p_addr, members)
                .await;
        }
        let flavor = ps.flavor;
        for m in members {
            if m.host == primary || rec.control.out_of_service(&m.host) {
                continue;
            }
            let Some(s) = m.server() else { continue };
            if let Some(r) = s
                .replication
                .as_ref()
                .filter(|r| r.source.same_endpoint(&p_addr))
            {
                // Rejoined once both threads run: an IO thread that stops
                // on a diverged history has not.
                let registered = ps.replica_server_ids.contains(&s.server_id);
                if rec.control.rejoining.contains_key(&m.host)
                    && ((r.io_thread == IoThread::Running && r.sql_running) || registered)
                {
                    let _ = self.rejoined(cluster, epoch, &m.host, &primary).await;
                }
                self.tune(cluster, epoch, m, r, &p_addr).await;
                continue;
            }
            if s.writable() {
                continue;
            }
            // MariaDB: the binlog's own domains past the fork point;
            // MySQL: whatever the primary lacks.
            let member_gtids = match flavor {
                Flavor::MariaDb => &s.gtid.binlog_pos,
                Flavor::MySql => &s.gtid.executed,
            };
            // A member left behind by an earlier operation forked there,
            // not at the last promotion.
            let fork = rec
                .control
                .rejoining
                .get(&m.host)
                .filter(|f| !f.is_empty())
                .or(rec.control.promoted_at.as_ref());
            let diverged = match positions::diverged(
                flavor,
                member_gtids,
                fork.map(String::as_str),
                &ps.gtid.executed,
                (ps.server_id, &ps.server_uuid),
            ) {
                Ok(d) => d,
                Err(e) => {
                    // Neither rejoined nor marked: nothing is proven.
                    warn!(
                        cluster,
                        host = m.host,
                        error = e,
                        "cannot compare GTIDs; member left alone"
                    );
                    continue;
                }
            };
            if !diverged.is_empty() {
                let host = m.host.clone();
                let e = Event::new(
                    "needs-rebuild",
                    &m.host,
                    format!(
                        "{} has transactions {} the primary {primary} never had; it must be rebuilt (restore from a backup)",
                        m.host,
                        diverged.join(",")
                    ),
                    epoch,
                    vec![format!("forked at {}", fork.cloned().unwrap_or_default())],
                );
                warn!(cluster, host, "member diverged; marked needs-rebuild");
                let _ = self
                    .fleet
                    .update_cluster(cluster, epoch.clone(), move |r| {
                        r.control.needs_rebuild.insert(host);
                        r.control.record(e);
                        Ok(())
                    })
                    .await;
                continue;
            }
            if !self.may_try(&m.host) {
                continue;
            }
            // Counted again before it may start acknowledging the primary's
            // commits: a member that may hold them is never left out. Not
            // repointed at all when that cannot be recorded (an operation
            // started since this tick's snapshot).
            let marked = rec.control.rejoining.get(&m.host).cloned();
            if marked.is_some() && !self.rejoined(cluster, epoch, &m.host, &primary).await {
                continue;
            }
            let cmd = self.repoint_to(cluster, &p_addr);
            let repointed = self.repair_command(cluster, epoch, m, cmd).await;
            if let (Err(_), Some(fork)) = (&repointed, marked) {
                self.left_behind_again(cluster, epoch, &m.host, fork).await;
            }
            match repointed {
                Ok(_) => {
                    let host = m.host.clone();
                    let e = Event::new(
                        "rejoined",
                        &host,
                        format!("{host} replicates from {primary} again"),
                        epoch,
                        vec![],
                    );
                    info!(cluster, host, primary, "member rejoined");
                    let _ = self.record_event(cluster, epoch, e).await;
                }
                Err(e) => warn!(
                    cluster,
                    host = m.host,
                    error = e,
                    "cannot rejoin the member"
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ss(source: bool, replica: bool, lossless_settings: bool) -> SemiSync {
        SemiSync {
            source_enabled: source,
            replica_enabled: replica,
            wait_no_replica: lossless_settings,
            timeout_ms: if lossless_settings {
                100_000_000
            } else {
                10_000
            },
            ..SemiSync::default()
        }
    }

    #[test]
    fn semi_sync_changes_in_an_order_that_never_waits_for_nobody_nor_acks_unreplicated() {
        use SemiSyncMode::{Lossless, Off};
        let asynchronous = ss(false, false, false);
        let mut acking = ss(false, true, true);
        acking.replica_active = true;
        let set_not_connected = ss(false, true, true);
        let waiting = ss(true, true, true);
        let set = |v: &[(&str, bool)]| -> Vec<(String, bool)> {
            v.iter().map(|(h, p)| (h.to_string(), *p)).collect()
        };
        // lossless from async: the replicas first, the primary only after
        let all_async = [
            ("db1", &asynchronous, true),
            ("db2", &asynchronous, false),
            ("db3", &asynchronous, false),
        ];
        assert_eq!(
            semi_sync_changes(Lossless, &all_async),
            set(&[("db2", false), ("db3", false)])
        );
        let replicas_ack = [
            ("db1", &asynchronous, true),
            ("db2", &acking, false),
            ("db3", &acking, false),
        ];
        assert_eq!(
            semi_sync_changes(Lossless, &replicas_ack),
            set(&[("db1", true)])
        );
        // set, but none acknowledging yet (or no replica at all): the
        // primary does not wait for nobody
        let none_acking = [
            ("db1", &asynchronous, true),
            ("db2", &set_not_connected, false),
        ];
        assert_eq!(semi_sync_changes(Lossless, &none_acking), vec![]);
        assert_eq!(
            semi_sync_changes(Lossless, &[("db1", &asynchronous, true)]),
            vec![]
        );
        let done = [("db1", &waiting, true), ("db2", &acking, false)];
        assert_eq!(semi_sync_changes(Lossless, &done), vec![]);
        // a replica that also waits (a former primary) is set again
        let stray = [("db1", &waiting, true), ("db2", &waiting, false)];
        assert_eq!(semi_sync_changes(Lossless, &stray), set(&[("db2", false)]));
        // off: the primary stops waiting first, then the replicas
        assert_eq!(semi_sync_changes(Off, &done), set(&[("db1", true)]));
        let primary_off = [("db1", &asynchronous, true), ("db2", &acking, false)];
        assert_eq!(semi_sync_changes(Off, &primary_off), set(&[("db2", false)]));
        assert_eq!(semi_sync_changes(Off, &all_async), vec![]);
    }
    use dbfleet_proto::model::IoThread;
    use dbfleet_proto::mysql_tls::MysqlTlsMode;

    fn replica(hb: Option<u64>, net: Option<u64>) -> Replication {
        Replication {
            tls: None,
            source: MysqlAddress::parse("127.0.0.1:3306").unwrap(),
            io_thread: IoThread::Running,
            sql_running: true,
            last_io_error: String::new(),
            last_sql_error: String::new(),
            seconds_behind: Some(0),
            auto_position: true,
            received_gtid: String::new(),
            heartbeat_ms: hb,
            net_timeout_ms: net,
        }
    }

    fn read_only(replication: Option<Replication>) -> ServerState {
        ServerState {
            tls: None,
            version: "10.11".into(),
            flavor: dbfleet_proto::model::Flavor::MariaDb,
            server_id: 1,
            server_uuid: String::new(),
            read_only: true,
            super_read_only: true,
            gtid: Default::default(),
            replication,
            semi_sync: Default::default(),
            binlog: Default::default(),
            replicas_connected: 0,
            replica_server_ids: vec![],
        }
    }

    #[test]
    fn only_the_desired_primary_is_made_writable_again() {
        let alone = read_only(None);
        // a restarted primary the agent kept read-only
        assert!(restores("db1", Some("db1"), &alone, false, false));
        assert!(restores("db1", None, &alone, false, false));
        // right after a switchover to db2: stale reports still point the
        // replicas at db1, read-only and not yet repointed
        assert!(!restores("db1", Some("db2"), &alone, false, false));
        // a replica, someone else writable, or a held failover: never
        assert!(!restores(
            "db1",
            Some("db1"),
            &read_only(Some(replica(None, None))),
            false,
            false
        ));
        assert!(!restores("db1", Some("db1"), &alone, true, false));
        assert!(!restores("db1", Some("db1"), &alone, false, true));
    }

    #[test]
    fn detection_settings_are_compared_at_the_servers_resolution() {
        let t = ReplicaTuning {
            heartbeat: Duration::from_secs(1),
            net_timeout: Duration::from_millis(4500),
            mysql_tls: MysqlTlsMode::Off,
        };
        assert_eq!(untuned(&replica(Some(1000), Some(4000)), &t), None);
        assert_eq!(untuned(&replica(None, None), &t), None);
        let why = untuned(&replica(Some(30000), Some(60000)), &t).unwrap();
        assert!(
            why.contains("heartbeat 30000 ms") && why.contains("net timeout 60000 ms"),
            "{why}"
        );
    }

    #[test]
    fn a_replica_without_verified_tls_is_repointed_only_when_the_policy_requires_it() {
        let off = ReplicaTuning {
            heartbeat: Duration::from_secs(1),
            net_timeout: Duration::from_secs(4),
            mysql_tls: MysqlTlsMode::Off,
        };
        let required = ReplicaTuning {
            mysql_tls: MysqlTlsMode::Required,
            ..off
        };
        let with = |tls: Option<LinkTls>| Replication {
            tls,
            ..replica(Some(1000), Some(4000))
        };
        // the policy is off: no link is touched for its TLS
        for tls in [
            None,
            Some(LinkTls::Off),
            Some(LinkTls::Encrypted),
            Some(LinkTls::Verified),
        ] {
            assert_eq!(untuned(&with(tls), &off), None, "{tls:?}");
        }
        // required: plain and unverified links are repointed, verified
        // ones and agents that do not say are left
        let why = untuned(&with(Some(LinkTls::Off)), &required).unwrap();
        assert!(
            why.contains("plain TCP") && why.contains("wanted verified TLS"),
            "{why}"
        );
        let why = untuned(&with(Some(LinkTls::Encrypted)), &required).unwrap();
        assert!(why.contains("without checking"), "{why}");
        assert_eq!(untuned(&with(Some(LinkTls::Verified)), &required), None);
        assert_eq!(untuned(&with(None), &required), None);
    }
}
