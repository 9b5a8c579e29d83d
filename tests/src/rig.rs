//! A ready-made setup: N backend pods, Envoy with the `wscap` filter, LB policy and bootstrap
//! extension, and helpers that check all views of the counts at once.

use std::time::Duration;

use crate::backend::Backend;
use crate::client::{self, Outcome};
use crate::config::{self, Endpoint, ListenerSpec};
use crate::envoy::{Envoy, Opts};
use crate::metrics;
use crate::{eventually, SETTLE};

/// Name of the backend cluster in rigs.
pub const CLUSTER: &str = "pods";
/// Name of the listener in rigs.
pub const LISTENER: &str = "ingress";
/// `retry_after_seconds` used by rigs.
pub const RETRY_AFTER: u32 = 7;

/// Prometheus name of the active-connections gauge.
pub const PROM_ACTIVE: &str = "envoy_dynamicmodulescustom_wscap_active_connections";
/// Prometheus name of the limit gauge.
pub const PROM_LIMIT: &str = "envoy_dynamicmodulescustom_wscap_connection_limit";
/// Prometheus name of the admitted counter.
pub const PROM_ADMITTED: &str = "envoy_dynamicmodulescustom_wscap_admitted";
/// Prometheus name of the rejected counter.
pub const PROM_REJECTED: &str = "envoy_dynamicmodulescustom_wscap_rejected";

/// How to build a rig.
#[derive(Debug, Clone)]
pub struct RigSpec {
    /// Envoy `--concurrency`.
    pub concurrency: u32,
    /// Number of pods.
    pub pods: usize,
    /// The filter's `max_connections_per_host`.
    pub limit: u32,
    /// Per-pod limit from endpoint metadata (`None` = the filter's default).
    pub per_host: Vec<Option<u32>>,
    /// Extra endpoints in the cluster that nothing listens on (connect failures).
    pub dead_endpoints: usize,
    /// Route `idle_timeout`.
    pub route_idle_timeout: Option<String>,
    /// Extra Envoy command-line arguments.
    pub envoy_args: Vec<String>,
    /// Extra fields merged into the filter's JSON config (e.g. `"queue"`).
    pub filter_extra: serde_json::Map<String, serde_json::Value>,
}

impl RigSpec {
    /// `pods` pods of `limit` each, at `concurrency`.
    pub fn new(concurrency: u32, pods: usize, limit: u32) -> RigSpec {
        RigSpec {
            concurrency,
            pods,
            limit,
            per_host: vec![None; pods],
            dead_endpoints: 0,
            route_idle_timeout: None,
            envoy_args: Vec::new(),
            filter_extra: serde_json::Map::new(),
        }
    }
}

/// A running rig.
pub struct Rig {
    /// Backends, named `pod-0`, `pod-1`, ...
    pub backends: Vec<Backend>,
    /// `ip:port` of the dead endpoints (nothing listens there).
    pub dead: Vec<String>,
    _dead_sockets: Vec<tokio::net::TcpSocket>,
    /// Listener port.
    pub port: u16,
    /// Envoy.
    pub envoy: Envoy,
}

impl Rig {
    /// Start the backends and Envoy.
    pub async fn start(spec: &RigSpec) -> Rig {
        let mut backends = Vec::new();
        for i in 0..spec.pods {
            backends.push(Backend::start(&format!("pod-{i}")).await);
        }
        let mut eps: Vec<Endpoint> = backends
            .iter()
            .zip(spec.per_host.iter())
            .map(|(b, l)| match l {
                Some(n) => Endpoint::with_limit(b.addr, *n),
                None => Endpoint::new(b.addr),
            })
            .collect();
        let mut dead = Vec::new();
        let mut dead_sockets = Vec::new();
        for _ in 0..spec.dead_endpoints {
            // Bound but never listening: the port stays ours (no other test can take it) and
            // every connection to it is refused.
            let sock = tokio::net::TcpSocket::new_v4().expect("socket");
            sock.bind("127.0.0.1:0".parse().expect("addr"))
                .expect("bind dead endpoint");
            let addr = sock.local_addr().expect("local addr");
            dead.push(addr.to_string());
            eps.push(Endpoint::new(addr));
            dead_sockets.push(sock);
        }
        let mut filter: serde_json::Value =
            serde_json::from_str(&config::filter_config(CLUSTER, spec.limit, RETRY_AFTER))
                .expect("filter config");
        if let Some(o) = filter.as_object_mut() {
            o.extend(spec.filter_extra.clone());
        }
        let mut l = ListenerSpec::new(
            LISTENER,
            CLUSTER,
            vec![config::wscap_filter(&filter.to_string())],
        );
        l.route_idle_timeout = spec.route_idle_timeout.clone();
        let boot = config::bootstrap(
            std::slice::from_ref(&l),
            vec![config::static_cluster(CLUSTER, &eps, true)],
            true,
        );
        let mut opts = Opts::with_module(spec.concurrency);
        opts.extra_args.clone_from(&spec.envoy_args);
        let envoy = Envoy::start(&boot, &opts).await;
        let port = envoy.listener_port(LISTENER).await;
        let rig = Rig {
            backends,
            dead,
            _dead_sockets: dead_sockets,
            port,
            envoy,
        };
        // The LB policy feeds membership asynchronously: wait until /wscap lists every endpoint.
        let want = spec.pods + spec.dead_endpoints;
        eventually("all endpoints listed in /wscap", SETTLE, || async {
            let n = metrics::hosts(&rig.envoy.wscap().await, CLUSTER).len();
            (n == want)
                .then_some(())
                .ok_or(format!("{n} hosts, want {want}"))
        })
        .await;
        rig
    }

    /// Open a WebSocket through the listener.
    pub async fn connect(&self) -> Outcome {
        client::connect(self.port, "/ws").await
    }

    /// The backend named `name`.
    pub fn backend(&self, name: &str) -> &Backend {
        self.backends
            .iter()
            .find(|b| b.name == name)
            .unwrap_or_else(|| panic!("no backend {name}"))
    }

    /// Index of the backend named `name`.
    pub fn index_of(&self, name: &str) -> usize {
        self.backends
            .iter()
            .position(|b| b.name == name)
            .unwrap_or_else(|| panic!("no backend {name}"))
    }

    /// Wait until every view agrees that pod `i` holds `expected[i]` connections: the backends'
    /// own counts, `GET /wscap` and `/stats/prometheus`.
    pub async fn expect_active(&self, what: &str, expected: &[usize]) {
        assert_eq!(expected.len(), self.backends.len());
        eventually(
            &format!("{what}: backends hold {expected:?}"),
            SETTLE,
            || async {
                let got: Vec<usize> = self.backends.iter().map(Backend::active).collect();
                (got == expected)
                    .then_some(())
                    .ok_or(format!("backends hold {got:?}"))
            },
        )
        .await;
        eventually(
            &format!("{what}: /wscap says {expected:?}"),
            SETTLE,
            || async {
                let doc = self.envoy.wscap().await;
                let got: Vec<i64> = self
                    .backends
                    .iter()
                    .map(|b| metrics::host(&doc, CLUSTER, &b.host()).map_or(-1, |h| h.active))
                    .collect();
                let want: Vec<i64> = expected.iter().map(|&n| n as i64).collect();
                (got == want)
                    .then_some(())
                    .ok_or(format!("/wscap active {got:?}; doc {doc}"))
            },
        )
        .await;
        eventually(
            &format!("{what}: prometheus says {expected:?}"),
            SETTLE,
            || async {
                let s = self.envoy.prometheus().await;
                let got: Vec<Option<f64>> = self
                    .backends
                    .iter()
                    .map(|b| {
                        metrics::value(
                            &s,
                            PROM_ACTIVE,
                            &[("cluster", CLUSTER), ("host", &b.host())],
                        )
                    })
                    .collect();
                let want: Vec<Option<f64>> = expected.iter().map(|&n| Some(n as f64)).collect();
                (got == want)
                    .then_some(())
                    .ok_or(format!("prometheus {PROM_ACTIVE} {got:?}"))
            },
        )
        .await;
    }

    /// `GET /wscap` active count of a host (by `ip:port`), -1 if absent.
    pub async fn wscap_active(&self, host: &str) -> i64 {
        metrics::host(&self.envoy.wscap().await, CLUSTER, host).map_or(-1, |h| h.active)
    }

    /// Sum of `wscap_rejected{cluster=pods}` over reasons, from `/stats/prometheus`.
    pub async fn prom_rejected(&self) -> f64 {
        metrics::sum(
            &self.envoy.prometheus().await,
            PROM_REJECTED,
            &[("cluster", CLUSTER)],
        )
    }
}

/// Assert that a refusal is the module's: 503, `retry-after`, `x-wscap-reason`, JSON body.
pub fn assert_wscap_refusal(r: &crate::http::Response, reason: &str) {
    assert_eq!(
        r.status,
        503,
        "refusal status; headers {:?} body {:?}",
        r.headers,
        r.text()
    );
    assert_eq!(
        r.header("retry-after"),
        Some(RETRY_AFTER.to_string().as_str()),
        "retry-after; headers {:?}",
        r.headers
    );
    assert_eq!(
        r.header("x-wscap-reason"),
        Some(reason),
        "x-wscap-reason; headers {:?}",
        r.headers
    );
    let body: serde_json::Value = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("refusal body is not JSON ({e}): {:?}", r.text()));
    assert!(body.is_object(), "refusal body {body}");
}

/// A short pause used only to let Envoy notice something it cannot be polled for.
pub async fn pause(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}
