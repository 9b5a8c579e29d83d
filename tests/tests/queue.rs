//! The bounded wait queue (`"queue": {"max_waiting": N, "timeout_ms": T}`), on the real Envoy:
//! 3 full pods, 10 waiters (one hangs up), one refused with `queue_full`; 5 connections close
//! one at a time and exactly the 5 oldest remaining waiters are admitted, in arrival order, on
//! the pod that freed; the rest get `503 queue_timeout` after T. The pods count themselves.
//! Envoy's `/stats/prometheus` shows the waiting gauge and the wait-time histogram. Per-route
//! queue settings: a route with its own short timeout, and a route with `"queue": null`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::task::JoinHandle;
use wscap_e2e::backend::Backend;
use wscap_e2e::client::Outcome;
use wscap_e2e::config::{self, Endpoint, ListenerSpec, STRING_VALUE};
use wscap_e2e::envoy::{Envoy, Opts};
use wscap_e2e::rig::{assert_wscap_refusal, Rig, RigSpec, CLUSTER, LISTENER, PROM_REJECTED};
use wscap_e2e::{eventually, metrics, SETTLE};

const PROM_WAITING: &str = "envoy_dynamicmodulescustom_wscap_waiting";
const PROM_WAIT_COUNT: &str = "envoy_dynamicmodulescustom_wscap_queue_wait_ms_count";
const PROM_WAIT_SUM: &str = "envoy_dynamicmodulescustom_wscap_queue_wait_ms_sum";

const LIMIT: usize = 2;
const MAX_WAITING: usize = 10;
const TIMEOUT_MS: u64 = 6000;

async fn waiting(rig: &Rig) -> Option<u64> {
    rig.envoy.wscap().await["queues"][CLUSTER]["waiting"].as_u64()
}

async fn expect_waiting(rig: &Rig, n: u64) {
    eventually(&format!("{n} waiting in /wscap"), SETTLE, || async {
        let got = waiting(rig).await;
        (got == Some(n))
            .then_some(())
            .ok_or(format!("waiting {got:?}"))
    })
    .await;
}

struct Waiter {
    started: Instant,
    task: JoinHandle<Outcome>,
}

async fn queue(concurrency: u32) {
    if !wscap_e2e::concurrencies().contains(&concurrency) {
        eprintln!("skipped: concurrency {concurrency} not in WSCAP_E2E_CONCURRENCY");
        return;
    }
    let mut spec = RigSpec::new(concurrency, 3, LIMIT as u32);
    spec.filter_extra.insert(
        "queue".into(),
        json!({"max_waiting": MAX_WAITING, "timeout_ms": TIMEOUT_MS}),
    );
    let rig = Rig::start(&spec).await;
    let mut held = Vec::new();
    for i in 0..3 * LIMIT {
        held.push(rig.connect().await.expect_open(&format!("fill {i}")));
    }
    rig.expect_active("all full", &[LIMIT; 3]).await;

    // 10 waiters, one at a time so that their arrival order is known.
    let mut waiters: Vec<Option<Waiter>> = Vec::new();
    for i in 0..MAX_WAITING {
        let port = rig.port;
        let started = Instant::now();
        let task = tokio::spawn(async move { wscap_e2e::client::connect(port, "/ws").await });
        expect_waiting(&rig, i as u64 + 1).await;
        waiters.push(Some(Waiter { started, task }));
    }
    // The waiting gauge is an Envoy stat.
    eventually("wscap_waiting in /stats/prometheus", SETTLE, || async {
        let got = metrics::value(
            &rig.envoy.prometheus().await,
            PROM_WAITING,
            &[("cluster", CLUSTER)],
        );
        (got == Some(MAX_WAITING as f64))
            .then_some(())
            .ok_or(format!("{PROM_WAITING} {got:?}"))
    })
    .await;
    // One more: refused at once.
    assert_wscap_refusal(
        &rig.connect().await.expect_refused("queue full"),
        "queue_full",
    );
    // Waiter 2 hangs up: it leaves the queue at once and is never admitted.
    let gone = waiters[2].take().expect("waiter 2");
    gone.task.abort();
    let _ = gone.task.await;
    expect_waiting(&rig, MAX_WAITING as u64 - 1).await;
    rig.expect_active("still full", &[LIMIT; 3]).await;

    // Five connections close one at a time, from pods in turn: each admits the oldest waiter,
    // on the pod that freed.
    let expected_order = [0usize, 1, 3, 4, 5];
    let mut admitted = Vec::new();
    for (k, &w) in expected_order.iter().enumerate() {
        let c = held.remove(k % held.len());
        let pod = c.backend.clone();
        c.close().await;
        let waiter = waiters[w].take().expect("waiter");
        let outcome = tokio::time::timeout(Duration::from_secs(10), waiter.task)
            .await
            .unwrap_or_else(|_| panic!("waiter {w} not admitted after close {k}"))
            .expect("join");
        let ws = outcome.expect_open(&format!("waiter {w} after close {k}"));
        assert_eq!(ws.backend, pod, "waiter {w} lands on the pod that freed");
        // Nobody else got in: every later waiter still waits.
        for (i, other) in waiters.iter().enumerate() {
            if let Some(o) = other {
                assert!(!o.task.is_finished(), "waiter {i} ended before its turn");
            }
        }
        admitted.push(ws);
        rig.expect_active(&format!("after close {k}"), &[LIMIT; 3])
            .await;
        for b in &rig.backends {
            assert!(
                b.max_seen() <= LIMIT,
                "{} peaked at {}",
                b.name,
                b.max_seen()
            );
        }
    }

    // The rest time out with queue_timeout, not before T (loosely: a scheduling margin).
    let rest: Vec<(usize, Waiter)> = waiters
        .into_iter()
        .enumerate()
        .filter_map(|(i, w)| w.map(|w| (i, w)))
        .collect();
    assert_eq!(rest.len(), 4);
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
    expect_waiting(&rig, 0).await;
    let prom = rig.envoy.prometheus().await;
    for (reason, n) in [("queue_full", 1.0), ("queue_timeout", 4.0)] {
        let got = metrics::value(
            &prom,
            PROM_REJECTED,
            &[("cluster", CLUSTER), ("reason", reason)],
        );
        assert_eq!(got, Some(n), "wscap_rejected{{reason={reason}}}");
    }
    // The wait-time histogram: one sample per admitted (5) or timed-out (4) waiter, none for
    // the one that hung up; the 4 timed-out ones alone waited at least 4 × T.
    eventually(
        "the wait histogram in /stats/prometheus",
        SETTLE,
        || async {
            let prom = rig.envoy.prometheus().await;
            let waiting = metrics::value(&prom, PROM_WAITING, &[("cluster", CLUSTER)]);
            let count = metrics::value(&prom, PROM_WAIT_COUNT, &[("cluster", CLUSTER)]);
            let sum = metrics::value(&prom, PROM_WAIT_SUM, &[("cluster", CLUSTER)]);
            (waiting == Some(0.0)
                && count == Some(9.0)
                && sum.is_some_and(|s| s >= (4 * TIMEOUT_MS * 9 / 10) as f64))
            .then_some(())
            .ok_or(format!(
                "waiting {waiting:?}, wait count {count:?}, wait sum {sum:?}"
            ))
        },
    )
    .await;
    let doc = rig.envoy.wscap().await;
    assert_eq!(doc["queues"][CLUSTER]["admitted"], 5, "{doc}");
    assert_eq!(doc["queues"][CLUSTER]["timed_out"], 4, "{doc}");
    assert_eq!(doc["queues"][CLUSTER]["full"], 1, "{doc}");

    // Counts back to 0.
    for c in held.into_iter().chain(admitted) {
        c.close().await;
    }
    rig.expect_active("all closed", &[0; 3]).await;
    for b in &rig.backends {
        assert!(
            b.max_seen() <= LIMIT,
            "{} peaked at {}",
            b.name,
            b.max_seen()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queue_fifo_timeout_full_hangup_concurrency_1() {
    queue(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queue_fifo_timeout_full_hangup_concurrency_2() {
    queue(2).await;
}

fn per_route(value: &str) -> Value {
    json!({"wscap": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilterPerRoute",
        "dynamic_module_config": {"name": "wscap", "do_not_close": true},
        "filter_name": "wscap",
        "filter_config": {"@type": STRING_VALUE, "value": value},
    }})
}

/// Per-route queue settings: the filter queues for 6 s; `/fast` has its own queue with a
/// 300 ms timeout, `/off` has `"queue": null` (refused at once). One pod of limit 1, full.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_route_sets_its_own_queue_or_none() {
    const ROUTE_TIMEOUT_MS: u64 = 300;
    let pod = Backend::start("pod-0").await;
    let mut filter: Value = serde_json::from_str(&config::filter_config(CLUSTER, 1, 7)).unwrap();
    filter["queue"] = json!({"max_waiting": 10, "timeout_ms": TIMEOUT_MS});
    let l = ListenerSpec::new(
        LISTENER,
        CLUSTER,
        vec![config::wscap_filter(&filter.to_string())],
    );
    let mut boot = config::bootstrap(
        std::slice::from_ref(&l),
        vec![config::static_cluster(
            CLUSTER,
            &[Endpoint::new(pod.addr)],
            true,
        )],
        true,
    );
    let route = |prefix: &str, per: Option<&str>| {
        let mut r =
            json!({"match": {"prefix": prefix}, "route": {"cluster": CLUSTER, "timeout": "0s"}});
        if let Some(p) = per {
            r["typed_per_filter_config"] = per_route(p);
        }
        r
    };
    let fast = format!(r#"{{"queue": {{"max_waiting": 5, "timeout_ms": {ROUTE_TIMEOUT_MS}}}}}"#);
    boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["route_config"]["virtual_hosts"][0]["routes"] = json!([
        route("/fast", Some(&fast)),
        route("/off", Some(r#"{"queue": null}"#)),
        route("/", None),
    ]);
    let envoy = Envoy::start(&boot, &Opts::with_module(2)).await;
    let port = envoy.listener_port(LISTENER).await;
    let held = wscap_e2e::client::connect(port, "/ws")
        .await
        .expect_open("fill");

    // `/off`: no queue on this route, refused at once with no_capacity.
    let r = wscap_e2e::client::connect(port, "/off")
        .await
        .expect_refused("/off while full");
    assert_wscap_refusal(&r, "no_capacity");

    // A waiter on the filter's queue (6 s), then one on `/fast` (300 ms): the route's timeout
    // ends the second long before the first's.
    let slow = tokio::spawn(async move { wscap_e2e::client::connect(port, "/ws").await });
    eventually("1 waiting", SETTLE, || async {
        let w = envoy.wscap().await["queues"][CLUSTER]["waiting"].as_u64();
        (w == Some(1)).then_some(()).ok_or(format!("waiting {w:?}"))
    })
    .await;
    let started = Instant::now();
    let r = wscap_e2e::client::connect(port, "/fast")
        .await
        .expect_refused("/fast times out");
    let waited = started.elapsed();
    assert_wscap_refusal(&r, "queue_timeout");
    assert!(
        waited >= Duration::from_millis(ROUTE_TIMEOUT_MS * 9 / 10),
        "/fast refused after {waited:?}, before its {ROUTE_TIMEOUT_MS} ms"
    );
    assert!(
        !slow.is_finished(),
        "the filter's waiter (timeout {TIMEOUT_MS} ms) ended with the route's"
    );
    // A slot frees: the filter's waiter is admitted.
    held.close().await;
    let ws = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .expect("the waiter admitted")
        .expect("join")
        .expect_open("the filter's waiter");
    let prom = envoy.prometheus().await;
    for (reason, n) in [("no_capacity", 1.0), ("queue_timeout", 1.0)] {
        let got = metrics::value(
            &prom,
            PROM_REJECTED,
            &[("cluster", CLUSTER), ("reason", reason)],
        );
        assert_eq!(got, Some(n), "wscap_rejected{{reason={reason}}}");
    }
    ws.close().await;
    eventually("pod back to 0", SETTLE, || async {
        (pod.active() == 0)
            .then_some(())
            .ok_or(format!("pod counts {}", pod.active()))
    })
    .await;
    assert!(pod.max_seen() <= 1, "pod peaked at {}", pod.max_seen());
}
