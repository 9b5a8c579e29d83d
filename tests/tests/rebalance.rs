//! Closing chosen WebSockets (issue 15), on the real Envoy binary with real clients that
//! reconnect when closed and pods that count themselves:
//! - rebalance after a scale-out: two full pods, a third added through EDS; counts converge to
//!   within the tolerance, at most R closes per second (as the clients saw them), no pod above
//!   its limit, no client closed twice;
//! - drain of one pod over S seconds (`POST /wscap/drain`): closes spread over the window, no new
//!   admission to the pod, every client lands on another pod; `/wscap` shows the progress;
//! - a pod removed through EDS with `drain_removed_seconds`: its connections are closed by wscap;
//! - off by default: with no setting, wscap never closes a connection (over a churn run).
//!
//! `WSCAP_PLOT_DIR=dir` makes the rebalance test write the per-pod counts over time as CSV there
//! (`rebalance.csv`; `cargo run -p wscap-bench -- --plot-rebalance DIR/rebalance.csv
//! docs/plots/rebalance.png` draws the PNG).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use wscap_e2e::backend::Backend;
use wscap_e2e::client::{connect, Outcome};
use wscap_e2e::config::{self, Endpoint, ListenerSpec};
use wscap_e2e::envoy::{Envoy, Opts};
use wscap_e2e::reconnect::Fleet;
use wscap_e2e::rig::{CLUSTER, LISTENER};
use wscap_e2e::{eventually, http, metrics, write_atomic, SETTLE};

const PROM_CLOSED: &str = "envoy_dynamicmodulescustom_wscap_closed";
const PROM_DRAINS: &str = "envoy_dynamicmodulescustom_wscap_drains_in_progress";

struct Rig {
    envoy: Envoy,
    eds: PathBuf,
    version: u64,
    port: u16,
}

impl Rig {
    async fn start(tag: &str, filter: serde_json::Value, eps: &[Endpoint]) -> Rig {
        let dir = wscap_e2e::scratch_dir(tag);
        let eds_dir = dir.join("eds");
        std::fs::create_dir_all(&eds_dir).unwrap();
        let eds = eds_dir.join("pods.json");
        write_atomic(&eds, &config::eds_file_contents(CLUSTER, eps, 1));
        let l = ListenerSpec::new(
            LISTENER,
            CLUSTER,
            vec![config::wscap_filter(&filter.to_string())],
        );
        let boot = config::bootstrap(
            std::slice::from_ref(&l),
            vec![config::eds_cluster(CLUSTER, &eds, true)],
            true,
        );
        let envoy = Envoy::try_start_in(&dir, &boot, &Opts::with_module(wscap_e2e::concurrency()))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let port = envoy.listener_port(LISTENER).await;
        Rig {
            envoy,
            eds,
            version: 1,
            port,
        }
    }

    fn publish(&mut self, eps: &[Endpoint]) {
        self.version += 1;
        write_atomic(
            &self.eds,
            &config::eds_file_contents(CLUSTER, eps, self.version),
        );
    }

    async fn wait_members(&self, n: usize) {
        eventually("membership", SETTLE, || async {
            let hosts = metrics::hosts(&self.envoy.wscap().await, CLUSTER);
            let active = hosts.iter().filter(|h| h.state == "active").count();
            (active == n)
                .then_some(())
                .ok_or(format!("{active} active hosts, want {n}"))
        })
        .await;
    }

    async fn closed(&self, reason: &str) -> f64 {
        metrics::value(
            &self.envoy.prometheus().await,
            PROM_CLOSED,
            &[("cluster", CLUSTER), ("reason", reason)],
        )
        .unwrap_or(0.0)
    }

    async fn post(&self, path: &str) -> http::Response {
        http::request(self.envoy.admin, "POST", path, &[])
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }
}

async fn wait_counts(what: &str, pods: &[&Backend], want: &[usize], deadline: Duration) {
    eventually(what, deadline, || async {
        let got: Vec<usize> = pods.iter().map(|b| b.active()).collect();
        (got == want)
            .then_some(())
            .ok_or(format!("pods count {got:?}, want {want:?}"))
    })
    .await;
}

/// `(seconds since sampling began, live count per pod)`.
type Sample = (f64, [usize; 3]);

const LIMIT: u32 = 10;
const RATE: u32 = 3;
const TOLERANCE: f64 = 0.2;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebalance_after_scale_out_converges_within_rate_and_limits() {
    let a = Arc::new(Backend::start("pod-a").await);
    let b = Arc::new(Backend::start("pod-b").await);
    let c = Arc::new(Backend::start("pod-c").await);
    let filter = json!({
        "cluster": CLUSTER,
        "max_connections_per_host": LIMIT,
        "rebalance": {"max_closes_per_second": RATE, "tolerance": TOLERANCE},
    });
    let mut rig = Rig::start(
        "rebalance",
        filter,
        &[Endpoint::new(a.addr), Endpoint::new(b.addr)],
    )
    .await;
    rig.wait_members(2).await;
    let start = Instant::now();
    let fleet = Fleet::start(rig.port, 20, start);
    wait_counts("two full pods", &[&*a, &*b, &*c], &[10, 10, 0], SETTLE).await;

    // Per-pod counts over time, for the plot (every 100 ms, as the pods count themselves).
    let sampling = Arc::new(AtomicBool::new(true));
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let t0 = Instant::now();
    let sampler = {
        let (sampling, samples) = (Arc::clone(&sampling), Arc::clone(&samples));
        let pods = [Arc::clone(&a), Arc::clone(&b), Arc::clone(&c)];
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                let n = [pods[0].active(), pods[1].active(), pods[2].active()];
                samples
                    .lock()
                    .unwrap()
                    .push((t0.elapsed().as_secs_f64(), n));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Scale out: pod-c joins.
    let added = fleet.elapsed();
    let added_plot = t0.elapsed().as_secs_f64();
    rig.publish(&[
        Endpoint::new(a.addr),
        Endpoint::new(b.addr),
        Endpoint::new(c.addr),
    ]);
    // Within the tolerance of 20/3 per pod: at most 8 (and so at least 4), 20 in all.
    let bound = (20.0 / 3.0 * (1.0 + TOLERANCE)).floor() as usize;
    eventually("counts converge", Duration::from_secs(30), || async {
        let got = [a.active(), b.active(), c.active()];
        (got.iter().all(|&n| n <= bound) && got.iter().sum::<usize>() == 20)
            .then_some(())
            .ok_or(format!("pods count {got:?}"))
    })
    .await;
    let converged = fleet.elapsed();
    // Stops once balanced: no close in the next 2 s.
    let closes_then = fleet.closes().len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.await;
    let closes = fleet.closes();
    let max_per_second = fleet.max_closes_per_second();
    let seen = fleet.stop().await;
    let closed_metric = rig.closed("rebalance").await;
    rig.envoy.assert_running();

    println!(
        "rebalance: pod-c added at {:.2}s, converged at {:.2}s ({:.2}s later), {} closes, \
         at most {max_per_second} in one second (R = {RATE})",
        added.as_secs_f64(),
        converged.as_secs_f64(),
        (converged - added).as_secs_f64(),
        closes.len()
    );
    assert_eq!(
        closes.len(),
        closes_then,
        "closes went on after the pods were balanced: {closes:?}"
    );
    assert!(!closes.is_empty(), "no connection was closed");
    assert!(
        max_per_second <= RATE as usize,
        "{max_per_second} closes in one second, above R = {RATE}: {closes:?}"
    );
    // Every close came from the full pods, with wscap's close frame (1012, service restart).
    for (t, backend, what) in &closes {
        assert!(
            backend == "pod-a" || backend == "pod-b",
            "closed on {backend} at {t:?}"
        );
        assert!(
            what.contains("Restart"),
            "the client did not get a 1012 close frame: {what}"
        );
    }
    // Never below the mean: at most 3 from each full pod (10 -> 7).
    for pod in ["pod-a", "pod-b"] {
        let n = closes.iter().filter(|c| c.1 == pod).count();
        assert!(n <= 3, "{n} closes on {pod}, more than down to the mean");
    }
    for s in &seen {
        assert!(s.closes.len() <= 1, "a client was closed twice: {s:?}");
    }
    for p in [&*a, &*b, &*c] {
        assert!(
            p.max_seen() <= LIMIT as usize,
            "{} saw {} connections, above its limit {LIMIT}",
            p.host(),
            p.max_seen()
        );
    }
    assert_eq!(
        closed_metric,
        closes.len() as f64,
        "wscap_closed{{reason=rebalance}}"
    );

    if let Some(dir) = std::env::var_os("WSCAP_PLOT_DIR") {
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut csv = format!(
            "# R = {RATE}/s, tolerance {TOLERANCE}, limit {LIMIT}, 20 clients\n#mark,{added_plot:.2},pod-c added (EDS)\nt_seconds,pod_a,pod_b,pod_c\n"
        );
        for (t, n) in samples.lock().unwrap().iter() {
            csv.push_str(&format!("{t:.2},{},{},{}\n", n[0], n[1], n[2]));
        }
        std::fs::write(dir.join("rebalance.csv"), csv).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drain_spreads_the_closes_of_one_pod_over_the_window() {
    let a = Backend::start("pod-a").await;
    let b = Backend::start("pod-b").await;
    let c = Backend::start("pod-c").await;
    let filter = json!({"cluster": CLUSTER, "max_connections_per_host": LIMIT});
    let mut rig = Rig::start("drain", filter, &[Endpoint::new(a.addr)]).await;
    rig.wait_members(1).await;
    let fleet = Fleet::start(rig.port, 10, Instant::now());
    wait_counts("pod-a full", &[&a, &b, &c], &[10, 0, 0], SETTLE).await;
    rig.publish(&[
        Endpoint::new(a.addr),
        Endpoint::new(b.addr),
        Endpoint::new(c.addr),
    ]);
    rig.wait_members(3).await;
    // Off by default: the imbalance alone closes nothing.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(fleet.closes().is_empty(), "closed without any setting");

    // Refused: GET, unknown host, bad seconds.
    let r = rig
        .envoy
        .admin_get(&format!(
            "/wscap/drain?cluster={CLUSTER}&host={}&seconds=5",
            a.host()
        ))
        .await;
    assert_ne!(r.status, 200, "GET drained: {}", r.text());
    let r = rig
        .post(&format!(
            "/wscap/drain?cluster={CLUSTER}&host=10.9.9.9:1&seconds=5"
        ))
        .await;
    assert_eq!(r.status, 404, "{}", r.text());
    let r = rig
        .post(&format!(
            "/wscap/drain?cluster={CLUSTER}&host={}&seconds=-1",
            a.host()
        ))
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(fleet.closes().is_empty());

    let accepted_before = a.accepted();
    let started = fleet.elapsed();
    let r = rig
        .post(&format!(
            "/wscap/drain?cluster={CLUSTER}&host={}&seconds=5",
            a.host()
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // /wscap shows the drain in progress.
    let doc = rig.envoy.wscap().await;
    let drains = doc["drains"].as_array().cloned().unwrap_or_default();
    assert!(
        drains
            .iter()
            .any(|d| d["host"] == a.host().as_str() && d["seconds"] == 5 && d["total"] == 10),
        "/wscap drains: {drains:?}"
    );
    eventually("drain gauge", SETTLE, || async {
        let v = metrics::value(&rig.envoy.prometheus().await, PROM_DRAINS, &[]);
        (v == Some(1.0))
            .then_some(())
            .ok_or(format!("{PROM_DRAINS} = {v:?}"))
    })
    .await;

    wait_counts("pod-a drained", &[&a], &[0], Duration::from_secs(20)).await;
    eventually("clients back", SETTLE, || async {
        let n = b.active() + c.active();
        (n == 10)
            .then_some(())
            .ok_or(format!("{n} on pod-b and pod-c"))
    })
    .await;
    let ended = fleet.elapsed();
    let closes = fleet.closes();
    let seen = fleet.stop().await;

    println!(
        "drain: 10 connections over 5 s: closes at {:?}",
        closes
            .iter()
            .map(|c| format!("{:.2}", (c.0 - started).as_secs_f64()))
            .collect::<Vec<_>>()
    );
    assert_eq!(closes.len(), 10, "{closes:?}");
    assert!(closes
        .iter()
        .all(|c| c.1 == "pod-a" && c.2.contains("Restart")));
    // Spread: no second (from the drain's start) has more than ceil(10/5) + 1.
    let mut per: HashMap<u64, usize> = HashMap::new();
    for (t, _, _) in &closes {
        *per.entry((*t - started).as_secs()).or_default() += 1;
    }
    let worst = per.values().copied().max().unwrap_or(0);
    assert!(worst <= 3, "{worst} closes in one second: {per:?}");
    assert!(
        (closes.last().unwrap().0 - started) >= Duration::from_secs(3),
        "all closed at once, not spread over 5 s: {closes:?} (drain started {started:?}, ended {ended:?})"
    );
    assert_eq!(
        a.accepted(),
        accepted_before,
        "pod-a admitted while draining"
    );
    for s in &seen {
        let last = s.opens.last().expect("opened");
        assert_ne!(last.1, "pod-a", "a client ended on the drained pod: {s:?}");
    }
    eventually("drain over", SETTLE, || async {
        let v = metrics::value(&rig.envoy.prometheus().await, PROM_DRAINS, &[]);
        (v == Some(0.0))
            .then_some(())
            .ok_or(format!("{PROM_DRAINS} = {v:?}"))
    })
    .await;
    assert_eq!(rig.closed("drain").await, 10.0);
    assert_eq!(rig.closed("rebalance").await, 0.0);
    rig.envoy.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_removed_pod_is_drained_when_configured() {
    let a = Backend::start("pod-a").await;
    let b = Backend::start("pod-b").await;
    let filter = json!({
        "cluster": CLUSTER,
        "max_connections_per_host": LIMIT,
        "drain_removed_seconds": 2,
    });
    let mut rig = Rig::start("drain-removed", filter, &[Endpoint::new(a.addr)]).await;
    rig.wait_members(1).await;
    let fleet = Fleet::start(rig.port, 6, Instant::now());
    wait_counts("pod-a holds 6", &[&a, &b], &[6, 0], SETTLE).await;
    // pod-a leaves, pod-b joins: pod-a's connections are closed by wscap and land on pod-b.
    rig.publish(&[Endpoint::new(b.addr)]);
    wait_counts(
        "moved to pod-b",
        &[&a, &b],
        &[0, 6],
        Duration::from_secs(20),
    )
    .await;
    let closes = fleet.closes();
    fleet.stop().await;
    assert_eq!(closes.len(), 6, "{closes:?}");
    assert!(closes
        .iter()
        .all(|c| c.1 == "pod-a" && c.2.contains("Restart")));
    assert_eq!(rig.closed("drain").await, 6.0);
    rig.envoy.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn off_by_default_wscap_closes_nothing_over_a_churn_run() {
    let a = Backend::start("pod-a").await;
    let b = Backend::start("pod-b").await;
    let c = Backend::start("pod-c").await;
    let filter = json!({"cluster": CLUSTER, "max_connections_per_host": 5});
    let mut rig = Rig::start(
        "rebalance-off",
        filter,
        &[Endpoint::new(a.addr), Endpoint::new(b.addr)],
    )
    .await;
    rig.wait_members(2).await;
    let fleet = Fleet::start(rig.port, 10, Instant::now());
    wait_counts("two full pods", &[&a, &b], &[5, 5], SETTLE).await;
    rig.publish(&[
        Endpoint::new(a.addr),
        Endpoint::new(b.addr),
        Endpoint::new(c.addr),
    ]);
    rig.wait_members(3).await;
    // Churn: clients that open and close themselves for 3 s, while the held ones stay.
    let until = Instant::now() + Duration::from_secs(3);
    let mut opened = 0;
    while Instant::now() < until {
        if let Outcome::Open(cl) = connect(rig.port, "/ws").await {
            opened += 1;
            cl.close().await;
        }
    }
    assert!(opened > 0, "the churn opened nothing");
    let closes = fleet.closes();
    fleet.stop().await;
    assert!(closes.is_empty(), "wscap closed connections: {closes:?}");
    assert_eq!(rig.closed("rebalance").await, 0.0);
    assert_eq!(rig.closed("drain").await, 0.0);
}
