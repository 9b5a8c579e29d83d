//! The bounded wait queue (`"queue": {"max_waiting": N, "timeout_ms": T}`), off by default.
//!
//! A WebSocket that finds no room on its cluster is paused (like global mode's borrow: Envoy's
//! per-stream scheduler, [`crate::filter::Resume`]) and put at the back of its cluster's queue.
//! One queue per cluster serves every Envoy worker (a mutex'd `VecDeque`), so the order is the
//! arrival order across workers. Admissions still go through core's lock-free acquire:
//!
//! - when a permit of the cluster is released, [`notify`] wakes the oldest waiter that is not
//!   already woken (event [`EVENT_WAKE`] on its scheduler); the waiter acquires on its own worker.
//!   If it gets a slot it leaves the queue and wakes the next one (which stays put if there is
//!   no room); if it loses the race it stays where it is (FIFO holds);
//! - a new WebSocket that arrives while others wait joins the back of the queue without trying
//!   to acquire (it would jump the queue), and wakes the head, so room that appeared without a
//!   release (a new pod, a raised limit) is used;
//! - one background thread (started with the first waiter) removes waiters whose deadline has
//!   passed and commits [`EVENT_TIMEOUT`]: the stream answers `503` `queue_timeout` even when
//!   no slot ever frees;
//! - a stream destroyed while waiting (the client hung up) leaves the queue in its `destroy`;
//! - in global mode ([`enqueue`] got an active [`Borrower`]) room can appear elsewhere in the
//!   fleet: a slot freed through another Envoy is no release here, and this instance's cap only
//!   rises when its coordinator claims more share. So while a cluster has waiters, the timeout
//!   thread asks the coordinator for as many slots as there are waiters, one borrow round at a
//!   time, every [`Borrower::retry_period_ms`], and never while a woken waiter is still
//!   acquiring; a round that succeeds (a grant, or a cap that a refresh already raised) wakes
//!   the oldest waiter, whose admission wakes the next one.
//!
//! Every commit happens under the waiter's [`ResumeSlot`] lock, which the stream also holds
//! when it deletes its scheduler, so a scheduler is never used after its deletion.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use std::sync::Arc;

use crate::filter::ResumeSlot;
use crate::global::Borrower;
use wscap_global::BorrowOutcome;

/// Event id: a slot may be free, try to acquire.
pub const EVENT_WAKE: u64 = 10;
/// Event id: the wait's deadline passed.
pub const EVENT_TIMEOUT: u64 = 11;

/// The largest accepted `max_waiting`.
pub const MAX_WAITING: u32 = 1_000_000;
/// The largest accepted `timeout_ms` (one hour).
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;

/// `"queue": {"max_waiting": N, "timeout_ms": T}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    /// How many WebSockets may wait on one cluster at once; one more is refused at once with
    /// `queue_full`.
    pub max_waiting: u32,
    /// How long one may wait, in milliseconds, before its `503 queue_timeout`.
    pub timeout_ms: u64,
}

impl QueueSettings {
    /// Checks the bounds: `max_waiting` 1..=1000000, `timeout_ms` 1..=3600000.
    pub fn validate(self) -> Result<Self, String> {
        if !(1..=MAX_WAITING).contains(&self.max_waiting) {
            return Err(format!(
                "\"queue\".\"max_waiting\" must be between 1 and {MAX_WAITING} (got {})",
                self.max_waiting
            ));
        }
        if !(1..=MAX_TIMEOUT_MS).contains(&self.timeout_ms) {
            return Err(format!(
                "\"queue\".\"timeout_ms\" must be between 1 and {MAX_TIMEOUT_MS} (got {})",
                self.timeout_ms
            ));
        }
        Ok(self)
    }
}

struct Waiter {
    ticket: u64,
    slot: ResumeSlot,
    since: Instant,
    deadline: Instant,
    /// A wake event is in flight to this waiter.
    woken: bool,
}

#[derive(Default)]
struct ClusterQueue {
    waiters: VecDeque<Waiter>,
    timed_out: u64,
    full: u64,
    admitted: u64,
    /// The largest `max_waiting` seen for this cluster (for `/wscap`).
    max_waiting: u32,
    /// Global mode: where waiters ask the fleet for room (the last active borrower enqueued).
    fleet: Option<Arc<dyn Borrower>>,
    /// A fleet borrow round for the waiters is in flight.
    borrowing: bool,
    /// When the next fleet borrow round may start.
    next_borrow: Option<Instant>,
    /// Fleet borrow rounds that found room for the waiters.
    fleet_grants: u64,
}

struct Queues {
    clusters: Mutex<HashMap<String, ClusterQueue>>,
    /// Wakes the timeout thread when an earlier deadline arrives.
    changed: Condvar,
}

static QUEUES: OnceLock<Queues> = OnceLock::new();
static NEXT_TICKET: AtomicU64 = AtomicU64::new(1);
/// Period at which the timeout thread wakes each queue's head while a per-pod admission rate
/// or warmup is configured (room may be there, held back only by the rate).
pub const RETRY_TICK_MS: u64 = 20;
static RETRY_TICK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A config with an admission rate exists: waiters are retried every [`RETRY_TICK_MS`] ms.
pub fn enable_retry_tick() {
    RETRY_TICK.store(true, Ordering::Relaxed);
}

/// Waiters over every cluster: lets [`notify`] return at once when nobody waits (no lock).
static WAITING: AtomicU64 = AtomicU64::new(0);

/// The most wait samples kept between two takes (the bootstrap timer takes them every
/// `stats_interval_ms`); more are dropped.
pub const MAX_WAIT_SAMPLES: usize = 65_536;

/// One finished wait (admitted or timed out): cluster and milliseconds waited, for the
/// `wscap_queue_wait_ms{cluster}` histogram.
static WAIT_SAMPLES: Mutex<Vec<(String, u64)>> = Mutex::new(Vec::new());

fn record_wait(cluster: &str, since: Instant) {
    let ms = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut samples = WAIT_SAMPLES.lock().unwrap_or_else(PoisonError::into_inner);
    if samples.len() < MAX_WAIT_SAMPLES {
        samples.push((cluster.to_owned(), ms));
    }
}

/// The waits that ended (admitted or timed out) since the last call: `(cluster, ms)`.
pub fn take_wait_samples() -> Vec<(String, u64)> {
    std::mem::take(&mut *WAIT_SAMPLES.lock().unwrap_or_else(PoisonError::into_inner))
}

fn queues() -> &'static Queues {
    QUEUES.get_or_init(|| {
        let q = Queues {
            clusters: Mutex::new(HashMap::new()),
            changed: Condvar::new(),
        };
        if let Err(e) = std::thread::Builder::new()
            .name("wscap-queue".to_owned())
            .spawn(timeout_loop)
        {
            crate::log(
                crate::Level::Error,
                &format!("wscap: cannot start the queue timeout thread: {e}"),
            );
        }
        q
    })
}

fn commit(slot: &ResumeSlot, event: u64) {
    let resume = slot.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(r) = resume.as_ref() {
        r.commit(event);
    }
}

/// What [`enqueue`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// The stream waits with this ticket.
    Waiting(u64),
    /// `max_waiting` streams already wait: refuse with `queue_full`.
    Full,
}

/// Puts a paused stream at the back of `cluster`'s queue. When `wake_head` is set (the stream
/// did not try to acquire because others wait) the head is woken to try. `fleet`: global
/// mode's borrower (active), through which the waiters ask the fleet for room.
pub fn enqueue(
    cluster: &str,
    settings: QueueSettings,
    slot: ResumeSlot,
    wake_head: bool,
    fleet: Option<Arc<dyn Borrower>>,
) -> Enqueued {
    let q = queues();
    let mut all = q.clusters.lock().unwrap_or_else(PoisonError::into_inner);
    let cq = all.entry(cluster.to_owned()).or_default();
    cq.max_waiting = cq.max_waiting.max(settings.max_waiting);
    if fleet.is_some() {
        cq.fleet = fleet;
    }
    if cq.waiters.len() >= settings.max_waiting as usize {
        cq.full += 1;
        return Enqueued::Full;
    }
    let ticket = NEXT_TICKET.fetch_add(1, Ordering::Relaxed);
    cq.waiters.push_back(Waiter {
        ticket,
        slot,
        since: Instant::now(),
        deadline: Instant::now() + Duration::from_millis(settings.timeout_ms),
        woken: false,
    });
    WAITING.fetch_add(1, Ordering::Relaxed);
    if wake_head {
        wake_one(cq);
    }
    q.changed.notify_one();
    Enqueued::Waiting(ticket)
}

fn wake_one(cq: &mut ClusterQueue) {
    if let Some(w) = cq.waiters.iter_mut().find(|w| !w.woken) {
        w.woken = true;
        commit(&w.slot, EVENT_WAKE);
    }
}

/// Are streams waiting on `cluster`? Cheap when nobody waits anywhere.
pub fn has_waiters(cluster: &str) -> bool {
    if WAITING.load(Ordering::Relaxed) == 0 {
        return false;
    }
    let all = queues()
        .clusters
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    all.get(cluster).is_some_and(|c| !c.waiters.is_empty())
}

/// A slot of `cluster` may have freed: wakes its oldest waiter that is not already woken.
pub fn notify(cluster: &str) {
    if WAITING.load(Ordering::Relaxed) == 0 {
        return;
    }
    let mut all = queues()
        .clusters
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(cq) = all.get_mut(cluster) {
        wake_one(cq);
    }
}

/// The woken waiter `ticket` found no room: it stays at its place, ready for the next wake.
/// False when it is no longer queued (its deadline passed meanwhile).
pub fn stay(cluster: &str, ticket: u64) -> bool {
    let mut all = queues()
        .clusters
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let Some(cq) = all.get_mut(cluster) else {
        return false;
    };
    match cq.waiters.iter_mut().find(|w| w.ticket == ticket) {
        Some(w) => {
            w.woken = false;
            true
        }
        None => false,
    }
}

/// Removes `ticket` from the queue (admitted, or the stream is gone). With `admitted`, the
/// next waiter is woken: there may be more room.
pub fn leave(cluster: &str, ticket: u64, admitted: bool) {
    let mut all = queues()
        .clusters
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let Some(cq) = all.get_mut(cluster) else {
        return;
    };
    if let Some(i) = cq.waiters.iter().position(|w| w.ticket == ticket) {
        if let Some(w) = cq.waiters.remove(i) {
            if admitted {
                record_wait(cluster, w.since);
            }
        }
        WAITING.fetch_sub(1, Ordering::Relaxed);
    }
    if admitted {
        cq.admitted += 1;
        wake_one(cq);
    }
}

/// One cluster's queue, for `/wscap`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct QueueView {
    /// Streams waiting now.
    pub waiting: usize,
    /// The configured bound (the largest of the configs that queued here).
    pub max_waiting: u32,
    /// Waiters admitted since start.
    pub admitted: u64,
    /// Waiters refused with `queue_timeout` since start.
    pub timed_out: u64,
    /// Streams refused with `queue_full` since start.
    pub full: u64,
    /// How long the oldest waiter has waited, in milliseconds.
    pub oldest_wait_ms: u64,
    /// Global mode: fleet borrow rounds for the waiters that found room (each woke the oldest
    /// waiter).
    pub fleet_grants: u64,
}

/// Every cluster that ever queued, by name.
pub fn views() -> Vec<(String, QueueView)> {
    let Some(q) = QUEUES.get() else {
        return Vec::new();
    };
    let all = q.clusters.lock().unwrap_or_else(PoisonError::into_inner);
    let now = Instant::now();
    let mut v: Vec<(String, QueueView)> = all
        .iter()
        .map(|(name, cq)| {
            (
                name.clone(),
                QueueView {
                    waiting: cq.waiters.len(),
                    max_waiting: cq.max_waiting,
                    admitted: cq.admitted,
                    timed_out: cq.timed_out,
                    full: cq.full,
                    fleet_grants: cq.fleet_grants,
                    oldest_wait_ms: cq.waiters.front().map_or(0, |w| {
                        u64::try_from(now.saturating_duration_since(w.since).as_millis())
                            .unwrap_or(u64::MAX)
                    }),
                },
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Adds `"queues": {cluster: QueueView}` to `/wscap`'s JSON document (only when a queue was
/// ever used, so the document is unchanged without the setting).
pub fn add_to_json(json: String) -> String {
    let views = views();
    if views.is_empty() {
        return json;
    }
    let Ok(mut doc) = serde_json::from_str::<serde_json::Value>(&json) else {
        return json;
    };
    if let Some(o) = doc.as_object_mut() {
        let map: serde_json::Map<String, serde_json::Value> = views
            .into_iter()
            .map(|(n, v)| (n, serde_json::to_value(v).unwrap_or_default()))
            .collect();
        o.insert("queues".to_owned(), serde_json::Value::Object(map));
    }
    format!("{doc}\n")
}

/// Adds `wscap_waiting{cluster}` to `/wscap?format=prometheus`.
pub fn add_to_prometheus(mut text: String) -> String {
    let views = views();
    if views.is_empty() {
        return text;
    }
    text.push_str("# HELP wscap_waiting WebSockets waiting in the cluster's queue.\n");
    text.push_str("# TYPE wscap_waiting gauge\n");
    for (name, v) in views {
        let name = name.replace('\\', "\\\\").replace('"', "\\\"");
        text.push_str(&format!(
            "wscap_waiting{{cluster=\"{name}\"}} {}\n",
            v.waiting
        ));
    }
    text
}

/// The timeout thread: sleeps until the earliest deadline, then refuses expired waiters; in
/// global mode it also starts the fleet borrow rounds of clusters that have waiters.
fn timeout_loop() {
    let q = queues();
    let mut all = q.clusters.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let tick = RETRY_TICK.load(Ordering::Relaxed);
        let mut borrows: Vec<(String, Arc<dyn Borrower>, u32)> = Vec::new();
        for (name, cq) in all.iter_mut() {
            // Rate-limited room: retry the head (only the head, to keep the order).
            if tick {
                if let Some(w) = cq.waiters.front_mut().filter(|w| !w.woken) {
                    w.woken = true;
                    commit(&w.slot, EVENT_WAKE);
                }
            }
            let mut kept = VecDeque::with_capacity(cq.waiters.len());
            for w in cq.waiters.drain(..) {
                if w.deadline <= now {
                    commit(&w.slot, EVENT_TIMEOUT);
                    record_wait(name, w.since);
                    cq.timed_out += 1;
                    WAITING.fetch_sub(1, Ordering::Relaxed);
                } else {
                    next = Some(next.map_or(w.deadline, |n| n.min(w.deadline)));
                    kept.push_back(w);
                }
            }
            cq.waiters = kept;
            if let Some(fleet) = cq.fleet.clone().filter(|f| f.active()) {
                let period = Duration::from_millis(fleet.retry_period_ms().max(1));
                if cq.waiters.is_empty() {
                    cq.next_borrow = None;
                } else if cq.borrowing || cq.waiters.iter().any(|w| w.woken) {
                    // Not while a woken waiter is acquiring (a round would count its room
                    // again and wake the next one, who could take the slot first): look again
                    // in a period (a waiter that stays in place notifies nobody).
                    let again = now + period;
                    next = Some(next.map_or(again, |n| n.min(again)));
                } else {
                    let due = *cq.next_borrow.get_or_insert(now + period);
                    if due <= now {
                        cq.borrowing = true;
                        cq.next_borrow = Some(now + period);
                        let n = u32::try_from(cq.waiters.len()).unwrap_or(u32::MAX);
                        borrows.push((name.clone(), fleet, n));
                    } else {
                        next = Some(next.map_or(due, |n| n.min(due)));
                    }
                }
            }
        }
        if tick && next.is_some() {
            next = next.map(|n| n.min(now + Duration::from_millis(RETRY_TICK_MS)));
        }
        if !borrows.is_empty() {
            // The borrower may answer at once, on this thread: never under the queues' lock.
            drop(all);
            for (cluster, fleet, n) in borrows {
                fleet_borrow(&cluster, fleet.as_ref(), n);
            }
            all = q.clusters.lock().unwrap_or_else(PoisonError::into_inner);
            continue;
        }
        all = match next {
            Some(t) => {
                q.changed
                    .wait_timeout(all, t.saturating_duration_since(Instant::now()))
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
            None => q.changed.wait(all).unwrap_or_else(PoisonError::into_inner),
        };
    }
}

/// One fleet borrow round for `n` waiters of `cluster`: `n` requests (the coordinator answers
/// them in one round, asking the ledger for `n` slots). When the last answer arrives the round
/// is over; if any was a grant the oldest waiter is woken (its admission wakes the next one,
/// so the order holds however many slots came).
fn fleet_borrow(cluster: &str, fleet: &dyn Borrower, n: u32) {
    struct Round {
        left: std::sync::atomic::AtomicU32,
        granted: std::sync::atomic::AtomicBool,
        cluster: String,
    }
    let round = Arc::new(Round {
        left: std::sync::atomic::AtomicU32::new(n.max(1)),
        granted: std::sync::atomic::AtomicBool::new(false),
        cluster: cluster.to_owned(),
    });
    for _ in 0..n.max(1) {
        let round = Arc::clone(&round);
        fleet.request_borrow(
            cluster,
            Box::new(move |outcome| {
                if outcome == BorrowOutcome::Granted {
                    round.granted.store(true, Ordering::Relaxed);
                }
                if round.left.fetch_sub(1, Ordering::AcqRel) != 1 {
                    return;
                }
                let q = queues();
                let mut all = q.clusters.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(cq) = all.get_mut(&round.cluster) {
                    cq.borrowing = false;
                    if round.granted.load(Ordering::Relaxed) {
                        cq.fleet_grants += 1;
                        wake_one(cq);
                    }
                }
                q.changed.notify_one();
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    struct Log(Arc<Mutex<Vec<(u32, u64)>>>, u32);
    impl crate::filter::Resume for Log {
        fn commit(&self, event_id: u64) {
            self.0.lock().unwrap().push((self.1, event_id));
        }
    }

    fn slot(log: &Arc<Mutex<Vec<(u32, u64)>>>, who: u32) -> ResumeSlot {
        Arc::new(Mutex::new(Some(Box::new(Log(Arc::clone(log), who)))))
    }

    #[test]
    fn settings_are_checked() {
        let ok = QueueSettings {
            max_waiting: 3,
            timeout_ms: 100,
        };
        assert!(ok.validate().is_ok());
        assert!(QueueSettings {
            max_waiting: 0,
            ..ok
        }
        .validate()
        .is_err());
        assert!(QueueSettings {
            timeout_ms: 0,
            ..ok
        }
        .validate()
        .is_err());
    }

    #[test]
    fn filter_and_route_configs_parse_the_new_fields() {
        use crate::config::{parse_filter, parse_route};
        let f = parse_filter(
            br#"{"max_connections_per_host":3,"queue":{"max_waiting":5,"timeout_ms":900},
                "max_new_per_second_per_host":40,"warmup_seconds":30,"refuse_with":"close_1013"}"#,
        )
        .unwrap();
        assert_eq!(
            f.queue,
            Some(QueueSettings {
                max_waiting: 5,
                timeout_ms: 900
            })
        );
        assert_eq!(f.rate.per_second, Some(40));
        assert_eq!(f.rate.warmup_seconds, Some(30));
        assert_eq!(f.refuse_with, crate::refuse::RefuseWith::Close1013);
        let off = parse_filter(br#"{"max_connections_per_host":3}"#).unwrap();
        assert_eq!(off.queue, None);
        assert!(!off.rate.is_on());
        assert_eq!(off.refuse_with, crate::refuse::RefuseWith::Status503);
        for bad in [
            r#"{"max_connections_per_host":3,"queue":{"max_waiting":0,"timeout_ms":9}}"#,
            r#"{"max_connections_per_host":3,"queue":{"max_waiting":1}}"#,
            r#"{"max_connections_per_host":3,"queue":{"max_waiting":1,"timeout_ms":9,"x":1}}"#,
            r#"{"max_connections_per_host":3,"max_new_per_second_per_host":0}"#,
            r#"{"max_connections_per_host":3,"warmup_seconds":-5}"#,
            r#"{"max_connections_per_host":3,"refuse_with":"close"}"#,
        ] {
            assert!(parse_filter(bad.as_bytes()).is_err(), "{bad}");
        }
        let r = parse_route(br#"{"queue":{"max_waiting":2,"timeout_ms":50}}"#).unwrap();
        assert_eq!(r.queue.flatten().map(|q| q.max_waiting), Some(2));
    }

    #[test]
    fn fifo_full_leave_and_timeout() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let s = QueueSettings {
            max_waiting: 3,
            timeout_ms: 60_000,
        };
        let c = "unit-fifo";
        let t: Vec<u64> = (0..3)
            .map(|i| match enqueue(c, s, slot(&log, i), false, None) {
                Enqueued::Waiting(t) => t,
                Enqueued::Full => panic!("full"),
            })
            .collect();
        assert_eq!(enqueue(c, s, slot(&log, 9), false, None), Enqueued::Full);
        assert!(has_waiters(c));
        // Waiter 1 hangs up; two releases wake 0 then 2, in order.
        leave(c, t[1], false);
        notify(c);
        notify(c);
        notify(c); // nobody left to wake
        assert_eq!(*log.lock().unwrap(), vec![(0, EVENT_WAKE), (2, EVENT_WAKE)]);
        // 0 lost the race and stays; 2 got in.
        assert!(stay(c, t[0]));
        leave(c, t[2], true);
        assert_eq!(log.lock().unwrap().last(), Some(&(0, EVENT_WAKE)));
        let v = views().into_iter().find(|(n, _)| n == c).unwrap().1;
        assert_eq!((v.waiting, v.admitted, v.full), (1, 1, 1));
        leave(c, t[0], false);
        assert!(!has_waiters(c));

        // The timeout thread refuses an expired waiter even though nothing is released.
        let short = QueueSettings {
            max_waiting: 1,
            timeout_ms: 20,
        };
        let log2 = Arc::new(Mutex::new(Vec::new()));
        enqueue("unit-timeout", short, slot(&log2, 7), false, None);
        let deadline = Instant::now() + Duration::from_secs(10);
        while log2.lock().unwrap().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(*log2.lock().unwrap(), vec![(7, EVENT_TIMEOUT)]);
        assert!(!has_waiters("unit-timeout"));
    }

    /// A fleet that answers every borrow at once with `outcome`, counting the requests.
    #[derive(Debug)]
    struct Fleet {
        outcome: Mutex<BorrowOutcome>,
        asked: std::sync::atomic::AtomicU64,
    }
    impl Borrower for Fleet {
        fn active(&self) -> bool {
            true
        }
        fn request_borrow(&self, _cluster: &str, done: crate::global::BorrowDone) {
            self.asked.fetch_add(1, Ordering::Relaxed);
            let o = *self.outcome.lock().unwrap();
            done(o);
        }
        fn retry_period_ms(&self) -> u64 {
            5
        }
    }

    fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn in_global_mode_a_fleet_grant_wakes_the_oldest_waiter_only() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let fleet = Arc::new(Fleet {
            outcome: Mutex::new(BorrowOutcome::Full),
            asked: std::sync::atomic::AtomicU64::new(0),
        });
        let s = QueueSettings {
            max_waiting: 5,
            timeout_ms: 60_000,
        };
        let c = "unit-fleet";
        let t: Vec<u64> = (0..3)
            .map(|i| {
                let f: Arc<dyn Borrower> = fleet.clone();
                match enqueue(c, s, slot(&log, i), false, Some(f)) {
                    Enqueued::Waiting(t) => t,
                    Enqueued::Full => panic!("full"),
                }
            })
            .collect();
        // The fleet is full: rounds repeat (three requests each, one per waiter), nobody wakes.
        wait_for("two full rounds", || {
            fleet.asked.load(Ordering::Relaxed) >= 6
        });
        assert_eq!(fleet.asked.load(Ordering::Relaxed) % 3, 0);
        assert!(log.lock().unwrap().is_empty(), "woken without room");
        // Room appears in the fleet: the oldest waiter (only) is woken.
        *fleet.outcome.lock().unwrap() = BorrowOutcome::Granted;
        wait_for("the head woken", || !log.lock().unwrap().is_empty());
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(*log.lock().unwrap(), vec![(0, EVENT_WAKE)]);
        // Its admission wakes the next one.
        leave(c, t[0], true);
        assert_eq!(log.lock().unwrap().last(), Some(&(1, EVENT_WAKE)));
        let v = views().into_iter().find(|(n, _)| n == c).unwrap().1;
        assert!(v.fleet_grants >= 1, "{v:?}");
        leave(c, t[1], true);
        leave(c, t[2], false);
        // No waiters, no more rounds.
        std::thread::sleep(Duration::from_millis(20));
        let asked = fleet.asked.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(fleet.asked.load(Ordering::Relaxed), asked);
        // Two admitted waits were recorded for the histogram.
        let waits = take_wait_samples();
        assert_eq!(waits.iter().filter(|(n, _)| n == c).count(), 2, "{waits:?}");
    }
}
