//! Global mode, issue 10 item 5, end to end: a fresh fleet (a new redis-server, 2 real Envoy
//! 1.40 processes) admits its first WebSocket within about two refresh intervals of each Envoy
//! being ready, and a pod that appears later through file-based EDS is usable within the same
//! bound. The restart grace is left at its default, the lease ttl (3 s here, 15 refresh
//! intervals): before the fix, the first admission and every new pod waited that long, and
//! these bounds fail. Every 101 and every count is what the real clients and backends saw.

use std::time::{Duration, Instant};

use wscap_e2e::backend::Backend;
use wscap_e2e::client::{connect, Outcome, WsClient};
use wscap_e2e::config::{self, Endpoint, ListenerSpec};
use wscap_e2e::envoy::{Envoy, Opts};
use wscap_e2e::redis::RedisServer;
use wscap_e2e::rig::{assert_wscap_refusal, CLUSTER, LISTENER, RETRY_AFTER};
use wscap_e2e::write_atomic;

const LIMIT: u32 = 2;
const TTL_MS: u64 = 3000;
const REFRESH_MS: u64 = 200;
/// 2 × refresh plus a margin for a loaded 2-core machine: still far below the 3 s grace.
const BOUND: Duration = Duration::from_millis(2 * REFRESH_MS + 1000);

/// Connection attempts every 10 ms through `port` until one is admitted; returns it and when.
async fn first_101(port: u16, since: Instant) -> (WsClient, Duration) {
    loop {
        match connect(port, "/ws").await {
            Outcome::Open(c) => return (c, since.elapsed()),
            Outcome::Refused(r) => assert_wscap_refusal(&r, "no_capacity"),
            Outcome::Failed(e) => panic!("connection failed without a response: {e}"),
        }
        assert!(
            since.elapsed() < Duration::from_secs(15),
            "nothing admitted for 15 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_fleet_and_a_new_pod_admit_within_two_refreshes() {
    let redis = RedisServer::start();
    let pods = [Backend::start("pod-0").await, Backend::start("pod-1").await];
    let dir = wscap_e2e::scratch_dir("global-cold");
    let eds_dir = dir.join("eds");
    std::fs::create_dir_all(&eds_dir).unwrap();
    let eds = eds_dir.join("pods.json");
    write_atomic(
        &eds,
        &config::eds_file_contents(CLUSTER, &[Endpoint::new(pods[0].addr)], 1),
    );
    let mut envoys = Vec::new();
    let mut open = Vec::new();
    for i in 0..2 {
        let l = ListenerSpec::new(
            LISTENER,
            CLUSTER,
            vec![config::wscap_filter(&config::filter_config(
                CLUSTER,
                LIMIT,
                RETRY_AFTER,
            ))],
        );
        let mut boot = config::bootstrap(
            std::slice::from_ref(&l),
            vec![config::eds_cluster(CLUSTER, &eds, true)],
            true,
        );
        boot["bootstrap_extensions"][0]["typed_config"]["extension_config"]["value"] =
            serde_json::json!({
                "redis_url": redis.url(),
                "instance_id": format!("envoy-{i}"),
                "lease_ttl_ms": TTL_MS,
                "refresh_ms": REFRESH_MS,
                "headroom": 0,
            })
            .to_string()
            .into();
        let envoy_dir = dir.join(format!("envoy-{i}"));
        std::fs::create_dir_all(&envoy_dir).unwrap();
        let envoy = Envoy::try_start_in(
            &dir.join(format!("envoy-{i}")),
            &boot,
            &Opts::with_module(2),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let port = envoy.listener_port(LISTENER).await;
        // Ready: the listener answers. From here, the first 101 through this Envoy.
        let ready = Instant::now();
        let (c, took) = first_101(port, ready).await;
        eprintln!(
            "cold start: envoy-{i}: first 101 {took:?} after it was ready (refresh {REFRESH_MS} ms, lease ttl and default restart grace {TTL_MS} ms)"
        );
        assert!(
            took < BOUND,
            "envoy-{i}: first 101 only {took:?} after ready"
        );
        open.push(c);
        envoys.push((envoy, port));
    }
    // pod-0 is full fleet-wide (one connection through each Envoy).
    assert_eq!(pods[0].active(), LIMIT as usize);
    match connect(envoys[0].1, "/ws").await {
        Outcome::Refused(r) => assert_wscap_refusal(&r, "no_capacity"),
        _ => panic!("pod-0 admitted beyond its fleet-wide limit"),
    }

    // pod-1 appears through EDS: usable through each Envoy within the same bound.
    let eps = [Endpoint::new(pods[0].addr), Endpoint::new(pods[1].addr)];
    let appeared = Instant::now();
    write_atomic(&eds, &config::eds_file_contents(CLUSTER, &eps, 2));
    for (i, (_, port)) in envoys.iter().enumerate() {
        let (c, took) = first_101(*port, appeared).await;
        eprintln!("new pod: envoy-{i}: first 101 on it {took:?} after the EDS update");
        assert!(
            took < BOUND,
            "envoy-{i}: new pod usable only {took:?} after it appeared"
        );
        open.push(c);
    }
    assert_eq!(
        pods[1].active(),
        2,
        "both new connections went to the new pod"
    );
    assert!(pods.iter().all(|p| p.max_seen() <= LIMIT as usize));
    for c in open {
        c.close().await;
    }
}
