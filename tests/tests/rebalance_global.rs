//! Rebalance in global mode (issue 15): two real Envoys sharing one redis-server, 20 clients
//! that reconnect when closed (10 through each Envoy), two pods full at 10, a third added
//! through EDS. Each instance closes only its part of the fleet's excess at its part of R: the
//! counts converge, the fleet's closes per second (as the clients saw them) stay within R, the
//! fleet closes no more than the imbalance (closed clients are steered by the pods' fill across
//! the fleet, not back onto a pod above the mean), and no pod ever holds more than its limit.

use std::time::{Duration, Instant};

use serde_json::json;
use wscap_e2e::backend::Backend;
use wscap_e2e::config::{self, Endpoint, ListenerSpec};
use wscap_e2e::envoy::{Envoy, Opts};
use wscap_e2e::reconnect::{max_per_second, Fleet};
use wscap_e2e::redis::RedisServer;
use wscap_e2e::rig::{CLUSTER, LISTENER};
use wscap_e2e::{client, eventually, http, metrics, write_atomic, SETTLE};

const LIMIT: u32 = 10;
const RATE: u32 = 4;
const TOLERANCE: f64 = 0.2;
const PROM_CLOSED: &str = "envoy_dynamicmodulescustom_wscap_closed";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn global_rebalance_keeps_the_fleet_within_r() {
    let redis = RedisServer::start();
    let a = Backend::start("pod-a").await;
    let b = Backend::start("pod-b").await;
    let c = Backend::start("pod-c").await;
    let dir = wscap_e2e::scratch_dir("rebalance-global");
    let eds = dir.join("pods.json");
    write_atomic(
        &eds,
        &config::eds_file_contents(CLUSTER, &[Endpoint::new(a.addr), Endpoint::new(b.addr)], 1),
    );
    let filter = json!({
        "cluster": CLUSTER,
        "max_connections_per_host": LIMIT,
        "rebalance": {"max_closes_per_second": RATE, "tolerance": TOLERANCE},
    });
    let mut envoys = Vec::new();
    let mut ports = Vec::new();
    for i in 0..2 {
        let envoy = start_envoy(&filter, &eds, &redis, i).await;
        ports.push(envoy.listener_port(LISTENER).await);
        envoys.push(envoy);
    }
    let start = Instant::now();
    let fleets = [
        Fleet::start(ports[0], 10, start),
        Fleet::start(ports[1], 10, start),
    ];
    eventually("two full pods", SETTLE, || async {
        let got = [a.active(), b.active(), c.active()];
        (got == [10, 10, 0])
            .then_some(())
            .ok_or(format!("pods count {got:?}"))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let added = start.elapsed();
    write_atomic(
        &eds,
        &config::eds_file_contents(
            CLUSTER,
            &[
                Endpoint::new(a.addr),
                Endpoint::new(b.addr),
                Endpoint::new(c.addr),
            ],
            2,
        ),
    );
    let bound = (20.0 / 3.0 * (1.0 + TOLERANCE)).floor() as usize;
    eventually("counts converge", Duration::from_secs(40), || async {
        let got = [a.active(), b.active(), c.active()];
        (got.iter().all(|&n| n <= bound) && got.iter().sum::<usize>() == 20)
            .then_some(())
            .ok_or(format!("pods count {got:?}"))
    })
    .await;
    let converged = start.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // What the instances counted is what the clients saw (read when both agree: a close
    // committed at this moment reaches its client a moment later).
    let (closes, per_instance) = eventually("wscap_closed = closes seen", SETTLE, || async {
        let mut closes: Vec<_> = fleets.iter().flat_map(Fleet::closes).collect();
        closes.sort_by_key(|c| c.0);
        let mut per_instance = Vec::new();
        for e in &envoys {
            per_instance.push(
                metrics::value(
                    &e.prometheus().await,
                    PROM_CLOSED,
                    &[("cluster", CLUSTER), ("reason", "rebalance")],
                )
                .unwrap_or(0.0),
            );
        }
        let sum: f64 = per_instance.iter().sum();
        (sum == closes.len() as f64)
            .then(|| (closes.clone(), per_instance.clone()))
            .ok_or(format!(
                "wscap_closed {per_instance:?}, clients saw {}",
                closes.len()
            ))
    })
    .await;
    for f in fleets {
        f.stop().await;
    }
    let worst = max_per_second(&closes);
    println!(
        "global rebalance: pod-c added at {:.2}s, converged at {:.2}s ({:.2}s later), {} closes \
         (per instance {per_instance:?}), at most {worst} in one second (R = {RATE})",
        added.as_secs_f64(),
        converged.as_secs_f64(),
        (converged - added).as_secs_f64(),
        closes.len()
    );
    assert!(!closes.is_empty(), "nothing was closed");
    // The imbalance: [10, 10, 0] of 10 each shed down to ceil(20/3) = 7, so 3 + 3. A closed
    // client that lands on a pod above the mean (steered by this instance's share rather than
    // by the fleet's fill) would make the fleet close more than that.
    let imbalance = 2 * (LIMIT as usize - 20_usize.div_ceil(3));
    assert!(
        closes.len() <= imbalance,
        "the fleet closed {} connections for an imbalance of {imbalance}: {closes:?}",
        closes.len()
    );
    assert!(
        worst <= RATE as usize,
        "the fleet closed {worst} in one second, above R = {RATE}: {closes:?}"
    );
    assert!(
        closes
            .iter()
            .all(|c| (c.1 == "pod-a" || c.1 == "pod-b") && c.2.contains("Restart")),
        "{closes:?}"
    );
    for p in [&a, &b, &c] {
        assert!(
            p.max_seen() <= LIMIT as usize,
            "{} saw {}, above its limit {LIMIT}",
            p.host(),
            p.max_seen()
        );
    }
    for mut e in envoys {
        e.assert_running();
    }
}

/// One Envoy in global mode (lease 1.5 s, refresh 200 ms) on the EDS file `eds`, instance
/// `envoy-{i}`.
async fn start_envoy(
    filter: &serde_json::Value,
    eds: &std::path::Path,
    redis: &RedisServer,
    i: usize,
) -> Envoy {
    let l = ListenerSpec::new(
        LISTENER,
        CLUSTER,
        vec![config::wscap_filter(&filter.to_string())],
    );
    let mut boot = config::bootstrap(
        std::slice::from_ref(&l),
        vec![config::eds_cluster(CLUSTER, eds, true)],
        true,
    );
    boot["bootstrap_extensions"][0]["typed_config"]["extension_config"]["value"] = json!({
        "stats_interval_ms": 100,
        "redis_url": redis.url(),
        "instance_id": format!("envoy-{i}"),
        "lease_ttl_ms": 1500,
        "refresh_ms": 200,
    })
    .to_string()
    .into();
    Envoy::start(&boot, &Opts::with_module(2)).await
}

/// A drain in global mode holds: the coordinator rewrites every pod's cap from the ledger on
/// each round (every 200 ms here), but a drained pod takes no new WebSocket for as long as it is
/// held, and its connections are closed over the window. Before the hold (a cap of 0 that the
/// next round overwrote) the drained pod took new connections again within a round. Cancelled
/// (`cancel=true`), the pod admits again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn global_drain_holds_across_coordinator_rounds() {
    let redis = RedisServer::start();
    let a = Backend::start("pod-a").await;
    let b = Backend::start("pod-b").await;
    let dir = wscap_e2e::scratch_dir("drain-global");
    let eds = dir.join("pods.json");
    write_atomic(
        &eds,
        &config::eds_file_contents(CLUSTER, &[Endpoint::new(a.addr), Endpoint::new(b.addr)], 1),
    );
    let filter = json!({"cluster": CLUSTER, "max_connections_per_host": LIMIT});
    let envoy = start_envoy(&filter, &eds, &redis, 0).await;
    let port = envoy.listener_port(LISTENER).await;
    // Both pods granted spare share first, so that the clients spread over both.
    eventually("caps on both pods", SETTLE, || async {
        let v = envoy.wscap().await;
        let caps: Vec<u64> = v["clusters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["name"] == CLUSTER)
            .flat_map(|c| c["hosts"].as_array().cloned().unwrap_or_default())
            .map(|h| h["cap"].as_u64().unwrap_or(0))
            .collect();
        (caps.len() == 2 && caps.iter().all(|&c| c >= 2))
            .then_some(())
            .ok_or(format!("caps {caps:?}"))
    })
    .await;
    let start = Instant::now();
    let fleet = Fleet::start(port, 4, start);
    eventually("4 connections over both pods", SETTLE, || async {
        let got = [a.active(), b.active()];
        (got.iter().sum::<usize>() == 4 && got[0] > 0)
            .then_some(())
            .ok_or(format!("pods count {got:?}"))
    })
    .await;
    let on_a = a.active();
    let accepted_before = a.accepted();
    let r = http::request(
        envoy.admin,
        "POST",
        &format!("/wscap/drain?cluster={CLUSTER}&host={}&seconds=1", a.host()),
        &[],
    )
    .await
    .expect("POST /wscap/drain");
    assert_eq!(r.status, 200, "{}", r.text());
    // Its clients reconnect onto pod-b; new clients too, over many coordinator rounds.
    eventually("pod-a drained", SETTLE, || async {
        let got = [a.active(), b.active()];
        (got == [0, 4])
            .then_some(())
            .ok_or(format!("pods count {got:?}"))
    })
    .await;
    let mut held = Vec::new();
    for i in 0..6 {
        held.push(
            client::connect(port, "/ws")
                .await
                .expect_open(&format!("new {i}")),
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        held.iter().all(|c| c.backend == "pod-b"),
        "a new WebSocket reached the drained pod: {:?}",
        held.iter().map(|c| c.backend.clone()).collect::<Vec<_>>()
    );
    assert_eq!(
        a.accepted(),
        accepted_before,
        "the drained pod accepted a connection after the drain began"
    );
    let closes = fleet.closes();
    assert_eq!(
        closes.len(),
        on_a,
        "the drain closes what pod-a held, once each: {closes:?}"
    );
    assert!(closes.iter().all(|c| c.1 == "pod-a"), "{closes:?}");
    // pod-b is full (4 + 6 = 10), pod-a held: refused. Cancelled, pod-a admits again.
    let r = client::connect(port, "/ws")
        .await
        .expect_refused("both unavailable");
    assert_eq!(r.status, 503);
    let cancel = format!(
        "/wscap/drain?cluster={CLUSTER}&host={}&cancel=true",
        a.host()
    );
    let r = http::request(envoy.admin, "POST", &cancel, &[])
        .await
        .expect("POST cancel");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = http::request(envoy.admin, "POST", &cancel, &[])
        .await
        .expect("POST cancel");
    assert_eq!(r.status, 404, "a second cancel: {}", r.text());
    let c = eventually("pod-a admits after the cancel", SETTLE, || async {
        match client::connect(port, "/ws").await {
            client::Outcome::Open(c) => Ok(c),
            other => Err(format!("status {}", other.status())),
        }
    })
    .await;
    assert_eq!(c.backend, "pod-a");
    held.push(c);
    assert!(a.max_seen() <= LIMIT as usize && b.max_seen() <= LIMIT as usize);
    fleet.stop().await;
    drop(held);
    let mut envoy = envoy;
    envoy.assert_running();
}
