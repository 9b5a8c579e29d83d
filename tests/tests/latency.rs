//! Handshake latency through Envoy with the `wscap` filter vs without it, in the same run.
//!
//! A measurement, not an assertion. Run it with:
//! `cargo test -p wscap-e2e --release --test latency -- --ignored --nocapture`
//! (`WSCAP_E2E_HANDSHAKES` sets the number of handshakes per side; default 400.)

use std::time::{Duration, Instant};

use wscap_e2e::backend::Backend;
use wscap_e2e::client::connect;
use wscap_e2e::config::{self, Endpoint, ListenerSpec};
use wscap_e2e::envoy::{Envoy, Opts};
use wscap_e2e::rig::CLUSTER;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: run with --ignored --nocapture"]
async fn handshake_latency() {
    let n: usize = std::env::var("WSCAP_E2E_HANDSHAKES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(400);
    let pod = Backend::start("pod-0").await;
    let with = ListenerSpec::new(
        "with_wscap",
        CLUSTER,
        vec![config::wscap_filter(&config::filter_config(
            CLUSTER, 100_000, 1,
        ))],
    );
    let without = ListenerSpec::new("without_wscap", CLUSTER, vec![]);
    let boot = config::bootstrap(
        &[with, without],
        vec![config::static_cluster(
            CLUSTER,
            &[Endpoint::new(pod.addr)],
            true,
        )],
        true,
    );
    let concurrency = wscap_e2e::concurrency();
    let envoy = Envoy::start(&boot, &Opts::with_module(concurrency)).await;
    let p_with = envoy.listener_port("with_wscap").await;
    let p_without = envoy.listener_port("without_wscap").await;

    // Warm-up, then interleave the two sides so that drift affects both alike.
    for port in [p_with, p_without] {
        for _ in 0..20 {
            connect(port, "/ws")
                .await
                .expect_open("warm-up")
                .close()
                .await;
        }
    }
    let mut t_with = Vec::with_capacity(n);
    let mut t_without = Vec::with_capacity(n);
    for i in 0..(2 * n) {
        let (port, out) = if i % 2 == 0 {
            (p_with, &mut t_with)
        } else {
            (p_without, &mut t_without)
        };
        let t0 = Instant::now();
        let c = connect(port, "/ws").await.expect_open("handshake");
        out.push(t0.elapsed());
        c.close().await;
    }
    t_with.sort();
    t_without.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "handshake latency through Envoy 1.40 (--concurrency {concurrency}), {n} handshakes each, module {}/libwscap.so, test built {}:",
        wscap_e2e::module_dir().display(),
        if cfg!(debug_assertions) { "debug" } else { "release" }
    );
    println!("  {:<16} {:>10} {:>10}", "", "median µs", "p99 µs");
    println!(
        "  {:<16} {:>10.1} {:>10.1}",
        "with wscap",
        us(percentile(&t_with, 0.5)),
        us(percentile(&t_with, 0.99))
    );
    println!(
        "  {:<16} {:>10.1} {:>10.1}",
        "without wscap",
        us(percentile(&t_without, 0.5)),
        us(percentile(&t_without, 0.99))
    );
    println!(
        "  median difference: {:+.1} µs",
        us(percentile(&t_with, 0.5)) - us(percentile(&t_without, 0.5))
    );
}
