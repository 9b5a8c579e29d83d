//! Observe end to end: a real Prometheus (Debian's `prometheus`, own config, rules and storage,
//! free loopback port, killed by PID) scrapes 5 real Envoys every second and evaluates
//! `examples/prometheus/wscap-rules.yml` and `wscap-alerts.yml`:
//!
//! - cluster `pods`, local mode: 3 Envoys, 3 pods, limit 2 per pod *per Envoy* (fleet capacity
//!   6 per pod, 18 in all);
//! - cluster `chat`, global mode: 2 Envoys sharing a real redis-server, 2 pods, limit 3 per pod
//!   *for the fleet* (capacity 3 per pod, 6 in all: counting it per Envoy would say 12).
//!
//! Real WebSocket clients open connections through every Envoy; the pods count their own. Then
//! every query of `examples/grafana/wscap.json` (template variables substituted as Grafana
//! would), every recording rule and every alert expression that Prometheus loaded, and the
//! queries of `examples/autoscaling/` run against Prometheus's HTTP API, and each must return the
//! expected series and values: below saturation, above it (every pod full, refusals), and with
//! Redis gone (global-mode health). Every query must be covered by an expectation here, so a
//! query added to the dashboard or the rules without one fails this test.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use wscap_e2e::backend::Backend;
use wscap_e2e::client::{connect, Outcome, WsClient};
use wscap_e2e::config::{self, Endpoint, ListenerSpec};
use wscap_e2e::envoy::{Envoy, Opts};
use wscap_e2e::prometheus::{Prometheus, Series};
use wscap_e2e::redis::RedisServer;
use wscap_e2e::rig::{assert_wscap_refusal, LISTENER, RETRY_AFTER};
use wscap_e2e::{eventually, workspace_root};

const LOCAL: &str = "pods";
const GLOBAL: &str = "chat";
const LOCAL_LIMIT: u32 = 2;
const LOCAL_PODS: usize = 3;
const LOCAL_ENVOYS: usize = 3;
const GLOBAL_LIMIT: u32 = 3;
const GLOBAL_PODS: usize = 2;
const GLOBAL_ENVOYS: usize = 2;
const TTL_MS: u64 = 1500;
const REFRESH_MS: u64 = 200;
const GRACE_MS: u64 = 400;
/// How long Prometheus may take to scrape and evaluate a change (scrape and rules every 1 s).
const CONVERGE: Duration = Duration::from_secs(30);

/// What the fleet looks like at a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Some connections, no refusal yet.
    Below,
    /// Every pod full, refusals on both clusters.
    Above,
    /// Redis killed: the global Envoys' fail mode applies.
    RedisDown,
}

/// What the peers saw, to compare Prometheus with.
#[derive(Clone, Debug)]
struct Truth {
    phase: Phase,
    /// Per cluster, per pod `ip:port`: live connections as the pods counted them.
    live: BTreeMap<&'static str, BTreeMap<String, f64>>,
    /// Per Envoy `instance` label (its admin address): connections it holds open, per cluster.
    per_instance: BTreeMap<String, (&'static str, f64)>,
    /// Admin addresses of the global-mode Envoys.
    global_instances: BTreeSet<String>,
}

impl Truth {
    fn cluster_live(&self, c: &str) -> f64 {
        self.live[c].values().sum()
    }
    fn capacity_per_pod(c: &str) -> f64 {
        if c == LOCAL {
            f64::from(LOCAL_LIMIT) * LOCAL_ENVOYS as f64
        } else {
            f64::from(GLOBAL_LIMIT)
        }
    }
    fn capacity(&self, c: &str) -> f64 {
        Self::capacity_per_pod(c) * self.live[c].len() as f64
    }
    fn hosts(&self) -> BTreeSet<(String, String)> {
        self.live
            .iter()
            .flat_map(|(c, m)| m.keys().map(|h| ((*c).to_owned(), h.clone())))
            .collect()
    }
}

fn near(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// `series` keyed by the values of `labels`.
fn keyed(series: &[Series], labels: &[&str]) -> BTreeMap<Vec<String>, f64> {
    series
        .iter()
        .map(|s| {
            (
                labels.iter().map(|l| s.label(l).to_owned()).collect(),
                s.value,
            )
        })
        .collect()
}

/// One series per `(cluster, host)` of every pod, each equal to `want(cluster, host)`.
fn per_pod(t: &Truth, got: &[Series], want: impl Fn(&str, &str) -> f64) -> Result<(), String> {
    let got = keyed(got, &["cluster", "host"]);
    let expected: BTreeMap<Vec<String>, f64> = t
        .hosts()
        .into_iter()
        .map(|(c, h)| {
            let v = want(&c, &h);
            (vec![c, h], v)
        })
        .collect();
    let same = got.len() == expected.len()
        && expected
            .iter()
            .all(|(k, v)| got.get(k).is_some_and(|g| near(*g, *v)));
    same.then_some(())
        .ok_or(format!("got {got:?}, want {expected:?}"))
}

/// One series per cluster, `check(cluster, value)` true for each.
fn per_cluster(
    got: &[Series],
    clusters: &[&str],
    check: impl Fn(&str, f64) -> bool,
) -> Result<(), String> {
    let got = keyed(got, &["cluster"]);
    let names: BTreeSet<Vec<String>> = clusters.iter().map(|c| vec![(*c).to_owned()]).collect();
    let ok = got.keys().cloned().collect::<BTreeSet<_>>() == names
        && got.iter().all(|(k, v)| check(&k[0], *v));
    ok.then_some(())
        .ok_or(format!("got {got:?} for {clusters:?}"))
}

fn empty(got: &[Series]) -> Result<(), String> {
    got.is_empty()
        .then_some(())
        .ok_or(format!("expected no series, got {got:?}"))
}

/// One series per global-mode instance, `check(value)` true for each.
fn per_global_instance(
    t: &Truth,
    got: &[Series],
    check: impl Fn(f64) -> bool,
) -> Result<(), String> {
    let got = keyed(got, &["instance"]);
    let names: BTreeSet<Vec<String>> = t.global_instances.iter().map(|i| vec![i.clone()]).collect();
    let ok =
        got.keys().cloned().collect::<BTreeSet<_>>() == names && got.values().all(|v| check(*v));
    ok.then_some(()).ok_or(format!("got {got:?}"))
}

fn single(got: &[Series], check: impl Fn(f64) -> bool) -> Result<(), String> {
    (got.len() == 1 && check(got[0].value))
        .then_some(())
        .ok_or(format!("got {got:?}"))
}

/// The expectation for `name` (a recording rule's record, an alert's name, or a dashboard
/// query) in the state `t`. `None`: this test does not know the query (a failure).
fn expect(name: &str, t: &Truth, got: &[Series]) -> Option<Result<(), String>> {
    let above = t.phase != Phase::Below;
    let down = t.phase == Phase::RedisDown;
    let both = [GLOBAL, LOCAL];
    let live = |c: &str, h: &str| t.live[c][h];
    Some(match name {
        // ---- fleet per pod
        "cluster_host:wscap_active_connections:sum" => per_pod(t, got, live),
        "cluster_host:wscap_connection_limit:fleet" => {
            per_pod(t, got, |c, _| Truth::capacity_per_pod(c))
        }
        "cluster_host:wscap_utilisation:ratio" => {
            per_pod(t, got, |c, h| live(c, h) / Truth::capacity_per_pod(c))
        }
        "cluster:wscap_utilisation:ratio" => per_cluster(got, &both, |c, v| {
            near(v, t.cluster_live(c) / t.capacity(c))
        }),
        "cluster:wscap_active_connections:sum" => {
            per_cluster(got, &both, |c, v| near(v, t.cluster_live(c)))
        }
        "cluster:wscap_connection_limit:fleet" => {
            per_cluster(got, &both, |c, v| near(v, t.capacity(c)))
        }
        // ---- admissions and refusals
        "cluster_host:wscap_admitted:rate1m" => {
            // Envoy creates a host's counter at its first admission, so the first increment of
            // each series is invisible to rate(): require a series per pod that admitted, and
            // admissions per cluster.
            let k = keyed(got, &["cluster", "host"]);
            let hosts_ok = t
                .hosts()
                .iter()
                .all(|(c, h)| live(c, h) == 0.0 || k.contains_key(&vec![c.clone(), h.clone()]));
            let sums_ok = both.iter().all(|c| {
                k.iter()
                    .filter(|(key, _)| key[0] == *c)
                    .map(|(_, v)| v)
                    .sum::<f64>()
                    > 0.0
            });
            (hosts_ok && sums_ok && k.values().all(|v| *v >= 0.0))
                .then_some(())
                .ok_or(format!("got {k:?}"))
        }
        "cluster:wscap_admitted:rate1m" => per_cluster(got, &both, |_, v| v > 0.0),
        "WscapRefusals" if !above => empty(got),
        "cluster_reason:wscap_rejected:rate1m" | "WscapRefusals" => {
            // The series exist at 0 from the start (the bootstrap extension creates them), so
            // the first refusal counts too; only no_capacity refusals happen here.
            let k = keyed(got, &["cluster", "reason"]);
            let alerting = name == "WscapRefusals";
            let want: BTreeMap<Vec<String>, bool> = both
                .iter()
                .flat_map(|c| {
                    [("no_capacity", above), ("no_hosts", false)]
                        .into_iter()
                        .filter(|(_, positive)| !alerting || *positive)
                        .map(|(r, positive)| (vec![(*c).to_owned(), r.to_owned()], positive))
                })
                .collect();
            let ok = k.keys().cloned().collect::<BTreeSet<_>>()
                == want.keys().cloned().collect::<BTreeSet<_>>()
                && want
                    .iter()
                    .all(|(key, positive)| (k[key] > 0.0) == *positive && k[key] >= 0.0);
            ok.then_some(()).ok_or(format!("got {k:?}"))
        }
        "cluster:wscap_rejected:rate1m" if !above => per_cluster(got, &both, |_, v| v == 0.0),
        "cluster:wscap_rejected:rate1m" => per_cluster(got, &both, |_, v| v > 0.0),
        "cluster:wscap_refused:ratio_rate1m" if !above => per_cluster(got, &both, |_, v| v == 0.0),
        "cluster:wscap_refused:ratio_rate1m" => per_cluster(got, &both, |_, v| v > 0.0 && v < 1.0),
        // ---- the autoscaling signal (also the KEDA / adapter queries, on cluster pods)
        "cluster:wscap_scaling_signal:ratio" if !above => per_cluster(got, &both, |c, v| {
            near(v, t.cluster_live(c) / t.capacity(c)) && v < 0.8
        }),
        "cluster:wscap_scaling_signal:ratio" => per_cluster(got, &both, |_, v| v > 1.0 && v < 2.0),
        "autoscaling" if !above => single(got, |v| v < 0.8),
        "autoscaling" => single(got, |v| v > 1.0),
        // ---- per instance
        "per_instance_live" => {
            let k = keyed(got, &["instance", "host"]);
            let mut sums: BTreeMap<String, f64> = BTreeMap::new();
            for (key, v) in &k {
                *sums.entry(key[0].clone()).or_default() += v;
            }
            let want: BTreeMap<String, f64> = t
                .per_instance
                .iter()
                .map(|(i, (_, n))| (i.clone(), *n))
                .collect();
            (sums == want).then_some(()).ok_or(format!(
                "per instance {sums:?}, want {want:?} (series {k:?})"
            ))
        }
        "cluster_host:wscap_count_drift:envoy_minus_wscap" => {
            // One series per Envoy and pod of its cluster, each 0: Envoy's own upstream count
            // agrees with wscap's (these clusters carry WebSockets only).
            let k = keyed(got, &["instance", "cluster", "host"]);
            let want: BTreeSet<Vec<String>> = t
                .per_instance
                .iter()
                .flat_map(|(i, (c, _))| {
                    t.live[c]
                        .keys()
                        .map(move |h| vec![i.clone(), (*c).to_owned(), h.clone()])
                })
                .collect();
            (k.keys().cloned().collect::<BTreeSet<_>>() == want && k.values().all(|v| *v == 0.0))
                .then_some(())
                .ok_or(format!("got {k:?}"))
        }
        "WscapCountDrift" => empty(got),
        // ---- alerts on capacity
        "WscapPodAtLimit" if !above => empty(got),
        "WscapPodAtLimit" => per_pod(t, got, |_, _| 1.0),
        "WscapClusterNearCapacity" if !above => empty(got),
        "WscapClusterNearCapacity" => per_cluster(got, &both, |_, v| near(v, 1.0)),
        // ---- global mode
        "global_share" => {
            // Per instance and pod: a share at least what that instance holds open is not
            // known per pod here, so: one series per global instance and pod, summing per pod to
            // at least the pod's live count and at most its limit.
            let k = keyed(got, &["instance", "cluster", "host"]);
            let mut sums: BTreeMap<String, f64> = BTreeMap::new();
            for (key, v) in &k {
                *sums.entry(key[2].clone()).or_default() += v;
            }
            let ok = k.len() == GLOBAL_ENVOYS * GLOBAL_PODS
                && k.keys()
                    .all(|key| key[1] == GLOBAL && t.global_instances.contains(&key[0]))
                && t.live[GLOBAL].iter().all(|(h, n)| {
                    sums.get(h)
                        .is_some_and(|s| *s >= *n && *s <= f64::from(GLOBAL_LIMIT))
                });
            ok.then_some(()).ok_or(format!("got {k:?}"))
        }
        "cluster_host:wscap_global_share:sum" => {
            let k = keyed(got, &["cluster", "host"]);
            let ok = k.len() == GLOBAL_PODS
                && t.live[GLOBAL].iter().all(|(h, n)| {
                    k.get(&vec![GLOBAL.to_owned(), h.clone()])
                        .is_some_and(|s| *s >= *n && *s <= f64::from(GLOBAL_LIMIT))
                });
            ok.then_some(()).ok_or(format!("got {k:?}"))
        }
        "cluster_host:wscap_global_fleet_active_connections:max" => {
            let k = keyed(got, &["cluster", "host"]);
            let want: BTreeMap<Vec<String>, f64> = t.live[GLOBAL]
                .iter()
                .map(|(h, n)| (vec![GLOBAL.to_owned(), h.clone()], *n))
                .collect();
            (k == want)
                .then_some(())
                .ok_or(format!("got {k:?}, want {want:?}"))
        }
        "cluster_outcome:wscap_global_borrows:rate5m" => {
            // headroom 0: every admission borrows (granted); once full, borrows find no room.
            let k = keyed(got, &["cluster", "outcome"]);
            let g = |o: &str| k.get(&vec![GLOBAL.to_owned(), o.to_owned()]).copied();
            let ok = g("granted").is_some_and(|v| v > 0.0)
                && (!above || g("full").is_some_and(|v| v > 0.0))
                && k.keys().all(|key| key[0] == GLOBAL);
            ok.then_some(()).ok_or(format!("got {k:?}"))
        }
        "cluster:wscap_global_borrow_latency_us:p99_5m" | "borrow_p50" => {
            per_cluster(got, &[GLOBAL], |_, v| v.is_finite() && v > 0.0)
        }
        "wscap:global_instances:count" => single(got, |v| near(v, GLOBAL_ENVOYS as f64)),
        "fail_mode_active" => per_global_instance(t, got, |v| v == f64::from(u8::from(down))),
        "wscap:global_fail_mode_active:count" => single(got, |v| {
            near(v, if down { GLOBAL_ENVOYS as f64 } else { 0.0 })
        }),
        "WscapGlobalFailMode" if !down => empty(got),
        "WscapGlobalFailMode" => per_global_instance(t, got, |v| v == 1.0),
        "instance:wscap_global_lease_age:ratio" if !down => {
            per_global_instance(t, got, |v| (0.0..0.5).contains(&v))
        }
        "instance:wscap_global_lease_age:ratio" => per_global_instance(t, got, |v| v > 0.5),
        "WscapGlobalLeaseStale" if !down => empty(got),
        "WscapGlobalLeaseStale" => per_global_instance(t, got, |v| v > 0.5),
        "wscap:global_claim_errors:rate5m" if !down => single(got, |v| v == 0.0),
        "wscap:global_claim_errors:rate5m" => single(got, |v| v > 0.0),
        "WscapGlobalClaimErrors" if !down => empty(got),
        "WscapGlobalClaimErrors" => per_global_instance(t, got, |v| v > 0.0),
        _ => return None,
    })
}

/// Dashboard queries (after substitution) → the name [`expect`] knows them by.
fn dashboard_name(expr: &str) -> String {
    let known = [
        (
            "envoy_dynamicmodulescustom_wscap_global_share{",
            "global_share",
        ),
        (
            "envoy_dynamicmodulescustom_wscap_global_fail_mode_active",
            "fail_mode_active",
        ),
        ("sum by (instance, host) (", "per_instance_live"),
        ("histogram_quantile(0.5,", "borrow_p50"),
    ];
    for (prefix, name) in known {
        if expr.starts_with(prefix) {
            return name.to_owned();
        }
    }
    // A recording rule with a selector: its record name.
    expr.split('{').next().unwrap_or(expr).to_owned()
}

/// Every query to check: (name for [`expect`], PromQL).
async fn queries(prom: &Prometheus) -> Vec<(String, String)> {
    let mut out = Vec::new();
    // The dashboard, with its template variables as Grafana substitutes them.
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(workspace_root().join("examples/grafana/wscap.json"))
            .expect("read examples/grafana/wscap.json"),
    )
    .expect("the dashboard is JSON");
    let vars = dash["templating"]["list"].as_array().expect("templating");
    let ds = vars
        .iter()
        .find(|v| v["name"] == "datasource")
        .expect("a datasource variable");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    let cluster = vars
        .iter()
        .find(|v| v["name"] == "cluster")
        .expect("a cluster variable");
    let def = cluster["query"]["query"]
        .as_str()
        .expect("cluster variable query");
    let inner = def
        .strip_prefix("label_values(")
        .and_then(|s| s.strip_suffix(", cluster)"))
        .unwrap_or_else(|| panic!("cluster variable: {def}"));
    let values = prom
        .label_values("cluster", inner)
        .await
        .expect("label values");
    assert_eq!(
        values,
        vec![GLOBAL, LOCAL],
        "the cluster variable lists both clusters"
    );
    // "All" of a multi-value variable: a regex alternation of its values.
    let all = format!("({})", values.join("|"));
    let mut n = 0;
    for p in dash["panels"].as_array().expect("panels") {
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "panel {} uses the datasource variable",
            p["title"]
        );
        for t in p["targets"].as_array().expect("targets") {
            assert_eq!(t["datasource"]["uid"], "${datasource}");
            let expr = t["expr"]
                .as_str()
                .expect("expr")
                .replace("$cluster", &all)
                .replace("$__rate_interval", "1m");
            assert!(!expr.contains('$'), "unsubstituted variable in {expr}");
            out.push((dashboard_name(&expr), expr));
            n += 1;
        }
    }
    assert!(n >= 15, "the dashboard has {n} queries");
    // Every rule Prometheus loaded (recording rules by record, alerts by name).
    let rules = prom.api("/api/v1/rules").await.expect("rules");
    let mut records = 0;
    let mut alerts = 0;
    for g in rules["groups"].as_array().expect("groups") {
        for r in g["rules"].as_array().expect("rules") {
            assert_eq!(r["health"], "ok", "rule {r}");
            let name = r["name"].as_str().expect("rule name").to_owned();
            let q = r["query"].as_str().expect("rule query").to_owned();
            if r["type"] == "alerting" {
                alerts += 1;
            } else {
                records += 1;
            }
            out.push((name, q));
        }
    }
    assert_eq!((records, alerts), (21, 7), "rules loaded by Prometheus");
    // The autoscaling examples' queries.
    let keda = std::fs::read_to_string(
        workspace_root().join("examples/autoscaling/keda-scaledobject.yaml"),
    )
    .expect("read the KEDA example");
    let q = yaml_value(&keda, "query:");
    out.push(("autoscaling".to_owned(), q));
    let adapter = std::fs::read_to_string(
        workspace_root().join("examples/autoscaling/prometheus-adapter-rules.yaml"),
    )
    .expect("read the adapter example");
    let series = yaml_value(&adapter, "- seriesQuery:")
        .trim_matches('\'')
        .to_owned();
    let q = yaml_value(&adapter, "metricsQuery:")
        .replace("<<.Series>>", &series)
        .replace("<<.LabelMatchers>>", &format!("cluster=\"{LOCAL}\""));
    out.push(("autoscaling".to_owned(), q));
    out
}

/// The value after `key` on the first line that starts (after indentation) with it.
fn yaml_value(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| l.trim_start().strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in\n{text}"))
        .trim()
        .to_owned()
}

/// Runs every query until all meet their expectation (Prometheus converges within a few
/// scrapes), or panics with what was still wrong.
async fn check_all(prom: &Prometheus, t: &Truth) {
    let qs = queries(prom).await;
    eventually(
        &format!("every query in phase {:?}", t.phase),
        CONVERGE,
        || async {
            let mut wrong = Vec::new();
            for (name, q) in &qs {
                let got = prom.query(q).await?;
                match expect(name, t, &got) {
                    Some(Ok(())) => {}
                    Some(Err(e)) => wrong.push(format!("{name}: {q}\n    {e}")),
                    None => panic!("no expectation for query {name:?}: {q}"),
                }
            }
            wrong.is_empty().then_some(()).ok_or(format!(
                "{} of {} wrong:\n  {}",
                wrong.len(),
                qs.len(),
                wrong.join("\n  ")
            ))
        },
    )
    .await;
    eprintln!("phase {:?}: all {} queries as expected", t.phase, qs.len());
}

/// Envoy on cluster `cluster` of `pods`, with per-endpoint stats and a 1 s stats flush.
async fn start_envoy(cluster: &str, pods: &[Backend], limit: u32, extension: &str) -> Envoy {
    let eps: Vec<Endpoint> = pods.iter().map(|b| Endpoint::new(b.addr)).collect();
    let l = ListenerSpec::new(
        LISTENER,
        cluster,
        vec![config::wscap_filter(&config::filter_config(
            cluster,
            limit,
            RETRY_AFTER,
        ))],
    );
    let mut c = config::static_cluster(cluster, &eps, true);
    c["track_cluster_stats"] = json!({"per_endpoint_stats": true});
    let mut boot = config::bootstrap(std::slice::from_ref(&l), vec![c], true);
    boot["stats_flush_interval"] = json!("1s");
    boot["bootstrap_extensions"][0]["typed_config"]["extension_config"]["value"] = extension.into();
    Envoy::start(&boot, &Opts::with_module(1)).await
}

async fn open(port: u16, n: usize, what: &str) -> Vec<WsClient> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(
            connect(port, "/ws")
                .await
                .expect_open(&format!("{what} #{i}")),
        );
    }
    v
}

/// Opens connections through `port` until one is refused; returns the open ones.
async fn fill(port: u16, max: usize) -> Vec<WsClient> {
    let mut v = Vec::new();
    for _ in 0..max {
        match connect(port, "/ws").await {
            Outcome::Open(c) => v.push(c),
            Outcome::Refused(r) => {
                assert_wscap_refusal(&r, "no_capacity");
                return v;
            }
            Outcome::Failed(e) => panic!("connection failed: {e}"),
        }
    }
    panic!("{max} connections admitted through port {port} and none refused");
}

async fn refuse(port: u16, n: usize) {
    for _ in 0..n {
        let r = connect(port, "/ws").await.expect_refused("a full cluster");
        assert_wscap_refusal(&r, "no_capacity");
    }
}

struct World {
    local_pods: Vec<Backend>,
    global_pods: Vec<Backend>,
    local: Vec<(Envoy, u16)>,
    global: Vec<(Envoy, u16)>,
}

impl World {
    fn truth(&self, phase: Phase, held: &BTreeMap<String, usize>) -> Truth {
        let pods = |v: &[Backend]| -> BTreeMap<String, f64> {
            v.iter().map(|b| (b.host(), b.active() as f64)).collect()
        };
        let mut per_instance = BTreeMap::new();
        for (e, _) in &self.local {
            let a = e.admin.to_string();
            per_instance.insert(
                a.clone(),
                (LOCAL, held.get(&a).copied().unwrap_or(0) as f64),
            );
        }
        for (e, _) in &self.global {
            let a = e.admin.to_string();
            per_instance.insert(
                a.clone(),
                (GLOBAL, held.get(&a).copied().unwrap_or(0) as f64),
            );
        }
        Truth {
            phase,
            live: BTreeMap::from([
                (LOCAL, pods(&self.local_pods)),
                (GLOBAL, pods(&self.global_pods)),
            ]),
            per_instance,
            global_instances: self
                .global
                .iter()
                .map(|(e, _)| e.admin.to_string())
                .collect(),
        }
    }

    fn admins(&self) -> Vec<SocketAddr> {
        self.local
            .iter()
            .chain(self.global.iter())
            .map(|(e, _)| e.admin)
            .collect()
    }
}

/// Waits until the pods hold `n` connections in all (they count themselves).
async fn pods_hold(pods: &[Backend], n: usize, what: &str) {
    eventually(what, CONVERGE, || async {
        let got: usize = pods.iter().map(Backend::active).sum();
        (got == n).then_some(()).ok_or(format!("pods hold {got}"))
    })
    .await;
}

/// Waits until Prometheus's fleet view of each pod equals what the pods counted.
async fn prometheus_sees(prom: &Prometheus, t: &Truth) {
    eventually("prometheus sees what the pods count", CONVERGE, || async {
        let got = prom
            .query("cluster_host:wscap_active_connections:sum")
            .await?;
        per_pod(t, &got, |c, h| t.live[c][h])
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_runs_every_dashboard_query_rule_and_autoscaling_query() {
    let redis = RedisServer::start();
    let mut local_pods = Vec::new();
    for i in 0..LOCAL_PODS {
        local_pods.push(Backend::start(&format!("pod-{i}")).await);
    }
    let mut global_pods = Vec::new();
    for i in 0..GLOBAL_PODS {
        global_pods.push(Backend::start(&format!("chat-{i}")).await);
    }
    let mut local = Vec::new();
    for _ in 0..LOCAL_ENVOYS {
        let e = start_envoy(
            LOCAL,
            &local_pods,
            LOCAL_LIMIT,
            r#"{"stats_interval_ms":100}"#,
        )
        .await;
        let port = e.listener_port(LISTENER).await;
        local.push((e, port));
    }
    let mut global = Vec::new();
    for i in 0..GLOBAL_ENVOYS {
        let ext = json!({
            "stats_interval_ms": 100,
            "redis_url": redis.url(),
            "instance_id": format!("observe-{i}"),
            "lease_ttl_ms": TTL_MS,
            "refresh_ms": REFRESH_MS,
            "restart_grace_ms": GRACE_MS,
            "fail_mode": "keep_share",
            "headroom": 0,
        })
        .to_string();
        let e = start_envoy(GLOBAL, &global_pods, GLOBAL_LIMIT, &ext).await;
        let port = e.listener_port(LISTENER).await;
        global.push((e, port));
    }
    let mut world = World {
        local_pods,
        global_pods,
        local,
        global,
    };
    // Global mode: every instance registered with every pod, then the restart grace.
    for (e, _) in &world.global {
        eventually("global instances registered", CONVERGE, || async {
            let r = e.admin_get("/wscap?scope=global").await;
            let v: Value = serde_json::from_slice(&r.body).map_err(|e| e.to_string())?;
            let ok = v["redis_ok"] == true
                && v["pods"].as_array().is_some_and(|p| {
                    p.len() == GLOBAL_PODS
                        && p.iter()
                            .all(|p| p["instances"].as_array().map_or(0, Vec::len) == GLOBAL_ENVOYS)
                });
            ok.then_some(()).ok_or(format!("{v}"))
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(GRACE_MS + 2 * REFRESH_MS)).await;

    let rules = workspace_root().join("examples/prometheus/wscap-rules.yml");
    let alerts = workspace_root().join("examples/prometheus/wscap-alerts.yml");
    let prom = Prometheus::start(&world.admins(), &[&rules, &alerts]).await;

    // ---- below saturation, in two waves with a scrape between
    let mut held: BTreeMap<String, usize> = BTreeMap::new();
    let mut open_local: Vec<WsClient> = Vec::new();
    let mut open_global: Vec<WsClient> = Vec::new();
    let local_plan = [3usize, 2, 1];
    let global_plan = [2usize, 1];
    for wave in 0..2 {
        for (i, (e, port)) in world.local.iter().enumerate() {
            let n = if wave == 0 { 1 } else { local_plan[i] - 1 };
            open_local.extend(open(*port, n, "local below saturation").await);
            *held.entry(e.admin.to_string()).or_default() += n;
        }
        for (i, (e, port)) in world.global.iter().enumerate() {
            let n = if wave == 0 { 1 } else { global_plan[i] - 1 };
            open_global.extend(open(*port, n, "global below saturation").await);
            *held.entry(e.admin.to_string()).or_default() += n;
        }
        pods_hold(
            &world.local_pods,
            open_local.len(),
            "local pods hold the wave",
        )
        .await;
        pods_hold(
            &world.global_pods,
            open_global.len(),
            "chat pods hold the wave",
        )
        .await;
        prometheus_sees(&prom, &world.truth(Phase::Below, &held)).await;
    }
    check_all(&prom, &world.truth(Phase::Below, &held)).await;

    // ---- above saturation: every pod full on every Envoy, refusals in two bursts
    for (e, port) in &world.local {
        let more = fill(*port, 10).await;
        *held.entry(e.admin.to_string()).or_default() += more.len();
        open_local.extend(more);
    }
    let fleet_local = (LOCAL_LIMIT as usize) * LOCAL_PODS * LOCAL_ENVOYS;
    assert_eq!(
        open_local.len(),
        fleet_local,
        "local fleet admitted its capacity"
    );
    // Global mode: fill through each instance in turn until the fleet is full (a share may
    // move between instances on a refresh, so go round until nothing more is admitted).
    let fleet_global = (GLOBAL_LIMIT as usize) * GLOBAL_PODS;
    for _ in 0..5 {
        for (e, port) in &world.global {
            let more = fill(*port, 10).await;
            *held.entry(e.admin.to_string()).or_default() += more.len();
            open_global.extend(more);
        }
        if open_global.len() >= fleet_global {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2 * REFRESH_MS)).await;
    }
    assert_eq!(
        open_global.len(),
        fleet_global,
        "global fleet admitted exactly its limit"
    );
    pods_hold(&world.local_pods, fleet_local, "local pods full").await;
    pods_hold(&world.global_pods, fleet_global, "chat pods full").await;
    for (_, port) in world.local.iter().chain(world.global.iter()) {
        refuse(*port, 1).await;
    }
    let t = world.truth(Phase::Above, &held);
    eventually("prometheus saw the first refusals", CONVERGE, || async {
        let got = prom
            .query("count(envoy_dynamicmodulescustom_wscap_rejected{reason=\"no_capacity\"} > 0)")
            .await?;
        single(&got, |v| near(v, (LOCAL_ENVOYS + GLOBAL_ENVOYS) as f64))
    })
    .await;
    for (_, port) in world.local.iter().chain(world.global.iter()) {
        refuse(*port, 2).await;
    }
    prometheus_sees(&prom, &t).await;
    check_all(&prom, &t).await;
    // Every answered borrow is one sample of the latency histogram (both cumulative).
    eventually("one latency sample per borrow", CONVERGE, || async {
        let borrows = prom
            .query("sum(envoy_dynamicmodulescustom_wscap_global_borrows)")
            .await?;
        let samples = prom
            .query("sum(envoy_dynamicmodulescustom_wscap_global_borrow_latency_us_count)")
            .await?;
        match (borrows.first(), samples.first()) {
            (Some(b), Some(s)) if b.value > 0.0 && near(b.value, s.value) => Ok(()),
            _ => Err(format!("borrows {borrows:?}, latency samples {samples:?}")),
        }
    })
    .await;
    // The refusal alert has no `for`: it fires.
    eventually("WscapRefusals fires", CONVERGE, || async {
        let a = prom.api("/api/v1/alerts").await?;
        let firing: BTreeSet<(String, String)> = a["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter(|x| x["labels"]["alertname"] == "WscapRefusals" && x["state"] == "firing")
            .map(|x| {
                (
                    x["labels"]["cluster"].as_str().unwrap_or("").to_owned(),
                    x["labels"]["reason"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        let want: BTreeSet<(String, String)> = [GLOBAL, LOCAL]
            .iter()
            .map(|c| ((*c).to_owned(), "no_capacity".to_owned()))
            .collect();
        (firing == want).then_some(()).ok_or(format!("{a}"))
    })
    .await;

    // ---- Redis gone: the global instances' fail mode applies, claims fail, leases age
    let mut redis = redis;
    redis.kill();
    check_all(&prom, &world.truth(Phase::RedisDown, &held)).await;

    for c in open_local.into_iter().chain(open_global) {
        c.close().await;
    }
    world.local.clear();
    world.global.clear();
    drop(prom);
}

/// The counters exist at 0 from when a pod appears (created by the bootstrap extension: the same
/// stats as the HTTP filter's, one series each), so the first admission and the first refusal
/// are counted from 0 to 1 and `rate()` sees them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_exist_at_zero_and_the_filter_counts_into_the_same_series() {
    use wscap_e2e::rig::{Rig, RigSpec, CLUSTER, PROM_ADMITTED, PROM_REJECTED};
    let rig = Rig::start(&RigSpec::new(1, 2, 1)).await;
    let hosts: Vec<String> = rig.backends.iter().map(Backend::host).collect();
    let count_lines = |text: &str, name: &str, label: &str| {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
            .count()
    };
    eventually("counters at 0 before any traffic", CONVERGE, || async {
        let s = rig.envoy.prometheus().await;
        let mut wrong = Vec::new();
        for h in &hosts {
            let v =
                wscap_e2e::metrics::value(&s, PROM_ADMITTED, &[("cluster", CLUSTER), ("host", h)]);
            if v != Some(0.0) {
                wrong.push(format!("admitted {h}: {v:?}"));
            }
        }
        for r in ["no_capacity", "no_hosts"] {
            let v = wscap_e2e::metrics::value(
                &s,
                PROM_REJECTED,
                &[("cluster", CLUSTER), ("reason", r)],
            );
            if v != Some(0.0) {
                wrong.push(format!("rejected {r}: {v:?}"));
            }
        }
        wrong.is_empty().then_some(()).ok_or(wrong.join("; "))
    })
    .await;
    let a = rig.connect().await.expect_open("first");
    let b = rig.connect().await.expect_open("second");
    let r = rig.connect().await.expect_refused("both pods full");
    assert_wscap_refusal(&r, "no_capacity");
    let text = rig.envoy.admin_get("/stats/prometheus").await.text();
    let s = rig.envoy.prometheus().await;
    for h in &hosts {
        assert_eq!(
            wscap_e2e::metrics::value(&s, PROM_ADMITTED, &[("cluster", CLUSTER), ("host", h)]),
            Some(1.0),
            "one admission per pod"
        );
        assert_eq!(
            count_lines(&text, PROM_ADMITTED, &format!("host=\"{h}\"")),
            1,
            "one series per pod:\n{text}"
        );
    }
    assert_eq!(
        wscap_e2e::metrics::value(
            &s,
            PROM_REJECTED,
            &[("cluster", CLUSTER), ("reason", "no_capacity")]
        ),
        Some(1.0)
    );
    assert_eq!(
        count_lines(&text, PROM_REJECTED, "reason=\"no_capacity\""),
        1,
        "{text}"
    );
    a.close().await;
    b.close().await;
}
