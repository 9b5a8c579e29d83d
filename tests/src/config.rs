//! Builders for Envoy 1.40 bootstrap configs (JSON values; Envoy reads JSON as YAML).
//!
//! The shapes follow `ENVOY_ABI_1.40.md`: the HTTP filter, LB policy and bootstrap extension are all
//! named `wscap` in the module `libwscap.so`, each configured by a JSON string in a
//! `google.protobuf.StringValue`.

use std::net::SocketAddr;
use std::path::Path;

use serde_json::{json, Value};

/// `@type` of a `google.protobuf.StringValue`.
pub const STRING_VALUE: &str = "type.googleapis.com/google.protobuf.StringValue";

/// One backend endpoint, optionally with a per-host limit in `filter_metadata.wscap.max_connections`.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `127.0.0.1:port`.
    pub addr: SocketAddr,
    /// Per-host limit from endpoint metadata, if any.
    pub max_connections: Option<u32>,
}

impl Endpoint {
    /// An endpoint without a per-host limit (the filter's default applies).
    pub fn new(addr: SocketAddr) -> Endpoint {
        Endpoint {
            addr,
            max_connections: None,
        }
    }

    /// An endpoint with a per-host limit from metadata.
    pub fn with_limit(addr: SocketAddr, n: u32) -> Endpoint {
        Endpoint {
            addr,
            max_connections: Some(n),
        }
    }
}

fn dynamic_module_config() -> Value {
    json!({"name": "wscap", "do_not_close": true})
}

/// The `wscap` filter's own JSON config.
pub fn filter_config(cluster: &str, max_per_host: u32, retry_after_seconds: u32) -> String {
    json!({
        "cluster": cluster,
        "max_connections_per_host": max_per_host,
        "retry_after_seconds": retry_after_seconds,
    })
    .to_string()
}

/// The `wscap` HTTP filter entry with a raw config string (may be deliberately invalid).
pub fn wscap_filter(config: &str) -> Value {
    json!({
        "name": "wscap",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
            "dynamic_module_config": dynamic_module_config(),
            "filter_name": "wscap",
            "filter_config": {"@type": STRING_VALUE, "value": config},
        }
    })
}

/// The router filter (always last).
pub fn router_filter() -> Value {
    json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    })
}

/// The `wscap` bootstrap extension (admin `GET /wscap`).
pub fn wscap_bootstrap_extension() -> Value {
    json!({
        "name": "wscap",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.bootstrap.dynamic_modules.v3.DynamicModuleBootstrapExtension",
            "dynamic_module_config": dynamic_module_config(),
            "extension_name": "wscap",
            "extension_config": {"@type": STRING_VALUE, "value": "{}"},
        }
    })
}

/// The `wscap` LB policy for a cluster.
pub fn wscap_lb_policy() -> Value {
    json!({
        "policies": [{
            "typed_extension_config": {
                "name": "wscap",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.dynamic_modules.v3.DynamicModulesLoadBalancerConfig",
                    "dynamic_module_config": dynamic_module_config(),
                    "lb_policy_name": "wscap",
                    "lb_policy_config": {"@type": STRING_VALUE, "value": "{}"},
                }
            }
        }]
    })
}

/// `lb_endpoints` for a list of endpoints.
pub fn lb_endpoints(eps: &[Endpoint]) -> Value {
    let v: Vec<Value> = eps
        .iter()
        .map(|e| {
            let mut ep = json!({
                "endpoint": {"address": {"socket_address": {
                    "address": e.addr.ip().to_string(),
                    "port_value": e.addr.port(),
                }}}
            });
            if let Some(n) = e.max_connections {
                ep["metadata"] = json!({"filter_metadata": {"wscap": {"max_connections": n}}});
            }
            ep
        })
        .collect();
    Value::Array(v)
}

/// A STATIC cluster; with `module`, it uses the `wscap` LB policy.
pub fn static_cluster(name: &str, eps: &[Endpoint], module: bool) -> Value {
    let mut c = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": lb_endpoints(eps)}]},
    });
    if module {
        c["load_balancing_policy"] = wscap_lb_policy();
    }
    c
}

/// An EDS cluster fed from a file (`path_config_source` + `watched_directory`).
pub fn eds_cluster(name: &str, eds_file: &Path, module: bool) -> Value {
    let dir = eds_file.parent().expect("eds file has a parent");
    let mut c = json!({
        "name": name,
        "type": "EDS",
        "connect_timeout": "1s",
        "eds_cluster_config": {"eds_config": {
            "resource_api_version": "V3",
            "path_config_source": {
                "path": eds_file.to_string_lossy(),
                "watched_directory": {"path": dir.to_string_lossy()},
            }
        }},
    });
    if module {
        c["load_balancing_policy"] = wscap_lb_policy();
    }
    c
}

/// Contents of a file-based EDS resource file (a DiscoveryResponse with one ClusterLoadAssignment).
pub fn eds_file_contents(cluster: &str, eps: &[Endpoint], version: u64) -> String {
    json!({
        "version_info": version.to_string(),
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            "cluster_name": cluster,
            "endpoints": [{"lb_endpoints": lb_endpoints(eps)}],
        }]
    })
    .to_string()
}

/// Options of a test listener.
#[derive(Debug, Clone)]
pub struct ListenerSpec {
    /// Listener name (also used to find its bound port).
    pub name: String,
    /// Port; 0 lets Envoy pick one (read it back with `Envoy::listener_port`).
    pub port: u16,
    /// Cluster the route sends to.
    pub cluster: String,
    /// HTTP filters before the router (e.g. `[wscap_filter(..)]`).
    pub filters: Vec<Value>,
    /// Route `idle_timeout` (e.g. `"1s"`), for stream idle-timeout tests.
    pub route_idle_timeout: Option<String>,
    /// A response header added by the route (lets a test see which config version served it).
    pub response_header: Option<(String, String)>,
}

impl ListenerSpec {
    /// Listener `name` on an Envoy-chosen port, routing to `cluster` through `filters` + router.
    pub fn new(name: &str, cluster: &str, filters: Vec<Value>) -> ListenerSpec {
        ListenerSpec {
            name: name.into(),
            port: 0,
            cluster: cluster.into(),
            filters,
            route_idle_timeout: None,
            response_header: None,
        }
    }

    /// The listener resource.
    pub fn to_json(&self) -> Value {
        let mut route = json!({"cluster": self.cluster, "timeout": "0s"});
        if let Some(t) = &self.route_idle_timeout {
            route["idle_timeout"] = json!(t);
        }
        let mut rt = json!({"match": {"prefix": "/"}, "route": route});
        if let Some((k, v)) = &self.response_header {
            rt["response_headers_to_add"] = json!([{"header": {"key": k, "value": v}}]);
        }
        let mut filters = self.filters.clone();
        filters.push(router_filter());
        json!({
            "name": self.name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": self.port}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": self.name,
                    "codec_type": "AUTO",
                    "upgrade_configs": [{"upgrade_type": "websocket"}],
                    "route_config": {
                        "name": format!("{}_routes", self.name),
                        "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [rt]}],
                    },
                    "http_filters": filters,
                }
            }]}],
        })
    }
}

/// A bootstrap with an admin on an Envoy-chosen loopback port, static listeners and clusters, and
/// with `module` the `wscap` bootstrap extension.
pub fn bootstrap(listeners: &[ListenerSpec], clusters: Vec<Value>, module: bool) -> Value {
    let mut b = json!({
        "node": {"id": "wscap-e2e", "cluster": "wscap-e2e"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": listeners.iter().map(|l| l.to_json()).collect::<Vec<_>>(),
            "clusters": clusters,
        },
    });
    if module {
        b["bootstrap_extensions"] = json!([wscap_bootstrap_extension()]);
    }
    b
}

/// A bootstrap whose listeners come from file-based LDS `lds_file` (written by the caller with
/// [`lds_file_contents`]), over one static cluster of `endpoints` with the wscap LB policy, and
/// the module's bootstrap extension.
pub fn file_lds_bootstrap(cluster: &str, endpoints: &[Endpoint], lds_file: &Path) -> Value {
    let mut bootstrap = self::bootstrap(&[], vec![static_cluster(cluster, endpoints, true)], true);
    let dir = lds_file.parent().expect("lds file has a parent");
    bootstrap["static_resources"]["listeners"] = json!([]);
    bootstrap["dynamic_resources"] = json!({
        "lds_config": {
            "resource_api_version": "V3",
            "path_config_source": {
                "path": lds_file.to_string_lossy(),
                "watched_directory": {"path": dir.to_string_lossy()},
            }
        }
    });
    bootstrap
}

/// Contents of a file-based LDS resource file.
pub fn lds_file_contents(listeners: &[ListenerSpec], version: u64) -> String {
    let res: Vec<Value> = listeners
        .iter()
        .map(|l| {
            let mut v = l.to_json();
            v["@type"] = json!("type.googleapis.com/envoy.config.listener.v3.Listener");
            v
        })
        .collect();
    json!({"version_info": version.to_string(), "resources": res}).to_string()
}

/// Move the clusters to CDS from file `cds_file` (created by the caller with
/// [`cds_file_contents`]). Keeps any LDS config already set.
pub fn use_file_cds(bootstrap: &mut Value, cds_file: &Path) {
    let dir = cds_file.parent().expect("cds file has a parent");
    bootstrap["static_resources"]["clusters"] = json!([]);
    if !bootstrap["dynamic_resources"].is_object() {
        bootstrap["dynamic_resources"] = json!({});
    }
    bootstrap["dynamic_resources"]["cds_config"] = json!({
        "resource_api_version": "V3",
        "path_config_source": {
            "path": cds_file.to_string_lossy(),
            "watched_directory": {"path": dir.to_string_lossy()},
        }
    });
}

/// Contents of a file-based CDS resource file.
pub fn cds_file_contents(clusters: &[Value], version: u64) -> String {
    let res: Vec<Value> = clusters
        .iter()
        .map(|c| {
            let mut v = c.clone();
            v["@type"] = json!("type.googleapis.com/envoy.config.cluster.v3.Cluster");
            v
        })
        .collect();
    json!({"version_info": version.to_string(), "resources": res}).to_string()
}
