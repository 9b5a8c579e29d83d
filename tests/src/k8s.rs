//! The Kubernetes manifests of `examples/kubernetes/` as data: every YAML document parsed, the
//! Envoy bootstrap taken out of the ConfigMap, and that bootstrap made runnable on loopback.
//!
//! [`for_loopback`] changes addresses and ports only, and checks each value it replaces is the
//! one the manifest has, so an edit to the manifest that the test does not know about fails it:
//! - listener `ingress` `0.0.0.0:8080` → `127.0.0.1:0`, listener `metrics` `0.0.0.0:9902` →
//!   `127.0.0.1:0` (Envoy picks; read back through the admin);
//! - admin `127.0.0.1:9901`, and the `admin` cluster's endpoint with it → `127.0.0.1:<free port>`;
//! - cluster `ws_backend`: port `8080` → the port the local pods share (the DNS name stays as it
//!   is: the test's DNS server answers it); the c-ares resolver config gets
//!   `resolvers: [<the test's DNS server>]` (in a pod, with no resolvers listed, c-ares reads
//!   `/etc/resolv.conf`);
//! - the bootstrap extension's `redis_url` host:port → the test's redis-server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// `examples/kubernetes/`.
pub fn manifests_dir() -> PathBuf {
    crate::workspace_root().join("examples/kubernetes")
}

/// One YAML document of a manifest file.
#[derive(Debug, Clone)]
pub struct Doc {
    /// File, relative to `examples/kubernetes/`.
    pub file: String,
    /// The document as JSON.
    pub value: Value,
}

impl Doc {
    /// `kind`.
    pub fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or("")
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or("")
    }
}

/// Parse every YAML document of `text` (a file with `---` separators); `file` names it in errors.
pub fn parse_documents(text: &str, file: &str) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let v: Value = serde::Deserialize::deserialize(de)
            .map_err(|e| format!("{file}: YAML document {}: {e}", i + 1))?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

/// Every `*.yaml` under `dir` (recursively), sorted, relative to `dir`.
pub fn yaml_files(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                walk(root, &p, out);
            } else if p.extension().and_then(|x| x.to_str()) == Some("yaml") {
                out.push(
                    p.strip_prefix(root)
                        .expect("under root")
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Every document of every manifest file under `examples/kubernetes/` (panics naming the file
/// and document that does not parse).
pub fn load_all() -> Vec<Doc> {
    let dir = manifests_dir();
    let mut docs = Vec::new();
    for f in yaml_files(&dir) {
        let text = std::fs::read_to_string(dir.join(&f)).expect("read manifest");
        for value in parse_documents(&text, &f).unwrap_or_else(|e| panic!("{e}")) {
            docs.push(Doc {
                file: f.clone(),
                value,
            });
        }
    }
    docs
}

/// Name of the ConfigMap holding the Envoy bootstrap, and its key.
pub const CONFIGMAP: (&str, &str) = ("envoy-wscap", "envoy.yaml");

/// The Envoy bootstrap in the ConfigMap, as text and parsed.
pub fn envoy_config(docs: &[Doc]) -> (String, Value) {
    let cm = docs
        .iter()
        .find(|d| d.kind() == "ConfigMap" && d.name() == CONFIGMAP.0)
        .unwrap_or_else(|| panic!("no ConfigMap {}", CONFIGMAP.0));
    let text = cm.value["data"][CONFIGMAP.1]
        .as_str()
        .unwrap_or_else(|| panic!("ConfigMap {} has no key {}", CONFIGMAP.0, CONFIGMAP.1))
        .to_string();
    let mut v = parse_documents(&text, "ConfigMap envoy.yaml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v.len(), 1, "the Envoy config is one YAML document");
    (text, v.remove(0))
}

/// The local stand-ins for what a pod reaches in the cluster.
#[derive(Debug, Clone)]
pub struct Loopback {
    /// Port of the admin interface (and the `admin` cluster pointing at it).
    pub admin_port: u16,
    /// Port every local backend pod listens on (at its own 127.0.0.x).
    pub backend_port: u16,
    /// The DNS server answering the headless Service's name.
    pub dns: SocketAddr,
    /// `redis://127.0.0.1:port` of the test's redis-server.
    pub redis_url: String,
}

fn find_mut<'a>(arr: &'a mut Value, name: &str, what: &str) -> &'a mut Value {
    arr.as_array_mut()
        .unwrap_or_else(|| panic!("{what} is not a list"))
        .iter_mut()
        .find(|x| x["name"] == name)
        .unwrap_or_else(|| panic!("no {what} named {name}"))
}

fn swap(slot: &mut Value, expect: Value, to: Value, what: &str) {
    assert_eq!(
        *slot, expect,
        "{what}: the manifest changed; update tests/src/k8s.rs"
    );
    *slot = to;
}

/// The ConfigMap's bootstrap with only addresses and ports changed for loopback (module docs).
pub fn for_loopback(config: &Value, lo: &Loopback) -> Value {
    let mut c = config.clone();
    let admin = &mut c["admin"]["address"]["socket_address"];
    swap(
        &mut admin["address"],
        json!("127.0.0.1"),
        json!("127.0.0.1"),
        "admin address",
    );
    swap(
        &mut admin["port_value"],
        json!(9901),
        json!(lo.admin_port),
        "admin port",
    );

    for (name, port) in [("ingress", 8080), ("metrics", 9902)] {
        let l = find_mut(&mut c["static_resources"]["listeners"], name, "listener");
        let sa = &mut l["address"]["socket_address"];
        swap(
            &mut sa["address"],
            json!("0.0.0.0"),
            json!("127.0.0.1"),
            name,
        );
        swap(&mut sa["port_value"], json!(port), json!(0), name);
    }

    let clusters = &mut c["static_resources"]["clusters"];
    let admin_c = find_mut(clusters, "admin", "cluster");
    swap(
        &mut admin_c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            ["socket_address"]["port_value"],
        json!(9901),
        json!(lo.admin_port),
        "admin cluster port",
    );
    let be = find_mut(clusters, "ws_backend", "cluster");
    swap(
        &mut be["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            ["socket_address"]["port_value"],
        json!(8080),
        json!(lo.backend_port),
        "backend port",
    );
    let cares = &mut be["typed_dns_resolver_config"]["typed_config"];
    assert!(
        cares.get("resolvers").is_none(),
        "the manifest lists resolvers; a pod should use its resolv.conf"
    );
    cares["resolvers"] = json!([{"socket_address": {
        "address": lo.dns.ip().to_string(), "port_value": lo.dns.port()}}]);

    let ext = find_mut(
        &mut c["bootstrap_extensions"],
        "wscap",
        "bootstrap extension",
    );
    let slot = &mut ext["typed_config"]["extension_config"]["value"];
    let mut cfg: Value =
        serde_json::from_str(slot.as_str().expect("extension_config is a string")).expect("json");
    swap(
        &mut cfg["redis_url"],
        json!("redis://redis.wscap.svc.cluster.local:6379"),
        json!(lo.redis_url),
        "redis_url",
    );
    *slot = json!(cfg.to_string());
    c
}

/// The backend cluster's DNS name in the ConfigMap's bootstrap.
pub fn backend_dns_name(config: &Value) -> String {
    config["static_resources"]["clusters"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "ws_backend"))
        .and_then(|c| {
            c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                ["socket_address"]["address"]
                .as_str()
        })
        .expect("ws_backend's address")
        .to_string()
}

/// The `wscap` HTTP filter's JSON config on listener `ingress`.
pub fn filter_config(config: &Value) -> Value {
    let l = config["static_resources"]["listeners"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["name"] == "ingress"))
        .expect("listener ingress");
    let f = l["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
        .as_array()
        .and_then(|fs| fs.iter().find(|f| f["name"] == "wscap"))
        .expect("wscap filter");
    serde_json::from_str(
        f["typed_config"]["filter_config"]["value"]
            .as_str()
            .expect("filter_config string"),
    )
    .expect("filter config json")
}
