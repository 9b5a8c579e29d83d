//! The bootstrap extension `wscap`: the admin endpoint `GET /wscap` and the periodic gauge
//! refresh (main thread).

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};

use wscap_core::{Registry, Snapshot};
use wscap_global::{BorrowSample, FleetView};

use crate::config::BootstrapSettings;
use crate::filter::MetricId;

/// The admin path the extension registers.
pub const ADMIN_PATH: &str = "/wscap";

/// What the bootstrap extension does to Envoy's stats (labels may be empty: an unlabelled
/// metric).
pub trait GaugeSink {
    /// Sets a gauge.
    fn set_gauge(&self, id: MetricId, labels: &[&str], value: u64);
    /// Adds to a counter.
    fn add_counter(&self, id: MetricId, labels: &[&str], value: u64);
    /// Records one value into a histogram.
    fn record_histogram(&self, id: MetricId, labels: &[&str], value: u64);
}

/// Ids of the global-mode metrics (defined only in global mode; `None` when Envoy refused one).
/// Names as Envoy's `/stats/prometheus` shows them carry the prefix
/// `envoy_dynamicmodulescustom_`.
#[derive(Debug, Clone, Copy, Default)]
pub struct GlobalMetrics {
    /// `wscap_global_mode` (gauge, no labels): 1 on an instance in global mode.
    pub mode: Option<MetricId>,
    /// `wscap_global_share{cluster,host}` (gauge): the share of the pod's limit this instance
    /// holds in Redis. Summed over instances it is at most the pod's limit.
    pub share: Option<MetricId>,
    /// `wscap_global_fleet_active_connections{cluster,host}` (gauge): live connections to the
    /// pod summed over every live instance, as this instance last read them from Redis. The
    /// same fleet-wide value on every instance: never sum it over instances.
    pub fleet_active: Option<MetricId>,
    /// `wscap_global_fail_mode_active` (gauge, no labels): 1 while the last round did not
    /// reach Redis and the configured fail mode decides the caps.
    pub fail_mode_active: Option<MetricId>,
    /// `wscap_global_lease_age_ms` (gauge, no labels): time since a refresh round last renewed
    /// every lease of this instance.
    pub lease_age_ms: Option<MetricId>,
    /// `wscap_global_lease_ttl_ms` (gauge, no labels): the configured lease ttl.
    pub lease_ttl_ms: Option<MetricId>,
    /// `wscap_global_claim_errors` (counter, no labels): claims that failed.
    pub claim_errors: Option<MetricId>,
    /// `wscap_global_borrows{cluster,outcome}` (counter): streams that waited for a borrow,
    /// by outcome `granted` / `full` / `unavailable`.
    pub borrows: Option<MetricId>,
    /// `wscap_global_borrow_latency_us{cluster}` (histogram): how long each of those streams
    /// waited for the answer, in microseconds.
    pub borrow_latency_us: Option<MetricId>,
}

/// Ids of the wait queue's metrics (`None` when Envoy refused one). In `/stats/prometheus`
/// with the prefix `envoy_dynamicmodulescustom_`; a cluster's series appear once a stream
/// waited on it.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueMetrics {
    /// `wscap_waiting{cluster}` (gauge): streams waiting in the cluster's queue (the same
    /// name as in `/wscap?format=prometheus`).
    pub waiting: Option<MetricId>,
    /// `wscap_queue_wait_ms{cluster}` (histogram): how long each finished wait lasted, in
    /// milliseconds, admitted or timed out (`queue_timeout`); a client that hung up while
    /// waiting is not recorded.
    pub wait_ms: Option<MetricId>,
}

/// What global mode reports on one timer tick.
#[derive(Debug, Clone, Default)]
pub struct GlobalReport {
    /// The coordinator's fleet view.
    pub view: FleetView,
    /// Borrows answered since the last tick.
    pub samples: Vec<BorrowSample>,
    /// Time since every lease was last renewed, in milliseconds.
    pub lease_age_ms: u64,
    /// The lease ttl, in milliseconds.
    pub lease_ttl_ms: u64,
}

/// Last values written for the global-mode metrics.
#[derive(Debug, Default)]
struct GlobalReported {
    /// Per `(cluster, host)`: `(share, fleet live)`.
    pods: HashMap<(String, String), (u64, u64)>,
    claim_errors: u64,
    /// Coordinator rounds that panicked, as last logged.
    panics: u64,
    started: bool,
}

/// Ids of the two labelled gauges (`None` when Envoy refused to define one).
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    /// `wscap_active_connections{cluster,host}`.
    pub active: Option<MetricId>,
    /// `wscap_connection_limit{cluster,host}`.
    pub limit: Option<MetricId>,
    /// The HTTP filter's counter `wscap_admitted{cluster,host}`, defined here too so that each
    /// host's series exists at 0 from when the host appears (the same stat as the filter's:
    /// Envoy keeps one stat per name). Otherwise a series would be born at its first
    /// admission, and `rate()` / `increase()` in Prometheus never see that first increment.
    pub admitted: Option<MetricId>,
    /// The HTTP filter's counter `wscap_rejected{cluster,reason}`, likewise created at 0 for
    /// [`REFUSAL_REASONS`] when a cluster appears.
    pub rejected: Option<MetricId>,
}

/// The refusal reasons whose `wscap_rejected` series exist at 0 for every cluster.
pub const REFUSAL_REASONS: [&str; 2] = ["no_capacity", "no_hosts"];

/// The extension's state (main thread only; the mutex only satisfies `Sync`).
#[derive(Debug)]
pub struct Bootstrap {
    settings: BootstrapSettings,
    gauges: Gauges,
    /// Last value set per `(cluster, host)`: `(active, limit)`.
    reported: Mutex<HashMap<(String, String), (u64, u64)>>,
    /// Hosts and clusters whose counters were created at 0.
    counters_created: Mutex<std::collections::HashSet<(String, Option<String>)>>,
    /// Global mode: whether the coordinator's last round reached Redis, as last logged.
    redis_ok: Mutex<Option<bool>>,
    /// Clusters Envoy removed (CDS) that still hold connections: retired on each tick.
    retired: Mutex<HashSet<String>>,
    global: GlobalMetrics,
    global_reported: Mutex<GlobalReported>,
    queue: QueueMetrics,
}

impl Bootstrap {
    /// New state.
    pub fn new(settings: BootstrapSettings, gauges: Gauges) -> Self {
        Bootstrap {
            settings,
            gauges,
            reported: Mutex::new(HashMap::new()),
            counters_created: Mutex::new(std::collections::HashSet::new()),
            redis_ok: Mutex::new(None),
            retired: Mutex::new(HashSet::new()),
            global: GlobalMetrics::default(),
            global_reported: Mutex::new(GlobalReported::default()),
            queue: QueueMetrics::default(),
        }
    }

    /// With the wait queue's metrics.
    pub fn with_queue_metrics(mut self, queue: QueueMetrics) -> Self {
        self.queue = queue;
        self
    }

    /// Sets `wscap_waiting{cluster}` for every cluster that ever queued (`views`, from
    /// [`crate::queue::views`]) and records each finished wait (`waits`, from
    /// [`crate::queue::take_wait_samples`]) into `wscap_queue_wait_ms{cluster}`.
    pub fn refresh_queue(
        &self,
        views: &[(String, crate::queue::QueueView)],
        waits: &[(String, u64)],
        sink: &impl GaugeSink,
    ) {
        if let Some(id) = self.queue.waiting {
            for (cluster, v) in views {
                sink.set_gauge(id, &[cluster], v.waiting as u64);
            }
        }
        if let Some(id) = self.queue.wait_ms {
            for (cluster, ms) in waits {
                sink.record_histogram(id, &[cluster], *ms);
            }
        }
    }

    /// With the global-mode metrics `global` (global mode only).
    pub fn with_global_metrics(mut self, global: GlobalMetrics) -> Self {
        self.global = global;
        self
    }

    /// Global mode: writes the global-mode metrics from one tick's report. Gauges are set when
    /// they changed (a pod gone from the view is set to 0 once); counters get what grew since
    /// the last tick; every borrow sample is recorded into the latency histogram.
    pub fn refresh_global(&self, report: &GlobalReport, sink: &impl GaugeSink) {
        let g = &self.global;
        let mut last = self
            .global_reported
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !last.started {
            last.started = true;
            if let Some(id) = g.mode {
                sink.set_gauge(id, &[], 1);
            }
            if let Some(id) = g.lease_ttl_ms {
                sink.set_gauge(id, &[], report.lease_ttl_ms);
            }
            // Defined at zero, so that rate() and alerts see the series before the first error.
            if let Some(id) = g.claim_errors {
                sink.add_counter(id, &[], 0);
            }
        }
        if let Some(id) = g.fail_mode_active {
            sink.set_gauge(id, &[], u64::from(!report.view.redis_ok));
        }
        if let Some(id) = g.lease_age_ms {
            sink.set_gauge(id, &[], report.lease_age_ms);
        }
        let errors = report.view.claim_errors;
        if errors > last.claim_errors {
            if let Some(id) = g.claim_errors {
                sink.add_counter(id, &[], errors - last.claim_errors);
            }
            last.claim_errors = errors;
        }
        if report.view.panics > last.panics {
            // A bug in the coordinator: caught, the thread lives on; say so in Envoy's log.
            crate::log(
                crate::Level::Error,
                &format!(
                    "wscap: global mode: {} coordinator round(s) panicked and were recovered from: {}",
                    report.view.panics - last.panics,
                    report.view.last_error.as_deref().unwrap_or("")
                ),
            );
            last.panics = report.view.panics;
        }
        let mut now: HashMap<(String, String), (u64, u64)> = HashMap::new();
        for p in &report.view.pods {
            now.insert(
                (p.cluster.clone(), p.address.clone()),
                (u64::from(p.my_share), u64::from(p.live)),
            );
        }
        for (key, &(share, live)) in &now {
            let before = last.pods.get(key).copied();
            let labels = [key.0.as_str(), key.1.as_str()];
            if before.map(|b| b.0) != Some(share) {
                if let Some(id) = g.share {
                    sink.set_gauge(id, &labels, share);
                }
            }
            if before.map(|b| b.1) != Some(live) {
                if let Some(id) = g.fleet_active {
                    sink.set_gauge(id, &labels, live);
                }
            }
        }
        for key in last.pods.keys() {
            if !now.contains_key(key) {
                let labels = [key.0.as_str(), key.1.as_str()];
                for id in [g.share, g.fleet_active].into_iter().flatten() {
                    sink.set_gauge(id, &labels, 0);
                }
            }
        }
        last.pods = now;
        for s in &report.samples {
            if let Some(id) = g.borrows {
                sink.add_counter(id, &[&s.cluster, s.outcome.as_str()], 1);
            }
            if let Some(id) = g.borrow_latency_us {
                sink.record_histogram(id, &[&s.cluster], s.micros);
            }
        }
    }

    /// Envoy removed `cluster` (CDS): its hosts drain and it is dropped from `registry` once
    /// its last connection closes ([`Registry::retire`], retried by [`Bootstrap::sweep`]).
    /// A filter without `"cluster"` stops governing it at once.
    pub fn cluster_removed(&self, registry: &Registry, cluster: &str) {
        crate::lb::unmark_policy(cluster);
        let gone = registry.retire(cluster);
        crate::log(
            crate::Level::Info,
            &format!(
                "wscap: cluster {cluster:?} removed by Envoy: {}",
                if gone {
                    "its state is freed"
                } else {
                    "its hosts drain; its state is freed when their last connection closes"
                }
            ),
        );
        if !gone {
            self.retired
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(cluster.to_owned());
        }
    }

    /// Envoy added (or updated) `cluster`: if it was being retired, it is back (its LB policy
    /// feeds its hosts again, reviving those still counted).
    pub fn cluster_added(&self, cluster: &str) {
        self.retired
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(cluster);
    }

    /// Drops the removed clusters whose last connection has closed. Returns how many are still
    /// waiting.
    pub fn sweep(&self, registry: &Registry) -> usize {
        let mut retired = self.retired.lock().unwrap_or_else(PoisonError::into_inner);
        retired.retain(|c| !registry.retire(c));
        retired.len()
    }

    /// Global mode: logs when the coordinator loses or regains Redis (checked on every timer
    /// tick, so a failed round is seen unless it heals within one tick). Returns the line logged.
    pub fn watch_redis(&self, view: &FleetView) -> Option<String> {
        let mut last = self
            .redis_ok
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *last == Some(view.redis_ok) {
            return None;
        }
        let first = last.is_none();
        *last = Some(view.redis_ok);
        let line = if view.redis_ok {
            if first {
                return None;
            }
            format!(
                "wscap: global mode: redis reachable again ({} commands so far)",
                view.redis_commands
            )
        } else {
            format!(
                "wscap: global mode: a round failed, the fail mode applies: {}",
                view.last_error.as_deref().unwrap_or("unknown error")
            )
        };
        let level = if view.redis_ok {
            crate::Level::Info
        } else {
            crate::Level::Warn
        };
        crate::log(level, &line);
        Some(line)
    }

    /// The timer period.
    pub fn interval_ms(&self) -> u64 {
        self.settings.stats_interval_ms
    }

    /// Makes the gauges equal core's snapshot. Hosts gone from the snapshot are set to 0 once
    /// (Envoy never removes a labelled series). Only changed values are written.
    pub fn refresh(&self, snapshot: &Snapshot, sink: &impl GaugeSink) {
        let mut reported = self
            .reported
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut now: HashMap<(String, String), (u64, u64)> = HashMap::new();
        for c in &snapshot.clusters {
            for h in &c.hosts {
                now.insert(
                    (c.name.clone(), h.address.clone()),
                    (u64::from(h.active), u64::from(h.limit)),
                );
            }
        }
        {
            let mut created = self
                .counters_created
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (cluster, host) in now.keys() {
                if created.insert((cluster.clone(), None)) {
                    if let Some(id) = self.gauges.rejected {
                        for reason in REFUSAL_REASONS {
                            sink.add_counter(id, &[cluster, reason], 0);
                        }
                    }
                }
                if created.insert((cluster.clone(), Some(host.clone()))) {
                    if let Some(id) = self.gauges.admitted {
                        sink.add_counter(id, &[cluster, host], 0);
                    }
                }
            }
        }
        for (key, &(active, limit)) in &now {
            let before = reported.get(key).copied();
            let labels = [key.0.as_str(), key.1.as_str()];
            if before.map(|b| b.0) != Some(active) {
                if let Some(id) = self.gauges.active {
                    sink.set_gauge(id, &labels, active);
                }
            }
            if before.map(|b| b.1) != Some(limit) {
                if let Some(id) = self.gauges.limit {
                    sink.set_gauge(id, &labels, limit);
                }
            }
        }
        for key in reported.keys() {
            if !now.contains_key(key) {
                let labels = [key.0.as_str(), key.1.as_str()];
                for id in [self.gauges.active, self.gauges.limit]
                    .into_iter()
                    .flatten()
                {
                    sink.set_gauge(id, &labels, 0);
                }
            }
        }
        *reported = now;
    }
}

/// Answers an admin request: `(status, body)`. `GET /wscap` gives this instance's JSON
/// snapshot; `?format=prometheus` the text exposition; `?scope=global` the fleet view of global
/// mode (`{"mode":"global", "instance", "redis_ok", "redis_commands", "borrows", "pods":[{"cluster",
/// "address","limit","live","shares","my_share","instances":[...]}]}`, JSON only). In local mode
/// `?scope=global` answers `404` with `{"mode":"local","error":...}`. `fleet` gives the fleet
/// view, `None` in local mode.
pub fn admin(
    method: &str,
    path: &str,
    snapshot: impl FnOnce() -> Snapshot,
    fleet: impl FnOnce() -> Option<FleetView>,
) -> (u32, String) {
    if !method.eq_ignore_ascii_case("GET") {
        return (
            405,
            "{\"error\":\"method not allowed: use GET\"}\n".to_owned(),
        );
    }
    let (route, query) = path.split_once('?').unwrap_or((path, ""));
    if route != ADMIN_PATH {
        return (404, "{\"error\":\"not found\"}\n".to_owned());
    }
    let mut format = "json";
    let mut global = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("format", f)) => format = f,
            Some(("scope", "global")) => global = true,
            Some(("scope", "local")) => global = false,
            Some(("scope", other)) => {
                return error(
                    400,
                    &format!("unknown scope {other:?}: use local or global"),
                )
            }
            _ => return error(400, &format!("unknown query parameter {pair:?}")),
        }
    }
    if global {
        if format != "json" {
            return (
                400,
                "{\"error\":\"scope=global is served as JSON only\"}\n".to_owned(),
            );
        }
        return match fleet() {
            Some(view) => {
                let mut doc = serde_json::to_value(&view).unwrap_or_default();
                if let Some(o) = doc.as_object_mut() {
                    o.insert("mode".to_owned(), "global".into());
                }
                (200, format!("{doc}\n"))
            }
            None => (
                404,
                "{\"mode\":\"local\",\"error\":\"global mode is off: the bootstrap extension config has no redis_url\"}\n"
                    .to_owned(),
            ),
        };
    }
    match format {
        "json" => (
            200,
            crate::close::with_drains(crate::queue::add_to_json(snapshot().to_json())),
        ),
        "prometheus" => (
            200,
            crate::queue::add_to_prometheus(snapshot().to_prometheus()),
        ),
        other => error(
            400,
            &format!("unknown format {other:?}: use json or prometheus"),
        ),
    }
}

/// An error answer: `{"error": message}` as valid JSON, whatever the message holds (a query
/// string is the client's text: quotes, backslashes and control characters are escaped).
fn error(status: u32, message: &str) -> (u32, String) {
    (
        status,
        format!("{}\n", serde_json::json!({ "error": message })),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use wscap_core::{HostSpec, Registry};

    #[derive(Default)]
    struct Sink(RefCell<Vec<(usize, Vec<String>, u64)>>);
    impl GaugeSink for Sink {
        fn set_gauge(&self, id: MetricId, labels: &[&str], value: u64) {
            self.0.borrow_mut().push((
                id.0,
                labels.iter().map(|s| (*s).to_owned()).collect(),
                value,
            ));
        }
        fn add_counter(&self, id: MetricId, labels: &[&str], value: u64) {
            self.set_gauge(MetricId(id.0 + 100), labels, value);
        }
        fn record_histogram(&self, id: MetricId, labels: &[&str], value: u64) {
            self.set_gauge(MetricId(id.0 + 200), labels, value);
        }
    }

    #[test]
    fn global_metrics_follow_the_view_counters_grow_by_deltas() {
        use wscap_global::{BorrowOutcome, FleetPod};
        let m = |i| Some(MetricId(i));
        let b = Bootstrap::new(BootstrapSettings::default(), Gauges::default())
            .with_global_metrics(GlobalMetrics {
                mode: m(1),
                share: m(2),
                fleet_active: m(3),
                fail_mode_active: m(4),
                lease_age_ms: m(5),
                lease_ttl_ms: m(6),
                claim_errors: m(7),
                borrows: m(8),
                borrow_latency_us: m(9),
            });
        let pod = |share, live| FleetPod {
            cluster: "pods".into(),
            address: "10.0.0.1:80".into(),
            limit: 5,
            live,
            shares: share,
            my_share: share,
            instances: Vec::new(),
        };
        let mut r = GlobalReport {
            view: FleetView {
                redis_ok: true,
                claim_errors: 2,
                pods: vec![pod(3, 4)],
                ..FleetView::default()
            },
            samples: vec![BorrowSample {
                cluster: "pods".into(),
                outcome: BorrowOutcome::Granted,
                micros: 420,
            }],
            lease_age_ms: 80,
            lease_ttl_ms: 3000,
        };
        let sink = Sink::default();
        b.refresh_global(&r, &sink);
        let mut got = sink.0.take();
        got.sort();
        let v = |s: &[&str]| s.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        let pl = v(&["pods", "10.0.0.1:80"]);
        assert_eq!(
            got,
            vec![
                (1, v(&[]), 1),
                (2, pl.clone(), 3),
                (3, pl.clone(), 4),
                (4, v(&[]), 0),
                (5, v(&[]), 80),
                (6, v(&[]), 3000),
                (107, v(&[]), 0),
                (107, v(&[]), 2),
                (108, v(&["pods", "granted"]), 1),
                (209, v(&["pods"]), 420),
            ]
        );
        r.samples.clear();
        r.view.redis_ok = false;
        r.view.claim_errors = 5;
        r.view.pods.clear();
        b.refresh_global(&r, &sink);
        let mut got = sink.0.take();
        got.sort();
        assert_eq!(
            got,
            vec![
                (2, pl.clone(), 0),
                (3, pl, 0),
                (4, v(&[]), 1),
                (5, v(&[]), 80),
                (107, v(&[]), 3),
            ]
        );
    }

    #[test]
    fn queue_metrics_follow_the_views_and_record_every_wait() {
        let b = Bootstrap::new(BootstrapSettings::default(), Gauges::default()).with_queue_metrics(
            QueueMetrics {
                waiting: Some(MetricId(1)),
                wait_ms: Some(MetricId(2)),
            },
        );
        let view = |waiting| crate::queue::QueueView {
            waiting,
            max_waiting: 10,
            admitted: 0,
            timed_out: 0,
            full: 0,
            oldest_wait_ms: 0,
            fleet_grants: 0,
        };
        let sink = Sink::default();
        b.refresh_queue(
            &[("a".into(), view(3)), ("b".into(), view(0))],
            &[("a".into(), 120), ("a".into(), 6000)],
            &sink,
        );
        let v = |s: &str| vec![s.to_owned()];
        assert_eq!(
            sink.0.take(),
            vec![
                (1, v("a"), 3),
                (1, v("b"), 0),
                (202, v("a"), 120),
                (202, v("a"), 6000)
            ]
        );
        // Without the metrics (Envoy refused them) nothing is written.
        let none = Bootstrap::new(BootstrapSettings::default(), Gauges::default());
        none.refresh_queue(&[("a".into(), view(1))], &[("a".into(), 5)], &sink);
        assert!(sink.0.take().is_empty());
    }

    #[test]
    fn gauges_follow_the_snapshot_and_zero_removed_hosts() {
        let reg = Registry::new();
        let c = reg.set_default_limit("pods", 3).unwrap();
        c.set_hosts(&[
            HostSpec::parse("10.0.0.1:80").unwrap(),
            HostSpec::parse("10.0.0.2:80").unwrap().with_limit(5),
        ]);
        let b = Bootstrap::new(
            BootstrapSettings::default(),
            Gauges {
                active: Some(MetricId(1)),
                limit: Some(MetricId(2)),
                ..Gauges::default()
            },
        );
        let sink = Sink::default();
        let p = c.acquire_host(&"10.0.0.2:80".parse().unwrap()).unwrap();
        b.refresh(&reg.snapshot(), &sink);
        let mut got = sink.0.take();
        got.sort();
        let l = |h: &str| vec!["pods".to_owned(), h.to_owned()];
        assert_eq!(
            got,
            vec![
                (1, l("10.0.0.1:80"), 0),
                (1, l("10.0.0.2:80"), 1),
                (2, l("10.0.0.1:80"), 3),
                (2, l("10.0.0.2:80"), 5),
            ]
        );
        b.refresh(&reg.snapshot(), &sink);
        assert!(
            sink.0.take().is_empty(),
            "unchanged values are not rewritten"
        );
        drop(p);
        c.set_hosts(&[HostSpec::parse("10.0.0.2:80").unwrap().with_limit(5)]);
        b.refresh(&reg.snapshot(), &sink);
        let mut got = sink.0.take();
        got.sort();
        assert_eq!(
            got,
            vec![
                (1, l("10.0.0.1:80"), 0),
                (1, l("10.0.0.2:80"), 0),
                (2, l("10.0.0.1:80"), 0),
            ]
        );
    }

    #[test]
    fn counters_are_created_at_zero_once_per_host_and_cluster() {
        let reg = Registry::new();
        let c = reg.set_default_limit("pods", 3).unwrap();
        c.set_hosts(&[HostSpec::parse("10.0.0.1:80").unwrap()]);
        let b = Bootstrap::new(
            BootstrapSettings::default(),
            Gauges {
                admitted: Some(MetricId(3)),
                rejected: Some(MetricId(4)),
                ..Gauges::default()
            },
        );
        let sink = Sink::default();
        b.refresh(&reg.snapshot(), &sink);
        let mut got = sink.0.take();
        got.sort();
        let v = |s: &[&str]| s.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            got,
            vec![
                (103, v(&["pods", "10.0.0.1:80"]), 0),
                (104, v(&["pods", "no_capacity"]), 0),
                (104, v(&["pods", "no_hosts"]), 0),
            ]
        );
        c.set_hosts(&[
            HostSpec::parse("10.0.0.1:80").unwrap(),
            HostSpec::parse("10.0.0.2:80").unwrap(),
        ]);
        b.refresh(&reg.snapshot(), &sink);
        assert_eq!(sink.0.take(), vec![(103, v(&["pods", "10.0.0.2:80"]), 0)]);
        b.refresh(&reg.snapshot(), &sink);
        assert!(sink.0.take().is_empty());
    }

    #[test]
    fn redis_transitions_are_logged_once() {
        let b = Bootstrap::new(BootstrapSettings::default(), Gauges::default());
        let mut v = FleetView {
            redis_ok: true,
            ..FleetView::default()
        };
        assert_eq!(b.watch_redis(&v), None, "a healthy start says nothing");
        v.redis_ok = false;
        v.last_error = Some("redis: timed out".into());
        assert!(b.watch_redis(&v).unwrap().contains("timed out"));
        assert_eq!(b.watch_redis(&v), None);
        v.redis_ok = true;
        assert!(b.watch_redis(&v).unwrap().contains("reachable again"));
    }

    #[test]
    fn a_removed_cluster_is_freed_once_its_last_connection_closes() {
        let reg = Registry::new();
        reg.set_default_limit("gone", 2).unwrap();
        reg.set_hosts(
            "gone",
            &[wscap_core::HostSpec::parse("10.0.0.1:80").unwrap()],
        )
        .unwrap();
        reg.set_default_limit("quick", 2).unwrap();
        let p = reg.acquire("gone").unwrap();
        let b = Bootstrap::new(BootstrapSettings::default(), Gauges::default());
        b.cluster_removed(&reg, "gone");
        b.cluster_removed(&reg, "quick");
        assert!(
            reg.cluster("quick").is_none(),
            "no connection: freed at once"
        );
        assert_eq!(b.sweep(&reg), 1);
        assert!(reg.acquire("gone").is_err(), "no new admission");
        assert_eq!(
            reg.snapshot().clusters[0].hosts[0].active,
            1,
            "still counted"
        );
        drop(p);
        assert_eq!(b.sweep(&reg), 0);
        assert!(reg.cluster("gone").is_none());
    }

    #[test]
    fn admin_routes() {
        let reg = Registry::new();
        reg.set_default_limit("pods", 2).unwrap();
        let local = |m: &str, p: &str| admin(m, p, || reg.snapshot(), || None);
        let (s, body) = local("GET", "/wscap");
        assert_eq!(s, 200);
        assert!(body.starts_with("{\"clusters\":[{\"name\":\"pods\""));
        let (s, body) = local("GET", "/wscap?format=prometheus");
        assert_eq!(s, 200);
        assert!(body.contains("# TYPE wscap_active_connections gauge"));
        assert_eq!(local("GET", "/wscap?format=xml").0, 400);
        // Error bodies are JSON whatever the client sent (quotes, backslashes, control bytes).
        for q in [
            "format=x\"y",
            "format=\\",
            "scope=\"}",
            "a\"b=c",
            "format=%22",
            "x=\u{1}\n",
        ] {
            let (s, body) = local("GET", &format!("/wscap?{q}"));
            assert_eq!(s, 400, "{q}");
            let doc: serde_json::Value = serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("{q}: error body is not JSON ({e}): {body}"));
            assert!(doc["error"].is_string(), "{q}: {doc}");
        }
        for (m, p) in [("POST", "/wscap"), ("GET", "/wscapx")] {
            let body = local(m, p).1;
            let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert!(doc["error"].is_string());
        }
        assert_eq!(local("GET", "/wscap?x=1").0, 400);
        assert_eq!(local("POST", "/wscap").0, 405);
        assert_eq!(local("GET", "/wscapx").0, 404);
        assert_eq!(local("GET", "/wscap?scope=local").0, 200);
        assert_eq!(local("GET", "/wscap?scope=nope").0, 400);
        let (s, body) = local("GET", "/wscap?scope=global");
        assert_eq!(s, 404);
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(doc["mode"], "local");
        let view = FleetView {
            instance: "i1".into(),
            redis_ok: true,
            ..FleetView::default()
        };
        let (s, body) = admin(
            "GET",
            "/wscap?scope=global",
            || reg.snapshot(),
            || Some(view.clone()),
        );
        assert_eq!(s, 200);
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(doc["mode"], "global");
        assert_eq!(doc["instance"], "i1");
        assert_eq!(doc["redis_ok"], true);
        assert!(doc["pods"].is_array());
        let global_prom = admin(
            "GET",
            "/wscap?scope=global&format=prometheus",
            || reg.snapshot(),
            || Some(view.clone()),
        );
        assert_eq!(global_prom.0, 400);
    }
}
