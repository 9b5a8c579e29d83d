//! The bounded wait queue (`"queue": {"max_waiting": N, "timeout_ms": T}`), on the real Envoy:
//! 3 full pods, 10 waiters (one hangs up), one refused with `queue_full`; 5 connections close
//! one at a time and exactly the 5 oldest remaining waiters are admitted, in arrival order, on
//! the pod that freed; the rest get `503 queue_timeout` after T. The pods count themselves.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::task::JoinHandle;
use wscap_e2e::client::Outcome;
use wscap_e2e::rig::{assert_wscap_refusal, Rig, RigSpec, CLUSTER, PROM_REJECTED};
use wscap_e2e::{eventually, metrics, SETTLE};

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
