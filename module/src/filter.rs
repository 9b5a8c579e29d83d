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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use wscap_core::{Cluster, HostAddr, Permit, Rejected};
use wscap_global::BorrowOutcome;

use crate::config::FilterSettings;
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
    /// Adds `value` to a labelled counter.
    fn increment_counter(&mut self, id: MetricId, labels: &[&str], value: u64);
    /// A scheduler for this stream (global mode), `None` if Envoy gave none.
    fn new_resume(&mut self) -> Option<Box<dyn Resume>>;
    /// Continues a stream paused in `request_headers`.
    fn continue_decoding(&mut self);
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
    cluster: Cluster,
    retry_after: String,
    metrics: FilterMetrics,
    body_no_capacity: String,
    body_no_hosts: String,
    borrower: Option<Arc<dyn Borrower>>,
    /// Set once the "no wscap LB policy on this cluster" warning was logged.
    warned_no_policy: AtomicBool,
}

impl FilterConfig {
    /// Resolves the cluster in `registry` (creating it, setting its default limit).
    pub fn new(
        registry: &wscap_core::Registry,
        settings: &FilterSettings,
        metrics: FilterMetrics,
    ) -> Result<Self, String> {
        if let Some(before) = registry
            .cluster(&settings.cluster)
            .map(|c| c.default_limit())
        {
            if before != 0 && before != settings.max_connections_per_host {
                // A reload, or two filter configs naming one cluster: the last one wins.
                crate::log(
                    Level::Info,
                    &format!(
                        "wscap: cluster {:?}: default limit {} -> {}",
                        settings.cluster, before, settings.max_connections_per_host
                    ),
                );
            }
        }
        let cluster = registry
            .set_default_limit(&settings.cluster, settings.max_connections_per_host)
            .map_err(|e| e.to_string())?;
        let body = |reason: &str| {
            serde_json::json!({"error": reason, "cluster": settings.cluster}).to_string()
        };
        Ok(FilterConfig {
            body_no_capacity: body("no_capacity"),
            body_no_hosts: body("no_hosts"),
            cluster,
            retry_after: settings.retry_after_seconds.to_string(),
            metrics,
            borrower: None,
            warned_no_policy: AtomicBool::new(false),
        })
    }

    /// Where `no_capacity` refusals borrow more room first (global mode).
    pub fn with_borrower(mut self, borrower: Arc<dyn Borrower>) -> Self {
        self.borrower = Some(borrower);
        self
    }

    /// The cluster handle.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }
}

/// Where a stream is in its life, as far as its permit is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Not a WebSocket (or not seen yet): holds nothing.
    Idle,
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

/// One HTTP stream. Holds at most one permit, released on the first close path.
#[derive(Debug)]
pub struct Filter {
    config: Arc<FilterConfig>,
    permit: Option<Permit>,
    phase: Phase,
    /// The scheduler while the stream waits for a borrow.
    waiting: Option<ResumeSlot>,
    borrows: u32,
}

impl Filter {
    /// A stream under `config`.
    pub fn new(config: Arc<FilterConfig>) -> Self {
        Filter {
            config,
            permit: None,
            phase: Phase::Idle,
            waiting: None,
            borrows: 0,
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

    /// `request_headers`: admits, steers or refuses a WebSocket upgrade; in global mode a
    /// `no_capacity` refusal first pauses the stream and borrows.
    pub fn on_request_headers(&mut self, stream: &mut impl Stream) -> HeadersStatus {
        if self.phase != Phase::Idle || !detect(stream) {
            return HeadersStatus::Continue;
        }
        match self.config.cluster.acquire() {
            Ok(permit) => self.admit(stream, permit),
            Err(Rejected::NoCapacity) if self.borrow(stream) => HeadersStatus::Pause,
            Err(rejected) => self.reject(stream, rejected),
        }
    }

    /// `on_scheduled`: a borrow round ended; acquire again, then continue, borrow again or refuse.
    pub fn on_scheduled(&mut self, stream: &mut impl Stream, event_id: u64) {
        if self.phase != Phase::Waiting {
            return;
        }
        let outcome = event_outcome(event_id);
        match self.config.cluster.acquire() {
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
            self.config.cluster.name(),
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
        let cfg = Arc::clone(&self.config);
        if !stream.set_upstream_override_host(permit.host().as_str(), true) {
            crate::log(
                Level::Error,
                &format!(
                    "wscap: Envoy refused override host {} for cluster {}; refusing the stream",
                    permit.host(),
                    cfg.cluster.name()
                ),
            );
            drop(permit);
            if let Some(id) = cfg.metrics.rejected {
                stream.increment_counter(id, &[cfg.cluster.name(), "override_refused"], 1);
            }
            self.refuse(stream, "override_refused");
            return HeadersStatus::StopIteration;
        }
        if let Some(id) = cfg.metrics.admitted {
            stream.increment_counter(id, &[cfg.cluster.name(), permit.host().as_str()], 1);
        }
        self.permit = Some(permit);
        self.phase = Phase::Admitted;
        HeadersStatus::Continue
    }

    /// Counts and sends a refusal.
    fn reject(&mut self, stream: &mut impl Stream, rejected: Rejected) -> HeadersStatus {
        let cfg = Arc::clone(&self.config);
        if let Some(id) = cfg.metrics.rejected {
            stream.increment_counter(id, &[cfg.cluster.name(), rejected.reason()], 1);
        }
        // Once warned, a refusal skips the lookup (a lock) entirely.
        if rejected == Rejected::NoHosts
            && !cfg.warned_no_policy.load(Ordering::Relaxed)
            && !crate::lb::has_policy(cfg.cluster.name())
            && !cfg.warned_no_policy.swap(true, Ordering::Relaxed)
        {
            crate::log(
                Level::Warn,
                &format!(
                    "wscap: cluster {:?} has no wscap load_balancing_policy, so wscap knows none of \
                     its hosts and refuses every WebSocket on it (503 no_hosts); set the \
                     cluster's load_balancing_policy to the wscap dynamic module (logged once)",
                    cfg.cluster.name()
                ),
            );
        }
        self.refuse(stream, rejected.reason());
        HeadersStatus::StopIteration
    }

    /// Sends the refusal: 503, `retry-after`, `x-wscap-reason`, a small JSON body.
    pub fn refuse(&mut self, stream: &mut impl Stream, reason: &str) {
        self.phase = Phase::Refused;
        let cfg = &self.config;
        let body = match reason {
            r if r == Rejected::NoCapacity.reason() => cfg.body_no_capacity.clone(),
            r if r == Rejected::NoHosts.reason() => cfg.body_no_hosts.clone(),
            r => serde_json::json!({"error": r, "cluster": cfg.cluster.name()}).to_string(),
        };
        let details = format!("wscap_{reason}");
        stream.send_local_reply(
            503,
            &[
                ("retry-after", cfg.retry_after.as_str()),
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
                    self.config.cluster.name(),
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
                        self.config.cluster.name()
                    ),
                );
            }
            return HeadersStatus::Continue;
        }
        let cfg = Arc::clone(&self.config);
        if let Some(id) = cfg.metrics.steering_mismatch {
            stream.increment_counter(id, &[cfg.cluster.name()], 1);
        }
        let moved = real
            .parse::<HostAddr>()
            .map_err(|e| e.to_string())
            .and_then(|addr| cfg.cluster.track_host(&addr).map_err(|r| r.to_string()));
        match moved {
            Ok(tracked) => {
                crate::log(
                    Level::Warn,
                    &format!(
                        "wscap: cluster {} admitted on {} but Envoy connected {}; accounting moved",
                        cfg.cluster.name(),
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
                    cfg.cluster.name(),
                    permit.host(),
                    real,
                    permit.host()
                ),
            ),
        }
        HeadersStatus::Continue
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
                    self.config.cluster.name()
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
                        self.config.cluster.name(),
                        permit.host(),
                        self.phase
                    ),
                );
            }
            drop(permit);
            self.phase = Phase::Released;
        }
    }
}

impl Drop for Filter {
    fn drop(&mut self) {
        // `destroy`: the last close path. `Option::take` makes a second release impossible.
        // A borrow may still be in flight: its scheduler is deleted here, under the slot's lock.
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
    }

    const ADMITTED: usize = 1;
    const REJECTED: usize = 2;
    const MISMATCH: usize = 3;

    fn setup(limit: u32, hosts: &[&str]) -> (Registry, Arc<FilterConfig>) {
        let reg = Registry::new();
        let settings = FilterSettings {
            cluster: "pods".into(),
            max_connections_per_host: limit,
            retry_after_seconds: 7,
        };
        let metrics = FilterMetrics {
            admitted: Some(MetricId(ADMITTED)),
            rejected: Some(MetricId(REJECTED)),
            steering_mismatch: Some(MetricId(MISMATCH)),
        };
        let cfg = FilterConfig::new(&reg, &settings, metrics).unwrap();
        let specs: Vec<_> = hosts.iter().map(|h| HostSpec::parse(h).unwrap()).collect();
        cfg.cluster().set_hosts(&specs);
        (reg, Arc::new(cfg))
    }

    fn active(cfg: &FilterConfig) -> u64 {
        cfg.cluster().active()
    }

    fn global_setup(limit: u32, on: bool) -> (Registry, Arc<FilterConfig>, Arc<FakeBorrower>) {
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
        cfg.cluster().set_host_cap(&addr, Some(0));
        let mut f = Fake::ws();
        let mut filter = Filter::new(cfg.clone());
        assert_eq!(filter.on_request_headers(&mut f), HeadersStatus::Pause);
        assert_eq!(filter.phase(), Phase::Waiting);
        assert!(f.replies.is_empty(), "no refusal while the borrow runs");
        // The coordinator grants: raises the cap, then answers.
        cfg.cluster().set_host_cap(&addr, Some(1));
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
        cfg.cluster().set_host_cap(&addr, Some(0));
        let mut f = Fake::ws();
        let mut filter = Filter::new(cfg.clone());
        filter.on_request_headers(&mut f);
        borrower.answer(BorrowOutcome::Granted); // but the cap stayed 0
        filter.on_scheduled(&mut f, 1);
        assert_eq!(filter.phase(), Phase::Waiting);
        assert_eq!(borrower.pending.lock().unwrap().len(), 1, "asked again");
        assert_eq!(f.sched.created.load(std::sync::atomic::Ordering::SeqCst), 1);
        cfg.cluster().set_host_cap(&addr, Some(1));
        borrower.answer(BorrowOutcome::Granted);
        filter.on_scheduled(&mut f, 1);
        assert_eq!(filter.phase(), Phase::Admitted);
        assert_eq!(ncommits(&f), vec![1, 1]);
    }

    #[test]
    fn a_stream_destroyed_while_borrowing_deletes_its_scheduler_first() {
        let (_reg, cfg, borrower) = global_setup(1, true);
        cfg.cluster()
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
        let host = |a: &str| cfg.cluster().host(&a.parse().unwrap()).unwrap().active();
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
}
