//! (a) Storm: 3 pods of limit 20, 100 clients at once. Exactly 60 get 101, 40 get the module's
//! 503; no backend ever holds more than 20; `/wscap` and Prometheus say 20 per pod.

use std::sync::Arc;

use tokio::sync::Barrier;
use wscap_e2e::client::{connect, Outcome};
use wscap_e2e::metrics;
use wscap_e2e::rig::{assert_wscap_refusal, Rig, RigSpec, CLUSTER, PROM_ADMITTED, PROM_LIMIT};

const PODS: usize = 3;
const LIMIT: u32 = 20;
const CLIENTS: usize = 100;

async fn storm(concurrency: u32) {
    if !wscap_e2e::concurrencies().contains(&concurrency) {
        eprintln!("skipped: concurrency {concurrency} not in WSCAP_E2E_CONCURRENCY");
        return;
    }
    let mut rig = Rig::start(&RigSpec::new(concurrency, PODS, LIMIT)).await;
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let b = barrier.clone();
        let port = rig.port;
        tasks.push(tokio::spawn(async move {
            b.wait().await;
            connect(port, "/ws").await
        }));
    }
    let mut open = Vec::new();
    let mut refused = Vec::new();
    let mut failed = Vec::new();
    for t in tasks {
        match t.await.expect("client task") {
            Outcome::Open(c) => open.push(c),
            Outcome::Refused(r) => refused.push(r),
            Outcome::Failed(e) => failed.push(e),
        }
    }
    assert!(
        failed.is_empty(),
        "connections failed without a response: {failed:?}"
    );
    let cap = PODS * LIMIT as usize;
    assert_eq!(
        open.len(),
        cap,
        "clients that got 101 (refusals: {})",
        refused.len()
    );
    assert_eq!(refused.len(), CLIENTS - cap, "clients that got a refusal");
    for r in &refused {
        assert_wscap_refusal(r, "no_capacity");
    }
    // What the backends measured.
    for b in &rig.backends {
        assert!(
            b.max_seen() <= LIMIT as usize,
            "{} held {} > {LIMIT}",
            b.name,
            b.max_seen()
        );
    }
    // A pod counts a connection once its handshake task has run, a moment after its 101 went
    // out: wait for the count, never past the limit (checked above on the peak).
    for b in &rig.backends {
        wscap_e2e::eventually(&format!("{} active", b.name), wscap_e2e::SETTLE, || async {
            (b.active() == LIMIT as usize).then_some(()).ok_or(format!(
                "{} holds {}",
                b.name,
                b.active()
            ))
        })
        .await;
    }
    // The clients' view of where they landed agrees with the backends.
    for b in &rig.backends {
        let n = open.iter().filter(|c| c.backend == b.name).count();
        assert_eq!(n, LIMIT as usize, "clients on {}", b.name);
    }
    rig.expect_active("after the storm", &[LIMIT as usize; PODS])
        .await;
    let doc = rig.envoy.wscap().await;
    let prom = rig.envoy.prometheus().await;
    for b in &rig.backends {
        let h = metrics::host(&doc, CLUSTER, &b.host()).expect("host in /wscap");
        assert_eq!(h.limit, LIMIT as i64, "/wscap limit of {}", b.name);
        assert_eq!(h.state, "active");
        assert_eq!(h.admitted, LIMIT as i64, "/wscap admitted of {}", b.name);
        let lim = metrics::value(
            &prom,
            PROM_LIMIT,
            &[("cluster", CLUSTER), ("host", &b.host())],
        );
        assert_eq!(lim, Some(LIMIT as f64), "prometheus limit of {}", b.name);
        let adm = metrics::value(
            &prom,
            PROM_ADMITTED,
            &[("cluster", CLUSTER), ("host", &b.host())],
        );
        assert_eq!(adm, Some(LIMIT as f64), "prometheus admitted of {}", b.name);
    }
    assert_eq!(
        rig.prom_rejected().await,
        (CLIENTS - cap) as f64,
        "prometheus rejected"
    );
    // The module's own exposition, GET /wscap?format=prometheus, says the same.
    let own = rig.envoy.admin_get("/wscap?format=prometheus").await;
    assert_eq!(own.status, 200);
    let own = metrics::parse_prometheus(&own.text());
    for b in &rig.backends {
        let host = b.host();
        let l = [("cluster", CLUSTER), ("host", host.as_str())];
        assert_eq!(
            metrics::value(&own, "wscap_active_connections", &l),
            Some(LIMIT as f64),
            "/wscap?format=prometheus active of {}",
            b.name
        );
        assert_eq!(
            metrics::value(&own, "wscap_connection_limit", &l),
            Some(LIMIT as f64),
            "/wscap?format=prometheus limit of {}",
            b.name
        );
    }
    assert_eq!(
        metrics::value(
            &own,
            "wscap_rejected",
            &[("cluster", CLUSTER), ("reason", "no_capacity")]
        ),
        Some((CLIENTS - cap) as f64),
        "/wscap?format=prometheus rejected"
    );

    // Every admitted tunnel works end to end.
    for (i, c) in open.iter_mut().enumerate() {
        c.echo(&format!("m{i}"))
            .await
            .expect("echo through an admitted tunnel");
    }

    // Everyone leaves: counts go back to exactly zero, and the full capacity is there again.
    let closes: Vec<_> = open.into_iter().map(|c| tokio::spawn(c.close())).collect();
    for c in closes {
        c.await.expect("close task");
    }
    rig.expect_active("after everyone closed", &[0; PODS]).await;
    let mut again = Vec::new();
    for _ in 0..cap {
        again.push(rig.connect().await.expect_open("capacity is back"));
    }
    assert_wscap_refusal(
        &rig.connect().await.expect_refused("over capacity again"),
        "no_capacity",
    );
    rig.expect_active("refilled", &[LIMIT as usize; PODS]).await;
    rig.envoy.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_concurrency_1() {
    storm(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_concurrency_2() {
    storm(2).await;
}
