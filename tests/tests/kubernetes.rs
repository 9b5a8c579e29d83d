//! `examples/kubernetes/`: what can be checked without a cluster.
//!
//! 1. Every manifest parses (all YAML documents) and the objects refer to each other correctly:
//!    Service selectors match pod labels, ports agree between Services, pods and the Envoy config,
//!    the ConfigMap is mounted where Envoy reads it, and in each of the three ways of shipping
//!    `libwscap.so` the file lands where `ENVOY_DYNAMIC_MODULES_SEARCH_PATH` points.
//! 2. The Envoy bootstrap taken out of the ConfigMap runs on the real Envoy binary, two replicas in
//!    global mode on a real redis-server, with only addresses and ports changed for loopback
//!    (`wscap_e2e::k8s::for_loopback` lists them). The headless Service is played by a DNS server
//!    in this process whose A records the test changes: a pod added to the answer gets new
//!    WebSockets; a pod removed from it drains (no new WebSockets, its open ones stay counted
//!    and open until they close); the per-pod limit holds as the pods count themselves.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::Value;
use wscap_e2e::backend::Backend;
use wscap_e2e::client::{connect, Outcome, WsClient};
use wscap_e2e::dns::DnsServer;
use wscap_e2e::envoy::{Envoy, Opts};
use wscap_e2e::k8s::{self, Doc, Loopback};
use wscap_e2e::metrics;
use wscap_e2e::{eventually, free_port, scratch_dir};
use wscap_testkit::RedisServer;

const CLUSTER: &str = "ws_backend";
const NS: &str = "wscap";

fn one<'a>(docs: &'a [Doc], file: &str, kind: &str, name: &str) -> &'a Value {
    let found: Vec<&Doc> = docs
        .iter()
        .filter(|d| d.file == file && d.kind() == kind && d.name() == name)
        .collect();
    assert_eq!(found.len(), 1, "{file}: expected one {kind} {name}");
    &found[0].value
}

/// `labels` holds every key/value of `selector`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let sel = selector.as_object().expect("selector is a map");
    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn container<'a>(pod_spec: &'a Value, name: &str) -> &'a Value {
    pod_spec["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// The containerPort of the named port of a container.
fn named_port(c: &Value, name: &str) -> u64 {
    c["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("container {} has no port {name}", c["name"]))
}

fn env(c: &Value, name: &str) -> Option<String> {
    c["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str())
        .map(str::to_string)
}

fn mount_path(c: &Value, volume: &str) -> Option<String> {
    c["volumeMounts"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == volume)
        .and_then(|m| m["mountPath"].as_str())
        .map(str::to_string)
}

fn volume<'a>(pod_spec: &'a Value, name: &str) -> &'a Value {
    pod_spec["volumes"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["name"] == name))
        .unwrap_or_else(|| panic!("no volume {name}"))
}

/// The Dockerfile's stages: name → (base image, [(source, destination)] of its COPY lines).
fn dockerfile_stages() -> BTreeMap<String, (String, Vec<(String, String)>)> {
    let text =
        std::fs::read_to_string(k8s::manifests_dir().join("Dockerfile")).expect("Dockerfile");
    let mut out = BTreeMap::new();
    let mut cur: Option<String> = None;
    for line in text.lines().map(str::trim) {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["FROM", image, "AS", name] => {
                out.insert(name.to_string(), (image.to_string(), Vec::new()));
                cur = Some(name.to_string());
            }
            ["FROM", ..] => panic!("Dockerfile: every stage is named ({line})"),
            ["COPY", src, dst] => {
                let stage = cur.as_ref().expect("COPY after FROM");
                out.get_mut(stage)
                    .expect("stage")
                    .1
                    .push((src.to_string(), dst.to_string()));
            }
            _ => {}
        }
    }
    out
}

/// The Envoy container reads the ConfigMap's key through `-c`, and finds `libwscap.so` at
/// `$ENVOY_DYNAMIC_MODULES_SEARCH_PATH`; returns that directory.
fn check_envoy_pod(dep: &Value, file: &str, envoy_cfg: &Value) -> String {
    let spec = &dep["spec"]["template"]["spec"];
    let envoy = container(spec, "envoy");
    let args: Vec<&str> = envoy["args"]
        .as_array()
        .expect("envoy args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let c = args
        .iter()
        .position(|a| *a == "-c")
        .map(|i| args[i + 1])
        .unwrap_or_else(|| panic!("{file}: envoy has no -c"));
    let cm_vol = spec["volumes"]
        .as_array()
        .and_then(|vs| {
            vs.iter()
                .find(|v| v["configMap"]["name"] == k8s::CONFIGMAP.0)
        })
        .unwrap_or_else(|| panic!("{file}: no volume from ConfigMap {}", k8s::CONFIGMAP.0));
    let dir = mount_path(envoy, cm_vol["name"].as_str().expect("volume name"))
        .unwrap_or_else(|| panic!("{file}: the ConfigMap volume is not mounted in envoy"));
    assert_eq!(
        c,
        format!("{dir}/{}", k8s::CONFIGMAP.1),
        "{file}: -c names the ConfigMap's key"
    );
    // Listener ports = container ports; the readiness probe asks the metrics listener for /ready.
    let port_of = |l: &str| {
        envoy_cfg["static_resources"]["listeners"]
            .as_array()
            .and_then(|ls| ls.iter().find(|x| x["name"] == l))
            .and_then(|x| x["address"]["socket_address"]["port_value"].as_u64())
            .unwrap_or_else(|| panic!("listener {l}"))
    };
    assert_eq!(
        named_port(envoy, "http"),
        port_of("ingress"),
        "{file}: http"
    );
    assert_eq!(
        named_port(envoy, "metrics"),
        port_of("metrics"),
        "{file}: metrics"
    );
    let probe = &envoy["readinessProbe"]["httpGet"];
    assert_eq!(probe["path"], "/ready", "{file}: readiness path");
    assert_eq!(probe["port"], "metrics", "{file}: readiness port");
    env(envoy, "ENVOY_DYNAMIC_MODULES_SEARCH_PATH")
        .unwrap_or_else(|| panic!("{file}: envoy has no ENVOY_DYNAMIC_MODULES_SEARCH_PATH"))
}

#[test]
fn manifests_parse_and_refer_to_each_other() {
    let docs = k8s::load_all();
    let files: Vec<&str> = docs.iter().map(|d| d.file.as_str()).collect();
    for f in k8s::yaml_files(&k8s::manifests_dir()) {
        assert!(files.contains(&f.as_str()), "{f} holds no document");
    }
    // Every object has apiVersion, kind and name; namespaced ones are in the example namespace.
    for d in &docs {
        assert!(d.value["apiVersion"].is_string(), "{}: apiVersion", d.file);
        assert!(!d.kind().is_empty(), "{}: kind", d.file);
        if d.kind() == "Kustomization" {
            continue;
        }
        assert!(!d.name().is_empty(), "{}: metadata.name", d.file);
        if d.kind() != "Namespace" {
            assert_eq!(
                d.value["metadata"]["namespace"],
                NS,
                "{} {}",
                d.file,
                d.name()
            );
        }
    }
    one(&docs, "namespace.yaml", "Namespace", NS);

    // kustomization.yaml lists files that exist, and the default Envoy Deployment.
    let kust = one(&docs, "kustomization.yaml", "Kustomization", "");
    let res: Vec<&str> = kust["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for r in &res {
        assert!(
            k8s::manifests_dir().join(r).is_file(),
            "kustomization: {r} missing"
        );
    }
    for f in [
        "namespace.yaml",
        "redis.yaml",
        "backend.yaml",
        "envoy-config.yaml",
        "envoy.yaml",
    ] {
        assert!(res.contains(&f), "kustomization lacks {f}");
    }

    // Each Deployment selects its own pods; each Service selects the pods of one Deployment of
    // the default set, and its targetPort is a named port of that pod.
    let deployments: Vec<&Doc> = docs.iter().filter(|d| d.kind() == "Deployment").collect();
    assert_eq!(
        deployments.len(),
        5,
        "ws-backend, redis, envoy-wscap ×3 ways"
    );
    for d in &deployments {
        assert!(
            selects(
                &d.value["spec"]["selector"]["matchLabels"],
                &d.value["spec"]["template"]["metadata"]["labels"]
            ),
            "{} {}: selector does not match its pod labels",
            d.file,
            d.name()
        );
    }
    let mut service_ports = BTreeMap::new();
    for svc in docs.iter().filter(|d| d.kind() == "Service") {
        let targets: Vec<&Doc> = deployments
            .iter()
            .copied()
            .filter(|d| !d.file.starts_with("variants/"))
            .filter(|d| {
                selects(
                    &svc.value["spec"]["selector"],
                    &d.value["spec"]["template"]["metadata"]["labels"],
                )
            })
            .collect();
        assert_eq!(
            targets.len(),
            1,
            "Service {} selects one Deployment",
            svc.name()
        );
        let pod = &targets[0].value["spec"]["template"]["spec"];
        for p in svc.value["spec"]["ports"].as_array().expect("ports") {
            let target = p["targetPort"].as_str().expect("named targetPort");
            let found = pod["containers"]
                .as_array()
                .expect("containers")
                .iter()
                .any(|c| named_port(c, target) > 0);
            assert!(
                found,
                "Service {}: targetPort {target} not in the pod",
                svc.name()
            );
            service_ports.insert(
                (
                    svc.name().to_string(),
                    p["name"].as_str().unwrap_or("").to_string(),
                ),
                p["port"].as_u64().expect("port"),
            );
        }
    }

    // The Envoy config: the backend cluster resolves the headless Service; its port is the pods'.
    let (_, cfg) = k8s::envoy_config(&docs);
    let backend_svc = one(&docs, "backend.yaml", "Service", "ws-backend");
    assert_eq!(
        backend_svc["spec"]["clusterIP"], "None",
        "ws-backend is headless"
    );
    assert_eq!(
        k8s::backend_dns_name(&cfg),
        format!("ws-backend.{NS}.svc.cluster.local")
    );
    let backend_dep = one(&docs, "backend.yaml", "Deployment", "ws-backend");
    let app = container(&backend_dep["spec"]["template"]["spec"], "app");
    let cluster = cfg["static_resources"]["clusters"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == CLUSTER))
        .expect("cluster ws_backend");
    assert_eq!(cluster["type"], "STRICT_DNS");
    let cluster_port = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        ["address"]["socket_address"]["port_value"]
        .as_u64();
    assert_eq!(
        cluster_port,
        Some(named_port(app, "ws")),
        "cluster port = pod port"
    );
    assert_eq!(
        cluster["load_balancing_policy"]["policies"][0]["typed_extension_config"]["typed_config"]
            ["lb_policy_name"],
        "wscap"
    );
    assert_eq!(k8s::filter_config(&cfg)["cluster"], CLUSTER);
    // Global mode: redis_url names the redis Service and its port.
    let ext = &cfg["bootstrap_extensions"][0]["typed_config"]["extension_config"]["value"];
    let ext: Value = serde_json::from_str(ext.as_str().expect("string")).expect("json");
    let redis_port = service_ports[&("redis".to_string(), "redis".to_string())];
    assert_eq!(
        ext["redis_url"],
        format!("redis://redis.{NS}.svc.cluster.local:{redis_port}")
    );

    // The three ways of getting libwscap.so into the pod.
    let stages = dockerfile_stages();
    let copies = |stage: &str| -> Vec<(String, String)> {
        stages
            .get(stage)
            .unwrap_or_else(|| panic!("Dockerfile has no stage {stage}"))
            .1
            .clone()
    };
    assert_eq!(stages["envoy"].0, "envoyproxy/envoy:v1.40.0");
    // (a) custom image: the .so is copied into the directory the search path names.
    let dep_a = one(&docs, "envoy.yaml", "Deployment", "envoy-wscap");
    let dir_a = check_envoy_pod(dep_a, "envoy.yaml", &cfg);
    assert!(
        copies("envoy").contains(&("libwscap.so".into(), format!("{dir_a}/libwscap.so"))),
        "Dockerfile (envoy) copies libwscap.so to {dir_a}"
    );
    // (b) image volume: the module image's /libwscap.so appears at the mount path.
    let dep_b = one(
        &docs,
        "variants/image-volume.yaml",
        "Deployment",
        "envoy-wscap",
    );
    let dir_b = check_envoy_pod(dep_b, "variants/image-volume.yaml", &cfg);
    let spec_b = &dep_b["spec"]["template"]["spec"];
    assert_eq!(container(spec_b, "envoy")["image"], stages["envoy"].0);
    assert!(volume(spec_b, "wscap-module")["image"]["reference"].is_string());
    assert_eq!(
        mount_path(container(spec_b, "envoy"), "wscap-module").as_deref(),
        Some(dir_b.as_str())
    );
    assert!(copies("module").contains(&("libwscap.so".into(), "/libwscap.so".into())));
    // (c) init container: copies its image's file into the emptyDir Envoy mounts.
    let dep_c = one(
        &docs,
        "variants/init-copy.yaml",
        "Deployment",
        "envoy-wscap",
    );
    let dir_c = check_envoy_pod(dep_c, "variants/init-copy.yaml", &cfg);
    let spec_c = &dep_c["spec"]["template"]["spec"];
    assert_eq!(container(spec_c, "envoy")["image"], stages["envoy"].0);
    assert!(volume(spec_c, "wscap-module")["emptyDir"].is_object());
    let init = &spec_c["initContainers"][0];
    let init_dir = mount_path(init, "wscap-module").expect("init mounts the emptyDir");
    let cmd: Vec<&str> = init["command"]
        .as_array()
        .expect("command")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let (_, src_in_image) = copies("copier")
        .into_iter()
        .find(|(s, _)| s == "libwscap.so")
        .expect("copier COPY");
    assert_eq!(
        cmd,
        [
            "cp",
            src_in_image.as_str(),
            &format!("{init_dir}/libwscap.so")
        ],
        "init container copies the .so into the emptyDir"
    );
    assert_eq!(
        mount_path(container(spec_c, "envoy"), "wscap-module"),
        Some(dir_c.clone())
    );
    assert_eq!(init_dir, dir_c);
    // The variants differ from envoy.yaml's Deployment only in how the .so arrives.
    for d in [dep_b, dep_c] {
        assert_eq!(d["spec"]["replicas"], dep_a["spec"]["replicas"]);
        assert_eq!(d["spec"]["selector"], dep_a["spec"]["selector"]);
    }
}

/// A local "pod": a WebSocket backend on its own 127.0.0.x, all on one shared port.
struct Pods {
    port: u16,
    pods: Vec<Backend>,
}

impl Pods {
    /// `n` pods at 127.0.0.2, 127.0.0.3, ... on one port (retrying if a port is taken on one).
    async fn start(n: u8) -> Pods {
        'attempt: for _ in 0..20 {
            let first = SocketAddr::from((Ipv4Addr::new(127, 0, 0, 2), 0));
            let Ok(b) = Backend::start_at("pod-1", first).await else {
                continue;
            };
            let port = b.addr.port();
            let mut pods = vec![b];
            for i in 2..=n {
                let a = SocketAddr::from((Ipv4Addr::new(127, 0, 0, 1 + i), port));
                match Backend::start_at(&format!("pod-{i}"), a).await {
                    Ok(b) => pods.push(b),
                    Err(_) => continue 'attempt,
                }
            }
            return Pods { port, pods };
        }
        panic!("could not bind {n} pods on 127.0.0.2.. with one port")
    }

    fn ip(&self, i: usize) -> Ipv4Addr {
        match self.pods[i].addr.ip() {
            std::net::IpAddr::V4(v) => v,
            other => panic!("{other}"),
        }
    }

    fn active(&self) -> Vec<usize> {
        self.pods.iter().map(Backend::active).collect()
    }
}

/// One Envoy replica: its process and its two listener ports.
struct Replica {
    envoy: Envoy,
    ingress: u16,
    metrics: u16,
}

impl Replica {
    async fn start(cfg: &Value, lo_base: &Loopback) -> Replica {
        let lo = Loopback {
            admin_port: free_port(),
            ..lo_base.clone()
        };
        let bootstrap = k8s::for_loopback(cfg, &lo);
        let envoy = Envoy::try_start_in(
            &scratch_dir("k8s-envoy"),
            &bootstrap,
            &Opts::with_module(wscap_e2e::concurrency()),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let ingress = envoy.listener_port("ingress").await;
        let metrics = envoy.listener_port("metrics").await;
        Replica {
            envoy,
            ingress,
            metrics,
        }
    }

    /// `GET /wscap` through the metrics listener (the port Prometheus and probes use).
    async fn wscap(&self) -> Value {
        let r = wscap_e2e::http::get(SocketAddr::from(([127, 0, 0, 1], self.metrics)), "/wscap")
            .await
            .unwrap_or_else(|e| panic!("GET /wscap via metrics: {e}"));
        assert_eq!(r.status, 200, "{}", r.text());
        serde_json::from_slice(&r.body).expect("json")
    }
}

/// Per pod (in `pods` order): the sum over replicas of active counts and the states they report.
async fn fleet_view(replicas: &[Replica], pods: &Pods) -> Vec<(i64, Vec<String>)> {
    let mut docs = Vec::new();
    for r in replicas {
        docs.push(r.wscap().await);
    }
    pods.pods
        .iter()
        .map(|p| {
            let hs: Vec<_> = docs
                .iter()
                .filter_map(|d| metrics::host(d, CLUSTER, &p.host()))
                .collect();
            (
                hs.iter().map(|h| h.active).sum(),
                hs.iter().map(|h| h.state.clone()).collect(),
            )
        })
        .collect()
}

/// Open WebSockets round-robin over the replicas until `want` are open, retrying refusals
/// (`no_capacity`) while share moves between replicas through Redis, for at most `patience`
/// without a success.
async fn fill(replicas: &[Replica], want: usize, patience: Duration) -> Vec<WsClient> {
    let mut open = Vec::new();
    let mut last = Instant::now();
    let mut i = 0;
    while open.len() < want {
        assert!(
            last.elapsed() < patience,
            "only {} of {want} admitted; nothing for {patience:?}",
            open.len()
        );
        match connect(replicas[i % replicas.len()].ingress, "/ws").await {
            Outcome::Open(c) => {
                open.push(c);
                last = Instant::now();
            }
            Outcome::Refused(r) => {
                assert_eq!(r.status, 503, "refusal: {:?}", r.headers);
                assert_eq!(r.header("x-wscap-reason"), Some("no_capacity"));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Outcome::Failed(e) => panic!("connection failed without a response: {e}"),
        }
        i += 1;
    }
    open
}

/// Every replica refuses a new WebSocket with the module's 503.
async fn all_refuse(replicas: &[Replica], retry_after: &str, what: &str) {
    for r in replicas {
        let resp = connect(r.ingress, "/ws").await.expect_refused(what);
        assert_eq!(resp.status, 503, "{what}");
        assert_eq!(resp.header("x-wscap-reason"), Some("no_capacity"), "{what}");
        assert_eq!(resp.header("retry-after"), Some(retry_after), "{what}");
    }
}

/// Close (from the client side, with a close frame) `n` of the held WebSockets open to `backend`.
async fn close_some_to(held: &mut Vec<WsClient>, backend: &str, n: usize) {
    let mut closed = 0;
    let mut keep = Vec::new();
    for c in held.drain(..) {
        if closed < n && c.backend == backend {
            c.close().await;
            closed += 1;
        } else {
            keep.push(c);
        }
    }
    *held = keep;
    assert_eq!(closed, n, "held WebSockets to {backend}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_config_scales_out_and_in_on_real_envoy() {
    let docs = k8s::load_all();
    let (_, cfg) = k8s::envoy_config(&docs);
    let limit = k8s::filter_config(&cfg)["max_connections_per_host"]
        .as_u64()
        .expect("limit") as usize;
    let retry_after = k8s::filter_config(&cfg)["retry_after_seconds"].to_string();
    let name = k8s::backend_dns_name(&cfg);

    let redis = RedisServer::start();
    let dns = DnsServer::start().await;
    let pods = Pods::start(3).await;
    // The headless Service starts with two ready pods.
    dns.set(&name, &[pods.ip(0), pods.ip(1)]);
    let lo = Loopback {
        admin_port: 0, // set per replica
        backend_port: pods.port,
        dns: dns.addr,
        redis_url: redis.url(),
    };
    let replicas = vec![
        Replica::start(&cfg, &lo).await,
        Replica::start(&cfg, &lo).await,
    ];
    let a_while = Duration::from_secs(30);
    eventually("both replicas resolved the two pods", a_while, || async {
        let v = fleet_view(&replicas, &pods).await;
        let ok = v[..2].iter().all(|(_, s)| s == &["active", "active"]) && v[2].1.is_empty();
        ok.then_some(()).ok_or(format!("{v:?}"))
    })
    .await;
    assert!(dns.queries() > 0);

    // Fill both pods through both replicas; then every replica refuses.
    let mut held = fill(&replicas, 2 * limit, a_while).await;
    assert_eq!(pods.active(), [limit, limit, 0], "the pods' own counts");
    all_refuse(&replicas, &retry_after, "both pods full").await;

    // Scale out: pod 3 joins the answer. It gets the next WebSockets, and only it.
    dns.set(&name, &[pods.ip(0), pods.ip(1), pods.ip(2)]);
    eventually("both replicas resolved pod-3", a_while, || async {
        let v = fleet_view(&replicas, &pods).await;
        (v[2].1 == ["active", "active"])
            .then_some(())
            .ok_or(format!("{v:?}"))
    })
    .await;
    let before: Vec<usize> = pods.pods.iter().map(Backend::accepted).collect();
    let new = fill(&replicas, limit, a_while).await;
    assert!(
        new.iter().all(|c| c.backend == "pod-3"),
        "new WebSockets go to the new pod"
    );
    assert_eq!(pods.pods[0].accepted(), before[0]);
    assert_eq!(pods.pods[1].accepted(), before[1]);
    assert_eq!(pods.active(), [limit, limit, limit]);
    all_refuse(&replicas, &retry_after, "all three pods full").await;
    held.extend(new);

    // Scale in: pod 1 leaves the answer. It drains: still counted, its WebSockets stay open.
    dns.set(&name, &[pods.ip(1), pods.ip(2)]);
    eventually("both replicas see pod-1 draining", a_while, || async {
        let v = fleet_view(&replicas, &pods).await;
        let ok = v[0].1 == ["draining", "draining"] && v[0].0 == limit as i64;
        ok.then_some(()).ok_or(format!("{v:?}"))
    })
    .await;
    // Some of pod 1's WebSockets close: it has room now, but takes none.
    let freed = limit / 2;
    close_some_to(&mut held, "pod-1", freed).await;
    eventually("pod-1's closes counted", a_while, || async {
        let v = fleet_view(&replicas, &pods).await;
        (v[0].0 == (limit - freed) as i64 && pods.pods[0].active() == limit - freed)
            .then_some(())
            .ok_or(format!("{v:?} pod-1 sees {}", pods.pods[0].active()))
    })
    .await;
    let accepted_1 = pods.pods[0].accepted();
    for _ in 0..3 {
        all_refuse(&replicas, &retry_after, "pod-1 draining, pods 2 and 3 full").await;
    }
    assert_eq!(
        pods.pods[0].accepted(),
        accepted_1,
        "a draining pod takes no new WebSocket"
    );
    // Room on pod 2: new WebSockets go there, never to the draining pod 1.
    let room = 5;
    close_some_to(&mut held, "pod-2", room).await;
    let more = fill(&replicas, room, a_while).await;
    assert!(
        more.iter().all(|c| c.backend == "pod-2"),
        "to pod-2, not the draining pod-1"
    );
    assert_eq!(pods.pods[0].accepted(), accepted_1);
    held.extend(more);
    // Pod 1's remaining WebSockets still carry messages.
    let mut alive_on_1 = 0;
    for c in held.iter_mut().filter(|c| c.backend == "pod-1") {
        c.echo("still here")
            .await
            .unwrap_or_else(|e| panic!("a draining pod's WebSocket: {e}"));
        alive_on_1 += 1;
    }
    assert_eq!(
        alive_on_1,
        limit - freed,
        "pod-1 keeps its open WebSockets while draining"
    );
    assert_eq!(pods.pods[0].active(), limit - freed);
    // When they close, the drained pod is counted down to nothing.
    close_some_to(&mut held, "pod-1", limit - freed).await;
    eventually("pod-1 drained", a_while, || async {
        let v = fleet_view(&replicas, &pods).await;
        (v[0].0 == 0).then_some(()).ok_or(format!("{v:?}"))
    })
    .await;

    // The limit held on every pod, as the pods counted themselves.
    for p in &pods.pods {
        assert!(
            p.max_seen() <= limit,
            "{} held {} > limit {limit}",
            p.name,
            p.max_seen()
        );
    }
    for mut r in replicas {
        r.envoy.assert_running();
    }
}
