//! The coordinator: a thread of its own that keeps this instance's share of every pod in the
//! ledger and holds local admissions to it through core's per-host caps. Envoy's worker threads
//! never wait on Redis; they only see caps rise and fall.
//!
//! Order of operations, which is what keeps the fleet exact:
//! - growing: the ledger grants first, then the local cap rises to the grant;
//! - shrinking: the local cap falls first ([`wscap_core::Cluster::set_host_cap`] returns the live
//!   count after it took effect), then the ledger is told the new share, never below live.
//!
//! So at every moment, on every instance, local cap ≤ share held in the ledger and live ≤ share
//! (an admission needs live < cap), and the ledger's shares sum to at most the pod's limit. (The
//! cap may sit below live only after the limit was lowered: see `round`.)

use std::collections::{HashMap, HashSet};
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use serde::Serialize;
use wscap_core::{HostAddr, Registry};

use crate::{FailMode, GlobalConfig, InstancePart, Ledger, LedgerError};

/// A pod: cluster name and host address.
type PodId = (String, String);

#[derive(Debug, Clone, Default)]
struct PodState {
    /// The share the ledger last granted (what we believe Redis holds for us).
    share: u32,
    /// The local cap in force, when `cap_known`.
    cap: u32,
    /// Whether `cap` is what core holds. False for a pod first seen and after a round panicked
    /// (core may then hold any cap this coordinator wrote): the next round first lowers core's
    /// cap to what the ledger surely granted.
    cap_known: bool,
    /// Until when the share is surely still ours on the server: the instant the last successful
    /// claim was sent, plus the lease ttl.
    lease_until: Option<Instant>,
    /// Another instance recently wanted more than it got here: keep no spare share.
    in_demand: bool,
    parts: Vec<InstancePart>,
}

/// What a borrow request learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BorrowOutcome {
    /// Some pod of the cluster got more room on this instance: admit again.
    Granted,
    /// The ledger had no room left on any pod.
    Full,
    /// Redis could not be reached; the fail mode decided.
    Unavailable,
}

impl BorrowOutcome {
    /// The outcome as a metric label: `granted`, `full` or `unavailable`.
    pub fn as_str(self) -> &'static str {
        match self {
            BorrowOutcome::Granted => "granted",
            BorrowOutcome::Full => "full",
            BorrowOutcome::Unavailable => "unavailable",
        }
    }
}

type BorrowCallback = Box<dyn FnOnce(BorrowOutcome) + Send>;

/// One answered borrow, as [`Coordinator::take_borrow_samples`] hands it out: which cluster,
/// what it learned, and how long the paused stream waited for the answer (from the request to
/// the callback, queueing behind a refresh round included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BorrowSample {
    /// The cluster the stream wanted room on.
    pub cluster: String,
    /// What the borrow learned.
    pub outcome: BorrowOutcome,
    /// Wait in microseconds.
    pub micros: u64,
}

/// At most this many borrow samples wait to be taken; more are counted in
/// [`FleetView::borrow_samples_dropped`] and not kept (the timer that takes them runs every
/// `stats_interval_ms`, so this is only reached when nothing takes them).
pub const MAX_BORROW_SAMPLES: usize = 65_536;

/// The registry a coordinator drives: `&'static Registry` (the Envoy module's static) or
/// `Arc<Registry>` (the C API's, whose owner may free its handle first).
type RegistryHandle = Box<dyn Deref<Target = Registry> + Send + Sync>;

struct Shared {
    config: GlobalConfig,
    registry: RegistryHandle,
    requests: Mutex<Vec<(String, Instant, BorrowCallback)>>,
    wake: Condvar,
    stop: AtomicBool,
    view: Mutex<FleetView>,
    borrows: AtomicU64,
    /// Claims that failed (Redis unreachable, timed out, or out of protocol).
    claim_errors: AtomicU64,
    /// Answered borrows not yet taken by [`Coordinator::take_borrow_samples`].
    samples: Mutex<Vec<BorrowSample>>,
    samples_dropped: AtomicU64,
    /// When a refresh round last reached Redis for every pod (`None`: never yet).
    last_ok_round: Mutex<Option<Instant>>,
    started: Instant,
    /// Rounds that panicked (and were recovered from).
    panics: AtomicU64,
    /// Test-only fault injection: this many rounds still to panic (see
    /// [`Coordinator::inject_round_panics`]).
    inject_panics: AtomicU64,
    /// When each pod's share lease ends, as the coordinator last renewed it: the lease watchdog
    /// ([`watch_leases`]) lowers a pod's cap at that instant, whatever the rounds are doing.
    leases: Mutex<HashMap<PodId, Instant>>,
}

/// The fleet as this instance last saw it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FleetView {
    /// This instance's id.
    pub instance: String,
    /// This process's token in the ledger ([`InstancePart::process`]).
    pub process: String,
    /// Whether the last round reached Redis.
    pub redis_ok: bool,
    /// The last error, if the last round failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Redis commands sent so far.
    pub redis_commands: u64,
    /// Borrow requests answered so far (the requests of one cluster waiting together share
    /// one round).
    pub borrows: u64,
    /// Claims that failed so far (Redis unreachable, timed out, or an out-of-protocol reply).
    pub claim_errors: u64,
    /// Borrow samples not kept because nobody took them (see [`MAX_BORROW_SAMPLES`]).
    pub borrow_samples_dropped: u64,
    /// Coordinator rounds that panicked so far (a bug: each is caught, its message kept in
    /// `last_error`, the borrows it served answered `unavailable`, and the next round starts
    /// from caps it writes afresh).
    pub panics: u64,
    /// Per pod, sorted by cluster then address.
    pub pods: Vec<FleetPod>,
}

/// One pod across the fleet.
#[derive(Debug, Clone, Serialize)]
pub struct FleetPod {
    /// Cluster name.
    pub cluster: String,
    /// `ip:port`.
    pub address: String,
    /// The pod's limit.
    pub limit: u32,
    /// Live connections summed over the live instances.
    pub live: u32,
    /// Shares summed over the live instances.
    pub shares: u32,
    /// This instance's share and local cap.
    pub my_share: u32,
    /// Each live instance's part.
    pub instances: Vec<InstancePart>,
}

/// Runs global mode for one instance. Dropping it stops the thread (leases then expire on
/// their own, as they do when the process dies).
pub struct Coordinator {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    watchdog: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("instance", &self.shared.view.lock().instance)
            .finish()
    }
}

impl Coordinator {
    /// Caps every host of `registry` at 0 (nothing is admitted before the ledger grants a
    /// share) and starts the coordinator thread.
    pub fn start(config: GlobalConfig, registry: &'static Registry) -> Result<Self, LedgerError> {
        Self::start_with(config, registry)
    }

    /// [`Coordinator::start`] over any shared handle to a registry, e.g. an `Arc<Registry>`:
    /// the coordinator keeps the handle (so the registry lives at least as long as it) and
    /// drops it when it stops.
    pub fn start_with<R>(config: GlobalConfig, registry: R) -> Result<Self, LedgerError>
    where
        R: Deref<Target = Registry> + Send + Sync + 'static,
    {
        config
            .validate()
            .map_err(|e| LedgerError::Redis(e.to_string()))?;
        let ledger = Ledger::new(&config)?;
        registry.set_default_cap(Some(0));
        let shared = Arc::new(Shared {
            view: Mutex::new(FleetView {
                instance: ledger.instance().to_owned(),
                process: ledger.process().to_owned(),
                ..FleetView::default()
            }),
            config,
            registry: Box::new(registry),
            requests: Mutex::new(Vec::new()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            borrows: AtomicU64::new(0),
            claim_errors: AtomicU64::new(0),
            samples: Mutex::new(Vec::new()),
            samples_dropped: AtomicU64::new(0),
            last_ok_round: Mutex::new(None),
            started: Instant::now(),
            panics: AtomicU64::new(0),
            inject_panics: AtomicU64::new(0),
            leases: Mutex::new(HashMap::new()),
        });
        let watchdog = std::thread::Builder::new()
            .name("wscap-leases".to_owned())
            .spawn({
                let shared = Arc::clone(&shared);
                move || watch_leases(&shared)
            })
            .map_err(|e| LedgerError::Redis(format!("cannot start the lease watchdog: {e}")))?;
        let thread = std::thread::Builder::new()
            .name("wscap-global".to_owned())
            .spawn({
                let shared = Arc::clone(&shared);
                move || run(&shared, ledger)
            })
            .map_err(|e| LedgerError::Redis(format!("cannot start the coordinator thread: {e}")))?;
        Ok(Coordinator {
            shared,
            thread: Some(thread),
            watchdog: Some(watchdog),
        })
    }

    /// Asks for more room on `cluster`; `done` runs on the coordinator thread once the ledger
    /// answered (one round trip when a pod has room). The caller then admits again.
    pub fn request_borrow(&self, cluster: &str, done: impl FnOnce(BorrowOutcome) + Send + 'static) {
        self.shared
            .requests
            .lock()
            .push((cluster.to_owned(), Instant::now(), Box::new(done)));
        self.shared.wake.notify_one();
    }

    /// The fleet as last seen.
    pub fn fleet_view(&self) -> FleetView {
        self.shared.view.lock().clone()
    }

    /// The borrows answered since the last call, oldest first (at most
    /// [`MAX_BORROW_SAMPLES`]).
    pub fn take_borrow_samples(&self) -> Vec<BorrowSample> {
        std::mem::take(&mut *self.shared.samples.lock())
    }

    /// Test-only fault injection, not part of the contract: the next `n` claims that Redis
    /// granted panic before the grant is applied, as a bug in a round would. Used by the tests
    /// that show a panicking round is survived.
    #[doc(hidden)]
    pub fn inject_round_panics(&self, n: u64) {
        self.shared.inject_panics.store(n, Ordering::Release);
    }

    /// How long ago a refresh round last renewed every lease of this instance in Redis (since
    /// the coordinator started, if none did yet). While it stays under the lease ttl, the
    /// shares this instance holds are surely still its own; past it, Redis may have expired
    /// them.
    pub fn lease_age(&self) -> std::time::Duration {
        let since = (*self.shared.last_ok_round.lock()).unwrap_or(self.shared.started);
        since.elapsed()
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        {
            let _requests = self.shared.requests.lock();
            self.shared.wake.notify_all();
        }
        for t in [self.thread.take(), self.watchdog.take()]
            .into_iter()
            .flatten()
        {
            let _ = t.join();
        }
    }
}

/// The lease watchdog (its own thread): at the instant a pod's share lease ends (as this
/// instance last renewed it, timed from before the claim was sent), the pod's cap falls to what
/// the fail mode allows a pod without a lease ([`unleased_cap`]), even while a round is still
/// under way: a round slower than the lease ttl (many pods, a slow link, a stalled connect) no
/// longer lets a cap outlive its lease. It only ever lowers a cap; the next successful claim
/// raises it again (under the same lock, so a renewal and an expiry never cross).
fn watch_leases(shared: &Shared) {
    let period =
        (shared.config.refresh() / 8).clamp(Duration::from_millis(2), Duration::from_millis(50));
    let fallback = unleased_cap(&shared.config);
    while !shared.stop.load(Ordering::Acquire) {
        std::thread::sleep(period);
        let now = Instant::now();
        let mut leases = shared.leases.lock();
        leases.retain(|(cluster, address), until| {
            if *until > now {
                return true;
            }
            if let (Some(c), Ok(addr)) = (
                shared.registry.cluster(cluster),
                address.parse::<HostAddr>(),
            ) {
                if let Some(cap) = c.host(&addr).map(|h| h.limit()) {
                    c.set_host_cap(&addr, Some(cap.min(fallback)));
                }
            }
            false
        });
    }
}

/// The most a pod's cap may be while this instance holds no lease on it: nothing under
/// `keep_share` and `reject`, `local_limit` under `local_limit`.
fn unleased_cap(config: &GlobalConfig) -> u32 {
    match config.fail_mode {
        FailMode::LocalLimit => config.local_limit.unwrap_or(0),
        FailMode::KeepShare | FailMode::Reject => 0,
    }
}

fn run(shared: &Shared, mut ledger: Ledger) {
    let mut pods: HashMap<PodId, PodState> = HashMap::new();
    let mut next_refresh = Instant::now();
    loop {
        let requests = {
            let mut requests = shared.requests.lock();
            while requests.is_empty()
                && !shared.stop.load(Ordering::Acquire)
                && Instant::now() < next_refresh
            {
                shared.wake.wait_until(&mut requests, next_refresh);
            }
            std::mem::take(&mut *requests)
        };
        if shared.stop.load(Ordering::Acquire) {
            for (_, _, done) in requests {
                answer(done, BorrowOutcome::Unavailable);
            }
            return;
        }
        if Instant::now() >= next_refresh {
            next_refresh = Instant::now() + shared.config.refresh();
            guarded_round(shared, &mut ledger, &mut pods, None);
        }
        // One round per cluster for all the streams waiting on it: a burst of N paused
        // streams asks the ledger for N more slots at once, not one at a time.
        let mut by_cluster: Vec<(String, Vec<(Instant, BorrowCallback)>)> = Vec::new();
        for (cluster, asked, done) in requests {
            match by_cluster.iter_mut().find(|(c, _)| *c == cluster) {
                Some((_, waiting)) => waiting.push((asked, done)),
                None => by_cluster.push((cluster, vec![(asked, done)])),
            }
        }
        for (cluster, waiting) in by_cluster {
            shared
                .borrows
                .fetch_add(waiting.len() as u64, Ordering::Relaxed);
            let wanted = u32::try_from(waiting.len()).unwrap_or(u32::MAX);
            let outcome = guarded_round(shared, &mut ledger, &mut pods, Some((&cluster, wanted)));
            let answered = Instant::now();
            {
                let mut samples = shared.samples.lock();
                for (asked, _) in &waiting {
                    if samples.len() < MAX_BORROW_SAMPLES {
                        samples.push(BorrowSample {
                            cluster: cluster.clone(),
                            outcome,
                            micros: u64::try_from(answered.duration_since(*asked).as_micros())
                                .unwrap_or(u64::MAX),
                        });
                    } else {
                        shared.samples_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            for (_, done) in waiting {
                answer(done, outcome);
            }
        }
    }
}

/// Runs a borrow's callback; a panic in it is caught (the coordinator thread must live on).
fn answer(done: BorrowCallback, outcome: BorrowOutcome) {
    if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| done(outcome))) {
        eprintln!(
            "wscap-global: a borrow callback panicked: {}",
            panic_message(p.as_ref())
        );
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

/// [`round`], surviving a panic in it: a bug must not end the thread silently (caps would
/// freeze and paused streams would wait forever). The panic is counted and kept in the fleet
/// view's `last_error`; a borrow round that panicked answers [`BorrowOutcome::Unavailable`];
/// every pod's local cap is then treated as unknown, so the next round first lowers it to what
/// the ledger surely granted before raising it again (exactness holds across the panic).
fn guarded_round(
    shared: &Shared,
    ledger: &mut Ledger,
    pods: &mut HashMap<PodId, PodState>,
    borrow: Option<(&str, u32)>,
) -> BorrowOutcome {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        round(shared, ledger, pods, borrow)
    })) {
        Ok(outcome) => outcome,
        Err(p) => {
            let msg = panic_message(p.as_ref());
            let n = shared.panics.fetch_add(1, Ordering::Relaxed) + 1;
            eprintln!("wscap-global: a coordinator round panicked ({n} so far), recovering: {msg}");
            for pod in pods.values_mut() {
                // The round may have stopped anywhere between a cap and the ledger: forget
                // both (conservative: no keep_share credit until Redis answers again).
                pod.cap = 0;
                pod.cap_known = false;
                pod.share = 0;
                pod.lease_until = None;
            }
            shared.leases.lock().clear();
            let mut view = shared.view.lock();
            view.panics = n;
            view.last_error = Some(format!("coordinator round panicked: {msg}"));
            BorrowOutcome::Unavailable
        }
    }
}

/// One pass over the registry's pods (or, for a borrow, over one cluster's pods until one grants
/// more room). Returns what a borrow learned.
/// `field` summed (saturating) over the parts of a pod that other processes hold.
fn others_sum(
    parts: &[InstancePart],
    ledger: &Ledger,
    field: impl Fn(&InstancePart) -> u32,
) -> u32 {
    parts
        .iter()
        .filter(|p| !ledger.is_mine(p))
        .map(field)
        .fold(0, u32::saturating_add)
}

fn round(
    shared: &Shared,
    ledger: &mut Ledger,
    pods: &mut HashMap<PodId, PodState>,
    borrow: Option<(&str, u32)>,
) -> BorrowOutcome {
    let config = &shared.config;
    // Every lease renewed by this round was renewed at or after this instant.
    let round_started = Instant::now();
    let snapshot = shared.registry.snapshot();
    let mut seen: HashSet<PodId> = HashSet::new();
    let mut failed: Option<LedgerError> = None;
    let mut outcome = BorrowOutcome::Full;
    let mut wanted_more = borrow.map_or(0, |(_, n)| n);

    // For a borrow, try the pods with the most unused room in the fleet first.
    let mut work: Vec<(&str, &wscap_core::HostSnapshot)> = snapshot
        .clusters
        .iter()
        .filter(|c| borrow.is_none_or(|(b, _)| b == c.name))
        .flat_map(|c| c.hosts.iter().map(move |h| (c.name.as_str(), h)))
        .collect();
    if borrow.is_some() {
        work.sort_by_key(|(c, h)| {
            let id = ((*c).to_owned(), h.address.clone());
            let fleet_live: u32 = pods
                .get(&id)
                .map_or(0, |p| p.parts.iter().map(|x| x.live).sum());
            std::cmp::Reverse(h.limit.saturating_sub(fleet_live))
        });
    }

    for (cluster_name, host) in work {
        let id: PodId = (cluster_name.to_owned(), host.address.clone());
        seen.insert(id.clone());
        let Some(cluster) = shared.registry.cluster(cluster_name) else {
            continue;
        };
        let Ok(addr) = host.address.parse::<HostAddr>() else {
            continue;
        };
        let pod = pods.entry(id.clone()).or_default();
        // A pod that left the cluster, or that an operator drains (held at 0): claim only what
        // is live, so that the rest of its share goes back to the fleet.
        let draining = host.state == wscap_core::HostState::Draining || host.held;
        let live = host.active;
        // Slots still wanted by the paused streams of a borrow round.
        let extra = borrow.map_or(0, |_| wanted_more);
        // Spare share lets most admissions skip the round trip; none while others want more.
        let spare = if pod.in_demand { 0 } else { config.headroom };
        let mut desired = if draining {
            live
        } else {
            host.limit
                .min(live.saturating_add(spare).saturating_add(extra))
        };
        // A lowered limit: the shares held (as the last claim saw them) add up to more than the
        // pod's limit now. The ledger never takes a share away, so each holder gives back what it
        // does not use: its local cap drops to what fits beside the others' shares, even below
        // its live count (nobody is evicted, but a close then frees no slot), and its share in
        // the ledger to that or its live count, whichever is larger. With every holder doing so
        // on its rounds, the pod is back within the new limit once enough connections closed.
        // Only when the shares overflow: in the ordinary case an unmet want must reach the
        // ledger (it marks the pod in demand).
        let others = others_sum(&pod.parts, ledger, |p| p.share);
        if others.saturating_add(pod.share) > host.limit {
            desired = desired.min(host.limit.saturating_sub(others));
        }
        if borrow.is_some() {
            if draining {
                continue;
            }
            // Room already here (a refresh raised the cap since the stream was refused).
            let room = pod.cap.saturating_sub(live);
            if room > 0 {
                outcome = BorrowOutcome::Granted;
                wanted_more = wanted_more.saturating_sub(room);
                if wanted_more == 0 {
                    break;
                }
            }
            if desired <= pod.share {
                continue; // nothing to gain on this pod
            }
        }

        // Shrink locally first; the ledger never hears of a share below what is live. A cap
        // not known to be in force is first lowered to what the ledger surely granted: nothing,
        // once the lease has ended (the watchdog may have lowered the cap already; never raise
        // it here before the ledger answers).
        // Never a share below what is live, also when the lowered-limit clamp put `desired`
        // below it (found by the model check, docs/GLOBAL_MODEL.md).
        let mut want = desired.max(live);
        let leased = pod.lease_until.is_some_and(|t| Instant::now() < t);
        if !pod.cap_known || desired < pod.cap || !leased {
            let to = if !leased && pod.cap_known {
                desired.min(pod.cap).min(unleased_cap(config))
            } else if !leased {
                0
            } else if pod.cap_known {
                desired
            } else {
                desired.min(pod.share)
            };
            if let Some(after) = cluster.set_host_cap(&addr, Some(to)) {
                pod.cap = to;
                pod.cap_known = true;
                want = desired.max(after);
            }
        }

        if failed.is_none() {
            let sent = Instant::now();
            match ledger.claim(cluster_name, &host.address, want, live, host.limit) {
                Ok(claim) if claim.granted <= want.max(pod.share) => {
                    if shared
                        .inject_panics
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                        .is_ok()
                    {
                        panic!("injected fault: panic after a grant, before the cap was set");
                    }
                    pod.lease_until = Some(sent + config.lease_ttl());
                    let old_cap = pod.cap;
                    let grew = claim.granted > old_cap;
                    pod.share = claim.granted;
                    pod.in_demand = claim.in_demand;
                    pod.parts = claim.parts;
                    // Written every time, not only on a change: core's cap may differ from the
                    // one last written here (the host was removed and added again in between,
                    // which resets it to the default cap, or the watchdog lowered it).
                    // The cap never above `desired`: after a lowered limit the share may have to
                    // stay at the live count while the cap is below it (see above).
                    let mut cap = claim.granted.min(desired);
                    // The lowered-limit clamp again, with the others' shares as this reply
                    // gives them (the one above used the previous reply's; the model check
                    // found a lowered limit passed between the two).
                    let others_now = others_sum(&pod.parts, ledger, |p| p.share);
                    if others_now.saturating_add(claim.granted) > host.limit {
                        cap = cap.min(host.limit.saturating_sub(others_now));
                    }
                    {
                        // The new lease and the cap it allows, as one step for the watchdog.
                        let mut leases = shared.leases.lock();
                        leases.insert(id.clone(), sent + config.lease_ttl());
                        cluster.set_host_cap(&addr, Some(cap));
                    }
                    pod.cap = cap;
                    pod.cap_known = true;
                    // Rank the pod by its fill across the fleet (admission still obeys the cap),
                    // so that this instance's connections go where the fleet has room.
                    let elsewhere = others_sum(&pod.parts, ledger, |p| p.live);
                    cluster.set_host_elsewhere(&addr, Some((elsewhere, host.limit)));
                    if borrow.is_some() && grew {
                        outcome = BorrowOutcome::Granted;
                        wanted_more = wanted_more.saturating_sub(claim.granted - old_cap);
                        if wanted_more == 0 {
                            break;
                        }
                    }
                    continue;
                }
                Ok(claim) => {
                    shared.claim_errors.fetch_add(1, Ordering::Relaxed);
                    failed = Some(LedgerError::BadReply(format!(
                        "granted {} when {} was asked and {} held",
                        claim.granted, want, pod.share
                    )))
                }
                Err(e) => {
                    shared.claim_errors.fetch_add(1, Ordering::Relaxed);
                    failed = Some(e);
                }
            }
        }
        // Redis unreachable (or out of protocol) this round: the fail mode decides the cap.
        // The claim may have been applied before its answer was lost: count on the smaller of
        // the old share and what was asked (a shrink may have gone through; a grant is unknown).
        pod.share = pod.share.min(want);
        if outcome != BorrowOutcome::Granted {
            outcome = BorrowOutcome::Unavailable;
        }
        let cap = match config.fail_mode {
            FailMode::KeepShare if pod.lease_until.is_some_and(|t| Instant::now() < t) => pod.share,
            FailMode::KeepShare | FailMode::Reject => 0,
            FailMode::LocalLimit => config.local_limit.unwrap_or(0).min(host.limit),
        };
        if cap != pod.cap || !pod.cap_known {
            cluster.set_host_cap(&addr, Some(cap));
            pod.cap = cap;
            pod.cap_known = true;
        }
    }

    if borrow.is_none() {
        // Pods gone from the registry: hand their share back (best effort) and forget them.
        let gone: Vec<PodId> = pods.keys().filter(|k| !seen.contains(k)).cloned().collect();
        for id in gone {
            if failed.is_none() {
                let _ = ledger.claim(&id.0, &id.1, 0, 0, 0);
            }
            shared.leases.lock().remove(&id);
            pods.remove(&id);
        }
    }

    if borrow.is_none() && failed.is_none() {
        *shared.last_ok_round.lock() = Some(round_started);
    }

    // Publish the fleet view.
    let mut view = shared.view.lock();
    view.redis_ok = failed.is_none();
    view.claim_errors = shared.claim_errors.load(Ordering::Relaxed);
    view.borrow_samples_dropped = shared.samples_dropped.load(Ordering::Relaxed);
    view.last_error = failed.map(|e| e.to_string());
    view.redis_commands = ledger.commands();
    view.borrows = shared.borrows.load(Ordering::Relaxed);
    view.panics = shared.panics.load(Ordering::Relaxed);
    if borrow.is_none() {
        let mut out: Vec<FleetPod> = snapshot
            .clusters
            .iter()
            .flat_map(|c| {
                c.hosts.iter().map(|h| {
                    let id = (c.name.clone(), h.address.clone());
                    let p = pods.get(&id).cloned().unwrap_or_default();
                    FleetPod {
                        cluster: c.name.clone(),
                        address: h.address.clone(),
                        limit: h.limit,
                        live: p.parts.iter().map(|x| x.live).sum(),
                        shares: p.parts.iter().map(|x| x.share).sum(),
                        my_share: p.share,
                        instances: p.parts,
                    }
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.cluster, &a.address).cmp(&(&b.cluster, &b.address)));
        view.pods = out;
    }
    outcome
}
