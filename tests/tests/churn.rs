//! Churn: many clients connect and leave at the same time by every close path, for a bounded
//! number of rounds. No pod is ever over its limit, every attempt gets 101 or the module's 503,
//! and at the end every count is back to exactly zero.

use std::sync::Arc;

use wscap_e2e::client::Outcome;
use wscap_e2e::rig::{assert_wscap_refusal, Rig, RigSpec};

const PODS: usize = 3;
const LIMIT: u32 = 5;
const TASKS: usize = 30;
const ROUNDS: usize = 12;

async fn churn(concurrency: u32) {
    if !wscap_e2e::concurrencies().contains(&concurrency) {
        eprintln!("skipped: concurrency {concurrency} not in WSCAP_E2E_CONCURRENCY");
        return;
    }
    let rig = Arc::new(Rig::start(&RigSpec::new(concurrency, PODS, LIMIT)).await);
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let rig = rig.clone();
        tasks.push(tokio::spawn(async move {
            let (mut open, mut refused) = (0usize, 0usize);
            for r in 0..ROUNDS {
                match rig.connect().await {
                    Outcome::Open(mut c) => {
                        open += 1;
                        c.echo("churn").await.expect("echo");
                        // Rotate through the close paths.
                        match (t + r) % 3 {
                            0 => c.close().await,
                            1 => c.reset(),
                            _ => {
                                c.server_close().await.expect("server close");
                            }
                        }
                    }
                    Outcome::Refused(resp) => {
                        assert_wscap_refusal(&resp, "no_capacity");
                        refused += 1;
                    }
                    Outcome::Failed(e) => panic!("task {t} round {r}: no response: {e}"),
                }
            }
            (open, refused)
        }));
    }
    let (mut open, mut refused) = (0, 0);
    for t in tasks {
        let (o, r) = t.await.expect("churn task");
        open += o;
        refused += r;
    }
    eprintln!("churn at concurrency {concurrency}: {open} admitted, {refused} refused");
    assert_eq!(open + refused, TASKS * ROUNDS);
    assert!(open > 0, "some connections were admitted");
    for b in &rig.backends {
        assert!(
            b.max_seen() <= LIMIT as usize,
            "{} held {} > {LIMIT}",
            b.name,
            b.max_seen()
        );
    }
    rig.expect_active("after churn", &[0; PODS]).await;
    let admitted: usize = rig.backends.iter().map(|b| b.accepted()).sum();
    assert_eq!(
        admitted, open,
        "every 101 the clients saw is one the backends accepted"
    );
    assert_eq!(
        rig.prom_rejected().await,
        refused as f64,
        "prometheus rejected = refusals the clients saw"
    );
    // The whole capacity is free again.
    let mut held = Vec::new();
    for _ in 0..(PODS * LIMIT as usize) {
        held.push(rig.connect().await.expect_open("capacity after churn"));
    }
    assert_wscap_refusal(
        &rig.connect().await.expect_refused("full after churn"),
        "no_capacity",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_concurrency_1() {
    churn(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_concurrency_2() {
    churn(2).await;
}
