//! The simulated world: nodes, clocks, network, disks, faults and the
//! event loop that drives the real `Voter` and `Holder`.

use super::checker::*;
use super::*;

/// A discrete event. Messages name the holder *process* `(slot, inc)`, so
/// that those meant for a process that has since died are dropped.
#[derive(Debug, Clone)]
pub(crate) enum Ev {
    Tick {
        slot: usize,
        inc: u64,
    },
    ToVoter {
        voter: usize,
        slot: usize,
        inc: u64,
        msg: VoterMsg,
    },
    ToHolder {
        slot: usize,
        inc: u64,
        msg: HolderMsg,
    },
    Chaos,
    RestartVoter(usize),
    RestartCoord(usize),
    StopDuplicate,
    /// Ends partition number `.0`, unless a newer one replaced it.
    Heal(u64),
    /// Ends the chaos for good.
    HealAll,
}

#[derive(Debug, Clone)]
pub(crate) enum VoterMsg {
    Request {
        round: u64,
        req: VoterRequest,
    },
    /// A coordinator command: the voter acts as the agent that runs it.
    Command {
        epoch: Epoch,
        holder: HolderId,
    },
}

#[derive(Debug, Clone)]
pub(crate) enum HolderMsg {
    Reply {
        voter: String,
        round: u64,
        reply: VoterReply,
    },
    /// An agent refused a command under an epoch below its promise.
    Stale(Epoch),
    /// The active's status (with its epoch) reached its peer.
    Ping(Epoch),
    /// The peer released the lease (or so a late or duplicated hint says).
    Handover,
}

/// A queued event, ordered so that the `BinaryHeap` pops the earliest first
/// and ties go by insertion order, which keeps runs deterministic.
pub(crate) struct Queued {
    pub(crate) at: u64,
    pub(crate) seq: u64,
    pub(crate) ev: Ev,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// A node's clock, `local = offset + rate × real`: `CLOCK_BOOTTIME` for a
/// holder, the monotonic clock for a voter.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    pub(crate) offset: u64,
    pub(crate) rate: f64,
}

impl Clock {
    pub(crate) fn read(&self, real: u64) -> Duration {
        Duration::from_micros(self.offset + (real as f64 * self.rate) as u64)
    }
    /// Real time that passes while this clock advances by `local`.
    pub(crate) fn real_span(&self, local: Duration) -> u64 {
        (us(local) as f64 / self.rate) as u64 + 1
    }
}

/// Network weather and the current partition: a matrix of cut links, which
/// may be one way and need not be transitive.
#[derive(Default)]
pub(crate) struct Net {
    pub(crate) loss: f64,
    pub(crate) dup: f64,
    /// Chance that a message takes τ/2..3τ instead of `0..=max_delay`.
    pub(crate) slow: f64,
    pub(crate) max_delay: u64,
    pub(crate) nodes: usize,
    pub(crate) blocked: Vec<bool>,
}

/// The faults chaos picks from, by weights drawn per seed, so some seeds are
/// crash-heavy and others partition- or pause-heavy.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Fault {
    CrashVoter,
    CrashCoordinator,
    Duplicate,
    Partition,
    Pause,
    Weather,
    Release,
    Nothing,
}

pub(crate) const FAULTS: [Fault; 8] = [
    Fault::CrashVoter,
    Fault::CrashCoordinator,
    Fault::Duplicate,
    Fault::Partition,
    Fault::Pause,
    Fault::Weather,
    Fault::Release,
    Fault::Nothing,
];

/// The per-seed shape of the chaos (none by default).
#[derive(Default)]
pub(crate) struct Knobs {
    pub(crate) weights: [u32; 8],
    /// Mean time between faults, in leases.
    pub(crate) gap: f64,
    /// Chance that a voter's disk write fails.
    pub(crate) write_fail: f64,
    /// The active does not ping its peer (which then does not wait for the
    /// active to fall silent before it tries to acquire).
    pub(crate) no_pings: bool,
    /// Chance per tick that a holder is told to try for the lease now
    /// (handover hints may come late or twice, so at any time).
    pub(crate) nudge: f64,
}

pub(crate) struct VoterNode {
    pub(crate) name: String,
    pub(crate) live: Option<Voter>,
    pub(crate) disk: FenceRecord,
}

pub(crate) struct Coord {
    pub(crate) name: &'static str,
    pub(crate) live: Option<Holder>,
    /// The persisted `max_seen`, possibly older than the process's.
    pub(crate) disk: Epoch,
}

/// What a voter did over its whole life, across its crashes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ghost {
    pub(crate) mem: Epoch,
    pub(crate) disk: Epoch,
    /// Highest epoch it sent in a Promised/Renewed reply or executed.
    pub(crate) sent: Epoch,
    pub(crate) executed: Epoch,
}

/// Standard timings, or a seeded variation that passes `validate()`.
pub(crate) fn draw_timing(rng: &mut StdRng) -> Timing {
    if rng.random_bool(0.4) {
        return Timing::standard();
    }
    loop {
        let lease = rng.random_range(1_000..=8_000);
        let t = Timing {
            lease: Duration::from_millis(lease),
            renew_interval: Duration::from_millis(lease / rng.random_range(3..=6)),
            rpc_timeout: Duration::from_millis(rng.random_range(150..=lease / 4)),
            drift_ppm: rng.random_range(0..=50_000),
            margin: Duration::from_millis(rng.random_range(50..=lease / 8)),
        };
        if t.validate().is_ok() {
            return t;
        }
    }
}

/// The simulated cluster. Nodes are addressed by index: voters `0..n`,
/// coordinator slots `n + slot` (slot 0 is `c1`, 1 is `c2`, 2 a duplicate
/// `c1` process).
pub(crate) struct World {
    pub(crate) cfg: Config,
    pub(crate) rng: StdRng,
    pub(crate) timing: Timing,
    pub(crate) voter_set: VoterSet,
    pub(crate) now: u64,
    pub(crate) seq: u64,
    pub(crate) queue: BinaryHeap<Queued>,
    pub(crate) clocks: Vec<Clock>,
    pub(crate) paused_until: Vec<u64>,
    pub(crate) voters: Vec<VoterNode>,
    pub(crate) coords: Vec<Coord>,
    pub(crate) net: Net,
    pub(crate) knobs: Knobs,
    /// Number of the latest partition.
    pub(crate) partition: u64,
    pub(crate) healed_at: Option<u64>,
    pub(crate) trace: bool,
    pub(crate) checker: Checker,
    pub(crate) stats: Stats,
}

impl World {
    pub(crate) fn new(cfg: Config) -> World {
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let n = rng.random_range(3..=7);
        let weighted = cfg.faults && rng.random_bool(0.2);
        let weight = |rng: &mut StdRng| if weighted { rng.random_range(1..=3) } else { 1 };
        let voters: BTreeMap<String, u32> = (1..=n)
            .map(|i| (format!("v{i}"), weight(&mut rng)))
            .collect();
        let timing = if cfg.faults {
            draw_timing(&mut rng)
        } else {
            Timing::standard()
        };
        let rho = f64::from(timing.drift_ppm) / 1e6;
        let mut clock = |a: usize| {
            let rate = match (cfg.mutations.holder_rate, rng.random_range(0..3)) {
                (Some(rate), _) if a >= n => rate,
                (_, 0) => 1.0 - rho,
                (_, 1) => 1.0 + rho,
                _ => rng.random_range(1.0 - rho..=1.0 + rho),
            };
            Clock {
                offset: rng.random_range(0..1 << 40),
                rate,
            }
        };
        let clocks = (0..n + 3).map(&mut clock).collect();
        let voter = |name| VoterNode {
            name,
            live: None,
            disk: FenceRecord::default(),
        };
        let coord = |name| Coord {
            name,
            live: None,
            disk: Epoch::zero(),
        };
        let mut w = World {
            cfg,
            rng,
            timing,
            voter_set: VoterSet::new(voters.clone()).expect("valid voter list"),
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            clocks,
            paused_until: vec![0; n + 3],
            voters: voters.into_keys().map(voter).collect(),
            coords: ["c1", "c2", "c1"].map(coord).into(),
            net: Net {
                max_delay: 20 * MS,
                blocked: vec![false; (n + 3) * (n + 3)],
                ..Net::default()
            },
            knobs: Knobs::default(),
            partition: 0,
            healed_at: None,
            trace: env::var_os("LEASE_SIM_TRACE").is_some(),
            checker: Checker {
                ghosts: vec![Ghost::default(); n],
                ..Checker::default()
            },
            stats: Stats::default(),
        };
        for v in 0..n {
            w.voters[v].live = Some(Voter::boot(FenceRecord::default(), w.local(v)));
        }
        w.start_coord(0, Epoch::zero());
        w.start_coord(1, Epoch::zero());
        if cfg.faults {
            w.draw_chaos();
        }
        w
    }

    /// Draws this seed's network weather and fault mix, and starts the chaos.
    pub(crate) fn draw_chaos(&mut self) {
        let tau = us(self.timing.rpc_timeout);
        self.net.max_delay = self.rng.random_range(MS..=(300 * MS).min(tau / 2));
        self.net.loss = self.rng.random_range(0.0..0.2);
        self.net.dup = self.rng.random_range(0.0..0.1);
        self.net.slow = self.rng.random_range(0.0..0.05);
        self.knobs.weights = [(); 8].map(|_| self.rng.random_range(0..=3));
        self.knobs.weights[7] += 1;
        self.knobs.gap = self.rng.random_range(0.1..0.8);
        self.knobs.write_fail = 0.01;
        self.knobs.no_pings = self.rng.random_bool(0.3);
        if self.rng.random_bool(0.5) {
            self.knobs.nudge = self.rng.random_range(0.0..0.3);
        }
        self.schedule(SEC, Ev::Chaos);
        self.schedule(us(self.timing.lease * CHAOS_LEASES), Ev::HealAll);
    }

    pub(crate) fn n(&self) -> usize {
        self.voters.len()
    }

    pub(crate) fn local(&self, addr: usize) -> Duration {
        self.clocks[addr].read(self.now)
    }

    pub(crate) fn schedule(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Queued {
            at,
            seq: self.seq,
            ev,
        });
    }

    /// A random event of probability `p`; draws nothing when `p` is 0
    /// (ChaCha is the main cost of a debug build).
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.random_bool(p)
    }

    /// A random duration of `lo..hi` leases: the chaos scales with the lease.
    pub(crate) fn leases(&mut self, lo: f64, hi: f64) -> u64 {
        (us(self.timing.lease) as f64 * self.rng.random_range(lo..hi)) as u64
    }

    /// The incarnation running in `slot` (0, which matches nothing, if none).
    pub(crate) fn inc(&self, slot: usize) -> u64 {
        self.coords[slot]
            .live
            .as_ref()
            .map_or(0, |h| h.id().incarnation)
    }

    /// The slot whose holder has a valid lease now, if any.
    pub(crate) fn active(&self) -> Option<usize> {
        (0..3).find(|&s| {
            let now = self.local(self.n() + s);
            self.coords[s]
                .live
                .as_ref()
                .is_some_and(|h| h.lease_valid(now))
        })
    }

    /// Sends over the network: maybe cut or lost, maybe duplicated, each
    /// copy delayed on its own (which reorders).
    pub(crate) fn send(&mut self, from: usize, to: usize, ev: Ev) {
        if self.net.blocked[from * self.net.nodes + to] {
            return;
        }
        let copies = if self.chance(self.net.dup) { 2 } else { 1 };
        for _ in 0..copies {
            if self.chance(self.net.loss) {
                continue;
            }
            let tau = us(self.timing.rpc_timeout);
            let delay = if self.chance(self.net.slow) {
                self.rng.random_range(tau / 2..=3 * tau)
            } else {
                self.rng.random_range(0..=self.net.max_delay)
            };
            self.schedule(self.now + delay, ev.clone());
        }
    }

    /// The node an event runs on: a paused node runs it when it resumes.
    pub(crate) fn target(&self, ev: &Ev) -> Option<usize> {
        match ev {
            Ev::Tick { slot, .. } | Ev::ToHolder { slot, .. } => Some(self.n() + slot),
            Ev::ToVoter { voter, .. } => Some(*voter),
            _ => None,
        }
    }

    pub(crate) fn run_until(&mut self, end: u64) -> Result<(), Violation> {
        while self.queue.peek().is_some_and(|q| q.at <= end) {
            let Queued { at, ev, .. } = self.queue.pop().expect("peeked");
            self.now = at;
            if let Some(a) = self.target(&ev)
                && self.paused_until[a] > at
            {
                self.schedule(self.paused_until[a], ev);
                continue;
            }
            self.stats.events += 1;
            if self.trace {
                eprintln!("[{} ms, step {}] {ev:?}", at / MS, self.stats.events);
            }
            self.dispatch(ev);
            self.check()?;
        }
        self.now = end;
        Ok(())
    }

    pub(crate) fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::Tick { slot, inc } => self.on_tick(slot, inc),
            Ev::ToVoter {
                voter,
                slot,
                inc,
                msg,
            } => self.on_voter_msg(voter, slot, inc, msg),
            Ev::ToHolder { slot, inc, msg } => self.holder_step(slot, inc, |h, now| match msg {
                HolderMsg::Reply {
                    voter,
                    round,
                    reply,
                } => h.on_reply(&voter, round, reply, now),
                HolderMsg::Stale(promised) => h.on_higher_epoch(&promised, now),
                HolderMsg::Ping(epoch) => {
                    h.peer_heard(now);
                    h.on_higher_epoch(&epoch, now)
                }
                HolderMsg::Handover => {
                    h.try_now(now);
                    Vec::new()
                }
            }),
            Ev::Chaos if self.healed_at.is_none() => self.chaos(),
            Ev::Chaos => {}
            Ev::RestartVoter(v) => self.restart_voter(v),
            Ev::RestartCoord(slot) => self.restart_coord(slot),
            Ev::StopDuplicate => self.coords[2].live = None,
            Ev::Heal(p) if p == self.partition => self.net.blocked.fill(false),
            Ev::Heal(_) => {}
            Ev::HealAll => self.heal_all(),
        }
    }

    /// Runs `f` on holder process `inc` of `slot` if it still lives, persists
    /// its `max_seen` (a lazy store sometimes lags), and carries out the
    /// actions it returns.
    pub(crate) fn holder_step(
        &mut self,
        slot: usize,
        inc: u64,
        f: impl FnOnce(&mut Holder, Duration) -> Vec<HolderAction>,
    ) {
        let now = self.local(self.n() + slot);
        let c = &mut self.coords[slot];
        let Some(h) = c.live.as_mut().filter(|h| h.id().incarnation == inc) else {
            return;
        };
        let actions = f(h, now);
        let id = h.id().clone();
        if c.disk != *h.max_seen() && self.rng.random_bool(0.9) {
            c.disk = h.max_seen().clone();
        }
        for a in actions {
            if self.trace && !matches!(a, HolderAction::Broadcast { .. }) {
                eprintln!("    {id}: {a:?}");
            }
            match a {
                HolderAction::Broadcast { round, request, to } => {
                    for name in to {
                        let voter = self
                            .voters
                            .iter()
                            .position(|v| v.name == name)
                            .expect("voter");
                        let req = request.clone();
                        self.send_voter(slot, inc, voter, VoterMsg::Request { round, req });
                    }
                }
                HolderAction::Acquired { epoch, .. } => {
                    self.checker.unique(false, &epoch, &id);
                    if self.stats.acquired.last().is_some_and(|a| a.1 != slot) {
                        self.stats.takeovers += 1;
                    }
                    self.stats.acquired.push((self.now, slot, epoch));
                }
                HolderAction::SteppedDown { .. } => {}
            }
        }
    }

    /// A holder's tick; the active then maybe commands random agents and
    /// pings its peer.
    pub(crate) fn on_tick(&mut self, slot: usize, inc: u64) {
        let nudge = self.chance(self.knobs.nudge);
        self.holder_step(slot, inc, |h, now| {
            if nudge {
                h.try_now(now);
            }
            h.tick(now)
        });
        let (addr, n) = (self.n() + slot, self.n());
        let now = self.local(addr);
        let Some(h) = self.coords[slot]
            .live
            .as_mut()
            .filter(|h| h.id().incarnation == inc)
        else {
            return;
        };
        let (command, id) = (h.command_epoch(now), h.id().clone());
        let valid = h.lease_valid(now).then(|| h.epoch().cloned()).flatten();
        if valid.is_some() {
            h.set_committed_seq(self.stats.events);
        }
        if let Some(epoch) = command
            && self.rng.random_bool(0.2)
        {
            self.checker.unique(true, &epoch, &id);
            let to = self.rng.random::<u64>();
            for voter in (0..n).filter(|v| to >> v & 1 == 1) {
                let (epoch, holder) = (epoch.clone(), id.clone());
                self.send_voter(slot, inc, voter, VoterMsg::Command { epoch, holder });
            }
        }
        if let Some(epoch) = valid
            && !self.knobs.no_pings
            && self.rng.random_bool(0.3)
        {
            self.tell_peers(slot, HolderMsg::Ping(epoch));
        }
        let next = self.now + self.clocks[addr].real_span(TICK);
        self.schedule(next, Ev::Tick { slot, inc });
    }

    /// Sends `msg` from holder process `(slot, inc)` to `voter`.
    pub(crate) fn send_voter(&mut self, slot: usize, inc: u64, voter: usize, msg: VoterMsg) {
        let ev = Ev::ToVoter {
            voter,
            slot,
            inc,
            msg,
        };
        self.send(self.n() + slot, voter, ev);
    }

    /// Sends `msg` from node `from` to holder process `(slot, inc)`.
    pub(crate) fn send_holder(&mut self, from: usize, slot: usize, inc: u64, msg: HolderMsg) {
        self.send(from, self.n() + slot, Ev::ToHolder { slot, inc, msg });
    }

    /// Sends `msg` from `slot` to the processes of the other coordinator.
    pub(crate) fn tell_peers(&mut self, slot: usize, msg: HolderMsg) {
        for peer in 0..3 {
            if self.coords[peer].name != self.coords[slot].name {
                let (from, inc) = (self.n() + slot, self.inc(peer));
                self.send_holder(from, peer, inc, msg.clone());
            }
        }
    }

    /// Writes `rec` as the voter's durable record before it replies or acts.
    /// When the write fails, the voter falls back to its disk and is silent.
    pub(crate) fn persist(&mut self, voter: usize, rec: Option<FenceRecord>) -> bool {
        let Some(rec) = rec else { return true };
        let failed = self.chance(self.knobs.write_fail);
        let node = &mut self.voters[voter];
        if failed {
            node.live.as_mut().expect("live").restore(node.disk.clone());
            return false;
        }
        if !self.cfg.mutations.volatile_voters {
            node.disk = rec;
        }
        true
    }

    /// A voter answers a request, or as an agent fences a command by epoch,
    /// persists, and then executes it.
    pub(crate) fn on_voter_msg(&mut self, voter: usize, slot: usize, inc: u64, msg: VoterMsg) {
        let now = self.local(voter);
        let Some(v) = self.voters[voter].live.as_mut() else {
            return;
        };
        match msg {
            VoterMsg::Request { round, req } => {
                let handled = v.handle(req, now);
                if self.persist(voter, handled.persist) {
                    self.checker.replied(voter, &handled.reply);
                    let (name, reply) = (self.voters[voter].name.clone(), handled.reply);
                    let msg = HolderMsg::Reply {
                        voter: name,
                        round,
                        reply,
                    };
                    self.send_holder(voter, slot, inc, msg);
                }
            }
            VoterMsg::Command { epoch, holder } => match v.check_command(&epoch, &holder) {
                Err(dbfleet_lease::CommandRefusal::Stale(stale)) => {
                    self.send_holder(voter, slot, inc, HolderMsg::Stale(stale.promised))
                }
                Err(dbfleet_lease::CommandRefusal::Implausible { .. }) => {}
                Ok(verdict) => {
                    if self.persist(voter, verdict.persist) {
                        self.checker.executed(voter, &epoch);
                        self.stats.executed += 1;
                    }
                }
            },
        }
    }

    pub(crate) fn start_coord(&mut self, slot: usize, max_seen: Epoch) {
        let inc = self.rng.random_range(1..u64::MAX);
        let id = HolderId {
            coordinator: self.coords[slot].name.to_string(),
            incarnation: inc,
        };
        let (timing, voters) = (self.timing, self.voter_set.clone());
        let now = self.local(self.n() + slot);
        self.coords[slot].live = Some(Holder::new(id, timing, voters, max_seen, now));
        let first = self.now + self.rng.random_range(0..us(TICK));
        self.schedule(first, Ev::Tick { slot, inc });
    }

    /// A fresh process with a new incarnation. Its store sometimes lost
    /// `max_seen` altogether: the voters must keep epochs unique anyway.
    pub(crate) fn restart_coord(&mut self, slot: usize) {
        if self.coords[slot].live.is_none() {
            let lost = self.rng.random_bool(0.2);
            let seen = if lost {
                Epoch::zero()
            } else {
                self.coords[slot].disk.clone()
            };
            self.start_coord(slot, seen);
        }
    }

    /// A reboot: memory (the grant timers) is lost, the clock restarts from
    /// a new origin, and only the disk record survives.
    pub(crate) fn restart_voter(&mut self, voter: usize) {
        if self.voters[voter].live.is_some() {
            return;
        }
        self.clocks[voter].offset = self.rng.random_range(0..1 << 40);
        let mut rec = self.voters[voter].disk.clone();
        if self.cfg.mutations.no_quarantine {
            rec.quarantine_ms = 0;
        }
        self.voters[voter].live = Some(Voter::boot(rec, self.local(voter)));
    }

    /// Injects one fault, picked by this seed's weights. Crashed nodes come
    /// back after a while; partitions and duplicates go away after a while.
    pub(crate) fn chaos(&mut self) {
        let n = self.n();
        let faults = WeightedIndex::new(self.knobs.weights).expect("a positive weight");
        let fault = FAULTS[self.rng.sample(faults)];
        if self.trace {
            eprintln!("    chaos: {fault:?}");
        }
        let restart = if self.rng.random_bool(0.7) { 0.3 } else { 2.0 };
        match fault {
            Fault::CrashVoter => {
                // One voter, or sometimes a rack of them that lose power
                // together and come back at about the same time.
                let (one, rack) = (self.rng.random_range(0..n), self.rng.random_bool(0.3));
                let back = self.now + self.leases(0.0, restart);
                for v in 0..n {
                    if (v == one || rack && self.rng.random_bool(0.6))
                        && self.voters[v].live.take().is_some()
                    {
                        let at = back + self.leases(0.0, 0.05);
                        self.schedule(at, Ev::RestartVoter(v));
                    }
                }
            }
            Fault::CrashCoordinator => {
                let slot = self.rng.random_range(0..2);
                if self.coords[slot].live.take().is_some() {
                    let at = self.now + self.leases(0.0, restart);
                    self.schedule(at, Ev::RestartCoord(slot));
                }
            }
            Fault::Duplicate if self.coords[2].live.is_none() => {
                let shared = self.rng.random_bool(0.5);
                let seen = if shared {
                    self.coords[0].disk.clone()
                } else {
                    Epoch::zero()
                };
                self.start_coord(2, seen);
                let at = self.now + self.leases(0.2, 3.0);
                self.schedule(at, Ev::StopDuplicate);
            }
            Fault::Partition => self.partition(),
            Fault::Pause => {
                // SIGSTOP or a VM freeze: the clock runs on, the node does
                // nothing. Often the active coordinator (scenario 13).
                let a = match self.active() {
                    Some(slot) if self.rng.random_bool(0.5) => n + slot,
                    _ => self.rng.random_range(0..n + 3),
                };
                let until = self.now + self.leases(0.0, 2.0);
                self.paused_until[a] = self.paused_until[a].max(until);
            }
            Fault::Weather => {
                self.net.loss = self.rng.random_range(0.0..0.2);
                self.net.dup = self.rng.random_range(0.0..0.2);
            }
            Fault::Release => {
                if let Some(slot) = self.active() {
                    self.holder_step(slot, self.inc(slot), |h, now| h.release(now));
                    self.tell_peers(slot, HolderMsg::Handover);
                }
            }
            Fault::Duplicate | Fault::Nothing => {}
        }
        let at = self.now + self.leases(0.2 * self.knobs.gap, 1.8 * self.knobs.gap);
        self.schedule(at, Ev::Chaos);
    }

    /// Cuts links until a later heal: the active coordinator with a few
    /// voters (scenarios 1, 3), a random side of the cluster, or random
    /// links. A side is cut off both ways or one way only.
    pub(crate) fn partition(&mut self) {
        let (n, m) = (self.n(), self.n() + 3);
        let active = self.active().filter(|_| self.rng.random_bool(0.4));
        let links = active.is_none() && self.rng.random_bool(0.5);
        let p = self.rng.random_range(0.1..0.6);
        let side: Vec<bool> = (0..m)
            .map(|a| match active {
                Some(slot) if a >= n => a == n + slot,
                Some(_) => self.rng.random_bool(0.3),
                None => self.rng.random_bool(p),
            })
            .collect();
        let one_way = self.rng.random_bool(0.2);
        for a in 0..m {
            for b in 0..m {
                self.net.blocked[a * m + b] = if links {
                    self.rng.random_bool(p / 2.0)
                } else {
                    side[a] != side[b] && (side[a] || !one_way)
                };
            }
        }
        self.partition += 1;
        let at = self.now + self.leases(0.2, 3.0);
        self.schedule(at, Ev::Heal(self.partition));
    }

    /// Ends the chaos: a healthy network, every node up and resumed, no
    /// duplicate, no hints. A coordinator must then become active soon.
    pub(crate) fn heal_all(&mut self) {
        self.healed_at = Some(self.now);
        self.knobs.nudge = 0.0;
        self.net.blocked.fill(false);
        (self.net.loss, self.net.dup, self.net.slow) = (0.0, 0.0, 0.0);
        self.net.max_delay = self.net.max_delay.min(us(self.timing.rpc_timeout) / 4);
        for p in &mut self.paused_until {
            *p = (*p).min(self.now);
        }
        self.coords[2].live = None;
        (0..self.n()).for_each(|v| self.restart_voter(v));
        (0..2).for_each(|slot| self.restart_coord(slot));
    }

    pub(crate) fn violation(&self, rule: &'static str, detail: String) -> Violation {
        let (seed, step, at_ms) = (self.cfg.seed, self.stats.events, self.now / MS);
        Violation {
            seed,
            step,
            at_ms,
            rule,
            detail,
        }
    }

    /// I2 and I3 on the state after an event, and whatever the handlers
    /// found. Checking I3 only at events suffices: a lease only becomes
    /// valid (or longer) at an event, so any overlap starts at one.
    pub(crate) fn check(&mut self) -> Result<(), Violation> {
        if let Some((rule, detail)) = self.checker.failed.take() {
            return Err(self.violation(rule, detail));
        }
        for (i, node) in self.voters.iter().enumerate() {
            let g = &mut self.checker.ghosts[i];
            let (disk, mem) = (
                &node.disk.promised,
                node.live.as_ref().map(|v| &v.record().promised),
            );
            let problem = if !self.cfg.check_i2 {
                None
            } else if *disk < g.disk {
                Some(format!("its disk promise fell from {} to {disk}", g.disk))
            } else if *disk < g.sent {
                Some(format!(
                    "it replied or ran a command under {} with {disk} on disk",
                    g.sent
                ))
            } else {
                mem.filter(|mem| **mem < g.mem)
                    .map(|mem| format!("its promise fell from {} to {mem}", g.mem))
            };
            if let Some(p) = problem {
                return Err(
                    self.violation("I2 durable monotone promises", format!("v{}: {p}", i + 1))
                );
            }
            if *disk > g.disk {
                g.disk = disk.clone();
            }
            if let Some(mem) = mem.filter(|mem| **mem > g.mem) {
                g.mem = mem.clone();
            }
        }
        let valid = |s: usize| {
            let h = self.coords[s].live.as_ref()?;
            h.lease_valid(self.local(self.n() + s)).then_some(h)
        };
        let valid: Vec<&Holder> = (0..3).filter_map(valid).collect();
        if valid.len() > 1 {
            let who: Vec<String> = valid
                .iter()
                .map(|h| format!("{} ({:?})", h.id(), h.epoch()))
                .collect();
            return Err(self.violation("I3 lease exclusivity", who.join(" and ")));
        }
        if let Some(healed) = self.healed_at
            && !valid.is_empty()
        {
            self.stats.recovered_in.get_or_insert(self.now - healed);
        }
        Ok(())
    }
}
