//! `examples/gateways/`: the Envoy Gateway and Istio patches, applied to a representative config
//! of the shape each controller generates (`tests/data/gateways/`, written by hand, not captured
//! from a controller), then run on the real Envoy binary with real WebSocket pods: a WebSocket is
//! admitted, steered to the pod with room, and refused at the cap.
//!
//! How the patches are applied here (no controller runs):
//! - Envoy Gateway: `EnvoyProxy.spec.bootstrap.jsonPatches` on the bootstrap, and each
//!   `EnvoyPatchPolicy.spec.jsonPatches[].operation` on the resource of that `type` and `name`,
//!   both as RFC 6902 JSON patches (the `json-patch` crate), which is what Envoy Gateway documents;
//! - Istio: `INSERT_BEFORE` of an `HTTP_FILTER` puts the value before the named filter in every
//!   HTTP connection manager of the listener; `MERGE` (CLUSTER, BOOTSTRAP) is applied as an
//!   RFC 7396 merge patch. Istio merges protobufs, which appends to repeated fields where
//!   RFC 7396 replaces them; the two agree here because neither merged field
//!   (`load_balancing_policy`, `bootstrap_extensions`) is present in the base.
//!
//! Then, to run on loopback, and nothing else: listener addresses `0.0.0.0` → `127.0.0.1` and
//! ports → 0, the admin (and the stats cluster pointing at it) → a free port, the cluster's ADS
//! endpoint source → a file (EDS), and for Istio the module's absolute path
//! `/var/lib/wscap/libwscap.so` → the built module (Envoy then runs without a search path).

use std::path::Path;

use serde_json::{json, Value};
use wscap_e2e::backend::Backend;
use wscap_e2e::client::{connect, WsClient};
use wscap_e2e::config::{eds_file_contents, Endpoint};
use wscap_e2e::envoy::{Envoy, Opts};
use wscap_e2e::k8s::parse_documents;
use wscap_e2e::{
    eventually, free_port, metrics, scratch_dir, workspace_root, write_atomic, SETTLE,
};

const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// Where the Istio patch expects the module.
const ISTIO_MODULE_PATH: &str = "/var/lib/wscap/libwscap.so";

fn read_docs(rel: &str) -> Vec<Value> {
    let p = workspace_root().join(rel);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    parse_documents(&text, rel).unwrap_or_else(|e| panic!("{e}"))
}

/// The bootstrap and the xDS resources (by `@type` and name) of a representative base config.
struct Generated {
    bootstrap: Value,
    resources: Vec<Value>,
}

impl Generated {
    fn load(rel: &str) -> Generated {
        let mut docs = read_docs(rel);
        let bootstrap = docs.remove(0);
        Generated {
            bootstrap,
            resources: docs,
        }
    }

    fn resource(&mut self, ty: &str, name: &str) -> &mut Value {
        self.resources
            .iter_mut()
            .find(|r| r["@type"] == ty && r["name"] == name)
            .unwrap_or_else(|| {
                panic!("the patch names {ty} {name}, which the config does not have")
            })
    }

    /// One bootstrap with the resources in `static_resources`, made runnable on loopback (module
    /// docs); the cluster's endpoints come from `eds_file`.
    fn assemble(mut self, eds_file: &Path) -> Value {
        let admin = free_port();
        let old_admin = self.bootstrap["admin"]["address"]["socket_address"]["port_value"].clone();
        self.bootstrap["admin"]["address"]["socket_address"]["port_value"] = json!(admin);
        let dir = eds_file.parent().expect("dir");
        for mut r in self.resources {
            let ty = r["@type"].as_str().expect("@type").to_string();
            r.as_object_mut().expect("object").remove("@type");
            if ty == LISTENER {
                self.bootstrap["static_resources"]["listeners"]
                    .as_array_mut()
                    .expect("listeners")
                    .push(r);
            } else if ty == CLUSTER {
                let eds = &mut r["eds_cluster_config"]["eds_config"];
                assert!(
                    eds["ads"].is_object(),
                    "the base cluster's endpoints come over ADS"
                );
                eds.as_object_mut().expect("eds_config").remove("ads");
                eds["path_config_source"] = json!({
                    "path": eds_file.to_string_lossy(),
                    "watched_directory": {"path": dir.to_string_lossy()},
                });
                self.bootstrap["static_resources"]["clusters"]
                    .as_array_mut()
                    .expect("clusters")
                    .push(r);
            } else {
                panic!("unexpected resource {ty}");
            }
        }
        for l in self.bootstrap["static_resources"]["listeners"]
            .as_array_mut()
            .expect("listeners")
        {
            let sa = &mut l["address"]["socket_address"];
            assert_eq!(sa["address"], "0.0.0.0");
            sa["address"] = json!("127.0.0.1");
            sa["port_value"] = json!(0);
        }
        for c in self.bootstrap["static_resources"]["clusters"]
            .as_array_mut()
            .expect("clusters")
        {
            // (`get_mut`: indexing would add an empty load_assignment to the EDS cluster.)
            let eps = c
                .get_mut("load_assignment")
                .and_then(|la| la.get_mut("endpoints"))
                .and_then(Value::as_array_mut);
            if let Some(eps) = eps {
                for e in eps {
                    for lb in e["lb_endpoints"].as_array_mut().expect("lb_endpoints") {
                        let p = &mut lb["endpoint"]["address"]["socket_address"]["port_value"];
                        if *p == old_admin {
                            *p = json!(admin);
                        }
                    }
                }
            }
        }
        self.bootstrap
    }
}

fn json_patch_ops(v: &Value, what: &str) -> Vec<json_patch::PatchOperation> {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{what}: not a JSON patch: {e}"))
}

/// The Envoy Gateway patches (EnvoyProxy bootstrap JSONPatch, EnvoyPatchPolicy) on its base.
fn envoy_gateway_config(eds_file: &Path) -> (Value, String) {
    let mut g = Generated::load("tests/data/gateways/envoy-gateway.yaml");
    let proxy = read_docs("examples/gateways/envoy-gateway/envoyproxy.yaml").remove(0);
    assert_eq!(proxy["kind"], "EnvoyProxy");
    assert_eq!(proxy["spec"]["bootstrap"]["type"], "JSONPatch");
    let ops = json_patch_ops(
        &proxy["spec"]["bootstrap"]["jsonPatches"],
        "EnvoyProxy bootstrap",
    );
    json_patch::patch(&mut g.bootstrap, &ops).expect("EnvoyProxy bootstrap patch applies");
    // The pod sets the search path to where it mounts the module; the test sets it to the
    // built module (Opts::with_module).
    let env = &proxy["spec"]["provider"]["kubernetes"]["envoyDeployment"]["container"]["env"];
    assert_eq!(env[0]["name"], "ENVOY_DYNAMIC_MODULES_SEARCH_PATH");

    let policy = read_docs("examples/gateways/envoy-gateway/envoypatchpolicy.yaml").remove(0);
    assert_eq!(policy["kind"], "EnvoyPatchPolicy");
    assert_eq!(policy["spec"]["type"], "JSONPatch");
    let mut cluster = String::new();
    for p in policy["spec"]["jsonPatches"]
        .as_array()
        .expect("jsonPatches")
    {
        let ty = p["type"].as_str().expect("type");
        let name = p["name"].as_str().expect("name");
        if ty == CLUSTER {
            cluster = name.to_string();
        }
        let ops = json_patch_ops(&json!([p["operation"]]), name);
        json_patch::patch(g.resource(ty, name), &ops)
            .unwrap_or_else(|e| panic!("EnvoyPatchPolicy on {name}: {e}"));
    }
    (g.assemble(eds_file), cluster)
}

/// The Istio EnvoyFilter's three patches on its base.
fn istio_config(eds_file: &Path) -> (Value, String) {
    let mut g = Generated::load("tests/data/gateways/istio.yaml");
    let ef = read_docs("examples/gateways/istio/envoyfilter.yaml").remove(0);
    assert_eq!(ef["kind"], "EnvoyFilter");
    let mut cluster = String::new();
    for p in ef["spec"]["configPatches"]
        .as_array()
        .expect("configPatches")
    {
        let op = p["patch"]["operation"].as_str().expect("operation");
        match (p["applyTo"].as_str().expect("applyTo"), op) {
            ("HTTP_FILTER", "INSERT_BEFORE") => {
                let fc = &p["match"]["listener"]["filterChain"]["filter"];
                assert_eq!(fc["name"], "envoy.filters.network.http_connection_manager");
                let before = fc["subFilter"]["name"].as_str().expect("subFilter");
                let mut inserted = 0;
                for l in g.resources.iter_mut().filter(|r| r["@type"] == LISTENER) {
                    for chain in l["filter_chains"].as_array_mut().expect("filter_chains") {
                        for f in chain["filters"].as_array_mut().expect("filters") {
                            if f["name"] != fc["name"] {
                                continue;
                            }
                            let hf = f["typed_config"]["http_filters"]
                                .as_array_mut()
                                .expect("http_filters");
                            let at = hf.iter().position(|x| x["name"] == before).expect("router");
                            hf.insert(at, p["patch"]["value"].clone());
                            inserted += 1;
                        }
                    }
                }
                assert!(inserted > 0, "HTTP_FILTER patch matched no listener");
            }
            ("CLUSTER", "MERGE") => {
                let m = &p["match"]["cluster"];
                let name = format!(
                    "outbound|{}||{}",
                    m["portNumber"],
                    m["service"].as_str().expect("service")
                );
                json_patch::merge(g.resource(CLUSTER, &name), &p["patch"]["value"]);
                cluster = name;
            }
            ("BOOTSTRAP", "MERGE") => json_patch::merge(&mut g.bootstrap, &p["patch"]["value"]),
            (a, o) => panic!("the test does not apply {a} {o}"),
        }
    }
    let module = wscap_e2e::module_dir().join("libwscap.so");
    let text = serde_json::to_string(&g.assemble(eds_file)).expect("json");
    let n = text.matches(ISTIO_MODULE_PATH).count();
    assert_eq!(n, 3, "the three extensions load the module by path");
    let text = text.replace(ISTIO_MODULE_PATH, &module.to_string_lossy());
    (serde_json::from_str(&text).expect("json"), cluster)
}

/// The limit and retry-after the patch's filter config sets.
fn filter_settings(config: &Value) -> (usize, String) {
    let mut found = None;
    for l in config["static_resources"]["listeners"]
        .as_array()
        .expect("listeners")
    {
        let mut chains: Vec<&Value> = l["filter_chains"]
            .as_array()
            .into_iter()
            .flatten()
            .collect();
        chains.extend(l.get("default_filter_chain"));
        for c in chains {
            for f in c["filters"].as_array().expect("filters") {
                for hf in f["typed_config"]["http_filters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    if hf["name"] == "wscap" {
                        found = Some(hf["typed_config"]["filter_config"]["value"].clone());
                    }
                }
            }
        }
    }
    let cfg: Value = serde_json::from_str(found.expect("a wscap filter").as_str().expect("string"))
        .expect("json");
    (
        cfg["max_connections_per_host"].as_u64().expect("limit") as usize,
        cfg["retry_after_seconds"].to_string(),
    )
}

/// The gateway's listener: the one that is neither the stats nor the ready listener.
async fn gateway_port(envoy: &Envoy, config: &Value) -> u16 {
    let names: Vec<&str> = config["static_resources"]["listeners"]
        .as_array()
        .expect("listeners")
        .iter()
        .filter_map(|l| l["name"].as_str())
        .collect();
    let name = *names.last().expect("the gateway listener comes last");
    envoy.listener_port(name).await
}

/// Run `config` with two pods; admit, steer, refuse at the cap.
async fn admits_steers_and_refuses(build: fn(&Path) -> (Value, String), opts: Opts, tag: &str) {
    let pods = [Backend::start("pod-1").await, Backend::start("pod-2").await];
    let dir = scratch_dir(tag);
    let eds_dir = dir.join("eds");
    std::fs::create_dir_all(&eds_dir).expect("eds dir");
    let eds_file = eds_dir.join("endpoints.json");
    let (config, cluster) = build(&eds_file);
    let eps: Vec<Endpoint> = pods.iter().map(|b| Endpoint::new(b.addr)).collect();
    let cla_name = config["static_resources"]["clusters"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == cluster.as_str()))
        .map(|c| {
            c["eds_cluster_config"]["service_name"]
                .as_str()
                .expect("service_name")
                .to_string()
        })
        .expect("the patched cluster");
    write_atomic(&eds_file, &eds_file_contents(&cla_name, &eps, 1));
    let (limit, retry_after) = filter_settings(&config);

    let mut envoy = Envoy::try_start_in(&dir, &config, &opts)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let port = gateway_port(&envoy, &config).await;
    eventually("the module sees both pods", SETTLE, || async {
        let doc = envoy.wscap().await;
        let n = metrics::hosts(&doc, &cluster).len();
        (n == 2).then_some(()).ok_or(format!("{doc}"))
    })
    .await;

    // Admitted and steered: the pods fill evenly to the cap.
    let mut held: Vec<WsClient> = Vec::new();
    for i in 0..2 * limit {
        held.push(
            connect(port, "/ws")
                .await
                .expect_open(&format!("WebSocket {i}")),
        );
    }
    assert_eq!([pods[0].active(), pods[1].active()], [limit, limit]);
    // Refused at the cap, by the module.
    let r = connect(port, "/ws").await.expect_refused("every pod full");
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-wscap-reason"), Some("no_capacity"));
    assert_eq!(r.header("retry-after"), Some(retry_after.as_str()));
    // Room on pod 2 only: the next WebSocket is steered there.
    let at = held
        .iter()
        .position(|c| c.backend == "pod-2")
        .expect("one on pod-2");
    held.swap_remove(at).close().await;
    eventually("pod-2's close counted", SETTLE, || async {
        let h = metrics::host(&envoy.wscap().await, &cluster, &pods[1].host());
        match h {
            Some(h) if h.active == limit as i64 - 1 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let c = connect(port, "/ws").await.expect_open("room on pod-2");
    assert_eq!(c.backend, "pod-2", "steered to the pod with room");
    held.push(c);
    for p in &pods {
        assert!(p.max_seen() <= limit, "{} held {}", p.name, p.max_seen());
    }
    envoy.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_gateway_patches_run_on_real_envoy() {
    admits_steers_and_refuses(
        envoy_gateway_config,
        Opts::with_module(wscap_e2e::concurrency()),
        "gw-envoy-gateway",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_envoyfilter_patches_run_on_real_envoy() {
    // No search path: the Istio patches load the module by absolute path.
    admits_steers_and_refuses(
        istio_config,
        Opts::plain(wscap_e2e::concurrency()),
        "gw-istio",
    )
    .await;
}
