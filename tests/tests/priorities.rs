//! (m) Priorities and health, like Envoy's own load balancers (file-based EDS):
//! WebSockets go to the healthy hosts of the highest priority that has any; a degraded host
//! only when no healthy host has room; hosts of lower priorities wait (reported `active`, given
//! nothing) until their priority is the one in use; an unhealthy host drains.
//!
//! Limit 1 per pod. Priority 0: `a` HEALTHY, `b` DEGRADED; priority 1: `c` HEALTHY.

use std::path::PathBuf;

use serde_json::{json, Value};
use wscap_e2e::backend::Backend;
use wscap_e2e::client::connect;
use wscap_e2e::config::{self, ListenerSpec};
use wscap_e2e::envoy::{Envoy, Opts};
use wscap_e2e::metrics;
use wscap_e2e::rig::{CLUSTER, LISTENER};
use wscap_e2e::{eventually, write_atomic, SETTLE};

fn endpoint(b: &Backend, health: &str) -> Value {
    json!({
        "endpoint": {"address": {"socket_address": {
            "address": b.addr.ip().to_string(), "port_value": b.addr.port()}}},
        "health_status": health,
    })
}

/// An EDS file: one locality per priority.
fn eds(priorities: &[Vec<Value>], version: u64) -> String {
    let endpoints: Vec<Value> = priorities
        .iter()
        .enumerate()
        .map(|(p, eps)| json!({"priority": p, "lb_endpoints": eps}))
        .collect();
    json!({
        "version_info": version.to_string(),
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            "cluster_name": CLUSTER,
            "endpoints": endpoints,
        }]
    })
    .to_string()
}

/// `(state, active)` of every host in /wscap, keyed by the pod's name.
async fn wscap_state(envoy: &Envoy, pods: &[&Backend]) -> Vec<(String, String, i64)> {
    let doc = envoy.wscap().await;
    pods.iter()
        .filter_map(|b| {
            metrics::host(&doc, CLUSTER, &b.host()).map(|h| (b.name.clone(), h.state, h.active))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priorities_and_health_steer_like_envoy() {
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let dir = wscap_e2e::scratch_dir("prio");
    let eds_dir = dir.join("eds");
    std::fs::create_dir_all(&eds_dir).unwrap();
    let eds_file: PathBuf = eds_dir.join("pods.json");
    write_atomic(
        &eds_file,
        &eds(
            &[
                vec![endpoint(&a, "HEALTHY"), endpoint(&b, "DEGRADED")],
                vec![endpoint(&c, "HEALTHY")],
            ],
            1,
        ),
    );
    let l = ListenerSpec::new(
        LISTENER,
        CLUSTER,
        vec![config::wscap_filter(&config::filter_config(CLUSTER, 1, 5))],
    );
    let boot = config::bootstrap(
        std::slice::from_ref(&l),
        vec![config::eds_cluster(CLUSTER, &eds_file, true)],
        true,
    );
    let envoy = Envoy::try_start_in(&dir, &boot, &Opts::with_module(wscap_e2e::concurrency()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let port = envoy.listener_port(LISTENER).await;
    let all = [&a, &b, &c];
    eventually("three hosts listed", SETTLE, || async {
        let s = wscap_state(&envoy, &all).await;
        (s.len() == 3).then_some(()).ok_or(format!("{s:?}"))
    })
    .await;

    // Healthy priority-0 host first, then the degraded one, never the priority-1 host.
    let first = connect(port, "/ws").await.expect_open("first");
    assert_eq!(first.backend, "a", "the healthy host of priority 0 first");
    let second = connect(port, "/ws").await.expect_open("second");
    assert_eq!(
        second.backend, "b",
        "the degraded host once no healthy one has room"
    );
    let third = connect(port, "/ws").await.expect_refused("priority 0 full");
    assert_eq!(third.header("x-wscap-reason"), Some("no_capacity"));
    assert_eq!((a.active(), b.active(), c.active()), (1, 1, 0));
    let s = wscap_state(&envoy, &all).await;
    assert!(
        s.contains(&("c".into(), "active".into(), 0)),
        "a lower-priority host waits as active, not draining: {s:?}"
    );

    // `a` turns unhealthy: it drains (still counted); priority 1 is now in use.
    write_atomic(
        &eds_file,
        &eds(
            &[
                vec![endpoint(&a, "UNHEALTHY"), endpoint(&b, "DEGRADED")],
                vec![endpoint(&c, "HEALTHY")],
            ],
            2,
        ),
    );
    eventually("a drains", SETTLE, || async {
        let s = wscap_state(&envoy, &all).await;
        s.contains(&("a".into(), "draining".into(), 1))
            .then_some(())
            .ok_or(format!("{s:?}"))
    })
    .await;
    let fourth = connect(port, "/ws").await.expect_open("priority 1 in use");
    assert_eq!(fourth.backend, "c");
    connect(port, "/ws")
        .await
        .expect_refused("c and b full, a draining");
    for p in all {
        assert!(p.max_seen() <= 1, "{} peaked at {}", p.name, p.max_seen());
    }

    // `a` healthy again: priority 0 back in use; `c` (priority 1) waits again, keeping its one.
    write_atomic(
        &eds_file,
        &eds(
            &[
                vec![endpoint(&a, "HEALTHY"), endpoint(&b, "DEGRADED")],
                vec![endpoint(&c, "HEALTHY")],
            ],
            3,
        ),
    );
    eventually("a back, c waiting with its count", SETTLE, || async {
        let s = wscap_state(&envoy, &all).await;
        (s.contains(&("a".into(), "active".into(), 1))
            && s.contains(&("c".into(), "active".into(), 1)))
        .then_some(())
        .ok_or(format!("{s:?}"))
    })
    .await;
    drop(first);
    eventually("a freed", SETTLE, || async {
        (a.active() == 0)
            .then_some(())
            .ok_or(a.active().to_string())
    })
    .await;
    let fifth = connect(port, "/ws").await.expect_open("a again");
    assert_eq!(fifth.backend, "a");
    drop((second, fourth, fifth));
}
