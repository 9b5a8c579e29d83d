//! The six Envoy setups under test and their bootstrap configs.

use serde_json::{json, Value};
use wscap_e2e::config::{self, Endpoint, STRING_VALUE};

/// Cluster of the WebSocket pods.
pub const CLUSTER: &str = "pods";
/// Listener name.
pub const LISTENER: &str = "ingress";
/// A circuit-breaker threshold that never trips.
const UNLIMITED: u64 = 1_000_000_000;
/// Per-pod limit for the performance runs (never reached there).
pub const PERF_LIMIT: u32 = 100_000;

/// Which setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// (a) Envoy with no filter.
    Plain,
    /// (b) wscap, local mode.
    Wscap,
    /// (c) a Lua filter counting per cluster.
    Lua,
    /// (d) ext_authz to a counting HTTP service.
    ExtAuthz,
    /// (e) circuit breakers only.
    Breakers,
    /// (f) wscap, global mode with Redis.
    Global,
}

impl Kind {
    /// Every setup, in report order.
    pub const ALL: [Kind; 6] = [
        Kind::Plain,
        Kind::Wscap,
        Kind::Lua,
        Kind::ExtAuthz,
        Kind::Breakers,
        Kind::Global,
    ];

    /// Short label, e.g. `(b) wscap`.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Plain => "(a) Envoy, no filter",
            Kind::Wscap => "(b) wscap local",
            Kind::Lua => "(c) Lua filter",
            Kind::ExtAuthz => "(d) ext_authz",
            Kind::Breakers => "(e) circuit breakers",
            Kind::Global => "(f) wscap global (Redis)",
        }
    }

    /// Whether the setup loads libwscap.so.
    pub fn module(self) -> bool {
        matches!(self, Kind::Wscap | Kind::Global)
    }

    /// Plot colour (RGB).
    pub fn colour(self) -> [u8; 3] {
        match self {
            Kind::Plain => [0, 0, 0],
            Kind::Wscap => [0, 114, 178],
            Kind::Lua => [230, 159, 0],
            Kind::ExtAuthz => [213, 94, 0],
            Kind::Breakers => [0, 158, 115],
            Kind::Global => [204, 121, 167],
        }
    }
}

/// Limits for one Envoy.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Per-pod limit (wscap, circuit breakers per host).
    pub per_pod: u32,
    /// Per-cluster limit for the approaches that cannot see the pod (Lua, ext_authz, breakers'
    /// cluster threshold): pods × per_pod.
    pub per_cluster: u64,
}

impl Limits {
    /// Limits that are never reached (performance runs).
    pub fn perf() -> Limits {
        Limits {
            per_pod: PERF_LIMIT,
            per_cluster: UNLIMITED,
        }
    }
}

/// The Lua filter: the classic sketch. It counts WebSocket upgrades in a global of the worker's
/// Lua state (one state per worker thread: nothing is shared between workers), refuses past the
/// limit, and gives the slot back when the upgraded response stream ends. It cannot know the pod
/// at request time, so it counts per cluster.
pub fn lua_source(limit: u64) -> String {
    format!(
        r#"active = active or 0
local LIMIT = {limit}
function envoy_on_request(h)
  local up = h:headers():get("upgrade")
  if up == nil or string.lower(up) ~= "websocket" then return end
  if active >= LIMIT then
    h:respond({{[":status"] = "503", ["x-lua-reason"] = "no_capacity"}}, "full")
    return
  end
  active = active + 1
end
function envoy_on_response(h)
  if h:headers():get(":status") ~= "101" then return end
  for _ in h:bodyChunks() do end
  active = active - 1
end
"#
    )
}

fn breakers(kind: Kind, l: &Limits) -> Value {
    let mut cb = json!({"thresholds": [{
        "priority": "DEFAULT",
        "max_connections": UNLIMITED,
        "max_pending_requests": UNLIMITED,
        "max_requests": UNLIMITED,
        "max_retries": UNLIMITED,
    }]});
    if kind == Kind::Breakers {
        cb["thresholds"][0]["max_connections"] = json!(l.per_cluster);
        cb["per_host_thresholds"] = json!([{"priority": "DEFAULT", "max_connections": l.per_pod}]);
    }
    cb
}

fn listener(kind: Kind, l: &Limits) -> Value {
    let route = json!({"cluster": CLUSTER, "timeout": "0s"});
    let mut routes = vec![json!({"match": {"prefix": "/"}, "route": route})];
    let mut filters = Vec::new();
    match kind {
        Kind::Plain | Kind::Breakers => {}
        Kind::Wscap | Kind::Global => filters.push(config::wscap_filter(&config::filter_config(
            CLUSTER, l.per_pod, 5,
        ))),
        Kind::Lua => filters.push(json!({
            "name": "envoy.filters.http.lua",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                "default_source_code": {"inline_string": lua_source(l.per_cluster)},
            }
        })),
        Kind::ExtAuthz => {
            filters.push(json!({
                "name": "envoy.filters.http.ext_authz",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
                    "http_service": {"server_uri": {
                        "uri": "http://127.0.0.1/", "cluster": "authz", "timeout": "2s"}},
                    "failure_mode_allow": false,
                }
            }));
            // Only WebSocket upgrades are checked: plain requests take a route with ext_authz
            // disabled (nobody would pay a network hop per plain request).
            let ws = json!({
                "match": {"prefix": "/", "headers": [{"name": "upgrade",
                    "string_match": {"exact": "websocket", "ignore_case": true}}]},
                "route": route,
            });
            routes[0]["typed_per_filter_config"] = json!({"envoy.filters.http.ext_authz": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
                "disabled": true,
            }});
            routes.insert(0, ws);
        }
    }
    filters.push(config::router_filter());
    json!({
        "name": LISTENER,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": LISTENER,
                "codec_type": "AUTO",
                "upgrade_configs": [{"upgrade_type": "websocket"}],
                "route_config": {
                    "name": "routes",
                    "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}],
                },
                "http_filters": filters,
            }
        }]}],
    })
}

/// The bootstrap of one setup: listener `ingress` on an Envoy-chosen port, cluster `pods` of
/// `pods`, and what the setup needs besides (authz cluster, Redis settings).
pub fn bootstrap(
    kind: Kind,
    pods: &[std::net::SocketAddr],
    l: &Limits,
    authz_port: Option<u16>,
    redis_url: Option<&str>,
) -> Value {
    let eps: Vec<Endpoint> = pods.iter().map(|a| Endpoint::new(*a)).collect();
    let mut pods_cluster = config::static_cluster(CLUSTER, &eps, kind.module());
    pods_cluster["circuit_breakers"] = breakers(kind, l);
    let mut clusters = vec![pods_cluster];
    if let Some(p) = authz_port {
        clusters.push(json!({
            "name": "authz",
            "type": "STATIC",
            "connect_timeout": "1s",
            "circuit_breakers": breakers(Kind::Plain, l),
            "load_assignment": {"cluster_name": "authz", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
            ]}]},
        }));
    }
    let mut b = json!({
        "node": {"id": "wscap-bench", "cluster": "wscap-bench"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": [listener(kind, l)], "clusters": clusters},
    });
    if kind.module() {
        b["bootstrap_extensions"] = json!([config::wscap_bootstrap_extension()]);
        if let Some(url) = redis_url {
            b["bootstrap_extensions"][0]["typed_config"]["extension_config"] = json!({
                "@type": STRING_VALUE,
                "value": json!({
                    "redis_url": url,
                    "instance_id": "bench-0",
                    "restart_grace_ms": 100,
                }).to_string(),
            });
        }
    }
    b
}
