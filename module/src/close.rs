//! Closing chosen WebSockets: rebalance after a scale-out, drain of one pod.
//!
//! Every upgraded stream registers here at its `101` with a per-stream scheduler
//! ([`Registration`], dropped with the stream's filter). On each tick of the bootstrap timer (main
//! thread) [`tick`] decides which streams to close and commits [`CLOSE_EVENT`] to their
//! schedulers; Envoy runs the stream's `on_scheduled` on its worker, which sends a WebSocket close
//! frame (1012, "service restart") and resets the stream. The slot is released by the filter's
//! `destroy`, like every other close path (exactly once: `Option::take`).
//! Streams are kept in 16 shards by pod: a registration locks one shard, never a process-wide
//! lock, and each shard is ordered by id, so a pod's oldest streams come first.
//!
//! Streams are kept in 16 shards by pod (a registration locks one shard, never a process-wide
//! lock), each ordered by id, so a pod's oldest streams come first.
//!
//! - **Rebalance** (filter config `"rebalance": {"max_closes_per_second": R, "tolerance": F}`,
//!   off by default): per cluster, a pod whose fill (live / limit) is above the cluster's mean
//!   fill by more than `F` (relative) loses its **oldest** connections, down to the mean and never
//!   below, at most `R` in any one-second window for the cluster. Oldest, because a client that
//!   was just closed reconnects as the youngest: closing oldest first never closes the same
//!   client twice in a row, and the oldest connections are the ones placed before the scale-out.
//! - **Drain** (`POST /wscap/drain?cluster=C&host=ip:port&seconds=S`): the pod takes no new
//!   connection (its cap is set to 0) and its connections are closed spread evenly over `S`
//!   seconds. `"drain_removed_seconds": S` in the filter config does the same for a pod that
//!   leaves the cluster (EDS) while it still holds connections.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::Deserialize;
use wscap_core::{Cluster, HostAddr, HostState, Registry, Snapshot};

use crate::bootstrap::GaugeSink;
use crate::filter::{MetricId, Resume, ResumeSlot};

/// The event id of a chosen close; the global-mode borrow outcomes use `1..=3`.
pub const CLOSE_EVENT: u64 = 0x0077_7363_6c6f_7365; // "wsclose"

/// The `reason` label of closes made by a rebalance.
pub const REASON_REBALANCE: &str = "rebalance";
/// The `reason` label of closes made by a drain.
pub const REASON_DRAIN: &str = "drain";

/// `"rebalance"` in the filter config.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rebalance {
    /// At most this many closes in any one-second window, per cluster.
    pub max_closes_per_second: u32,
    /// How far (relative) above the mean fill a pod may be before it sheds connections.
    pub tolerance: f64,
}

/// The closing settings of one filter config.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ClosePolicy {
    /// Rebalance, when set.
    pub rebalance: Option<Rebalance>,
    /// Spread the closes of a removed pod's connections over this many seconds, when set.
    pub drain_removed_seconds: Option<u32>,
}

impl ClosePolicy {
    fn is_off(&self) -> bool {
        self.rebalance.is_none() && self.drain_removed_seconds.is_none()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRebalance {
    max_closes_per_second: f64,
    tolerance: f64,
}

#[derive(Deserialize)]
struct RawPolicy {
    rebalance: Option<RawRebalance>,
    drain_removed_seconds: Option<f64>,
}

/// The longest drain window accepted (a day).
pub const MAX_DRAIN_SECONDS: u32 = 86_400;

/// Reads `rebalance` and `drain_removed_seconds` from a filter config (the rest is
/// [`crate::config::parse_filter`]'s).
///
/// ```
/// use wscap::close::parse_policy;
/// let p = parse_policy(br#"{"max_connections_per_host":10,
///     "rebalance":{"max_closes_per_second":5,"tolerance":0.2},"drain_removed_seconds":30}"#).unwrap();
/// assert_eq!(p.rebalance.unwrap().max_closes_per_second, 5);
/// assert_eq!(p.drain_removed_seconds, Some(30));
/// assert!(parse_policy(br#"{"max_connections_per_host":1}"#).unwrap().rebalance.is_none());
/// assert!(parse_policy(br#"{"rebalance":{"max_closes_per_second":0,"tolerance":0.2}}"#).is_err());
/// ```
pub fn parse_policy(bytes: &[u8]) -> Result<ClosePolicy, String> {
    let raw: RawPolicy = serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))?;
    let rebalance = match raw.rebalance {
        None => None,
        Some(r) => {
            if !(r.max_closes_per_second >= 1.0
                && r.max_closes_per_second <= 10_000.0
                && r.max_closes_per_second.fract() == 0.0)
            {
                return Err(format!(
                    "\"rebalance.max_closes_per_second\" must be a whole number from 1 to 10000 (got {})",
                    r.max_closes_per_second
                ));
            }
            if !(r.tolerance.is_finite() && (0.0..=10.0).contains(&r.tolerance)) {
                return Err(format!(
                    "\"rebalance.tolerance\" must be a number from 0 to 10 (relative to the mean fill; got {})",
                    r.tolerance
                ));
            }
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Some(Rebalance {
                max_closes_per_second: r.max_closes_per_second as u32,
                tolerance: r.tolerance,
            })
        }
    };
    let drain_removed_seconds = match raw.drain_removed_seconds {
        None => None,
        Some(s) => Some(seconds_field("drain_removed_seconds", s)?),
    };
    Ok(ClosePolicy {
        rebalance,
        drain_removed_seconds,
    })
}

fn seconds_field(name: &str, s: f64) -> Result<u32, String> {
    if !(s >= 0.0 && s <= f64::from(MAX_DRAIN_SECONDS) && s.fract() == 0.0) {
        return Err(format!(
            "\"{name}\" must be a whole number of seconds from 0 to {MAX_DRAIN_SECONDS} (got {s})"
        ));
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok(s as u32)
}

/// One live upgraded stream.
struct Live {
    cluster: Cluster,
    host: SocketAddr,
    slot: ResumeSlot,
}

impl Live {
    fn is(&self, cluster: &str, host: SocketAddr) -> bool {
        self.host == host && self.cluster.name() == cluster
    }
}

/// The live upgraded streams, in shards by pod: the handshakes of different pods take different
/// locks, and a registration costs no allocation beyond its scheduler. Within a shard, streams
/// are by id; ids grow, so the first of a pod is its oldest.
const SHARDS: usize = 16;

#[repr(align(64))]
#[derive(Default)]
struct Shard(Mutex<BTreeMap<u64, Live>>);

static LIVE: LazyLock<[Shard; SHARDS]> = LazyLock::new(Default::default);
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn shard(host: SocketAddr) -> MutexGuard<'static, BTreeMap<u64, Live>> {
    let ip = match host.ip() {
        IpAddr::V4(a) => u64::from(a.to_bits()),
        IpAddr::V6(a) => {
            let b = a.to_bits();
            #[allow(clippy::cast_possible_truncation)]
            let folded = (b as u64) ^ ((b >> 64) as u64);
            folded
        }
    };
    // Fibonacci hashing: the top bits of the product pick the shard.
    let h = ((ip << 16) ^ u64::from(host.port())).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    #[allow(clippy::cast_possible_truncation)]
    let i = (h >> 60) as usize % SHARDS;
    LIVE[i].0.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A drain in progress.
#[derive(Debug, Clone)]
struct Drain {
    started: Instant,
    seconds: u32,
    /// Connections the pod held when the drain started.
    total: usize,
    closed: usize,
    /// Started by an admin request (`false`: the pod left the cluster).
    requested: bool,
}

#[derive(Default)]
struct State {
    /// Per cluster (`None`: every cluster without its own).
    policies: HashMap<Option<String>, ClosePolicy>,
    drains: HashMap<(String, String), Drain>,
    /// Per cluster: when its recent rebalance closes were committed.
    recent: HashMap<String, Vec<Instant>>,
    /// Global mode, per cluster: when this instance last closed for a rebalance.
    last_global_close: HashMap<String, Instant>,
}

/// Global mode: the fleet's live counts, from the coordinator's view.
#[derive(Debug, Clone, Default)]
pub struct FleetCounts {
    /// This instance's id.
    pub me: String,
    /// Per `(cluster, address)`: each live instance's `(id, live)`.
    pub pods: HashMap<(String, String), Vec<(String, u32)>>,
    /// How long to wait after a close before the next round on the cluster, so that the other
    /// instances' counts in the view catch up (two refresh rounds).
    pub cooldown: Duration,
}

impl FleetCounts {
    /// From the coordinator's view (`None` when its last round did not reach Redis: then this
    /// instance does not rebalance).
    pub fn from_view(view: &wscap_global::FleetView, refresh: Duration) -> Option<FleetCounts> {
        if !view.redis_ok {
            return None;
        }
        Some(FleetCounts {
            // Keyed by instance and process: two processes with one instance id are two holders.
            me: format!("{}#{}", view.instance, view.process),
            pods: view
                .pods
                .iter()
                .map(|p| {
                    (
                        (p.cluster.clone(), p.address.clone()),
                        p.instances
                            .iter()
                            .map(|i| (format!("{}#{}", i.instance, i.process), i.live))
                            .collect(),
                    )
                })
                .collect(),
            cooldown: refresh * 5,
        })
    }
}

/// Global mode: this instance's part of a pod's `excess`, given every instance's live count on
/// it (`parts`): proportional to its live count, rounded down, and the remainder to the largest
/// holder (ties: the smallest id), so that the parts add up to `excess` exactly.
///
/// ```
/// use wscap::close::my_part;
/// let parts = [("a".to_owned(), 6), ("b".to_owned(), 4)];
/// assert_eq!(my_part(3, &parts, "a"), 2);
/// assert_eq!(my_part(3, &parts, "b"), 1);
/// ```
pub fn my_part(excess: usize, parts: &[(String, u32)], me: &str) -> usize {
    let total: u64 = parts.iter().map(|p| u64::from(p.1)).sum();
    if total == 0 {
        return 0;
    }
    let floor = |live: u32| usize::try_from(excess as u64 * u64::from(live) / total).unwrap_or(0);
    let given: usize = parts.iter().map(|p| floor(p.1)).sum();
    let largest = parts
        .iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
        .map(|p| p.0.as_str());
    let mine = parts.iter().find(|p| p.0 == me).map_or(0, |p| floor(p.1));
    if largest == Some(me) {
        mine + excess.saturating_sub(given)
    } else {
        mine
    }
}

static STATE: LazyLock<Mutex<State>> = LazyLock::new(Mutex::default);

/// Live registered streams per `(cluster, host)` (one pass over the shards).
fn counts() -> HashMap<(String, String), usize> {
    let mut out: HashMap<(String, String), usize> = HashMap::new();
    for shard in LIVE.iter() {
        let live = shard.0.lock().unwrap_or_else(PoisonError::into_inner);
        // Counted by `&str` first: an allocation per pod, not per stream.
        let mut by_pod: HashMap<(&str, SocketAddr), usize> = HashMap::new();
        for l in live.values() {
            *by_pod.entry((l.cluster.name(), l.host)).or_default() += 1;
        }
        for ((c, h), n) in by_pod {
            *out.entry((c.to_owned(), h.to_string())).or_default() += n;
        }
    }
    out
}

fn state() -> std::sync::MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Sets the closing policy of `cluster` (`None`: the default for every cluster).
pub fn set_policy(cluster: Option<&str>, policy: ClosePolicy) {
    let mut s = state();
    if policy.is_off() {
        s.policies.remove(&cluster.map(str::to_owned));
    } else {
        s.policies.insert(cluster.map(str::to_owned), policy);
    }
}

/// A stream's place in the registry: dropping it (with the filter) removes the stream and deletes
/// its scheduler.
pub struct Registration {
    id: u64,
    host: SocketAddr,
    slot: ResumeSlot,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("id", &self.id)
            .finish()
    }
}

/// Registers an upgraded stream of `cluster` on `host`, closable through `resume`.
pub fn register(cluster: &Cluster, host: SocketAddr, resume: Box<dyn Resume>) -> Registration {
    let slot: ResumeSlot = Arc::new(Mutex::new(Some(resume)));
    let live = Live {
        cluster: cluster.clone(),
        host,
        slot: Arc::clone(&slot),
    };
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    shard(host).insert(id, live);
    Registration { id, host, slot }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let gone = shard(self.host).remove(&self.id);
        drop(gone);
        // Under the slot's lock: a close being committed finishes first.
        let mut resume = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        drop(resume.take());
    }
}

/// Live registered streams of `cluster` on `host`.
pub fn live(cluster: &str, host: &str) -> usize {
    let Ok(host) = host.parse::<SocketAddr>() else {
        return 0;
    };
    shard(host).values().filter(|l| l.is(cluster, host)).count()
}

/// Takes the `n` oldest streams of `key` out of the registry (so none is chosen twice).
fn take_oldest(key: &(String, String), n: usize) -> Vec<ResumeSlot> {
    let Ok(host) = key.1.parse::<SocketAddr>() else {
        return Vec::new();
    };
    if n == 0 {
        return Vec::new();
    }
    let mut live = shard(host);
    let ids: Vec<u64> = live
        .iter()
        .filter(|(_, l)| l.is(&key.0, host))
        .map(|(id, _)| *id)
        .take(n)
        .collect();
    ids.iter()
        .filter_map(|id| live.remove(id).map(|l| l.slot))
        .collect()
}

fn commit_all(slots: Vec<ResumeSlot>) -> usize {
    let mut sent = 0;
    for slot in slots {
        let resume = slot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(r) = resume.as_ref() {
            r.commit(CLOSE_EVENT);
            sent += 1;
        }
    }
    sent
}

/// The metric ids of the closing metrics (bootstrap extension).
#[derive(Debug, Clone, Copy, Default)]
pub struct CloseMetrics {
    /// `wscap_closed{cluster,reason}` counter.
    pub closed: Option<MetricId>,
    /// `wscap_drains_in_progress` gauge.
    pub drains: Option<MetricId>,
}

/// Starts draining `host` of `cluster` over `seconds`: no new admission to it, its connections
/// closed evenly over the window. Answers the admin request.
pub fn start_drain(
    registry: &Registry,
    cluster: &str,
    host: &str,
    seconds: u32,
    now: Instant,
) -> Result<String, (u32, String)> {
    let Some(c) = registry.cluster(cluster) else {
        return Err((404, format!("unknown cluster {cluster:?}")));
    };
    let addr: HostAddr = host
        .parse()
        .map_err(|e| (400, format!("host {host:?}: {e}")))?;
    if c.host(&addr).is_none() {
        return Err((
            404,
            format!("host {host:?} is not a member of cluster {cluster:?}"),
        ));
    }
    c.set_host_held(&addr, true);
    let key = (cluster.to_owned(), addr.as_str().to_owned());
    let total = live(&key.0, &key.1);
    let mut s = state();
    s.drains.insert(
        key,
        Drain {
            started: now,
            seconds,
            total,
            closed: 0,
            requested: true,
        },
    );
    Ok(serde_json::json!({
        "draining": {"cluster": cluster, "host": addr.as_str(), "seconds": seconds, "connections": total}
    })
    .to_string())
}

/// Ends the drain of `host` of `cluster`: no more closes, and the pod admits again. Answers the
/// admin request.
pub fn cancel_drain(
    registry: &Registry,
    cluster: &str,
    host: &str,
) -> Result<String, (u32, String)> {
    let addr: HostAddr = host
        .parse()
        .map_err(|e| (400, format!("host {host:?}: {e}")))?;
    let key = (cluster.to_owned(), addr.as_str().to_owned());
    // A drain whose window is over stays held (no drain listed) until it is cancelled.
    let drain = state().drains.remove(&key);
    let cluster_ = registry.cluster(cluster);
    let held = cluster_.as_ref().is_some_and(|c| c.is_host_held(&addr));
    if drain.is_none() && !held {
        return Err((
            404,
            format!("{host:?} in cluster {cluster:?} is not being drained"),
        ));
    }
    if let Some(c) = cluster_ {
        c.set_host_held(&addr, false);
    }
    Ok(serde_json::json!({
        "cancelled": {"cluster": cluster, "host": addr.as_str(), "closed": drain.map_or(0, |d| d.closed)}
    })
    .to_string())
}

/// `POST /wscap/drain?cluster=C&host=ip:port&seconds=S` starts a drain;
/// `POST /wscap/drain?cluster=C&host=ip:port&cancel=true` ends one. `(status, body)`.
pub fn admin_drain(registry: &Registry, method: &str, path: &str) -> (u32, String) {
    let err = |status: u32, m: &str| (status, format!("{}\n", serde_json::json!({ "error": m })));
    if !method.eq_ignore_ascii_case("POST") {
        return err(405, "method not allowed: use POST");
    }
    let query = path.split_once('?').map_or("", |(_, q)| q);
    let (mut cluster, mut host, mut seconds, mut cancel) = (None, None, None, false);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("cluster", v)) => cluster = Some(v),
            Some(("host", v)) => host = Some(v),
            Some(("seconds", v)) => seconds = Some(v),
            Some(("cancel", "true")) => cancel = true,
            Some(("cancel", v)) => {
                return err(400, &format!("cancel must be \"true\" (got {v:?})"));
            }
            _ => return err(400, &format!("unknown query parameter {pair:?}")),
        }
    }
    if cancel {
        let (Some(cluster), Some(host), None) = (cluster, host, seconds) else {
            return err(
                400,
                "use POST /wscap/drain?cluster=C&host=ip:port&cancel=true (no seconds)",
            );
        };
        return match cancel_drain(registry, cluster, host) {
            Ok(body) => (200, format!("{body}\n")),
            Err((status, m)) => err(status, &m),
        };
    }
    let (Some(cluster), Some(host), Some(seconds)) = (cluster, host, seconds) else {
        return err(
            400,
            "use POST /wscap/drain?cluster=C&host=ip:port&seconds=S",
        );
    };
    let seconds = match seconds.parse::<f64>() {
        Ok(s) => match seconds_field("seconds", s) {
            Ok(s) => s,
            Err(e) => return err(400, &e),
        },
        Err(_) => return err(400, &format!("seconds {seconds:?} is not a number")),
    };
    match start_drain(registry, cluster, host, seconds, Instant::now()) {
        Ok(body) => (200, format!("{body}\n")),
        Err((status, m)) => err(status, &m),
    }
}

/// The drains in progress as JSON (`[{"cluster","host","seconds","elapsed_seconds","total",
/// "closed","remaining"}]`), for `GET /wscap`.
pub fn drains_json(now: Instant) -> serde_json::Value {
    let counts = counts();
    let s = state();
    let mut out: Vec<serde_json::Value> = s
        .drains
        .iter()
        .map(|((cluster, host), d)| {
            serde_json::json!({
                "cluster": cluster,
                "host": host,
                "seconds": d.seconds,
                "elapsed_seconds": now.saturating_duration_since(d.started).as_secs_f64(),
                "total": d.total,
                "closed": d.closed,
                "remaining": counts.get(&(cluster.clone(), host.clone())).copied().unwrap_or(0),
                "requested": d.requested,
            })
        })
        .collect();
    out.sort_by_key(ToString::to_string);
    serde_json::Value::Array(out)
}

/// Adds `"drains"` to the admin JSON snapshot (an object), keeping its text as it is.
///
/// ```
/// let out = wscap::close::with_drains("{\"clusters\":[]}\n".to_owned());
/// assert!(out.starts_with("{\"clusters\":[],\"drains\":["));
/// ```
pub fn with_drains(snapshot_json: String) -> String {
    let trimmed = snapshot_json.trim_end();
    match trimmed.strip_suffix('}') {
        Some(head) if trimmed.starts_with('{') => {
            let sep = if head.trim_end().ends_with('{') {
                ""
            } else {
                ","
            };
            format!("{head}{sep}\"drains\":{}}}\n", drains_json(Instant::now()))
        }
        _ => snapshot_json,
    }
}

/// One timer tick (main thread): advances drains and rebalances; commits the closes; counts
/// them. Returns the closes committed per `(cluster, reason)`.
pub fn tick(
    snapshot: &Snapshot,
    fleet: Option<&FleetCounts>,
    now: Instant,
    metrics: &CloseMetrics,
    sink: &impl GaugeSink,
) -> Vec<(String, &'static str, usize)> {
    let mut done = Vec::new();
    let mut s = state();
    if s.policies.is_empty() && s.drains.is_empty() {
        drop(s);
        if let Some(id) = metrics.drains {
            sink.set_gauge(id, &[], 0);
        }
        return Vec::new();
    }
    let mut counts = counts();
    // Pods that left the cluster: drain them over the configured window.
    for c in &snapshot.clusters {
        let Some(seconds) = policy_of(&s, &c.name).and_then(|p| p.drain_removed_seconds) else {
            continue;
        };
        for h in &c.hosts {
            let key = (c.name.clone(), h.address.clone());
            if h.state == HostState::Draining && !s.drains.contains_key(&key) {
                let total = counts.get(&key).copied().unwrap_or(0);
                if total > 0 {
                    s.drains.insert(
                        key,
                        Drain {
                            started: now,
                            seconds,
                            total,
                            closed: 0,
                            requested: false,
                        },
                    );
                }
            }
        }
    }
    // Drains: by now, ceil(total * elapsed / window) of the pod's connections are closed.
    let keys: Vec<(String, String)> = s.drains.keys().cloned().collect();
    for key in keys {
        let Some(d) = s.drains.get(&key).cloned() else {
            continue;
        };
        let elapsed = now.saturating_duration_since(d.started).as_secs_f64();
        let due = if d.seconds == 0 || elapsed >= f64::from(d.seconds) {
            usize::MAX
        } else {
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss
            )]
            let due = (d.total as f64 * elapsed / f64::from(d.seconds)).ceil() as usize;
            due
        };
        let n = due.saturating_sub(d.closed);
        let slots = take_oldest(&key, n);
        let taken = slots.len();
        if let Some(c) = counts.get_mut(&key) {
            *c -= taken;
        }
        if let Some(d) = s.drains.get_mut(&key) {
            d.closed += taken;
        }
        if taken > 0 {
            done.push((key.0.clone(), REASON_DRAIN, slots));
        }
        // A requested drain stays listed (the pod keeps its cap of 0) until it holds nothing
        // and its window is over; a removed pod's drain ends with its last connection.
        let left = counts.get(&key).copied().unwrap_or(0);
        let over = elapsed >= f64::from(d.seconds);
        if left == 0 && (over || !d.requested) {
            s.drains.remove(&key);
        }
    }
    // Rebalance, per cluster.
    for c in &snapshot.clusters {
        let Some(r) = policy_of(&s, &c.name).and_then(|p| p.rebalance) else {
            continue;
        };
        let draining = |addr: &str| s.drains.contains_key(&(c.name.clone(), addr.to_owned()));
        let hosts: Vec<_> = c
            .hosts
            .iter()
            .filter(|h| h.state == HostState::Active && h.limit > 0 && !draining(&h.address))
            .collect();
        // The budget: at most `budget` closes in any window of `window`.
        let (plan, window, budget): (Vec<(String, usize)>, Duration, usize) = match fleet {
            None => {
                let pods: Vec<(&str, u32, u32)> = hosts
                    .iter()
                    .map(|h| (h.address.as_str(), h.active, h.limit))
                    .collect();
                let plan = rebalance_plan(&pods, r.tolerance)
                    .into_iter()
                    .map(|(a, n)| (a.to_owned(), n))
                    .collect();
                (
                    plan,
                    Duration::from_secs(1),
                    r.max_closes_per_second as usize,
                )
            }
            Some(f) => {
                if s.last_global_close
                    .get(&c.name)
                    .is_some_and(|t| now.saturating_duration_since(*t) < f.cooldown)
                {
                    continue;
                }
                // Every instance's count from the view, this instance's own as it is now.
                let mut parts: Vec<Vec<(String, u32)>> = Vec::new();
                let mut instances: std::collections::HashSet<String> =
                    std::collections::HashSet::new();
                for h in &hosts {
                    let key = (c.name.clone(), h.address.clone());
                    let mine =
                        u32::try_from(counts.get(&key).copied().unwrap_or(0)).unwrap_or(u32::MAX);
                    let mut p: Vec<(String, u32)> = f
                        .pods
                        .get(&key)
                        .map(|v| v.iter().filter(|(id, _)| *id != f.me).cloned().collect())
                        .unwrap_or_default();
                    p.push((f.me.clone(), mine));
                    instances.extend(p.iter().map(|(id, _)| id.clone()));
                    parts.push(p);
                }
                let pods: Vec<(&str, u32, u32)> = hosts
                    .iter()
                    .zip(&parts)
                    .map(|(h, p)| (h.address.as_str(), p.iter().map(|x| x.1).sum(), h.limit))
                    .collect();
                let plan: Vec<(String, usize)> = rebalance_plan(&pods, r.tolerance)
                    .into_iter()
                    .filter_map(|(addr, excess)| {
                        let i = hosts.iter().position(|h| h.address == addr)?;
                        let n = my_part(excess, &parts[i], &f.me);
                        (n > 0).then(|| (addr.to_owned(), n))
                    })
                    .collect();
                // A closed client must find room elsewhere through this instance: some pod under
                // the mean fill where this instance's cap (its share) is above its live count.
                // Otherwise it would be admitted again where it was, so nothing is closed.
                #[allow(clippy::cast_precision_loss)]
                let mean = pods.iter().map(|p| f64::from(p.1)).sum::<f64>()
                    / pods.iter().map(|p| f64::from(p.2)).sum::<f64>().max(1.0);
                let room = hosts.iter().zip(&pods).any(|(h, p)| {
                    f64::from(p.1) < mean * f64::from(p.2)
                        && h.cap.unwrap_or(h.limit).min(h.limit) > h.active
                });
                if !room {
                    continue;
                }
                // This instance's part of R: R/n per second, or one close per n/R seconds.
                let n = instances.len().max(1);
                let rate = r.max_closes_per_second as usize;
                if rate >= n {
                    (plan, Duration::from_secs(1), rate / n)
                } else {
                    (plan, Duration::from_secs(n.div_ceil(rate) as u64), 1)
                }
            }
        };
        if plan.is_empty() {
            continue;
        }
        let recent = s.recent.entry(c.name.clone()).or_default();
        recent.retain(|t| now.saturating_duration_since(*t) < window);
        let mut budget = budget.saturating_sub(recent.len());
        let mut slots = Vec::new();
        for (addr, excess) in plan {
            if budget == 0 {
                break;
            }
            let key = (c.name.clone(), addr);
            let taken = take_oldest(&key, excess.min(budget));
            budget -= taken.len();
            if let Some(c) = counts.get_mut(&key) {
                *c -= taken.len();
            }
            slots.extend(taken);
        }
        if !slots.is_empty() {
            let recent = s.recent.entry(c.name.clone()).or_default();
            recent.extend(std::iter::repeat_n(now, slots.len()));
            if fleet.is_some() {
                s.last_global_close.insert(c.name.clone(), now);
            }
            done.push((c.name.clone(), REASON_REBALANCE, slots));
        }
    }
    let drains = s.drains.len();
    drop(s);
    let mut out = Vec::new();
    for (cluster, reason, slots) in done {
        let sent = commit_all(slots);
        if sent > 0 {
            if let Some(id) = metrics.closed {
                sink.add_counter(id, &[&cluster, reason], sent as u64);
            }
            out.push((cluster, reason, sent));
        }
    }
    if let Some(id) = metrics.drains {
        sink.set_gauge(id, &[], drains as u64);
    }
    out
}

fn policy_of(s: &State, cluster: &str) -> Option<ClosePolicy> {
    s.policies
        .get(&Some(cluster.to_owned()))
        .or_else(|| s.policies.get(&None))
        .copied()
}

/// Which pods shed how many connections: `pods` are `(address, live, limit)`. A pod is over
/// when its fill is above the mean fill by more than `tolerance` (relative); it sheds down to
/// its share of the mean (rounded up), never below. Largest excess first.
///
/// ```
/// use wscap::close::rebalance_plan;
/// let plan = rebalance_plan(&[("a", 10, 10), ("b", 10, 10), ("c", 0, 10)], 0.2);
/// assert_eq!(plan, vec![("a", 3), ("b", 3)]);
/// assert!(rebalance_plan(&[("a", 7, 10), ("b", 7, 10), ("c", 6, 10)], 0.2).is_empty());
/// ```
pub fn rebalance_plan<'a>(pods: &[(&'a str, u32, u32)], tolerance: f64) -> Vec<(&'a str, usize)> {
    let live: u64 = pods.iter().map(|p| u64::from(p.1)).sum();
    let limit: u64 = pods.iter().map(|p| u64::from(p.2)).sum();
    if limit == 0 || live == 0 || pods.len() < 2 {
        return Vec::new();
    }
    #[allow(clippy::cast_precision_loss)]
    let mean = live as f64 / limit as f64;
    let mut plan: Vec<(&str, usize)> = pods
        .iter()
        .filter_map(|&(addr, active, lim)| {
            let share = mean * f64::from(lim);
            if f64::from(active) <= share * (1.0 + tolerance) {
                return None;
            }
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let keep = share.ceil() as u32;
            let excess = active.saturating_sub(keep) as usize;
            (excess > 0).then_some((addr, excess))
        })
        .collect();
    plan.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting(Arc<AtomicUsize>);
    impl Resume for Counting {
        fn commit(&self, event_id: u64) {
            assert_eq!(event_id, CLOSE_EVENT);
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn plan_never_goes_below_the_mean_and_respects_tolerance() {
        assert_eq!(
            rebalance_plan(&[("a", 10, 10), ("b", 0, 10)], 0.1),
            vec![("a", 5)]
        );
        assert!(rebalance_plan(&[("a", 6, 10), ("b", 5, 10)], 0.2).is_empty());
        assert!(rebalance_plan(&[("a", 0, 10), ("b", 0, 10)], 0.2).is_empty());
    }

    #[test]
    fn registration_is_removed_on_drop_and_closes_are_counted_once() {
        let hits = Arc::new(AtomicUsize::new(0));
        let reg = Registry::new();
        let cluster = reg.set_default_limit("t-close", 10).unwrap();
        let other = reg.set_default_limit("t-close-other", 10).unwrap();
        let host: SocketAddr = "10.9.9.9:1".parse().unwrap();
        let regs: Vec<Registration> = (0..4)
            .map(|_| register(&cluster, host, Box::new(Counting(Arc::clone(&hits)))))
            .collect();
        // Same pod address, another cluster: not counted, not taken.
        let _theirs = register(&other, host, Box::new(Counting(Arc::clone(&hits))));
        assert_eq!(live("t-close", "10.9.9.9:1"), 4);
        let taken = take_oldest(&("t-close".into(), "10.9.9.9:1".into()), 3);
        assert_eq!(commit_all(taken), 3);
        assert_eq!(hits.load(Ordering::SeqCst), 3);
        assert_eq!(live("t-close", "10.9.9.9:1"), 1);
        drop(regs);
        assert_eq!(live("t-close", "10.9.9.9:1"), 0);
    }

    #[test]
    fn drain_requests_start_hold_and_cancel() {
        let reg = Registry::new();
        let c = reg.set_default_limit("t-drain-admin", 10).unwrap();
        c.set_hosts(&[wscap_core::HostSpec::parse("10.8.8.8:1").unwrap()]);
        let addr: HostAddr = "10.8.8.8:1".parse().unwrap();
        let q = |s: &str| format!("/wscap/drain?cluster=t-drain-admin&host=10.8.8.8:1{s}");
        for (method, path, status) in [
            ("GET", q("&seconds=5"), 405),
            ("POST", q(""), 400),
            ("POST", q("&seconds=x"), 400),
            ("POST", q("&cancel=yes"), 400),
            ("POST", q("&seconds=5&cancel=true"), 400),
            ("POST", q("&cancel=true"), 404),
            ("POST", q("&colour=red"), 400),
        ] {
            let (got, body) = admin_drain(&reg, method, &path);
            assert_eq!(got, status, "{method} {path}: {body}");
            assert!(body.contains("\"error\""), "{body}");
        }
        assert!(!c.is_host_held(&addr));
        assert_eq!(admin_drain(&reg, "POST", &q("&seconds=5")).0, 200);
        assert!(c.is_host_held(&addr));
        let (status, body) = admin_drain(&reg, "POST", &q("&cancel=true"));
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("cancelled"), "{body}");
        assert!(!c.is_host_held(&addr));
        assert_eq!(admin_drain(&reg, "POST", &q("&cancel=true")).0, 404);
    }

    #[test]
    fn bad_policies_are_refused_with_a_reason() {
        for bad in [
            r#"{"rebalance":{"max_closes_per_second":-1,"tolerance":0.2}}"#,
            r#"{"rebalance":{"max_closes_per_second":2.5,"tolerance":0.2}}"#,
            r#"{"rebalance":{"max_closes_per_second":2,"tolerance":-0.5}}"#,
            r#"{"rebalance":{"max_closes_per_second":2}}"#,
            r#"{"drain_removed_seconds":-3}"#,
        ] {
            assert!(parse_policy(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
