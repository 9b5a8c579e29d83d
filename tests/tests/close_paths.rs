//! (c) Every close path releases exactly once: after each, the counts are back to the exact
//! expected value, with other connections ("anchors") still open on the same pod so that a double
//! release would show as a count below the anchors, and a leak as a count above.

use std::time::Duration;

use wscap_e2e::client::Outcome;
use wscap_e2e::metrics;
use wscap_e2e::rig::{assert_wscap_refusal, Rig, RigSpec, CLUSTER};

const LIMIT: u32 = 3;

async fn close_paths(concurrency: u32) {
    if !wscap_e2e::concurrencies().contains(&concurrency) {
        eprintln!("skipped: concurrency {concurrency} not in WSCAP_E2E_CONCURRENCY");
        return;
    }
    let mut rig = Rig::start(&RigSpec::new(concurrency, 1, LIMIT)).await;
    let pod = &rig.backends[0];
    let mut anchors = vec![
        rig.connect().await.expect_open("anchor 1"),
        rig.connect().await.expect_open("anchor 2"),
    ];
    rig.expect_active("anchors", &[2]).await;

    // 1. Client close frame.
    let c = rig.connect().await.expect_open("client-close");
    rig.expect_active("client-close open", &[3]).await;
    assert_wscap_refusal(
        &rig.connect().await.expect_refused("over the limit"),
        "no_capacity",
    );
    c.close().await;
    rig.expect_active("after client close frame", &[2]).await;

    // 2. Server close frame.
    let mut c = rig.connect().await.expect_open("server-close");
    rig.expect_active("server-close open", &[3]).await;
    let how = c
        .server_close()
        .await
        .expect("server closed the connection");
    assert!(
        how.contains("close") || how.contains("eof"),
        "ended by {how}"
    );
    rig.expect_active("after server close frame", &[2]).await;

    // 3. Client TCP reset without a close frame.
    let c = rig.connect().await.expect_open("client-reset");
    rig.expect_active("client-reset open", &[3]).await;
    c.reset();
    rig.expect_active("after client reset", &[2]).await;

    // 4. Upstream refuses the upgrade (403, then 404): the client gets the backend's status,
    //    and nothing stays counted. More attempts than the limit: a leak would turn them into 503s.
    for status in [403u16, 404] {
        pod.refuse_upgrades(Some(status));
        for i in 0..(LIMIT + 2) {
            let r = rig
                .connect()
                .await
                .expect_refused(&format!("refused upgrade {status} #{i}"));
            assert_eq!(
                r.status, status,
                "client saw the backend's refusal; headers {:?}",
                r.headers
            );
            assert_eq!(r.header("x-wscap-reason"), None, "not a wscap refusal");
            rig.expect_active(&format!("after upstream {status} #{i}"), &[2])
                .await;
        }
        pod.refuse_upgrades(None);
    }
    assert_eq!(
        pod.refused(),
        2 * (LIMIT as usize + 2),
        "refusals the backend made"
    );

    // The capacity is exactly intact: one more fits, the next does not.
    let c = rig.connect().await.expect_open("after all close paths");
    assert_wscap_refusal(&rig.connect().await.expect_refused("full"), "no_capacity");
    rig.expect_active("full", &[3]).await;
    c.close().await;
    for a in anchors.iter_mut() {
        a.echo("anchor still alive").await.expect("anchor echo");
    }
    for a in anchors.drain(..) {
        a.close().await;
    }
    rig.expect_active("all closed", &[0]).await;
    let h = metrics::host(&rig.envoy.wscap().await, CLUSTER, &pod.host()).unwrap();
    // anchors 2 + client-close + server-close + reset + final = 6 admissions; refusals admitted too
    // (the module admits before the upstream answers), so at least 6.
    assert!(h.admitted >= 6, "admitted {}", h.admitted);
    rig.envoy.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_paths_concurrency_1() {
    close_paths(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_paths_concurrency_2() {
    close_paths(2).await;
}

/// Backend killed: its tunnels end, its count drops to 0, the other pod's count is untouched; then
/// connecting to the dead pod fails upstream and releases every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_killed_releases() {
    let rig = Rig::start(&RigSpec::new(wscap_e2e::concurrency(), 2, 2)).await;
    let mut held = Vec::new();
    for i in 0..4 {
        held.push(rig.connect().await.expect_open(&format!("fill {i}")));
    }
    rig.expect_active("both full", &[2, 2]).await;
    rig.backends[0].kill();
    let (mut dead, alive): (Vec<_>, Vec<_>) = held.into_iter().partition(|c| c.backend == "pod-0");
    assert_eq!(dead.len(), 2);
    for c in dead.iter_mut() {
        c.wait_closed(Duration::from_secs(10))
            .await
            .expect("tunnel to the killed pod ends");
    }
    // pod-0's own count is meaningless now (it is dead); check the module's views.
    let dead_host = rig.backends[0].host();
    let live_host = rig.backends[1].host();
    wscap_e2e::eventually("killed pod released", wscap_e2e::SETTLE, || async {
        let doc = rig.envoy.wscap().await;
        let d = metrics::host(&doc, CLUSTER, &dead_host).map(|h| h.active);
        let l = metrics::host(&doc, CLUSTER, &live_host).map(|h| h.active);
        (d == Some(0) && l == Some(2))
            .then_some(())
            .ok_or(format!("dead {d:?} live {l:?}"))
    })
    .await;
    // The dead pod is the only one with room: each attempt is admitted there, fails upstream, and
    // is released. More attempts than its limit: a leak would turn later ones into no_capacity.
    for i in 0..4 {
        match rig.connect().await {
            Outcome::Refused(r) => {
                assert_eq!(r.status, 503, "attempt {i}");
                assert_eq!(
                    r.header("x-wscap-reason"),
                    None,
                    "attempt {i}: an upstream failure, not a wscap refusal: {:?}",
                    r.headers
                );
            }
            Outcome::Open(c) => panic!("attempt {i}: 101 from {} to a killed pod", c.backend),
            Outcome::Failed(e) => panic!("attempt {i}: no response: {e}"),
        }
        wscap_e2e::eventually(
            &format!("attempt {i} released"),
            wscap_e2e::SETTLE,
            || async {
                let a = rig.wscap_active(&dead_host).await;
                (a == 0).then_some(()).ok_or(format!("dead pod active {a}"))
            },
        )
        .await;
    }
    assert_eq!(rig.backends[1].active(), 2);
    assert_eq!(rig.wscap_active(&live_host).await, 2);
    for c in alive {
        c.close().await;
    }
    assert_eq!(rig.backends[1].max_seen(), 2);
}

/// Endpoint with nothing listening: connect failures release, every time.
///
/// Both hosts have room at first and core breaks the tie at random, so attempts go on until the
/// live pod got its one connection (each failure on the way must release the dead endpoint);
/// then every further attempt must go to the dead endpoint, fail there, and release it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connect_failure_releases() {
    let mut spec = RigSpec::new(wscap_e2e::concurrency(), 1, 1);
    spec.dead_endpoints = 1;
    let rig = Rig::start(&spec).await;
    let dead = rig.dead[0].clone();
    let mut open = None;
    let mut failures_after = 0;
    let mut attempts = 0;
    while failures_after < 5 {
        attempts += 1;
        assert!(
            attempts <= 40,
            "the live pod never got a connection in 40 attempts"
        );
        let i = attempts;
        match rig.connect().await {
            Outcome::Open(c) => {
                assert!(
                    open.is_none(),
                    "attempt {i}: a second 101 with one live pod of limit 1"
                );
                assert_eq!(c.backend, "pod-0");
                open = Some(c);
            }
            Outcome::Refused(r) => {
                assert_eq!(r.status, 503, "attempt {i}: {:?}", r.headers);
                assert_eq!(r.header("x-wscap-reason"), None,
                    "attempt {i}: the dead endpoint still has room, so this must be the upstream failure: {:?}", r.headers);
                if open.is_some() {
                    failures_after += 1;
                }
            }
            Outcome::Failed(e) => panic!("attempt {i}: no response: {e}"),
        }
        wscap_e2e::eventually(
            &format!("attempt {i}: dead endpoint released"),
            wscap_e2e::SETTLE,
            || async {
                let a = rig.wscap_active(&dead).await;
                (a == 0)
                    .then_some(())
                    .ok_or(format!("dead endpoint active {a}"))
            },
        )
        .await;
    }
    rig.expect_active("live pod", &[1]).await;
    let h = metrics::host(&rig.envoy.wscap().await, CLUSTER, &dead).unwrap();
    assert_eq!(h.active, 0);
}

/// Stream idle timeout in Envoy (route `idle_timeout: 1s`) ends idle tunnels and releases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_releases() {
    let mut spec = RigSpec::new(wscap_e2e::concurrency(), 1, 2);
    spec.route_idle_timeout = Some("1s".into());
    let rig = Rig::start(&spec).await;
    let mut a = rig.connect().await.expect_open("a");
    let mut b = rig.connect().await.expect_open("b");
    rig.expect_active("two open", &[2]).await;
    assert_wscap_refusal(&rig.connect().await.expect_refused("third"), "no_capacity");
    for c in [&mut a, &mut b] {
        c.wait_closed(Duration::from_secs(15))
            .await
            .expect("Envoy ends the idle tunnel");
    }
    rig.expect_active("after idle timeout", &[0]).await;
    // Exactly the capacity is back.
    let _a = rig.connect().await.expect_open("a again");
    let _b = rig.connect().await.expect_open("b again");
    assert_wscap_refusal(
        &rig.connect().await.expect_refused("third again"),
        "no_capacity",
    );
}
