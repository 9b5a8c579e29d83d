//! The wait queue in global mode (issue 14): two real Envoys (`--concurrency 2`) share one real
//! redis-server; 3 pods of limit 2 count their own connections. The fleet is filled through
//! Envoy B; 7 WebSockets then wait on Envoy A, whose share of every pod is 0. Connections close
//! through B, one at a time: no slot is released on A, so only A's waiters asking the fleet for
//! room (a borrow round that succeeds wakes the oldest waiter) can admit them. Exactly the 4
//! oldest waiters are admitted, in arrival order, on the pod that freed; the other 3 get
//! `503 queue_timeout`; no pod is ever above its limit; the counts end at 0. A's Envoy stats
//! show the waiting gauge and the wait-time histogram.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::task::JoinHandle;
use wscap_e2e::backend::Backend;
use wscap_e2e::client::{connect, Outcome, WsClient};
use wscap_e2e::config::{self, Endpoint, ListenerSpec};
use wscap_e2e::envoy::{Envoy, Opts};
use wscap_e2e::redis::RedisServer;
use wscap_e2e::rig::{assert_wscap_refusal, CLUSTER, LISTENER, PROM_REJECTED, RETRY_AFTER};
use wscap_e2e::{eventually, metrics, SETTLE};

const LIMIT: usize = 2;
const PODS: usize = 3;
const WAITERS: usize = 7;
const CLOSES: usize = 4;
/// Under the test client's 10 s handshake timeout.
const TIMEOUT_MS: u64 = 8000;
const TTL_MS: u64 = 1500;
const REFRESH_MS: u64 = 200;
const GRACE_MS: u64 = 400;
const PROM_WAITING: &str = "envoy_dynamicmodulescustom_wscap_waiting";
const PROM_WAIT_COUNT: &str = "envoy_dynamicmodulescustom_wscap_queue_wait_ms_count";
const PROM_WAIT_BUCKET: &str = "envoy_dynamicmodulescustom_wscap_queue_wait_ms_bucket";

struct Waiter {
    started: Instant,
    task: JoinHandle<Outcome>,
}

async fn waiting(e: &Envoy) -> Option<u64> {
    e.wscap().await["queues"][CLUSTER]["waiting"].as_u64()
}

async fn expect_waiting(e: &Envoy, n: u64) {
    eventually(&format!("{n} waiting in /wscap"), SETTLE, || async {
        let got = waiting(e).await;
        (got == Some(n))
            .then_some(())
            .ok_or(format!("waiting {got:?}"))
    })
    .await;
}

fn assert_never_over(pods: &[Backend], what: &str) {
    for p in pods {
        assert!(
            p.max_seen() <= LIMIT,
            "{what}: {} peaked at {}, limit {LIMIT}",
            p.name,
            p.max_seen()
        );
    }
}

async fn expect_pods(pods: &[Backend], what: &str, want: [usize; PODS]) {
    eventually(what, SETTLE, || async {
        let got: Vec<usize> = pods.iter().map(Backend::active).collect();
        (got == want)
            .then_some(())
            .ok_or(format!("pods count {got:?}"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn global_queue_admits_the_oldest_waiters_when_the_fleet_frees_room() {
    let redis = RedisServer::start();
    let mut pods = Vec::new();
    for i in 0..PODS {
        pods.push(Backend::start(&format!("pod-{i}")).await);
    }
    let eps: Vec<Endpoint> = pods.iter().map(|b| Endpoint::new(b.addr)).collect();
    let mut filter: Value =
        serde_json::from_str(&config::filter_config(CLUSTER, LIMIT as u32, RETRY_AFTER))
            .expect("filter config");
    filter["queue"] = json!({"max_waiting": 10, "timeout_ms": TIMEOUT_MS});
    let mut envoys = Vec::new();
    let mut ports = Vec::new();
    for id in ["envoy-a", "envoy-b"] {
        let l = ListenerSpec::new(
            LISTENER,
            CLUSTER,
            vec![config::wscap_filter(&filter.to_string())],
        );
        let mut boot = config::bootstrap(
            std::slice::from_ref(&l),
            vec![config::static_cluster(CLUSTER, &eps, true)],
            true,
        );
        boot["bootstrap_extensions"][0]["typed_config"]["extension_config"]["value"] = json!({
            "stats_interval_ms": 100,
            "redis_url": redis.url(),
            "instance_id": id,
            "lease_ttl_ms": TTL_MS,
            "refresh_ms": REFRESH_MS,
            "restart_grace_ms": GRACE_MS,
        })
        .to_string()
        .into();
        let envoy = Envoy::start(&boot, &Opts::with_module(2)).await;
        ports.push(envoy.listener_port(LISTENER).await);
        envoys.push(envoy);
    }
    let (a, b) = (&envoys[0], &envoys[1]);
    let (port_a, port_b) = (ports[0], ports[1]);
    // Both instances in the ledger, then the restart grace waited out.
    for e in [a, b] {
        eventually("instances registered in the ledger", SETTLE, || async {
            let v: Value = serde_json::from_slice(&e.admin_get("/wscap?scope=global").await.body)
                .expect("fleet view");
            let ps = v["pods"].as_array().cloned().unwrap_or_default();
            let ok = v["redis_ok"] == true
                && ps.len() == PODS
                && ps
                    .iter()
                    .all(|p| p["instances"].as_array().map_or(0, Vec::len) == 2);
            ok.then_some(()).ok_or(format!("{v}"))
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(GRACE_MS + 2 * REFRESH_MS)).await;

    let t0 = Instant::now();
    // The whole fleet through B (B borrows A's spare share; past that it waits in its queue).
    let mut held: Vec<WsClient> = Vec::new();
    for i in 0..PODS * LIMIT {
        held.push(
            connect(port_b, "/ws")
                .await
                .expect_open(&format!("fill {i} via B")),
        );
    }
    expect_pods(&pods, "the fleet full", [LIMIT; PODS]).await;

    println!("fleet full at {:?}", t0.elapsed());
    // 7 waiters on A, one at a time so that their arrival order is known.
    let mut waiters: Vec<Option<Waiter>> = Vec::new();
    let mut waiter_started = Vec::new();
    for i in 0..WAITERS {
        let started = Instant::now();
        let task = tokio::spawn(async move { connect(port_a, "/ws").await });
        expect_waiting(a, i as u64 + 1).await;
        waiters.push(Some(Waiter { started, task }));
        waiter_started.push(started);
    }
    println!("{WAITERS} waiting at {:?}", t0.elapsed());
    // The waiting gauge is an Envoy stat.
    eventually("wscap_waiting in A's /stats/prometheus", SETTLE, || async {
        let got = metrics::value(&a.prometheus().await, PROM_WAITING, &[("cluster", CLUSTER)]);
        (got == Some(WAITERS as f64))
            .then_some(())
            .ok_or(format!("{PROM_WAITING} {got:?}"))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(3 * REFRESH_MS)).await;
    for (i, w) in waiters.iter().enumerate() {
        assert!(
            !w.as_ref().expect("waiter").task.is_finished(),
            "waiter {i} ended while the fleet was full"
        );
    }
    assert_never_over(&pods, "while full");

    // Connections close through B, from pods in turn: each admits A's oldest waiter, on the pod
    // that freed, although no slot was released on A.
    let mut admitted = Vec::new();
    for k in 0..CLOSES {
        let w = k;
        let c = held.remove(k % held.len());
        let pod = c.backend.clone();
        let closed = Instant::now();
        c.close().await;
        let waiter = waiters[w].take().expect("waiter");
        let outcome = tokio::time::timeout(Duration::from_secs(10), waiter.task)
            .await
            .unwrap_or_else(|_| panic!("waiter {w} not admitted after close {k}"))
            .expect("join");
        let ws = outcome.expect_open(&format!("waiter {w} after close {k} on {pod}"));
        assert_eq!(ws.backend, pod, "waiter {w} lands on the pod that freed");
        println!(
            "waiter {w} admitted {:?} after close {k} ({:?} after it arrived)",
            closed.elapsed(),
            waiter_started[w].elapsed()
        );
        for (i, other) in waiters.iter().enumerate() {
            if let Some(o) = other {
                assert!(!o.task.is_finished(), "waiter {i} ended before its turn");
            }
        }
        admitted.push(ws);
        expect_pods(&pods, &format!("full again after close {k}"), [LIMIT; PODS]).await;
        assert_never_over(&pods, &format!("after close {k}"));
    }

    // The rest time out with queue_timeout, not before T (loosely: a scheduling margin).
    let rest: Vec<(usize, Waiter)> = waiters
        .into_iter()
        .enumerate()
        .filter_map(|(i, w)| w.map(|w| (i, w)))
        .collect();
    assert_eq!(rest.len(), WAITERS - CLOSES);
    for (i, w) in rest {
        let outcome = w.task.await.expect("join");
        let waited = w.started.elapsed();
        let r = outcome.expect_refused(&format!("waiter {i} times out"));
        assert_wscap_refusal(&r, "queue_timeout");
        assert!(
            waited >= Duration::from_millis(TIMEOUT_MS * 9 / 10),
            "waiter {i} refused after {waited:?}, before the timeout {TIMEOUT_MS} ms"
        );
    }
    expect_waiting(a, 0).await;
    let doc = a.wscap().await;
    assert_eq!(doc["queues"][CLUSTER]["admitted"], CLOSES, "{doc}");
    assert_eq!(
        doc["queues"][CLUSTER]["timed_out"],
        WAITERS - CLOSES,
        "{doc}"
    );
    assert!(
        doc["queues"][CLUSTER]["fleet_grants"].as_u64() >= Some(CLOSES as u64),
        "{doc}"
    );

    // A's Envoy stats: the gauge back at 0, one wait-time sample per admitted or timed-out
    // waiter, and the timed-out ones (waited ≥ T) above the bucket of T / 2.
    eventually("queue stats in A's /stats/prometheus", SETTLE, || async {
        let prom = a.prometheus().await;
        let waiting = metrics::value(&prom, PROM_WAITING, &[("cluster", CLUSTER)]);
        let count = metrics::value(&prom, PROM_WAIT_COUNT, &[("cluster", CLUSTER)]);
        let timeouts = metrics::value(
            &prom,
            PROM_REJECTED,
            &[("cluster", CLUSTER), ("reason", "queue_timeout")],
        );
        let below_half_t = prom
            .iter()
            .filter(|s| s.name == PROM_WAIT_BUCKET)
            .filter(|s| s.labels.get("cluster").map(String::as_str) == Some(CLUSTER))
            .filter_map(|s| {
                let le: f64 = s.labels.get("le")?.parse().ok()?;
                (le <= (TIMEOUT_MS / 2) as f64).then_some((le, s.value))
            })
            .max_by(|x, y| x.0.total_cmp(&y.0))
            .map(|(_, v)| v);
        let ok = waiting == Some(0.0)
            && count == Some(WAITERS as f64)
            && timeouts == Some((WAITERS - CLOSES) as f64)
            && below_half_t.is_some_and(|v| v <= CLOSES as f64);
        ok.then_some(()).ok_or(format!(
            "waiting {waiting:?}, wait count {count:?}, queue_timeout {timeouts:?}, waits under T/2 {below_half_t:?}"
        ))
    })
    .await;

    // Counts back to 0.
    for c in held.into_iter().chain(admitted) {
        c.close().await;
    }
    expect_pods(&pods, "all closed", [0; PODS]).await;
    assert_never_over(&pods, "at the end");
    drop(redis);
}
