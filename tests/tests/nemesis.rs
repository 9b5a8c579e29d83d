//! The nemesis (issue 10): a seeded random schedule of faults against a real fleet, 3 Envoy
//! processes in global mode sharing one real `redis-server`, 3 pods that count their own
//! connections, and clients that churn through all three Envoys (twice the fleet's capacity, so
//! the pods are full most of the time). After every healed fault the test measures how soon the
//! fleet's capacity came back; throughout, no pod may ever hold more than its limit, as the pod
//! itself counted.
//!
//! Faults (`WSCAP_NEMESIS_FAULTS`, a comma list; default: the ones today's protocol is meant to
//! survive):
//! - `kill`: kill -9 of one Envoy, restarted with the same `instance_id` after 0.3–1.5 s;
//! - `freeze`: SIGSTOP of one Envoy for 0.2–0.6 s (below the lease TTL of 1.5 s);
//! - `freeze_long`: SIGSTOP of one Envoy for 1.2–1.8 × the TTL (its leases end; the ledger
//!   holds them for one more TTL);
//! - `redis_freeze`: SIGSTOP of Redis for 0.2–0.6 s;
//! - `redis_freeze_long`: SIGSTOP of Redis for 2–3 × the TTL (every lease ends);
//! - `redis_restart`: Redis killed and restarted empty on its port after 0.2–0.8 s;
//! - `redis_snapshot`: Redis shut down with `SHUTDOWN SAVE` and started again from its RDB
//!   snapshot after 1–2 × the TTL (the ledger comes back with every lease ended);
//! - `freeze_beyond` (not in the default set): SIGSTOP of one Envoy for 3–4 × the TTL, past the
//!   lease and its hold. The protocol is known to break here (docs/GLOBAL.md): the others take
//!   the frozen instance's share while its connections stay open, and the test shows a pod
//!   above its limit.
//!
//! Env: `WSCAP_NEMESIS_SECS` (default 60; a long run: 600 or more), `WSCAP_NEMESIS_SEED` (replay a
//! schedule; the seed is printed first, and in every failure message). Figures are printed at
//! the end: faults by kind, connections admitted and refused, the maximum any pod saw, and the
//! recovery time after each healed fault.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use wscap_e2e::backend::Backend;
use wscap_e2e::client::{connect, Outcome};
use wscap_e2e::config::{self, Endpoint, ListenerSpec};
use wscap_e2e::envoy::{Envoy, Opts};
use wscap_e2e::redis::RedisServer;
use wscap_e2e::rig::{CLUSTER, LISTENER, RETRY_AFTER};
use wscap_e2e::{seed_from_env, Rng};

const LIMIT: u32 = 4;
const PODS: usize = 3;
const INSTANCES: usize = 3;
const CAPACITY: usize = PODS * LIMIT as usize;
const CLIENTS: usize = 2 * CAPACITY;
const TTL_MS: u64 = 1500;
const REFRESH_MS: u64 = 200;
/// The restart grace at its default, the lease ttl: after Redis comes back empty, every holder
/// has this long to reclaim its connections (on a loaded 2-core machine a shorter grace is
/// missed now and then, which is the documented condition, not a protocol break).
const GRACE_MS: u64 = TTL_MS;
/// Capacity is back when the pods together hold at least this many (with clients churning,
/// a slot is free for a moment after every close).
const BACK: usize = CAPACITY - 2;
/// A healed fault must see capacity back within this.
const RECOVERY_MAX: Duration = Duration::from_secs(15);
const DEFAULT_FAULTS: &[&str] = &[
    "kill",
    "freeze",
    "freeze_long",
    "redis_freeze",
    "redis_freeze_long",
    "redis_restart",
    "redis_snapshot",
];
const ALL_FAULTS: &[&str] = &[
    "kill",
    "freeze",
    "freeze_long",
    "redis_freeze",
    "redis_freeze_long",
    "redis_restart",
    "redis_snapshot",
    "freeze_beyond",
];

fn bootstrap(eps: &[Endpoint], redis_url: &str, id: usize) -> Value {
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
        vec![config::static_cluster(CLUSTER, eps, true)],
        true,
    );
    boot["bootstrap_extensions"][0]["typed_config"]["extension_config"]["value"] =
        serde_json::json!({
            "stats_interval_ms": 100,
            "redis_url": redis_url,
            "instance_id": format!("envoy-{id}"),
            "lease_ttl_ms": TTL_MS,
            "refresh_ms": REFRESH_MS,
            "restart_grace_ms": GRACE_MS,
            "fail_mode": "keep_share",
        })
        .to_string()
        .into();
    boot
}

/// What the clients saw.
#[derive(Default)]
struct Tally {
    admitted: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
}

/// One churning client: through a random live Envoy, holds each WebSocket 0.1–1.2 s.
async fn churn(
    mut rng: Rng,
    ports: Arc<Mutex<Vec<Option<u16>>>>,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    while !stop.load(Ordering::Relaxed) {
        let live: Vec<u16> = ports.lock().unwrap().iter().flatten().copied().collect();
        if live.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let port = live[rng.below(live.len() as u64) as usize];
        // A frozen Envoy answers nothing: give up on it after a while.
        match tokio::time::timeout(Duration::from_secs(2), connect(port, "/ws")).await {
            Ok(Outcome::Open(c)) => {
                tally.admitted.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(rng.millis(100, 1200)).await;
                let _ = tokio::time::timeout(Duration::from_secs(1), c.close()).await;
            }
            Ok(Outcome::Refused(_)) => {
                tally.refused.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(rng.millis(30, 120)).await;
            }
            Ok(Outcome::Failed(_)) | Err(_) => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(rng.millis(30, 120)).await;
            }
        }
    }
}

fn faults_from_env() -> Vec<&'static str> {
    let Ok(list) = std::env::var("WSCAP_NEMESIS_FAULTS") else {
        return DEFAULT_FAULTS.to_vec();
    };
    if list == "all" {
        return ALL_FAULTS.to_vec();
    }
    list.split(',')
        .map(|f| {
            *ALL_FAULTS
                .iter()
                .find(|k| **k == f.trim())
                .unwrap_or_else(|| panic!("unknown fault {f:?}; known: {ALL_FAULTS:?} or all"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nemesis_never_lets_a_pod_pass_its_limit_and_capacity_comes_back() {
    let seed = seed_from_env("WSCAP_NEMESIS_SEED");
    let secs: u64 = std::env::var("WSCAP_NEMESIS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let faults = faults_from_env();
    eprintln!(
        "nemesis: seed {seed} (replay: WSCAP_NEMESIS_SEED={seed}), {secs} s, faults {faults:?}"
    );
    let mut rng = Rng::new(seed);

    let mut redis = RedisServer::start();
    let url = redis.url();
    let mut backends = Vec::new();
    for i in 0..PODS {
        backends.push(Backend::start(&format!("pod-{i}")).await);
    }
    let eps: Vec<Endpoint> = backends.iter().map(|b| Endpoint::new(b.addr)).collect();
    let boots: Vec<Value> = (0..INSTANCES).map(|i| bootstrap(&eps, &url, i)).collect();
    let mut envoys: Vec<Envoy> = Vec::new();
    for boot in &boots {
        envoys.push(Envoy::start(boot, &Opts::with_module(2)).await);
    }
    let mut initial = Vec::new();
    for e in &envoys {
        initial.push(Some(e.listener_port(LISTENER).await));
    }
    let ports = Arc::new(Mutex::new(initial));

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            tokio::spawn(churn(
                Rng::new(seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
                Arc::clone(&ports),
                Arc::clone(&stop),
                Arc::clone(&tally),
            ))
        })
        .collect();
    let held = |bs: &[Backend]| bs.iter().map(Backend::active).sum::<usize>();
    let over = |bs: &[Backend]| bs.iter().any(|b| b.max_seen() > LIMIT as usize);

    // Capacity first comes up on a fresh fleet.
    let started = Instant::now();
    while held(&backends) < BACK {
        assert!(
            started.elapsed() < RECOVERY_MAX,
            "seed {seed}: the fresh fleet never filled: pods hold {}",
            held(&backends)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut injected: BTreeMap<&str, usize> = BTreeMap::new();
    let mut recoveries: Vec<(&str, Duration)> = Vec::new();
    let run = Instant::now();
    while run.elapsed() < Duration::from_secs(secs) && !over(&backends) {
        tokio::time::sleep(rng.millis(1000, 2500)).await;
        let kind = faults[rng.below(faults.len() as u64) as usize];
        let i = rng.below(INSTANCES as u64) as usize;
        match kind {
            "kill" => {
                ports.lock().unwrap()[i] = None;
                envoys[i].kill();
                tokio::time::sleep(rng.millis(300, 1500)).await;
                envoys[i] = Envoy::start(&boots[i], &Opts::with_module(2)).await;
                let port = envoys[i].listener_port(LISTENER).await;
                ports.lock().unwrap()[i] = Some(port);
            }
            "freeze" | "freeze_long" | "freeze_beyond" => {
                let d = match kind {
                    "freeze" => rng.millis(200, 600),
                    "freeze_long" => rng.millis(TTL_MS * 6 / 5, TTL_MS * 9 / 5),
                    _ => rng.millis(3 * TTL_MS, 4 * TTL_MS),
                };
                envoys[i].freeze(true);
                tokio::time::sleep(d).await;
                envoys[i].freeze(false);
            }
            "redis_freeze" | "redis_freeze_long" => {
                let d = if kind == "redis_freeze" {
                    rng.millis(200, 600)
                } else {
                    rng.millis(2 * TTL_MS, 3 * TTL_MS)
                };
                redis.freeze();
                tokio::time::sleep(d).await;
                redis.thaw();
            }
            "redis_snapshot" => {
                let d = rng.millis(TTL_MS, 2 * TTL_MS);
                tokio::task::block_in_place(|| redis.restart_from_snapshot(d));
            }
            "redis_restart" => {
                redis.kill();
                tokio::time::sleep(rng.millis(200, 800)).await;
                redis.start_again();
            }
            other => unreachable!("{other}"),
        }
        *injected.entry(kind).or_default() += 1;
        let healed = Instant::now();
        eprintln!(
            "nemesis: {:>5.1} s {kind} (envoy-{i}) healed; pods {:?}, peaks {:?}",
            run.elapsed().as_secs_f64(),
            backends.iter().map(Backend::active).collect::<Vec<_>>(),
            backends.iter().map(Backend::max_seen).collect::<Vec<_>>()
        );
        while held(&backends) < BACK && healed.elapsed() < RECOVERY_MAX && !over(&backends) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = healed.elapsed();
        assert!(
            took < RECOVERY_MAX || over(&backends),
            "seed {seed}: capacity did not come back within {RECOVERY_MAX:?} after {kind} of \
             envoy-{i}: pods hold {:?}",
            backends.iter().map(Backend::active).collect::<Vec<_>>()
        );
        recoveries.push((kind, took));
    }

    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    let max_seen: Vec<usize> = backends.iter().map(Backend::max_seen).collect();
    let mut by_kind: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    for (k, d) in &recoveries {
        by_kind.entry(k).or_default().push(*d);
    }
    let summary: Vec<String> = by_kind
        .iter()
        .map(|(k, ds)| {
            let worst = ds.iter().max().copied().unwrap_or_default();
            let mean = ds.iter().sum::<Duration>() / u32::try_from(ds.len()).unwrap_or(1);
            format!(
                "{k}: {} injected, capacity back in mean {:.2} s, worst {:.2} s",
                ds.len(),
                mean.as_secs_f64(),
                worst.as_secs_f64()
            )
        })
        .collect();
    eprintln!(
        "nemesis: seed {seed}, {:.0} s, {} faults {injected:?}; clients: {} admitted, {} refused, \
         {} failed; max per pod {max_seen:?} (limit {LIMIT})\n  {}",
        run.elapsed().as_secs_f64(),
        recoveries.len(),
        tally.admitted.load(Ordering::Relaxed),
        tally.refused.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
        summary.join("\n  ")
    );
    assert!(
        max_seen.iter().all(|&m| m <= LIMIT as usize),
        "seed {seed}: a pod held more than its limit {LIMIT}: max per pod {max_seen:?} \
         (faults so far {injected:?})"
    );
    assert!(!recoveries.is_empty(), "seed {seed}: no fault was injected");
    assert!(
        tally.admitted.load(Ordering::Relaxed) > 10 * CAPACITY as u64,
        "seed {seed}: too little traffic to mean anything"
    );
    // Everything closes: the pods' counts go back to 0 and every Envoy is still up.
    let t = Instant::now();
    while held(&backends) > 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "seed {seed}: pods still hold {:?} after the clients left",
            backends.iter().map(Backend::active).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for e in &mut envoys {
        e.assert_running();
    }
}
