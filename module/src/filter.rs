//! The HTTP filter `wscap`: admits WebSocket upgrades against the per-host caps, steers them to
//! the admitted host, and releases each admission exactly once.
//!
//! Everything here is safe Rust over the [`Stream`] trait; `abi/filter.rs` implements it on Envoy's
//! filter handle, and the unit tests implement it on a fake.
//!
//! ## What Envoy 1.40 hands the filter
//! - HTTP/1.1 upgrade: `request_headers` sees `upgrade: websocket` and `connection: Upgrade`;
//!   `response_headers` sees `:status 101`, and the `UpstreamAddress` attribute is the real
//!   endpoint `ip:port` there.
//! - HTTP/2 extended CONNECT (RFC 8441, `:method CONNECT` + `:protocol websocket`): Envoy's
//!   HTTP/2 codec rewrites it into the HTTP/1.1 form (`:method GET`, `upgrade: websocket`,
//!   `connection: upgrade`) before the filter chain, and the filter sees `:status 101` in
//!   `response_headers` (the codec turns it back into `200` afterwards). Observed on 1.40.0 in
//!   `tests/http2.rs`; `:protocol` never reaches the filter, so it is not looked up.
//!
//! ## Global mode: pause, borrow, resume
//! When core refuses with `no_capacity` and global mode runs ([`Borrower::active`]), the stream
//! is not refused at once: `request_headers` creates a [`Resume`] handle (Envoy's per-stream
//! scheduler), asks the coordinator for more room and answers [`HeadersStatus::Pause`]. The
//! coordinator's callback (its own thread) commits an event through the handle; Envoy runs
//! `on_scheduled` on the stream's worker, which acquires again and then steers and continues, or
//! borrows again (only after a grant that another stream took first), or refuses with the usual
//! `503`. The handle lives in a [`ResumeSlot`] shared by the stream and the callback: whoever
//! ends the wait (the worker on resume, or the stream's destruction) takes it out and drops it
//! (Envoy's `scheduler_delete`) under the slot's lock, and the callback commits only under that
//! lock, so the scheduler is never used after its deletion.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use wscap_core::{Cluster, HostAddr, Permit, Registry, Rejected};
use wscap_global::BorrowOutcome;

use crate::config::{FilterSettings, RouteSettings};
use crate::global::Borrower;
use crate::Level;

/// A handle that makes Envoy call the stream's `on_scheduled` hook on its worker thread.
/// Dropping it deletes Envoy's scheduler.
pub trait Resume: Send {
    /// Posts `event_id` to the stream's worker (callable from any thread).
    fn commit(&self, event_id: u64);
}

impl std::fmt::Debug for dyn Resume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resume")
    }
}

/// The scheduler of a paused stream, shared between the stream and the borrow callback.
pub type ResumeSlot = Arc<Mutex<Option<Box<dyn Resume>>>>;

/// How many borrow rounds one stream may start before its refusal is final. A round is repeated
/// only after a grant that a concurrent stream used first, so the bound is rarely reached.
pub const MAX_BORROWS: u32 = 32;

/// The event id a borrow outcome travels as.
pub fn outcome_event(o: BorrowOutcome) -> u64 {
    match o {
        BorrowOutcome::Granted => 1,
        BorrowOutcome::Full => 2,
        BorrowOutcome::Unavailable => 3,
    }
}

/// The borrow outcome an event id carries (`None` for ids wscap never sends).
pub fn event_outcome(id: u64) -> Option<BorrowOutcome> {
    match id {
        1 => Some(BorrowOutcome::Granted),
        2 => Some(BorrowOutcome::Full),
        3 => Some(BorrowOutcome::Unavailable),
        _ => None,
    }
}

/// Which header map a lookup reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderKind {
    /// Request headers.
    Request,
    /// Response headers.
    Response,
}

/// What a header hook tells Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadersStatus {
    /// Go on with the filter chain.
    Continue,
    /// Stop (a local reply was sent).
    StopIteration,
    /// Stop everything until the filter continues the stream (a borrow is in flight).
    Pause,
}

/// An opaque metric id returned by Envoy when the metric was defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricId(pub usize);

/// The Envoy operations the filter uses on one stream.
pub trait Stream {
    /// The `index`-th value of header `name` (lower case) and how many values it has.
    fn header(&self, kind: HeaderKind, name: &str, index: usize) -> (Option<&[u8]>, usize);
    /// Pins the upstream host for this stream. False when Envoy refused the address.
    fn set_upstream_override_host(&mut self, host: &str, strict: bool) -> bool;
    /// The real upstream endpoint (`ip:port`), once known.
    fn upstream_address(&self) -> Option<String>;
    /// Sends a local reply.
    fn send_local_reply(
        &mut self,
        status: u32,
        headers: &[(&str, &str)],
        body: &str,
        details: &str,
    );
    /// Answers the upgrade itself: `headers` (with `:status 101`), then `frame` (a WebSocket
    /// close frame) ending the stream (`"refuse_with": "close_1013"`).
    fn send_upgrade_and_close(&mut self, headers: &[(&str, &str)], frame: &[u8]);
    /// Adds `value` to a labelled counter.
    fn increment_counter(&mut self, id: MetricId, labels: &[&str], value: u64);
    /// A scheduler for this stream (global mode), `None` if Envoy gave none.
    fn new_resume(&mut self) -> Option<Box<dyn Resume>>;
    /// Continues a stream paused in `request_headers`.
    fn continue_decoding(&mut self);
    /// The cluster the route selected for this stream (`None`: the route has none, e.g. a
    /// direct response, or no route matched).
    fn routed_cluster(&self) -> Option<&str>;
    /// This route's wscap settings (`typed_per_filter_config`), if it has any.
    fn route_settings(&self) -> Option<RouteSettings>;
    /// Closes an upgraded stream chosen by a rebalance or a drain ([`crate::close`]): a
    /// WebSocket close frame, then a reset. The default does nothing.
    fn close_upgraded(&mut self) {}
}

/// The counters the filter increments; `None` when Envoy refused to define one.
#[derive(Debug, Clone, Copy, Default)]
pub struct FilterMetrics {
    /// `wscap_admitted{cluster,host}`.
    pub admitted: Option<MetricId>,
    /// `wscap_rejected{cluster,reason}`.
    pub rejected: Option<MetricId>,
    /// `wscap_steering_mismatch{cluster}`: 101s that came from another host than the permit's.
    pub steering_mismatch: Option<MetricId>,
}

/// Is this request a WebSocket upgrade? `upgrade` is `websocket` and a `connection` value lists
/// `upgrade`. A request without `upgrade` costs exactly one header lookup.
pub fn detect(stream: &impl Stream) -> bool {
    let (upgrade, _) = stream.header(HeaderKind::Request, "upgrade", 0);
    let Some(upgrade) = upgrade else {
        return false;
    };
    if !is_websocket_token(upgrade) {
        return false;
    }
    let (first, count) = stream.header(HeaderKind::Request, "connection", 0);
    let mut values = first
        .into_iter()
        .chain((1..count).filter_map(|i| stream.header(HeaderKind::Request, "connection", i).0));
    values.any(connection_has_upgrade)
}

/// `upgrade` equals `websocket`, case-insensitively (surrounding whitespace ignored).
pub fn is_websocket_token(upgrade: &[u8]) -> bool {
    upgrade.trim_ascii().eq_ignore_ascii_case(b"websocket")
}

/// One `connection` header value lists the `upgrade` token (comma-separated, trimmed,
/// case-insensitive).
pub fn connection_has_upgrade(connection: &[u8]) -> bool {
    connection
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
}

/// Per filter-chain config: resolved once at load.
#[derive(Debug)]
pub struct FilterConfig {
    registry: &'static Registry,
    /// The one cluster this filter governs; `None`: every routed cluster that has the wscap LB
    /// policy. Looked up per WebSocket (a lock-free map read), so a cluster that CDS removed and
    /// added again is found afresh.
    one: Option<String>,
    default_limit: u32,
    retry_after_seconds: u32,
    queue: Option<crate::queue::QueueSettings>,
    refuse_with: crate::refuse::RefuseWith,
    rate: crate::admission::RateSettings,
    metrics: FilterMetrics,
    borrower: Option<Arc<dyn Borrower>>,
    /// Set once the "no wscap LB policy on this cluster" warning was logged.
    warned_no_policy: AtomicBool,
    /// This config's entry in [`CLAIMS`], removed when the config is dropped.
    claim: u64,
}

/// The default limit each live filter config gives the clusters it governs. A cluster's default
/// in core (what `/wscap`, the gauges and global mode's ledger report as a host's limit) is the
/// **largest** of the defaults of the live configs that govern it; each config still admits
/// under its own default (or its route's limit). So two configs that disagree are resolved by
/// value, never by load order, and a reload that lowers a default takes effect for admissions
/// at once.
struct Claim {
    id: u64,
    registry: usize,
    /// `None`: a config without `"cluster"` (every cluster with the wscap LB policy).
    cluster: Option<String>,
    limit: u32,
}

static CLAIMS: Mutex<Vec<Claim>> = Mutex::new(Vec::new());
static NEXT_CLAIM: AtomicU64 = AtomicU64::new(1);

fn registry_key(registry: &Registry) -> usize {
    std::ptr::from_ref(registry) as usize
}

/// Sets `cluster`'s default in `registry` from the live claims that govern it (the largest);
/// nothing when none does. Called when a config comes or goes, and by the LB policy when a
/// cluster gets it (a config without `"cluster"` governs it from then on).
pub fn apply_default(registry: &Registry, cluster: &str) {
    let key = registry_key(registry);
    let max = CLAIMS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter(|c| c.registry == key && c.cluster.as_deref().is_none_or(|n| n == cluster))
        .map(|c| c.limit)
        .max();
    if let Some(limit) = max {
        let before = registry.cluster(cluster).map(|c| c.default_limit());
        if let Err(e) = registry.set_default_limit(cluster, limit) {
            crate::log(Level::Error, &format!("wscap: cluster {cluster:?}: {e}"));
        } else if before.is_some_and(|b| b != limit) {
            crate::log(
                Level::Info,
                &format!(
                    "wscap: cluster {cluster:?}: default limit {} -> {limit} (the largest of the live filter configs that govern it)",
                    before.unwrap_or(0)
                ),
            );
        }
    }
}

/// The clusters a claim's arrival or departure changes.
fn claim_scope(registry: &Registry, cluster: Option<&str>) -> Vec<String> {
    match cluster {
        Some(c) => vec![c.to_owned()],
        None => crate::lb::policy_clusters()
            .into_iter()
            .filter(|c| registry.cluster(c).is_some())
            .collect(),
    }
}

impl FilterConfig {
    /// Registers this config's default limit and resolves its cluster (creating it) when it
    /// names one.
    pub fn new(
        registry: &'static Registry,
        settings: &FilterSettings,
        metrics: FilterMetrics,
    ) -> Result<Self, String> {
        if settings.max_connections_per_host > wscap_core::MAX_LIMIT {
            return Err(format!(
                "max_connections_per_host {} is larger than the maximum {}",
                settings.max_connections_per_host,
                wscap_core::MAX_LIMIT
            ));
        }
        if let Some(name) = &settings.cluster {
            registry
                .cluster_or_create(name)
                .map_err(|e| e.to_string())?;
        }
        if settings.rate.is_on() {
            crate::queue::enable_retry_tick();
        }
        let claim = NEXT_CLAIM.fetch_add(1, Ordering::Relaxed);
        CLAIMS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Claim {
                id: claim,
                registry: registry_key(registry),
                cluster: settings.cluster.clone(),
                limit: settings.max_connections_per_host,
            });
        for c in claim_scope(registry, settings.cluster.as_deref()) {
            apply_default(registry, &c);
        }
        Ok(FilterConfig {
            registry,
            one: settings.cluster.clone(),
            default_limit: settings.max_connections_per_host,
            retry_after_seconds: settings.retry_after_seconds,
            queue: settings.queue,
            refuse_with: settings.refuse_with,
            rate: settings.rate,
            metrics,
            borrower: None,
            warned_no_policy: AtomicBool::new(false),
            claim,
        })
    }

    /// Where `no_capacity` refusals borrow more room first (global mode).
    pub fn with_borrower(mut self, borrower: Arc<dyn Borrower>) -> Self {
        self.borrower = Some(borrower);
        self
    }

    /// The one cluster this config governs, when it names one.
    pub fn cluster(&self) -> Option<Cluster> {
        self.one
            .as_deref()
            .and_then(|n| self.registry.cluster_or_create(n).ok())
    }

    /// The cluster a WebSocket routed to `routed` is admitted on, if this config governs it:
    /// the named one, or (without a name) any cluster that has the wscap LB policy.
    pub fn governs(&self, routed: &str) -> Option<Cluster> {
        match &self.one {
            Some(name) if name == routed => self.registry.cluster_or_create(routed).ok(),
            Some(_) => None,
            None if crate::lb::has_policy(routed) => self.registry.cluster(routed),
            None => None,
        }
    }
}

impl Drop for FilterConfig {
    fn drop(&mut self) {
        let gone = {
            let mut claims = CLAIMS.lock().unwrap_or_else(PoisonError::into_inner);
            let i = claims.iter().position(|c| c.id == self.claim);
            i.map(|i| claims.swap_remove(i))
        };
        if let Some(gone) = gone {
            for c in claim_scope(self.registry, gone.cluster.as_deref()) {
                apply_default(self.registry, &c);
            }
        }
    }
}

/// Where a stream is in its life, as far as its permit is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Not a WebSocket (or not seen yet): holds nothing.
    Idle,
    /// A WebSocket this filter does not govern (another cluster, no cluster, a disabled
    /// route): it passes untouched.
    Ignored,
    /// Admitted, waiting for the upstream's answer.
    Admitted,
    /// Upgraded (101): the tunnel is open.
    Upgraded,
    /// Released (non-101 answer, or destroyed).
    Released,
    /// Refused with a local reply.
    Refused,
    /// Paused in `request_headers` while a borrow round runs (global mode).
    Waiting,
}

/// The cluster a WebSocket is admitted on, with the settings that apply to it there.
#[derive(Debug, Clone)]
struct Target {
    cluster: Cluster,
    /// The default per-host limit for this stream: its route's, else the filter's.
    limit: u32,
    retry_after_seconds: u32,
    /// The wait queue that applies (the route's, else the filter's); `None`: refuse at once.
    queue: Option<crate::queue::QueueSettings>,
}

/// One HTTP stream. Holds at most one permit, released on the first close path.
#[derive(Debug)]
pub struct Filter {
    config: Arc<FilterConfig>,
    permit: Option<Permit>,
    phase: Phase,
    target: Option<Target>,
    /// The scheduler while the stream waits for a borrow.
    waiting: Option<ResumeSlot>,
    borrows: u32,
    /// An upgraded stream's place among the closable ones ([`crate::close`]).
    closing: Option<crate::close::Registration>,
    /// The stream's ticket while it waits in its cluster's queue.
    queued: Option<u64>,
}

impl Filter {
    /// A stream under `config`.
    pub fn new(config: Arc<FilterConfig>) -> Self {
        Filter {
            config,
            permit: None,
            phase: Phase::Idle,
            target: None,
            waiting: None,
            borrows: 0,
            closing: None,
            queued: None,
        }
    }

    /// The stream's phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The admitted host, while a permit is held.
    pub fn permit_host(&self) -> Option<&HostAddr> {
        self.permit.as_ref().map(Permit::host)
    }

    /// The name of the cluster the stream is admitted on ("" before that).
    fn cluster_name(&self) -> &str {
        self.target.as_ref().map_or("", |t| t.cluster.name())
    }

    /// `request_headers`: admits, steers or refuses a WebSocket upgrade routed to a cluster this
    /// filter governs; in global mode a `no_capacity` refusal first pauses the stream and
    /// borrows. A plain request costs one header lookup; a WebSocket to another cluster (or a
    /// disabled route, or a route without a cluster) passes untouched.
    pub fn on_request_headers(&mut self, stream: &mut impl Stream) -> HeadersStatus {
        if self.phase != Phase::Idle || !detect(stream) {
            return HeadersStatus::Continue;
        }
        let route = stream.route_settings().unwrap_or_default();
        let cluster = if route.disabled {
            None
        } else {
            stream
                .routed_cluster()
                .and_then(|routed| self.config.governs(routed))
        };
        let Some(cluster) = cluster else {
            self.phase = Phase::Ignored;
            return HeadersStatus::Continue;
        };
        let target = Target {
            cluster,
            limit: route
                .max_connections_per_host
                .unwrap_or(self.config.default_limit),
            retry_after_seconds: route
                .retry_after_seconds
                .unwrap_or(self.config.retry_after_seconds),
            queue: route.queue.unwrap_or(self.config.queue),
        };
        // With a queue, a newcomer does not jump ahead of streams that already wait.
        let jump = target.queue.is_some() && crate::queue::has_waiters(target.cluster.name());
        let acquired = if jump {
            Err(Rejected::NoCapacity)
        } else {
            self.acquire(&target)
        };
        self.target = Some(target);
        match acquired {
            Ok(permit) => self.admit(stream, permit),
            Err(Rejected::NoCapacity) if !jump && self.borrow(stream) => HeadersStatus::Pause,
            Err(Rejected::NoCapacity)
                if self.target.as_ref().is_some_and(|t| t.queue.is_some()) =>
            {
                self.enqueue(stream, jump)
            }
            Err(rejected) => self.reject(stream, rejected),
        }
    }

    /// `on_scheduled`: a borrow round ended; acquire again, then continue, borrow again or refuse.
    pub fn on_scheduled(&mut self, stream: &mut impl Stream, event_id: u64) {
        if event_id == crate::close::CLOSE_EVENT {
            if self.phase == Phase::Upgraded {
                stream.close_upgraded();
            }
            return;
        }
        if self.phase != Phase::Waiting {
            return;
        }
        if event_id == crate::queue::EVENT_WAKE || event_id == crate::queue::EVENT_TIMEOUT {
            self.on_queue_event(stream, event_id);
            return;
        }
        let Some(target) = &self.target else {
            return;
        };
        let outcome = event_outcome(event_id);
        match self.acquire(target) {
            Ok(permit) => {
                self.end_wait();
                if self.admit(stream, permit) == HeadersStatus::Continue {
                    stream.continue_decoding();
                }
            }
            // A grant that another stream used first: the fleet made progress, ask again.
            Err(Rejected::NoCapacity)
                if outcome == Some(BorrowOutcome::Granted)
                    && self.borrows < MAX_BORROWS
                    && self.borrow(stream) => {}
            Err(Rejected::NoCapacity)
                if self.target.as_ref().is_some_and(|t| t.queue.is_some()) =>
            {
                if self.enqueue(stream, false) != HeadersStatus::Pause {
                    self.end_wait();
                }
            }
            Err(rejected) => {
                self.end_wait();
                self.reject(stream, rejected);
            }
        }
    }

    /// Starts (or repeats) a borrow round; false when this stream cannot wait (local mode, no
    /// scheduler).
    fn borrow(&mut self, stream: &mut impl Stream) -> bool {
        let Some(borrower) = self.config.borrower.clone().filter(|b| b.active()) else {
            return false;
        };
        let slot = match &self.waiting {
            Some(slot) => Arc::clone(slot),
            None => {
                let Some(resume) = stream.new_resume() else {
                    return false;
                };
                let slot: ResumeSlot = Arc::new(Mutex::new(Some(resume)));
                self.waiting = Some(Arc::clone(&slot));
                slot
            }
        };
        self.borrows += 1;
        self.phase = Phase::Waiting;
        borrower.request_borrow(
            self.cluster_name(),
            Box::new(move |outcome| {
                // Under the lock: the stream deletes the scheduler under it too.
                let resume = slot.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(r) = resume.as_ref() {
                    r.commit(outcome_event(outcome));
                }
            }),
        );
        true
    }

    /// Ends a wait: the scheduler is taken out of the slot and deleted under its lock.
    fn end_wait(&mut self) {
        if let Some(slot) = self.waiting.take() {
            let mut resume = slot.lock().unwrap_or_else(PoisonError::into_inner);
            drop(resume.take());
            if self.phase == Phase::Waiting {
                self.phase = Phase::Idle;
            }
        }
    }

    /// Steers the stream to the permit's host and keeps the permit.
    fn admit(&mut self, stream: &mut impl Stream, permit: Permit) -> HeadersStatus {
        let metrics = self.config.metrics;
        if !stream.set_upstream_override_host(permit.host().as_str(), true) {
            crate::log(
                Level::Error,
                &format!(
                    "wscap: Envoy refused override host {} for cluster {}; refusing the stream",
                    permit.host(),
                    self.cluster_name()
                ),
            );
            drop(permit);
            if let Some(id) = metrics.rejected {
                stream.increment_counter(id, &[self.cluster_name(), "override_refused"], 1);
            }
            self.refuse(stream, "override_refused");
            return HeadersStatus::StopIteration;
        }
        if let Some(id) = metrics.admitted {
            stream.increment_counter(id, &[self.cluster_name(), permit.host().as_str()], 1);
        }
        self.permit = Some(permit);
        self.phase = Phase::Admitted;
        HeadersStatus::Continue
    }

    /// Counts and sends a refusal.
    fn reject(&mut self, stream: &mut impl Stream, rejected: Rejected) -> HeadersStatus {
        let cfg = Arc::clone(&self.config);
        if let Some(id) = cfg.metrics.rejected {
            stream.increment_counter(id, &[self.cluster_name(), rejected.reason()], 1);
        }
        // Once warned, a refusal skips the lookup (a lock) entirely.
        if rejected == Rejected::NoHosts
            && !cfg.warned_no_policy.load(Ordering::Relaxed)
            && !crate::lb::has_policy(self.cluster_name())
            && !cfg.warned_no_policy.swap(true, Ordering::Relaxed)
        {
            crate::log(
                Level::Warn,
                &format!(
                    "wscap: cluster {:?} has no wscap load_balancing_policy, so wscap knows none of \
                     its hosts and refuses every WebSocket on it (503 no_hosts); set the \
                     cluster's load_balancing_policy to the wscap dynamic module (logged once)",
                    self.cluster_name()
                ),
            );
        }
        self.refuse(stream, rejected.reason());
        HeadersStatus::StopIteration
    }

    /// Sends the refusal: 503, `retry-after`, `x-wscap-reason`, a small JSON body.
    pub fn refuse(&mut self, stream: &mut impl Stream, reason: &str) {
        self.phase = Phase::Refused;
        let retry_after = self
            .target
            .as_ref()
            .map_or(self.config.retry_after_seconds, |t| t.retry_after_seconds)
            .to_string();
        if self.config.refuse_with == crate::refuse::RefuseWith::Close1013 {
            let (key, _) = stream.header(HeaderKind::Request, "sec-websocket-key", 0);
            if let Some(key) = key {
                let accept = crate::refuse::accept_key(key);
                let frame = crate::refuse::close_frame(crate::refuse::TRY_AGAIN_LATER, reason);
                stream.send_upgrade_and_close(
                    &[
                        (":status", "101"),
                        ("upgrade", "websocket"),
                        ("connection", "Upgrade"),
                        ("sec-websocket-accept", accept.as_str()),
                        ("retry-after", retry_after.as_str()),
                        ("x-wscap-reason", reason),
                    ],
                    &frame,
                );
                return;
            }
        }
        let body = serde_json::json!({"error": reason, "cluster": self.cluster_name()}).to_string();
        let details = format!("wscap_{reason}");
        stream.send_local_reply(
            503,
            &[
                ("retry-after", retry_after.as_str()),
                ("x-wscap-reason", reason),
                ("content-type", "application/json"),
            ],
            &body,
            &details,
        );
    }

    /// `response_headers`: a non-101 answer releases; a 101 confirms, and moves the accounting
    /// when the upstream that answered is not the admitted host.
    pub fn on_response_headers(&mut self, stream: &mut impl Stream) -> HeadersStatus {
        if self.phase != Phase::Admitted {
            return HeadersStatus::Continue;
        }
        let (status, _) = stream.header(HeaderKind::Response, ":status", 0);
        if status != Some(b"101".as_slice()) {
            self.release();
            return HeadersStatus::Continue;
        }
        self.phase = Phase::Upgraded;
        let Some(permit) = self.permit.as_ref() else {
            return HeadersStatus::Continue;
        };
        let Some(real) = stream.upstream_address() else {
            crate::log(
                Level::Warn,
                &format!(
                    "wscap: cluster {}: upstream address unknown at 101; accounting kept on {}",
                    self.cluster_name(),
                    permit.host()
                ),
            );
            return HeadersStatus::Continue;
        };
        if real == permit.host().as_str() {
            if crate::log_enabled(Level::Debug) {
                crate::log(
                    Level::Debug,
                    &format!(
                        "wscap: cluster {}: upgraded on {real} as admitted",
                        self.cluster_name()
                    ),
                );
            }
            return HeadersStatus::Continue;
        }
        if let Some(id) = self.config.metrics.steering_mismatch {
            stream.increment_counter(id, &[self.cluster_name()], 1);
        }
        let Some(cluster) = self.target.as_ref().map(|t| t.cluster.clone()) else {
            return HeadersStatus::Continue;
        };
        let moved = real
            .parse::<HostAddr>()
            .map_err(|e| e.to_string())
            .and_then(|addr| cluster.track_host(&addr).map_err(|r| r.to_string()));
        match moved {
            Ok(tracked) => {
                crate::log(
                    Level::Warn,
                    &format!(
                        "wscap: cluster {} admitted on {} but Envoy connected {}; accounting moved",
                        cluster.name(),
                        permit.host(),
                        real
                    ),
                );
                // The new permit is in place before the old one is released.
                let old = self.permit.replace(tracked);
                drop(old);
            }
            Err(e) => crate::log(
                Level::Warn,
                &format!(
                    "wscap: cluster {} admitted on {} but Envoy connected {} ({e}); accounting kept on {}",
                    cluster.name(),
                    permit.host(),
                    real,
                    permit.host()
                ),
            ),
        }
        HeadersStatus::Continue
    }

    /// After a `101`: registers the stream as closable by a rebalance or a drain, with its own
    /// scheduler ([`crate::close`]). Nothing when Envoy gives no scheduler.
    pub fn register_for_close(&mut self, stream: &mut impl Stream) {
        if self.phase != Phase::Upgraded || self.closing.is_some() {
            return;
        }
        let (Some(permit), Some(target)) = (self.permit.as_ref(), self.target.as_ref()) else {
            return;
        };
        let host = permit.host().socket_addr();
        if let Some(resume) = stream.new_resume() {
            self.closing = Some(crate::close::register(&target.cluster, host, resume));
        }
    }

    /// `stream_complete`: the stream is over, but its upstream socket may still be open, so the
    /// permit is kept until `destroy` ([`Drop`]).
    ///
    /// Observed on Envoy 1.40.0 (`tests/tests/release_order.rs` reads it from the debug log):
    /// when a client resets an upgraded stream, `stream_complete` runs *before* the router resets
    /// its upstream request and closes the upstream socket, and the filter's `destroy` runs
    /// *after* that.
    /// Releasing at `stream_complete` let another worker (or, in global mode, another instance)
    /// reach the pod while this socket was still open: limit + 1 at the pod. Released in
    /// `destroy`, the slot is free only once the pod has been sent the FIN.
    pub fn on_stream_complete(&mut self) {
        if self.permit.is_some() && crate::log_enabled(Level::Debug) {
            crate::log(
                Level::Debug,
                &format!(
                    "wscap: cluster {}: stream complete; the slot is kept until destroy",
                    self.cluster_name()
                ),
            );
        }
    }

    /// Releases the permit if one is held. Idempotent: the second call finds nothing.
    pub fn release(&mut self) {
        if let Some(permit) = self.permit.take() {
            if crate::log_enabled(Level::Debug) {
                crate::log(
                    Level::Debug,
                    &format!(
                        "wscap: cluster {}: released {} (was {:?})",
                        self.cluster_name(),
                        permit.host(),
                        self.phase
                    ),
                );
            }
            drop(permit);
            self.phase = Phase::Released;
            crate::queue::notify(self.cluster_name());
        }
    }
}

/// The wait queue (see [`crate::queue`]).
impl Filter {
    /// Pauses the stream in its cluster's queue, or refuses it with `queue_full`. `wake_head`:
    /// the stream did not try to acquire (others wait), so the head is woken to try.
    fn enqueue(&mut self, stream: &mut impl Stream, wake_head: bool) -> HeadersStatus {
        let Some(settings) = self.target.as_ref().and_then(|t| t.queue) else {
            return self.reject(stream, Rejected::NoCapacity);
        };
        let slot = match &self.waiting {
            Some(slot) => Arc::clone(slot),
            None => {
                let Some(resume) = stream.new_resume() else {
                    return self.reject(stream, Rejected::NoCapacity);
                };
                let slot: ResumeSlot = Arc::new(Mutex::new(Some(resume)));
                self.waiting = Some(Arc::clone(&slot));
                slot
            }
        };
        let fleet = self.config.borrower.clone().filter(|b| b.active());
        match crate::queue::enqueue(self.cluster_name(), settings, slot, wake_head, fleet) {
            crate::queue::Enqueued::Waiting(ticket) => {
                self.queued = Some(ticket);
                self.phase = Phase::Waiting;
                HeadersStatus::Pause
            }
            crate::queue::Enqueued::Full => {
                self.end_wait();
                self.refuse_counted(stream, "queue_full");
                HeadersStatus::StopIteration
            }
        }
    }

    /// A queue event on the stream's worker: a wake (acquire; admitted, or stay in place) or
    /// the deadline (`503 queue_timeout`).
    fn on_queue_event(&mut self, stream: &mut impl Stream, event_id: u64) {
        let Some(ticket) = self.queued else {
            return;
        };
        let Some(target) = self.target.clone() else {
            return;
        };
        let name = target.cluster.name().to_owned();
        if event_id == crate::queue::EVENT_WAKE {
            match self.acquire(&target) {
                Ok(permit) => {
                    self.queued = None;
                    crate::queue::leave(&name, ticket, true);
                    self.end_wait();
                    if self.admit(stream, permit) == HeadersStatus::Continue {
                        stream.continue_decoding();
                    }
                    return;
                }
                // Lost the race: keep the place (FIFO), unless the deadline took it meanwhile.
                Err(Rejected::NoCapacity) if crate::queue::stay(&name, ticket) => return,
                Err(Rejected::NoCapacity) => {}
                Err(rejected) => {
                    self.queued = None;
                    crate::queue::leave(&name, ticket, false);
                    self.end_wait();
                    self.reject(stream, rejected);
                    return;
                }
            }
        }
        self.queued = None;
        crate::queue::leave(&name, ticket, false);
        self.end_wait();
        self.refuse_counted(stream, "queue_timeout");
    }

    /// Acquires on the stream's cluster: core's lock-free acquire, or, with a per-pod admission
    /// rate or warmup, among the pods whose allowance is not used up.
    #[inline]
    fn acquire(&self, target: &Target) -> Result<Permit, Rejected> {
        if self.config.rate.is_on() {
            crate::admission::acquire(&target.cluster, target.limit, self.config.rate)
        } else {
            target.cluster.acquire_with_default(target.limit)
        }
    }

    /// Counts (`wscap_rejected{cluster,reason}`) and sends a refusal for a queue reason.
    fn refuse_counted(&mut self, stream: &mut impl Stream, reason: &str) {
        if let Some(id) = self.config.metrics.rejected {
            let cluster = self.cluster_name().to_owned();
            stream.increment_counter(id, &[&cluster, reason], 1);
        }
        self.refuse(stream, reason);
    }
}

impl Drop for Filter {
    fn drop(&mut self) {
        // `destroy`: the last close path. `Option::take` makes a second release impossible.
        // A borrow may still be in flight: its scheduler is deleted here, under the slot's lock.
        // A stream that waits in its cluster's queue leaves it at once.
        if let Some(ticket) = self.queued.take() {
            crate::queue::leave(self.cluster_name(), ticket, false);
        }
        self.end_wait();
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use wscap_core::{HostSpec, Registry};

    type Reply = (u32, Vec<(String, String)>, String);

    #[derive(Default)]
    struct Fake {
        req: HashMap<String, Vec<Vec<u8>>>,
        resp: HashMap<String, Vec<Vec<u8>>>,
        upstream: Option<String>,
        override_host: Option<(String, bool)>,
        refuse_override: bool,
        replies: Vec<Reply>,
        counters: Vec<(usize, Vec<String>, u64)>,
        lookups: std::cell::Cell<usize>,
        sched: Arc<SchedLog>,
        no_scheduler: bool,
        continued: usize,
        cluster: Option<String>,
        route: Option<RouteSettings>,
    }

    /// What the fake scheduler saw: commits (event ids) and deletions.
    #[derive(Default)]
    struct SchedLog {
        commits: Mutex<Vec<u64>>,
        created: std::sync::atomic::AtomicUsize,
        deleted: std::sync::atomic::AtomicUsize,
    }

    struct FakeResume(Arc<SchedLog>);
    impl Resume for FakeResume {
        fn commit(&self, event_id: u64) {
            assert!(
                self.0.deleted.load(std::sync::atomic::Ordering::SeqCst)
                    < self.0.created.load(std::sync::atomic::Ordering::SeqCst),
                "commit after delete"
            );
            self.0.commits.lock().unwrap().push(event_id);
        }
    }
    impl Drop for FakeResume {
        fn drop(&mut self) {
            self.0
                .deleted
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// A borrower that keeps the callbacks, to be answered by the test.
    #[derive(Default)]
    struct FakeBorrower {
        on: bool,
        pending: Mutex<Vec<(String, crate::global::BorrowDone)>>,
    }
    impl std::fmt::Debug for FakeBorrower {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("FakeBorrower")
        }
    }
    impl Borrower for FakeBorrower {
        fn active(&self) -> bool {
            self.on
        }
        fn request_borrow(&self, cluster: &str, done: crate::global::BorrowDone) {
            self.pending
                .lock()
                .unwrap()
                .push((cluster.to_owned(), done));
        }
    }
    impl FakeBorrower {
        fn answer(&self, o: BorrowOutcome) -> usize {
            let all: Vec<_> = std::mem::take(&mut *self.pending.lock().unwrap());
            let n = all.len();
            for (_, done) in all {
                done(o);
            }
            n
        }
    }

    impl Fake {
        fn ws() -> Self {
            let mut f = Fake::default();
            f.req.insert("upgrade".into(), vec![b"websocket".to_vec()]);
            f.req.insert("connection".into(), vec![b"Upgrade".to_vec()]);
            f.cluster = Some("pods".into());
            f
        }
        fn status(&mut self, s: &str) {
            self.resp
                .insert(":status".into(), vec![s.as_bytes().to_vec()]);
        }
    }

    impl Stream for Fake {
        fn header(&self, kind: HeaderKind, name: &str, index: usize) -> (Option<&[u8]>, usize) {
            self.lookups.set(self.lookups.get() + 1);
            let map = match kind {
                HeaderKind::Request => &self.req,
                HeaderKind::Response => &self.resp,
            };
            match map.get(name) {
                Some(v) => (v.get(index).map(Vec::as_slice), v.len()),
                None => (None, 0),
            }
        }
        fn set_upstream_override_host(&mut self, host: &str, strict: bool) -> bool {
            self.override_host = Some((host.to_owned(), strict));
            !self.refuse_override
        }
        fn upstream_address(&self) -> Option<String> {
            self.upstream.clone()
        }
        fn send_local_reply(&mut self, status: u32, headers: &[(&str, &str)], body: &str, _: &str) {
            let h = headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            self.replies.push((status, h, body.to_owned()));
        }
        fn send_upgrade_and_close(&mut self, headers: &[(&str, &str)], frame: &[u8]) {
            let h = headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            self.replies
                .push((101, h, String::from_utf8_lossy(frame).into_owned()));
        }
        fn increment_counter(&mut self, id: MetricId, labels: &[&str], value: u64) {
            self.counters.push((
                id.0,
                labels.iter().map(|s| (*s).to_owned()).collect(),
                value,
            ));
        }
        fn new_resume(&mut self) -> Option<Box<dyn Resume>> {
            if self.no_scheduler {
                return None;
            }
            self.sched
                .created
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Some(Box::new(FakeResume(Arc::clone(&self.sched))))
        }
        fn continue_decoding(&mut self) {
            self.continued += 1;
        }
        fn routed_cluster(&self) -> Option<&str> {
            self.cluster.as_deref()
        }
        fn route_settings(&self) -> Option<RouteSettings> {
            self.route
        }
    }

    const ADMITTED: usize = 1;
    const REJECTED: usize = 2;
    const MISMATCH: usize = 3;

    fn setup(limit: u32, hosts: &[&str]) -> (&'static Registry, Arc<FilterConfig>) {
        let reg: &'static Registry = Box::leak(Box::new(Registry::new()));
        let settings = FilterSettings {
            cluster: Some("pods".into()),
            max_connections_per_host: limit,
            retry_after_seconds: 7,
            queue: None,
            refuse_with: Default::default(),
            rate: Default::default(),
        };
        let metrics = FilterMetrics {
            admitted: Some(MetricId(ADMITTED)),
            rejected: Some(MetricId(REJECTED)),
            steering_mismatch: Some(MetricId(MISMATCH)),
        };
        let cfg = FilterConfig::new(reg, &settings, metrics).unwrap();
        let specs: Vec<_> = hosts.iter().map(|h| HostSpec::parse(h).unwrap()).collect();
        cfg.cluster().unwrap().set_hosts(&specs);
        (reg, Arc::new(cfg))
    }

    fn active(cfg: &FilterConfig) -> u64 {
        cfg.cluster().unwrap().active()
    }

    fn global_setup(
        limit: u32,
        on: bool,
    ) -> (&'static Registry, Arc<FilterConfig>, Arc<FakeBorrower>) {
        let (reg, cfg) = setup(limit, &["10.0.0.1:80"]);
        let cfg = Arc::try_unwrap(cfg).unwrap();
        let borrower = Arc::new(FakeBorrower {
            on,
            ..FakeBorrower::default()
        });
        let cfg = Arc::new(cfg.with_borrower(borrower.clone()));
        (reg, cfg, borrower)
    }

    fn ncommits(f: &Fake) -> Vec<u64> {
        f.sched.commits.lock().unwrap().clone()
    }

    fn deleted(f: &Fake) -> usize {
        f.sched.deleted.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[test]
    fn global_mode_pauses_borrows_and_resumes_admitted() {
        let (_reg, cfg, borrower) = global_setup(1, true);
        let addr: HostAddr = "10.0.0.1:80".parse().unwrap();
        cfg.cluster().unwrap().set_host_cap(&addr, Some(0));
        let mut f = Fake::ws();
        let mut filter = Filter::new(cfg.clone());
        assert_eq!(filter.on_request_headers(&mut f), HeadersStatus::Pause);
        assert_eq!(filter.phase(), Phase::Waiting);
        assert!(f.replies.is_empty(), "no refusal while the borrow runs");
        // The coordinator grants: raises the cap, then answers.
        cfg.cluster().unwrap().set_host_cap(&addr, Some(1));
        assert_eq!(borrower.answer(BorrowOutcome::Granted), 1);
        assert_eq!(ncommits(&f), vec![1]);
        filter.on_scheduled(&mut f, 1);
        assert_eq!(filter.phase(), Phase::Admitted);
        assert_eq!(f.continued, 1);
        assert_eq!(f.override_host, Some(("10.0.0.1:80".into(), true)));
        assert_eq!(
            deleted(&f),
            1,
            "the scheduler is deleted once the wait ends"
        );
        assert_eq!(active(&cfg), 1);
        drop(filter);
        assert_eq!(active(&cfg), 0);
        assert_eq!(deleted(&f), 1, "and never twice");
    }

    #[test]
    fn global_mode_refuses_after_full_and_unavailable() {
        for (outcome, id) in [(BorrowOutcome::Full, 2), (BorrowOutcome::Unavailable, 3)] {
            let (_reg, cfg, borrower) = global_setup(1, true);
            cfg.cluster()
                .unwrap()
                .set_host_cap(&"10.0.0.1:80".parse().unwrap(), Some(0));
            let mut f = Fake::ws();
            let mut filter = Filter::new(cfg.clone());
            assert_eq!(filter.on_request_headers(&mut f), HeadersStatus::Pause);
            borrower.answer(outcome);
            assert_eq!(ncommits(&f), vec![id]);
            filter.on_scheduled(&mut f, id);
            assert_eq!(filter.phase(), Phase::Refused);
            assert_eq!(f.replies.len(), 1);
            assert_eq!(f.replies[0].0, 503);
            assert!(f.replies[0]
                .1
                .contains(&("x-wscap-reason".into(), "no_capacity".into())));
            assert_eq!(f.continued, 0);
            assert_eq!(deleted(&f), 1);
            assert_eq!(active(&cfg), 0);
        }
    }

    #[test]
    fn global_mode_borrows_again_after_a_grant_someone_else_used() {
        let (_reg, cfg, borrower) = global_setup(1, true);
        let addr: HostAddr = "10.0.0.1:80".parse().unwrap();
        cfg.cluster().unwrap().set_host_cap(&addr, Some(0));
        let mut f = Fake::ws();
        let mut filter = Filter::new(cfg.clone());
        filter.on_request_headers(&mut f);
        borrower.answer(BorrowOutcome::Granted); // but the cap stayed 0
        filter.on_scheduled(&mut f, 1);
        assert_eq!(filter.phase(), Phase::Waiting);
        assert_eq!(borrower.pending.lock().unwrap().len(), 1, "asked again");
        assert_eq!(f.sched.created.load(std::sync::atomic::Ordering::SeqCst), 1);
        cfg.cluster().unwrap().set_host_cap(&addr, Some(1));
        borrower.answer(BorrowOutcome::Granted);
        filter.on_scheduled(&mut f, 1);
        assert_eq!(filter.phase(), Phase::Admitted);
        assert_eq!(ncommits(&f), vec![1, 1]);
    }

    #[test]
    fn a_stream_destroyed_while_borrowing_deletes_its_scheduler_first() {
        let (_reg, cfg, borrower) = global_setup(1, true);
        cfg.cluster()
            .unwrap()
            .set_host_cap(&"10.0.0.1:80".parse().unwrap(), Some(0));
        let mut f = Fake::ws();
        let mut filter = Filter::new(cfg.clone());
        filter.on_request_headers(&mut f);
        drop(filter);
        assert_eq!(deleted(&f), 1);
        // The late answer finds no scheduler: nothing is committed (FakeResume would panic).
        borrower.answer(BorrowOutcome::Granted);
        assert!(ncommits(&f).is_empty());
    }

    #[test]
    fn a_late_event_after_the_wait_ended_is_ignored() {
        let (_reg, cfg, _borrower) = global_setup(1, true);
        let mut f = Fake::ws();
        let mut filter = Filter::new(cfg.clone());
        assert_eq!(filter.on_request_headers(&mut f), HeadersStatus::Continue);
        filter.on_scheduled(&mut f, 1);
        assert_eq!(filter.phase(), Phase::Admitted);
        assert_eq!(f.continued, 0);
        assert_eq!(active(&cfg), 1);
    }

    #[test]
    fn local_mode_or_no_scheduler_refuses_at_once() {
        let (_reg, cfg, borrower) = global_setup(0, false);
        let mut f = Fake::ws();
        let mut filter = Filter::new(cfg.clone());
        assert_eq!(
            filter.on_request_headers(&mut f),
            HeadersStatus::StopIteration
        );
        assert!(borrower.pending.lock().unwrap().is_empty());
        let (_reg, cfg, borrower) = global_setup(0, true);
        let mut f = Fake::ws();
        f.no_scheduler = true;
        let mut filter = Filter::new(cfg.clone());
        assert_eq!(
            filter.on_request_headers(&mut f),
            HeadersStatus::StopIteration
        );
        assert!(borrower.pending.lock().unwrap().is_empty());
        assert_eq!(f.replies[0].0, 503);
    }

    #[test]
    fn event_ids_round_trip() {
        for o in [
            BorrowOutcome::Granted,
            BorrowOutcome::Full,
            BorrowOutcome::Unavailable,
        ] {
            assert_eq!(event_outcome(outcome_event(o)), Some(o));
        }
        assert_eq!(event_outcome(0), None);
    }

    #[test]
    fn websocket_detection() {
        assert!(is_websocket_token(b"websocket"));
        assert!(is_websocket_token(b"WebSocket"));
        assert!(is_websocket_token(b" websocket "));
        assert!(!is_websocket_token(b"h2c"));
        assert!(!is_websocket_token(b"websocket2"));
        assert!(connection_has_upgrade(b"Upgrade"));
        assert!(connection_has_upgrade(b"keep-alive, Upgrade"));
        assert!(connection_has_upgrade(b"keep-alive,upgrade"));
        assert!(connection_has_upgrade(b" UPGRADE ,close"));
        assert!(!connection_has_upgrade(b"keep-alive"));
        assert!(!connection_has_upgrade(b"upgrades"));
        assert!(!connection_has_upgrade(b""));

        let mut f = Fake::ws();
        assert!(detect(&f));
        f.req.insert(
            "connection".into(),
            vec![b"keep-alive".to_vec(), b"upgrade".to_vec()],
        );
        assert!(detect(&f), "a second connection header counts");
        f.req
            .insert("connection".into(), vec![b"keep-alive".to_vec()]);
        assert!(!detect(&f));
        f.req.remove("connection");
        assert!(
            !detect(&f),
            "upgrade without connection: upgrade is not an upgrade"
        );
        let mut f = Fake::ws();
        f.req.insert("upgrade".into(), vec![b"h2c".to_vec()]);
        assert!(!detect(&f));
    }

    #[test]
    fn plain_request_costs_one_lookup_and_holds_nothing() {
        let (_reg, cfg) = setup(1, &["10.0.0.1:80"]);
        let mut f = Fake::default();
        let mut filter = Filter::new(cfg.clone());
        assert_eq!(filter.on_request_headers(&mut f), HeadersStatus::Continue);
        assert_eq!(f.lookups.get(), 1);
        assert_eq!(filter.phase(), Phase::Idle);
        assert!(f.override_host.is_none());
        f.status("200");
        assert_eq!(filter.on_response_headers(&mut f), HeadersStatus::Continue);
        assert_eq!(active(&cfg), 0);
    }

    #[test]
    fn admission_steers_strictly_and_counts() {
        let (_reg, cfg) = setup(1, &["10.0.0.1:80"]);
        let mut f = Fake::ws();
        let mut filter = Filter::new(cfg.clone());
        assert_eq!(filter.on_request_headers(&mut f), HeadersStatus::Continue);
        assert_eq!(f.override_host, Some(("10.0.0.1:80".into(), true)));
        assert_eq!(
            f.counters,
            vec![(ADMITTED, vec!["pods".into(), "10.0.0.1:80".into()], 1)]
        );
        assert_eq!(active(&cfg), 1);
        assert_eq!(filter.phase(), Phase::Admitted);
    }

    #[test]
    fn refusal_is_a_503_with_reason_retry_after_and_json() {
        let (_reg, cfg) = setup(1, &["10.0.0.1:80"]);
        let mut held = Filter::new(cfg.clone());
        held.on_request_headers(&mut Fake::ws());
        let mut f = Fake::ws();
        let mut filter = Filter::new(cfg.clone());
        assert_eq!(
            filter.on_request_headers(&mut f),
            HeadersStatus::StopIteration
        );
        let (status, headers, body) = &f.replies[0];
        assert_eq!(*status, 503);
        assert!(headers.contains(&("retry-after".into(), "7".into())));
        assert!(headers.contains(&("x-wscap-reason".into(), "no_capacity".into())));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"error":"no_capacity","cluster":"pods"})
        );
        assert_eq!(
            f.counters,
            vec![(REJECTED, vec!["pods".into(), "no_capacity".into()], 1)]
        );
        assert_eq!(filter.phase(), Phase::Refused);
        assert_eq!(active(&cfg), 1);
        drop(filter);
        assert_eq!(active(&cfg), 1, "a refused stream releases nothing");
    }

    #[test]
    fn no_hosts_reason() {
        let (_reg, cfg) = setup(5, &[]);
        let mut f = Fake::ws();
        let mut filter = Filter::new(cfg);
        assert_eq!(
            filter.on_request_headers(&mut f),
            HeadersStatus::StopIteration
        );
        assert!(f.replies[0]
            .1
            .contains(&("x-wscap-reason".into(), "no_hosts".into())));
        assert!(f.replies[0].2.contains("\"no_hosts\""));
    }

    #[test]
    fn override_refused_fails_closed_and_releases() {
        let (_reg, cfg) = setup(1, &["10.0.0.1:80"]);
        let mut f = Fake::ws();
        f.refuse_override = true;
        let mut filter = Filter::new(cfg.clone());
        assert_eq!(
            filter.on_request_headers(&mut f),
            HeadersStatus::StopIteration
        );
        assert_eq!(f.replies[0].0, 503);
        assert!(f.replies[0]
            .1
            .contains(&("x-wscap-reason".into(), "override_refused".into())));
        assert!(f.counters.contains(&(
            REJECTED,
            vec!["pods".into(), "override_refused".into()],
            1
        )));
        assert_eq!(active(&cfg), 0);
    }

    /// Every ordering of the three close paths releases exactly once. A double release would
    /// underflow the count (core debug-asserts) or free a slot someone else holds, which the
    /// second, concurrent stream below would expose.
    #[test]
    fn permit_released_exactly_once_in_every_order() {
        #[derive(Clone, Copy, Debug)]
        enum Ev {
            Resp(&'static str),
            Complete,
            Destroy,
        }
        let orders: Vec<Vec<Ev>> = vec![
            vec![Ev::Resp("503"), Ev::Complete, Ev::Destroy],
            vec![Ev::Resp("101"), Ev::Complete, Ev::Destroy],
            vec![Ev::Resp("101"), Ev::Destroy],
            vec![Ev::Complete, Ev::Resp("503"), Ev::Destroy],
            vec![Ev::Complete, Ev::Destroy],
            vec![Ev::Destroy],
            vec![Ev::Resp("200"), Ev::Destroy],
            vec![
                Ev::Resp("404"),
                Ev::Resp("404"),
                Ev::Complete,
                Ev::Complete,
                Ev::Destroy,
            ],
        ];
        for order in orders {
            let (_reg, cfg) = setup(2, &["10.0.0.1:80"]);
            // Another stream holds a slot throughout: a double release would take it away.
            let mut other = Filter::new(cfg.clone());
            other.on_request_headers(&mut Fake::ws());
            assert_eq!(active(&cfg), 1);

            let mut f = Fake::ws();
            let mut filter = Some(Filter::new(cfg.clone()));
            filter.as_mut().unwrap().on_request_headers(&mut f);
            assert_eq!(active(&cfg), 2, "{order:?}");
            let mut open = true;
            for ev in &order {
                match *ev {
                    Ev::Resp(s) => {
                        f.status(s);
                        if let Some(fl) = filter.as_mut() {
                            fl.on_response_headers(&mut f);
                        }
                        if s != "101" {
                            open = false;
                        }
                    }
                    Ev::Complete => {
                        // Not a release point: the upstream socket may still be open.
                        if let Some(fl) = filter.as_mut() {
                            fl.on_stream_complete();
                        }
                    }
                    Ev::Destroy => {
                        drop(filter.take());
                        open = false;
                    }
                }
                let expect = if open { 2 } else { 1 };
                assert_eq!(active(&cfg), expect, "{order:?} after {ev:?}");
            }
            assert_eq!(active(&cfg), 1, "{order:?}");
            drop(other);
            assert_eq!(active(&cfg), 0, "{order:?}");
        }
    }

    #[test]
    fn upgraded_stream_holds_until_destroy() {
        let (_reg, cfg) = setup(1, &["10.0.0.1:80"]);
        let mut f = Fake::ws();
        f.upstream = Some("10.0.0.1:80".into());
        let mut filter = Filter::new(cfg.clone());
        filter.on_request_headers(&mut f);
        f.status("101");
        filter.on_response_headers(&mut f);
        assert_eq!(filter.phase(), Phase::Upgraded);
        assert_eq!(active(&cfg), 1);
        assert!(f.counters.iter().all(|c| c.0 != MISMATCH));
        filter.on_stream_complete();
        assert_eq!(filter.phase(), Phase::Upgraded);
        assert_eq!(
            active(&cfg),
            1,
            "stream_complete comes before the upstream close"
        );
        drop(filter);
        assert_eq!(active(&cfg), 0);
    }

    #[test]
    fn mismatch_moves_accounting_to_the_real_host() {
        let (_reg, cfg) = setup(1, &["10.0.0.1:80", "10.0.0.2:80"]);
        let mut f = Fake::ws();
        let mut filter = Filter::new(cfg.clone());
        filter.on_request_headers(&mut f);
        let admitted = filter.permit_host().unwrap().clone();
        let other = if admitted.as_str() == "10.0.0.1:80" {
            "10.0.0.2:80"
        } else {
            "10.0.0.1:80"
        };
        f.upstream = Some(other.into());
        f.status("101");
        filter.on_response_headers(&mut f);
        assert_eq!(filter.permit_host().unwrap().as_str(), other);
        let host = |a: &str| {
            cfg.cluster()
                .unwrap()
                .host(&a.parse().unwrap())
                .unwrap()
                .active()
        };
        assert_eq!(host(admitted.as_str()), 0);
        assert_eq!(host(other), 1);
        assert!(f.counters.contains(&(MISMATCH, vec!["pods".to_owned()], 1)));
        drop(filter);
        assert_eq!(host(other), 0);
    }

    #[test]
    fn mismatch_to_unknown_host_keeps_accounting() {
        let (_reg, cfg) = setup(1, &["10.0.0.1:80"]);
        let mut f = Fake::ws();
        let mut filter = Filter::new(cfg.clone());
        filter.on_request_headers(&mut f);
        f.upstream = Some("10.9.9.9:80".into());
        f.status("101");
        filter.on_response_headers(&mut f);
        assert_eq!(filter.permit_host().unwrap().as_str(), "10.0.0.1:80");
        assert_eq!(active(&cfg), 1);
        drop(filter);
        assert_eq!(active(&cfg), 0);
    }

    #[test]
    fn websockets_to_other_clusters_or_no_cluster_or_disabled_routes_pass_untouched() {
        let (_reg, cfg) = setup(1, &["10.0.0.1:80"]);
        let cases: [(Option<&str>, Option<RouteSettings>); 3] = [
            (Some("other"), None),
            (None, None),
            (
                Some("pods"),
                Some(RouteSettings {
                    disabled: true,
                    ..RouteSettings::default()
                }),
            ),
        ];
        for (cluster, route) in cases {
            let mut f = Fake::ws();
            f.cluster = cluster.map(str::to_owned);
            f.route = route;
            let mut filter = Filter::new(cfg.clone());
            assert_eq!(filter.on_request_headers(&mut f), HeadersStatus::Continue);
            assert_eq!(filter.phase(), Phase::Ignored, "{cluster:?} {route:?}");
            assert!(f.override_host.is_none(), "no override host");
            assert!(f.counters.is_empty(), "nothing counted");
            assert!(f.replies.is_empty(), "no local reply");
            f.status("101");
            assert_eq!(filter.on_response_headers(&mut f), HeadersStatus::Continue);
            assert_eq!(active(&cfg), 0);
        }
    }

    #[test]
    fn a_per_route_limit_and_retry_after_apply_to_that_route_only() {
        let (_reg, cfg) = setup(3, &["10.0.0.1:80"]);
        let route = RouteSettings {
            max_connections_per_host: Some(1),
            retry_after_seconds: Some(42),
            disabled: false,
            queue: None,
        };
        let mut held = Vec::new();
        let mut f = Fake::ws();
        f.route = Some(route);
        let mut a = Filter::new(cfg.clone());
        assert_eq!(a.on_request_headers(&mut f), HeadersStatus::Continue);
        held.push(a);
        // The route allows 1: refused with the route's retry-after.
        let mut f = Fake::ws();
        f.route = Some(route);
        let mut b = Filter::new(cfg.clone());
        assert_eq!(b.on_request_headers(&mut f), HeadersStatus::StopIteration);
        let (status, headers, body) = &f.replies[0];
        assert_eq!(*status, 503);
        assert!(headers.contains(&("retry-after".into(), "42".into())));
        assert!(body.contains("\"cluster\":\"pods\""));
        // Without the route's setting the filter's 3 holds.
        for _ in 0..2 {
            let mut f = Fake::ws();
            let mut c = Filter::new(cfg.clone());
            assert_eq!(c.on_request_headers(&mut f), HeadersStatus::Continue);
            held.push(c);
        }
        let mut f = Fake::ws();
        let mut d = Filter::new(cfg.clone());
        assert_eq!(d.on_request_headers(&mut f), HeadersStatus::StopIteration);
        assert!(f.replies[0].1.contains(&("retry-after".into(), "7".into())));
        // A route may also raise the limit over the filter's default.
        let mut f = Fake::ws();
        f.route = Some(RouteSettings {
            max_connections_per_host: Some(4),
            ..RouteSettings::default()
        });
        let mut e = Filter::new(cfg.clone());
        assert_eq!(e.on_request_headers(&mut f), HeadersStatus::Continue);
        held.push(e);
        assert_eq!(active(&cfg), 4);
        drop(held);
        assert_eq!(active(&cfg), 0);
    }

    #[test]
    fn without_a_cluster_name_every_cluster_with_the_policy_is_governed() {
        let reg: &'static Registry = Box::leak(Box::new(Registry::new()));
        let name = "wildcard-test-cluster";
        let settings = FilterSettings {
            cluster: None,
            max_connections_per_host: 2,
            retry_after_seconds: 1,
            queue: None,
            refuse_with: Default::default(),
            rate: Default::default(),
        };
        let cfg = Arc::new(FilterConfig::new(reg, &settings, FilterMetrics::default()).unwrap());
        // Not (yet) a wscap cluster: untouched.
        let mut f = Fake::ws();
        f.cluster = Some(name.into());
        let mut filter = Filter::new(cfg.clone());
        filter.on_request_headers(&mut f);
        assert_eq!(filter.phase(), Phase::Ignored);
        // The LB policy arrives for it: governed, with the filter's default.
        crate::lb::mark_policy(name);
        let c = reg.cluster_or_create(name).unwrap();
        apply_default(reg, name);
        assert_eq!(c.default_limit(), 2);
        c.set_hosts(&[HostSpec::parse("10.0.0.9:80").unwrap()]);
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut f = Fake::ws();
            f.cluster = Some(name.into());
            let mut filter = Filter::new(cfg.clone());
            assert_eq!(filter.on_request_headers(&mut f), HeadersStatus::Continue);
            assert_eq!(f.override_host.as_ref().unwrap().0, "10.0.0.9:80");
            held.push(filter);
        }
        let mut f = Fake::ws();
        f.cluster = Some(name.into());
        let mut filter = Filter::new(cfg.clone());
        assert_eq!(
            filter.on_request_headers(&mut f),
            HeadersStatus::StopIteration
        );
        assert_eq!(c.active(), 2);
        drop(held);
        assert_eq!(c.active(), 0);
        crate::lb::unmark_policy(name);
    }

    #[test]
    fn disagreeing_defaults_resolve_to_the_largest_whatever_the_order() {
        let reg: &'static Registry = Box::leak(Box::new(Registry::new()));
        let cfg = |n: u32| {
            FilterConfig::new(
                reg,
                &FilterSettings {
                    cluster: Some("shared".into()),
                    max_connections_per_host: n,
                    retry_after_seconds: 1,
                    queue: None,
                    refuse_with: Default::default(),
                    rate: Default::default(),
                },
                FilterMetrics::default(),
            )
            .unwrap()
        };
        let c = || reg.cluster("shared").unwrap().default_limit();
        let a = cfg(5);
        let b = cfg(3);
        assert_eq!(c(), 5);
        drop(a);
        assert_eq!(
            c(),
            3,
            "the remaining config's default once the larger one is gone"
        );
        let d = cfg(8);
        assert_eq!(c(), 8);
        drop(d);
        drop(b);
        assert_eq!(c(), 3, "the last value stays when no config is left");
    }
}
