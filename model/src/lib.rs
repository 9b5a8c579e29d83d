//! A model check of global mode's Redis ledger protocol (issue 10, item 3).
//!
//! [`Ledger`] is a [`stateright::Model`] of one pod, two proxy processes and one Redis, on a
//! discrete clock: the Lua claim script (`global/src/claim.lua`) as one atomic step, the
//! coordinator's round (`global/src/coordinator.rs`: desired = min(limit, live + headroom), the
//! clamp after a lowered limit, local cap lowered first, cap = min(granted, desired), the fail
//! modes), admissions and closes on each process, lease expiry by server time, and the faults of
//! `docs/GLOBAL.md` (kill -9 and restart, SIGSTOP/SIGCONT, Redis frozen, restarted empty or from
//! a snapshot, a lowered limit, two processes with one instance id, a slow round with or without
//! the lease watchdog). Each check switches on the faults it allows ([`Faults`]).
//!
//! Three protocols: [`Protocol::V1`], the script as it was at commit 33f9efb (the baseline whose
//! counterexamples show the checker can fail); [`Protocol::V1_1`], what main ships now (v1 with
//! ended leases held for one ttl, entries keyed by a per-process token, and, in the checks, the
//! lease watchdog and the two round fixes); and [`Protocol::V2`], a design that keeps an expired
//! instance's entry (and so its live count) until that instance is known gone, keys entries by
//! a per-process token beside the instance id, and notices a Redis restart through the server's
//! run id. `docs/GLOBAL_MODEL.md` describes the model, the checks and their
//! results; `model/tests/checks.rs` runs them.

use std::fmt::Write as _;

use stateright::{Model, Path, Property};

/// Which claim protocol the ledger runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// `claim.lua` as it was at commit 33f9efb: entries keyed by instance id, expired entries
    /// deleted together with their live counts, restart grace through the fleet epoch.
    V1,
    /// What main ships now: v1, but entries keyed by (instance id, process token), and an ended
    /// lease is *held*, not deleted: the first claim that finds it ended stamps it (`x:<i>`),
    /// and until [`Ledger::hold`] ticks after that stamp the holder's `max(share, live)` counts
    /// against the limit for the others; then it is deleted. The holder's own claim replaces its
    /// ended entry (and counts it as holding nothing). The coordinator side of v1.1 (the lease
    /// watchdog always on, [`Ledger::reclamp`] and [`Ledger::want_live`]) are flags; the checks
    /// run v1.1 with all three on.
    V1_1,
    /// The v2 design: entries keyed by (instance id, process token); an expired entry stays (its
    /// share and live count reserved) until it is superseded by a new process with the same id
    /// or `gone` ticks passed; while any such stale entry is on the pod, the pod is held (grants
    /// only what a claimant already holds or has live), and a Redis restart (run id changed
    /// under the fleet record) makes every entry stale.
    V2,
}

/// What an instance does while Redis does not answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailMode {
    /// Admit within the share held until its lease would have expired, then nothing.
    KeepShare,
    /// Admit nothing new.
    Reject,
    /// Admit up to this many per pod, alone.
    LocalLimit(u8),
}

/// The faults a check allows. Every fault but a restart, SIGCONT, the end of a stall and Redis
/// coming back counts against [`Ledger::max_faults`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Faults {
    /// kill -9 of a process (its connections close, its memory is lost); it may restart with
    /// the same instance id, a new token and empty state.
    pub kill: bool,
    /// SIGSTOP of a process (it does nothing, its connections stay open), later SIGCONT.
    pub stop: bool,
    /// Redis frozen (claims fail), later thawed with its data.
    pub redis_freeze: bool,
    /// Redis restarted empty: the pod's hash and the fleet record are gone.
    pub redis_restart_empty: bool,
    /// Redis restarted from a snapshot taken at some earlier point (the model takes one
    /// snapshot, at any moment, then may restart from it).
    pub redis_restart_snapshot: bool,
    /// Redis restarted from a snapshot that holds every write (`SHUTDOWN SAVE`, or the AOF with
    /// `appendfsync always`): the data survive, the run id changes, the clock went on.
    pub redis_restart_latest: bool,
    /// The pod's limit lowered to this value.
    pub lower_limit: Option<u8>,
    /// A slow round: the coordinator thread stalls (its claim is not sent) while the process's
    /// workers keep admitting under the cap in force.
    pub stall: bool,
}

/// The model's parameters: the pod, the protocol, the faults and the bounds.
#[derive(Clone, Debug)]
pub struct Ledger {
    /// The claim protocol.
    pub protocol: Protocol,
    /// The pod's limit at the start.
    pub limit: u8,
    /// Lease ttl in ticks (one tick is one refresh interval: every running process claims once
    /// per tick).
    pub ttl: u8,
    /// Spare share a round asks for beyond the live count.
    pub headroom: u8,
    /// `restart_grace_ms` in ticks.
    pub grace: u8,
    /// The fresh window in ticks.
    pub fresh: u8,
    /// V2 only: ticks after its lease expired before a stale entry is dropped as gone.
    pub gone: u8,
    /// V1.1 only: ticks an ended lease is held after the first claim that found it ended
    /// (`hold` ms in `claim.lua`, which main sets to the lease ttl).
    pub hold: u8,
    /// The fail mode.
    pub fail_mode: FailMode,
    /// After a claim, the coordinator clamps its cap again with the shares the reply shows
    /// (`desired` is clamped with the shares the *previous* reply showed; after a lowered limit,
    /// that view is one refresh old). Not in the coordinator at 33f9efb; main ships it (v1.1).
    pub reclamp: bool,
    /// The coordinator never asks for less than its live count (at 33f9efb it asked for `desired`
    /// when its cap was already at or below it, which after a lowered limit can be below live,
    /// so the ledger forgot live connections). Not in the coordinator at 33f9efb; main ships it
    /// (v1.1).
    pub want_live: bool,
    /// The lease watchdog: a process's local cap drops to 0 (keep_share, reject) at the instant
    /// its lease ends as the process timed it, whatever its coordinator is doing.
    pub watchdog: bool,
    /// Both processes run with one instance id.
    pub shared_id: bool,
    /// The faults allowed.
    pub faults: Faults,
    /// At most this many faults on a path.
    pub max_faults: u8,
    /// A fault starts at tick `fault_until` at the latest.
    pub fault_until: u8,
    /// A Redis outage, a SIGSTOP or a stall lasts at most this many ticks.
    pub max_outage: u8,
    /// The last tick explored.
    pub horizon: u8,
    /// Clients may close connections.
    pub closes: bool,
    /// Liveness mode: clients always want more (a process admits whenever its cap has room
    /// before time moves on), and the property "capacity returns after a crash" is checked.
    pub greedy: bool,
    /// A state where a safety property failed has no successors (for short counterexamples:
    /// the checker keeps the last violation it pops; off for the runs that show a property
    /// holds, since it would hide what follows a violation of another property).
    pub stop_at_violation: bool,
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger {
            protocol: Protocol::V1,
            limit: 2,
            ttl: 3,
            headroom: 1,
            grace: 3,
            fresh: 2,
            gone: 3,
            hold: 3,
            fail_mode: FailMode::KeepShare,
            reclamp: false,
            want_live: false,
            watchdog: true,
            shared_id: false,
            faults: Faults::default(),
            max_faults: 1,
            fault_until: 4,
            max_outage: 2,
            horizon: 9,
            closes: true,
            greedy: false,
            stop_at_violation: false,
        }
    }
}

/// One instance's part of the pod's hash (`s:`, `l:`, `e:` fields; V1.1 and V2 add the token,
/// V1.1 the `x:` field).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    /// Instance id.
    pub id: u8,
    /// Process token (V1.1 and V2; always 0 under V1).
    pub token: u8,
    /// Share.
    pub share: u8,
    /// Live connections as last claimed.
    pub live: u8,
    /// Lease expiry, server time (valid while `now <= exp`).
    pub exp: u8,
    /// V2: when a claim first found this entry expired (its `gone` clock starts there, so time
    /// in which Redis answered nobody does not count). V1.1: the `x:` stamp, when a claim first
    /// found this lease ended (its hold starts there).
    pub stale_since: Option<u8>,
}

/// What Redis holds that a snapshot can save and restore.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Data {
    /// The pod's hash, sorted by (id, token).
    pub entries: Vec<Entry>,
    /// The fleet record's epoch (a ledger creation number here; server ms in the script).
    pub epoch: Option<u8>,
    /// The fleet record's `grace_until`.
    pub grace_until: u8,
    /// V2: the Redis run id the fleet record was last written under.
    pub fleet_run: Option<u8>,
    /// V2: server time of the last claim (the grace clock stops while nobody reached Redis).
    pub last: u8,
}

/// Redis.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Redis {
    /// Answers claims.
    pub up: bool,
    /// When it stopped answering.
    pub down_since: u8,
    /// Its data.
    pub data: Data,
    /// The server's run id (`INFO server`): new on every restart.
    pub run: u8,
    /// Ledgers created so far (makes every epoch distinct, as server ms do).
    pub epochs_made: u8,
    /// The one snapshot taken, if any.
    pub snapshot: Option<Data>,
}

/// One proxy process.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Proc {
    /// Instance id.
    pub id: u8,
    /// Process token (new on every start).
    pub token: u8,
    /// Running (not killed).
    pub alive: bool,
    /// SIGSTOPped.
    pub frozen: bool,
    /// Its coordinator is stuck in a slow round.
    pub stalled: bool,
    /// When the SIGSTOP or the stall began.
    pub since: u8,
    /// Ran its round this tick.
    pub rounded: bool,
    /// Local cap.
    pub cap: u8,
    /// Open connections through this process (what the pod sees from it).
    pub live: u8,
    /// The share it believes it holds.
    pub share: u8,
    /// Until when (exclusive) it believes its lease holds.
    pub lease_until: Option<u8>,
    /// The other instances' shares as its last claim saw them.
    pub others: u8,
    /// The last epoch it saw.
    pub seen_epoch: Option<u8>,
    /// The limit its last round used.
    pub limit_seen: u8,
}

impl Proc {
    fn new(id: u8, token: u8, limit: u8) -> Proc {
        Proc {
            id,
            token,
            alive: true,
            frozen: false,
            stalled: false,
            since: 0,
            rounded: false,
            cap: 0,
            live: 0,
            share: 0,
            lease_until: None,
            others: 0,
            seen_epoch: None,
            limit_seen: limit,
        }
    }

    fn runs(&self) -> bool {
        self.alive && !self.frozen
    }
}

/// The whole system at one moment, with the ghost flags the properties read.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct State {
    /// Server time, in ticks (starts at 1).
    pub now: u8,
    /// The two processes.
    pub procs: [Proc; 2],
    /// Redis.
    pub redis: Redis,
    /// The pod's limit now.
    pub limit: u8,
    /// Faults so far.
    pub faults_used: u8,
    /// The next process token.
    pub next_token: u8,
    /// Ghost: an admission left the pod above the limit the admitting process last applied.
    pub over: bool,
    /// Ghost: a process admitted while Redis held no unexpired lease for it.
    pub lease_broken: bool,
    /// Ghost: the pod was full at some point.
    pub full: bool,
    /// Ghost: a process was killed.
    pub crashed: bool,
    /// Ghost: after a kill, the pod was full again.
    pub recovered: bool,
}

impl State {
    /// Connections open on the pod (through every process).
    pub fn open(&self) -> u8 {
        self.procs.iter().map(|p| p.live).sum()
    }
}

/// What a Redis outage does to its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outage {
    /// Frozen: the data survives.
    Freeze,
    /// Restarted empty.
    RestartEmpty,
    /// Restarted from the snapshot.
    RestartSnapshot,
    /// Restarted from a snapshot holding every write: the data survive, the run id changes.
    RestartLatest,
}

/// A step of the system.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Process `i` admits a connection.
    Admit(usize),
    /// A connection through process `i` closes.
    Close(usize),
    /// Process `i`'s coordinator runs a round (one claim).
    Round(usize),
    /// One tick passes (leases expire; the watchdog fires).
    Tick,
    /// kill -9 of process `i`.
    Kill(usize),
    /// Process `i` starts again, same id, new token, empty state.
    Restart(usize),
    /// SIGSTOP of process `i`.
    Stop(usize),
    /// SIGCONT of process `i`.
    Cont(usize),
    /// Process `i`'s coordinator stalls in a slow round.
    Stall(usize),
    /// Process `i`'s slow round goes on (its claim is sent this tick).
    Unstall(usize),
    /// Redis stops answering.
    RedisDown(Outage),
    /// Redis answers again.
    RedisUp,
    /// Redis saves a snapshot.
    Snapshot,
    /// The pod's limit is lowered.
    LowerLimit,
}

/// What one claim returns to the coordinator.
struct Reply {
    granted: u8,
    epoch: u8,
    others: u8,
}

impl Ledger {
    fn expired(&self, e: &Entry, now: u8) -> bool {
        e.exp < now
    }

    /// The claim script, one atomic step.
    fn claim(&self, r: &mut Redis, now: u8, p: &Proc, want: u8, live: u8, limit: u8) -> Reply {
        let seen = p.seen_epoch;
        let d = &mut r.data;
        let v2 = self.protocol == Protocol::V2;
        let held = self.protocol == Protocol::V1_1;
        let tokens = self.protocol != Protocol::V1;
        if v2 {
            // Nobody reached Redis for more than one refresh (it was frozen or unreachable):
            // that time does not count against a grace that was running.
            let gap = now - d.last;
            if gap > 1 && d.grace_until > d.last {
                d.grace_until += gap - 1;
            }
            d.last = now;
        }
        // The fleet record: epoch and restart grace.
        match d.epoch {
            None => {
                r.epochs_made += 1;
                d.epoch = Some(r.epochs_made);
                d.grace_until = if seen.is_some() {
                    now + self.grace
                } else {
                    now + self.fresh.min(self.grace)
                };
            }
            Some(e) => {
                if seen.is_some_and(|s| s != e) && now + self.grace > d.grace_until {
                    d.grace_until = now + self.grace;
                }
            }
        }
        if v2 {
            // A Redis restart (empty or from a snapshot) changes the run id: every entry it
            // restored is stale (its holder must renew it before the pod is free again), and
            // the entries written after the snapshot are missing: restart grace, as for a
            // restart empty.
            if d.fleet_run.is_some_and(|fr| fr != r.run) {
                for e in &mut d.entries {
                    e.exp = e.exp.min(now - 1);
                    e.stale_since = None;
                }
                if now + self.grace > d.grace_until {
                    d.grace_until = now + self.grace;
                }
            }
            d.fleet_run = Some(r.run);
        }
        let in_grace = now < d.grace_until;
        let mine = |e: &Entry| e.id == p.id && (!tokens || e.token == p.token);
        // Expired entries: v1 deletes them (with their live counts); v1.1 stamps them and
        // deletes them `hold` ticks after the stamp; v2 marks them stale and deletes them only
        // when gone (`gone` ticks after a claim first found them stale) or superseded by a new
        // process with the same id.
        if v2 || held {
            for e in &mut d.entries {
                if !mine(e) && self.expired(e, now) && e.stale_since.is_none() {
                    e.stale_since = Some(now);
                }
            }
        }
        d.entries.retain(|e| {
            if mine(e) {
                return true;
            }
            if self.protocol == Protocol::V1 {
                return !self.expired(e, now);
            }
            if held {
                let dropped = self.expired(e, now)
                    && e.stale_since
                        .is_some_and(|t| u16::from(now) >= u16::from(t) + u16::from(self.hold));
                return !dropped;
            }
            let gone = e
                .stale_since
                .is_some_and(|t| u16::from(now) > u16::from(t) + u16::from(self.gone));
            let superseded = e.id == p.id && self.expired(e, now);
            !(gone || superseded)
        });
        let mut others = 0u8;
        let mut stale = false;
        let mut cur = 0u8;
        for e in &d.entries {
            if mine(e) {
                if !self.expired(e, now) {
                    cur = e.share;
                }
            } else if v2 {
                // v2 counts every other part as what it may hold: its share, or its live
                // count when that is larger (a part granted less than it had live).
                stale |= self.expired(e, now);
                others += e.share.max(e.live);
            } else if held && self.expired(e, now) {
                // v1.1: a held entry counts as what its holder may hold.
                others += e.share.max(e.live);
            } else {
                others += e.share;
            }
        }
        let hold = in_grace || stale;
        let granted = if want <= cur {
            want
        } else {
            let cap = if hold { want.min(cur.max(live)) } else { want };
            cur.max(cap.min(limit.saturating_sub(others)))
        };
        let new = Entry {
            id: p.id,
            token: if tokens { p.token } else { 0 },
            share: granted,
            live,
            exp: now + self.ttl,
            stale_since: None,
        };
        match d.entries.iter_mut().find(|e| mine(e)) {
            Some(e) => *e = new,
            None => {
                d.entries.push(new);
                d.entries.sort_by_key(|e| (e.id, e.token));
            }
        }
        Reply {
            granted,
            epoch: d.epoch.unwrap_or(0),
            others,
        }
    }

    /// The coordinator's round for one pod.
    fn round(&self, s: &mut State, i: usize) {
        let now = s.now;
        let limit = s.limit;
        let mut p = s.procs[i].clone();
        p.limit_seen = limit;
        let live = p.live;
        let mut desired = limit.min(live + self.headroom);
        if p.others + p.share > limit {
            desired = desired.min(limit.saturating_sub(p.others));
        }
        let mut want = if self.want_live {
            desired.max(live)
        } else {
            desired
        };
        if desired < p.cap {
            p.cap = desired;
            want = desired.max(live);
        }
        if s.redis.up {
            let reply = self.claim(&mut s.redis, now, &p, want, live, limit);
            p.lease_until = Some(now + self.ttl);
            p.share = reply.granted;
            p.others = reply.others;
            p.cap = reply.granted.min(desired);
            if self.reclamp && reply.others + reply.granted > limit {
                p.cap = p.cap.min(limit.saturating_sub(reply.others));
            }
            p.seen_epoch = Some(reply.epoch);
        } else {
            p.share = p.share.min(want);
            p.cap = match self.fail_mode {
                FailMode::KeepShare if p.lease_until.is_some_and(|t| now < t) => p.share,
                FailMode::KeepShare | FailMode::Reject => 0,
                FailMode::LocalLimit(n) => n.min(limit),
            };
        }
        p.rounded = true;
        s.procs[i] = p;
    }

    fn watchdog(&self, p: &mut Proc, now: u8) {
        if self.watchdog
            && !matches!(self.fail_mode, FailMode::LocalLimit(_))
            && p.alive
            && p.lease_until.is_none_or(|t| now >= t)
        {
            p.cap = 0;
        }
    }

    fn holds_lease(&self, s: &State, p: &Proc) -> bool {
        let tokens = self.protocol != Protocol::V1;
        s.redis
            .data
            .entries
            .iter()
            .any(|e| e.id == p.id && (!tokens || e.token == p.token) && !self.expired(e, s.now))
    }

    fn can_fault(&self, s: &State) -> bool {
        s.faults_used < self.max_faults && s.now <= self.fault_until
    }

    fn tick_allowed(&self, s: &State) -> bool {
        if s.now >= self.horizon {
            return false;
        }
        let next = s.now + 1;
        if !s.redis.up && next - s.redis.down_since > self.max_outage {
            return false;
        }
        s.procs.iter().all(|p| {
            if !p.alive {
                return true;
            }
            if (p.frozen || p.stalled) && next - p.since > self.max_outage {
                return false;
            }
            if p.frozen {
                return true;
            }
            if self.greedy && p.live < p.cap {
                return false;
            }
            p.stalled || p.rounded
        })
    }
}

impl Model for Ledger {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        // An established fleet: the ledger exists (epoch 1), both processes saw it, nothing is
        // held yet.
        let second_id = if self.shared_id { 0 } else { 1 };
        let mut a = Proc::new(0, 0, self.limit);
        let mut b = Proc::new(second_id, 1, self.limit);
        a.seen_epoch = Some(1);
        b.seen_epoch = Some(1);
        vec![State {
            now: 1,
            procs: [a, b],
            redis: Redis {
                up: true,
                down_since: 0,
                data: Data {
                    entries: Vec::new(),
                    epoch: Some(1),
                    grace_until: 0,
                    fleet_run: Some(0),
                    last: 0,
                },
                run: 0,
                epochs_made: 1,
                snapshot: None,
            },
            limit: self.limit,
            faults_used: 0,
            next_token: 2,
            over: false,
            lease_broken: false,
            full: false,
            crashed: false,
            recovered: false,
        }]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        if self.greedy && s.now >= self.horizon {
            return; // terminal: the liveness property is judged here
        }
        if self.stop_at_violation && (s.over || s.lease_broken) {
            return;
        }
        let f = &self.faults;
        let fault = self.can_fault(s);
        for (i, p) in s.procs.iter().enumerate() {
            if p.runs() {
                if p.live < p.cap {
                    actions.push(Action::Admit(i));
                }
                if self.closes && !self.greedy && p.live > 0 {
                    actions.push(Action::Close(i));
                }
                if !p.stalled && !p.rounded {
                    actions.push(Action::Round(i));
                }
                if fault && f.kill {
                    actions.push(Action::Kill(i));
                }
                if fault && f.stop {
                    actions.push(Action::Stop(i));
                }
                if fault && f.stall && !p.stalled && !p.rounded {
                    actions.push(Action::Stall(i));
                }
                if p.stalled {
                    actions.push(Action::Unstall(i));
                }
            } else if p.alive {
                actions.push(Action::Cont(i));
            } else {
                actions.push(Action::Restart(i));
            }
        }
        if s.redis.up {
            if fault && f.redis_freeze {
                actions.push(Action::RedisDown(Outage::Freeze));
            }
            if fault && f.redis_restart_empty {
                actions.push(Action::RedisDown(Outage::RestartEmpty));
            }
            if fault && f.redis_restart_latest {
                actions.push(Action::RedisDown(Outage::RestartLatest));
            }
            if f.redis_restart_snapshot {
                if s.redis.snapshot.is_none() && s.faults_used < self.max_faults {
                    actions.push(Action::Snapshot);
                } else if fault && s.redis.snapshot.is_some() {
                    actions.push(Action::RedisDown(Outage::RestartSnapshot));
                }
            }
        } else {
            actions.push(Action::RedisUp);
        }
        if fault && f.lower_limit.is_some() && s.limit == self.limit {
            actions.push(Action::LowerLimit);
        }
        if self.tick_allowed(s) {
            actions.push(Action::Tick);
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        match action {
            Action::Admit(i) => {
                let p = &s.procs[i];
                if !self.holds_lease(&s, p) {
                    s.lease_broken = true;
                }
                let limit_seen = p.limit_seen;
                s.procs[i].live += 1;
                let open = s.open();
                if open > limit_seen {
                    s.over = true;
                }
                if open >= s.limit {
                    s.full = true;
                    if s.crashed {
                        s.recovered = true;
                    }
                }
            }
            Action::Close(i) => s.procs[i].live -= 1,
            Action::Round(i) => self.round(&mut s, i),
            Action::Tick => {
                s.now += 1;
                let now = s.now;
                for p in &mut s.procs {
                    p.rounded = false;
                    if !p.frozen {
                        self.watchdog(p, now);
                    }
                }
            }
            Action::Kill(i) => {
                s.faults_used += 1;
                s.crashed = true;
                let p = &s.procs[i];
                let mut dead = Proc::new(p.id, p.token, s.limit);
                dead.alive = false;
                s.procs[i] = dead;
            }
            Action::Restart(i) => {
                s.procs[i] = Proc::new(s.procs[i].id, s.next_token, s.limit);
                s.next_token += 1;
            }
            Action::Stop(i) => {
                s.faults_used += 1;
                s.procs[i].frozen = true;
                s.procs[i].since = s.now;
            }
            Action::Cont(i) => {
                let now = s.now;
                let p = &mut s.procs[i];
                p.frozen = false;
                p.stalled = false;
                p.rounded = false;
                // The watchdog's time has passed while the process was stopped: it fires
                // first (optimistic: in a real process it races the workers).
                self.watchdog(p, now);
            }
            Action::Stall(i) => {
                s.faults_used += 1;
                s.procs[i].stalled = true;
                s.procs[i].since = s.now;
            }
            Action::Unstall(i) => {
                s.procs[i].stalled = false;
                s.procs[i].rounded = false;
            }
            Action::RedisDown(kind) => {
                s.faults_used += 1;
                let r = &mut s.redis;
                r.up = false;
                r.down_since = s.now;
                match kind {
                    Outage::Freeze => {}
                    Outage::RestartEmpty => {
                        r.data = Data::default();
                        r.run += 1;
                    }
                    Outage::RestartSnapshot => {
                        r.data = r.snapshot.clone().unwrap_or_default();
                        r.run += 1;
                    }
                    Outage::RestartLatest => r.run += 1,
                }
            }
            Action::RedisUp => s.redis.up = true,
            Action::Snapshot => s.redis.snapshot = Some(s.redis.data.clone()),
            Action::LowerLimit => {
                s.faults_used += 1;
                s.limit = self.faults.lower_limit.unwrap_or(s.limit);
            }
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        let mut props = vec![
            Property::always("no admission over the limit", |_, s: &State| !s.over),
            Property::always("no admission without a lease", |_, s: &State| {
                !s.lease_broken
            }),
            Property::sometimes("the pod fills up", |_, s: &State| s.full),
        ];
        if self.greedy {
            props.push(Property::eventually(
                "capacity returns after a crash",
                |m: &Ledger, s: &State| s.recovered || (s.now >= m.horizon && !s.crashed),
            ));
        }
        props
    }
}

/// A path as text, one line per step (the time and the open connections before it), cut after
/// the first state for which `until` holds (the violation).
pub fn describe(path: Path<State, Action>, until: impl Fn(&State) -> bool) -> String {
    let mut out = String::new();
    for (state, action) in path.into_vec() {
        match action {
            Some(a) if !until(&state) => {
                let _ = writeln!(out, "  t={} open={} {:?}", state.now, state.open(), a);
            }
            _ => {
                let _ = writeln!(
                    out,
                    "  then: t={} open={} limit={} (cap, live, share) per process={:?} redis={:?}",
                    state.now,
                    state.open(),
                    state.limit,
                    state
                        .procs
                        .iter()
                        .map(|p| (p.cap, p.live, p.share))
                        .collect::<Vec<_>>(),
                    state.redis.data.entries
                );
                break;
            }
        }
    }
    out
}
