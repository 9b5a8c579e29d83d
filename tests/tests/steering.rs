//! (b) Steering: when a pod is full, new connections go to the pods with room until all are
//! full; a freed slot is found again.

use wscap_e2e::rig::{assert_wscap_refusal, Rig, RigSpec};

async fn steering(concurrency: u32) {
    if !wscap_e2e::concurrencies().contains(&concurrency) {
        eprintln!("skipped: concurrency {concurrency} not in WSCAP_E2E_CONCURRENCY");
        return;
    }
    // Unequal limits (endpoint metadata): pod-0 fills first relative to the others.
    let mut spec = RigSpec::new(concurrency, 3, 10);
    spec.per_host = vec![Some(1), Some(3), Some(4)];
    let limits = [1usize, 3, 4];
    let rig = Rig::start(&spec).await;
    let total: usize = limits.iter().sum();

    let mut held = Vec::new();
    for i in 0..total {
        let c = rig
            .connect()
            .await
            .expect_open(&format!("connection {i} of {total}"));
        held.push(c);
        // No pod is ever over its limit, as each backend measured it.
        for (b, lim) in rig.backends.iter().zip(limits) {
            assert!(
                b.active() <= lim,
                "after {i}: {} holds {} > {lim}",
                b.name,
                b.active()
            );
        }
    }
    rig.expect_active("all full", &limits).await;
    for (b, lim) in rig.backends.iter().zip(limits) {
        assert_eq!(b.max_seen(), lim, "{} peak", b.name);
    }
    assert_wscap_refusal(
        &rig.connect().await.expect_refused("all pods full"),
        "no_capacity",
    );

    // Free one slot on each pod in turn: the next connection must land exactly there.
    for target in ["pod-1", "pod-0", "pod-2"] {
        let i = held
            .iter()
            .position(|c| c.backend == target)
            .expect("a connection on target");
        held.remove(i).close().await;
        let mut expected = limits.to_vec();
        expected[rig.index_of(target)] -= 1;
        rig.expect_active(&format!("freed one on {target}"), &expected)
            .await;
        let c = rig.connect().await.expect_open("the freed slot");
        assert_eq!(c.backend, target, "steered to the only pod with room");
        held.push(c);
        rig.expect_active("full again", &limits).await;
        assert_wscap_refusal(
            &rig.connect().await.expect_refused("full again"),
            "no_capacity",
        );
    }
    for (b, lim) in rig.backends.iter().zip(limits) {
        assert_eq!(b.max_seen(), lim, "{} never went over its limit", b.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steering_concurrency_1() {
    steering(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steering_concurrency_2() {
    steering(2).await;
}

/// Equal limits: connections spread so that every pod fills, none first overflows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steering_equal_limits_fill_every_pod() {
    let rig = Rig::start(&RigSpec::new(wscap_e2e::concurrency(), 3, 3)).await;
    let mut held = Vec::new();
    for i in 0..9 {
        held.push(rig.connect().await.expect_open(&format!("connection {i}")));
    }
    rig.expect_active("all full", &[3, 3, 3]).await;
    assert_wscap_refusal(&rig.connect().await.expect_refused("tenth"), "no_capacity");
    // Two leave pod-2: exactly two more fit, both on pod-2.
    for _ in 0..2 {
        let i = held.iter().position(|c| c.backend == "pod-2").unwrap();
        held.remove(i).close().await;
    }
    rig.expect_active("two left pod-2", &[3, 3, 1]).await;
    for _ in 0..2 {
        let c = rig.connect().await.expect_open("refill pod-2");
        assert_eq!(c.backend, "pod-2");
        held.push(c);
    }
    assert_wscap_refusal(
        &rig.connect().await.expect_refused("full again"),
        "no_capacity",
    );
    rig.expect_active("full again", &[3, 3, 3]).await;
}
