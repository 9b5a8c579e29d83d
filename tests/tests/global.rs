//! Global mode end to end: 3 real Envoy 1.40 processes (`--concurrency 2`) load `libwscap.so`
//! in global mode and share one real `redis-server`; 3 real WebSocket backends of limit 10 each
//! count their own connections. Every assertion is on what real peers saw (the backends' counts
//! and peaks, the clients' 101s and 503s) or on Envoy's admin output (`/wscap?scope=global`).
//!
//! Timings (all small, so the file runs in about two minutes): lease ttl 1500 ms, refresh 200 ms,
//! restart grace 400 ms.
//!
//! Env: `WSCAP_GLOBAL_E2E_SECS` (churn duration, default 60), `WSCAP_GLOBAL_E2E_SEED` (replay a
//! churn), `WSCAP_GLOBAL_E2E_CLOSE` (churn close paths: `mixed` (default: a third reset),
//! `close`, `reset`; see module/README.md on the RST path).
//!
//! Measurement (not an assertion), `#[ignore]`d; build the module in release first:
//! `cargo build --release -p wscap-envoy &&
//!  cargo test -p wscap-e2e --release --test global -- --ignored --nocapture global_latency`

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::Barrier;
use wscap_e2e::backend::Backend;
use wscap_e2e::client::{connect, Outcome, WsClient};
use wscap_e2e::config::{self, Endpoint, ListenerSpec};
use wscap_e2e::envoy::{Envoy, Opts};
use wscap_e2e::redis::RedisServer;
use wscap_e2e::rig::{assert_wscap_refusal, CLUSTER, LISTENER, RETRY_AFTER};
use wscap_e2e::{eventually, Rng, SETTLE};
use wscap_testkit::pki::TestPki;
use wscap_testkit::RedisOptions;

const LIMIT: u32 = 10;
const PODS: usize = 3;
const INSTANCES: usize = 3;
const TTL_MS: u64 = 1500;
const REFRESH_MS: u64 = 200;
const GRACE_MS: u64 = 400;
const FLEET: usize = PODS * LIMIT as usize;
/// `local_limit` under `fail_mode: local_limit`: instances × 3 = 9 stays within the limit of 10.
const LOCAL_LIMIT: u32 = 3;
/// How long [`Fleet::fill`] keeps trying without an admission before it concludes the fleet is
/// full: several refresh rounds.
const PATIENCE: Duration = Duration::from_millis(6 * REFRESH_MS);

/// The bootstrap extension's config in global mode.
fn global_config(
    url: &str,
    id: &str,
    fail_mode: &str,
    headroom: u32,
    tls: Option<&TestPki>,
) -> String {
    let mut c = serde_json::json!({
        "stats_interval_ms": 100,
        "redis_url": url,
        "instance_id": id,
        "lease_ttl_ms": TTL_MS,
        "refresh_ms": REFRESH_MS,
        "restart_grace_ms": GRACE_MS,
        "fail_mode": fail_mode,
        "headroom": headroom,
    });
    if fail_mode == "local_limit" {
        c["local_limit"] = LOCAL_LIMIT.into();
    }
    if let Some(pki) = tls {
        c["tls_ca_file"] = pki.ca_file.display().to_string().into();
        c["tls_cert_file"] = pki.client_cert_file.display().to_string().into();
        c["tls_key_file"] = pki.client_key_file.display().to_string().into();
    }
    c.to_string()
}

/// How the fleet reaches its Redis.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Link {
    /// `redis://`, no password.
    Plain,
    /// `rediss://` with a client certificate (the server requires one) and a password.
    Secure,
}

/// The password of [`Link::Secure`].
const REDIS_PASSWORD: &str = "fleet-s3cret";

/// 3 pods, a redis-server and `n` Envoys in global mode. Everything is killed by PID on drop.
struct Fleet {
    backends: Vec<Backend>,
    envoys: Vec<Option<Envoy>>,
    ports: Vec<u16>,
    redis: RedisServer,
}

impl Fleet {
    async fn start(fail_mode: &str) -> Fleet {
        Self::start_with(fail_mode, INSTANCES, 2).await
    }

    async fn start_with(fail_mode: &str, n: usize, headroom: u32) -> Fleet {
        Self::start_link(fail_mode, n, headroom, Link::Plain).await
    }

    async fn start_link(fail_mode: &str, n: usize, headroom: u32, link: Link) -> Fleet {
        let (redis, url, pki) = match link {
            Link::Plain => {
                let redis = RedisServer::start();
                let url = redis.url();
                (redis, url, None)
            }
            Link::Secure => {
                let pki = TestPki::generate(&wscap_e2e::scratch_dir("pki"));
                let redis = RedisServer::start_with(RedisOptions {
                    password: Some(REDIS_PASSWORD.to_owned()),
                    tls: Some(pki.redis_tls(true)),
                    extra_args: Vec::new(),
                });
                let url = redis.url_with_auth("", REDIS_PASSWORD);
                (redis, url, Some(pki))
            }
        };
        let mut backends = Vec::new();
        for i in 0..PODS {
            backends.push(Backend::start(&format!("pod-{i}")).await);
        }
        let eps: Vec<Endpoint> = backends.iter().map(|b| Endpoint::new(b.addr)).collect();
        let mut envoys = Vec::new();
        let mut ports = Vec::new();
        for i in 0..n {
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
                vec![config::static_cluster(CLUSTER, &eps, true)],
                true,
            );
            boot["bootstrap_extensions"][0]["typed_config"]["extension_config"]["value"] =
                global_config(
                    &url,
                    &format!("envoy-{i}"),
                    fail_mode,
                    headroom,
                    pki.as_ref(),
                )
                .into();
            let envoy = Envoy::start(&boot, &Opts::with_module(2)).await;
            ports.push(envoy.listener_port(LISTENER).await);
            envoys.push(Some(envoy));
        }
        let fleet = Fleet {
            backends,
            envoys,
            ports,
            redis,
        };
        // Every instance sees every pod with every instance's part, then the restart grace
        // (a fresh Redis cannot tell a cold start from a restart) is waited out.
        for i in 0..n {
            eventually("instances registered in the ledger", SETTLE, || async {
                let v = fleet.view(i).await;
                let pods = v["pods"].as_array().cloned().unwrap_or_default();
                let ok = v["redis_ok"] == true
                    && pods.len() == PODS
                    && pods
                        .iter()
                        .all(|p| p["instances"].as_array().map_or(0, Vec::len) == n);
                ok.then_some(()).ok_or(format!("{v}"))
            })
            .await;
        }
        tokio::time::sleep(Duration::from_millis(GRACE_MS + 2 * REFRESH_MS)).await;
        fleet
    }

    fn envoy(&self, i: usize) -> &Envoy {
        self.envoys[i].as_ref().expect("envoy running")
    }

    /// `GET /wscap?scope=global` of instance `i`.
    async fn view(&self, i: usize) -> Value {
        let r = self.envoy(i).admin_get("/wscap?scope=global").await;
        assert_eq!(r.status, 200, "/wscap?scope=global: {}", r.text());
        serde_json::from_slice(&r.body).expect("fleet view JSON")
    }

    /// Fleet-wide live connections per pod (in backend order) as instance `i` sees them.
    async fn fleet_live(&self, i: usize) -> Vec<u64> {
        let v = self.view(i).await;
        self.backends
            .iter()
            .map(|b| {
                v["pods"]
                    .as_array()
                    .and_then(|ps| ps.iter().find(|p| p["address"] == b.host().as_str()))
                    .and_then(|p| p["live"].as_u64())
                    .unwrap_or(u64::MAX)
            })
            .collect()
    }

    fn backend_active(&self) -> Vec<usize> {
        self.backends.iter().map(Backend::active).collect()
    }

    fn backend_max(&self) -> usize {
        self.backends
            .iter()
            .map(Backend::max_seen)
            .max()
            .unwrap_or(0)
    }

    fn assert_never_over(&self, what: &str) {
        for b in &self.backends {
            if b.max_seen() > LIMIT as usize {
                // Diagnostics from a plain thread: this may run inside the runtime.
                let admins: Vec<_> = self.envoys.iter().flatten().map(|e| e.admin).collect();
                let dump = std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(async {
                        let mut out = String::new();
                        for a in admins {
                            for path in ["/wscap", "/wscap?scope=global"] {
                                if let Ok(r) = wscap_e2e::http::get(a, path).await {
                                    out += &format!("{a}{path}: {}\n", r.text());
                                }
                            }
                            if let Ok(r) = wscap_e2e::http::get(a, "/stats/prometheus").await {
                                for l in r.text().lines().filter(|l| {
                                    l.contains("wscap_steering_mismatch") && !l.starts_with('#')
                                }) {
                                    out += &format!("{a}: {l}\n");
                                }
                            }
                        }
                        out
                    })
                })
                .join()
                .unwrap_or_default();
                panic!(
                    "{what}: {} held {} connections at once, limit {LIMIT}; peaks {:?}\n{dump}",
                    b.name,
                    b.max_seen(),
                    self.backends
                        .iter()
                        .map(|b| (b.host(), b.max_seen()))
                        .collect::<Vec<_>>()
                );
            }
        }
    }

    /// Opens connections round-robin over the running instances until `want` are open or
    /// nothing was admitted for [`PATIENCE`] (spare share held by another instance flows back
    /// within a refresh or two once the pod is in demand); returns the open ones and the number
    /// of refusals seen.
    async fn fill(&self, want: usize) -> (Vec<WsClient>, usize) {
        let live: Vec<u16> = self
            .envoys
            .iter()
            .zip(&self.ports)
            .filter(|(e, _)| e.is_some())
            .map(|(_, p)| *p)
            .collect();
        self.fill_through(&live, want).await
    }

    /// [`Fleet::fill`] through the listeners `ports` only.
    async fn fill_through(&self, live: &[u16], want: usize) -> (Vec<WsClient>, usize) {
        let mut open = Vec::new();
        let mut refused = 0;
        let mut last_success = Instant::now();
        let mut i = 0;
        while open.len() < want && last_success.elapsed() < PATIENCE {
            match connect(live[i % live.len()], "/ws").await {
                Outcome::Open(c) => {
                    open.push(c);
                    last_success = Instant::now();
                }
                Outcome::Refused(r) => {
                    assert_wscap_refusal(&r, "no_capacity");
                    refused += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Outcome::Failed(e) => panic!("connection failed without a response: {e}"),
            }
            i += 1;
        }
        (open, refused)
    }

    /// Live connections per pod (in backend order) as the ledger in Redis holds them: the sum
    /// of every instance's `l:<id>` field of the pod's hash. `None` while Redis is unreachable.
    fn ledger_live(&self) -> Option<Vec<u64>> {
        let client = redis::Client::open(self.redis.url()).ok()?;
        let mut conn = client
            .get_connection_with_timeout(Duration::from_millis(200))
            .ok()?;
        self.backends
            .iter()
            .map(|b| {
                let key = format!("wscap:{{{CLUSTER}/{}}}", b.host());
                let fields: HashMap<String, String> =
                    redis::cmd("HGETALL").arg(&key).query(&mut conn).ok()?;
                Some(
                    fields
                        .iter()
                        .filter(|(k, _)| k.starts_with("l:"))
                        .filter_map(|(_, v)| v.parse::<u64>().ok())
                        .sum(),
                )
            })
            .collect()
    }

    /// After Redis came back empty: how long until the ledger holds `expected` per pod, i.e.
    /// until every instance has written its absolute counts again.
    async fn ledger_reconverged(&self, expected: &[u64]) -> Duration {
        let t0 = Instant::now();
        loop {
            if self.ledger_live().as_deref() == Some(expected) {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < SETTLE,
                "the ledger never reconverged: {:?}, want {expected:?}",
                self.ledger_live()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// After Redis came back empty while the fleet holds `live` per pod: the ledger and every
    /// view reconverge to exactly that, then (past the restart grace) exactly the rest of the
    /// fleet's capacity is admitted, never over a pod's limit. Returns the new connections.
    async fn reconverge_after_restart(&self, what: &str, live: &[u64]) -> Vec<WsClient> {
        let took = self.ledger_reconverged(live).await;
        eprintln!(
            "{what}: the ledger held the exact live counts {took:?} after Redis came back \
             (refresh {REFRESH_MS} ms)"
        );
        assert!(
            took < Duration::from_millis(TTL_MS),
            "{what}: reconverged only after {took:?}"
        );
        self.expect_fleet_live(&format!("{what}: after redis restart"), live, SETTLE)
            .await;
        tokio::time::sleep(Duration::from_millis(GRACE_MS + 2 * REFRESH_MS)).await;
        let held: u64 = live.iter().sum();
        let (more, _) = self.fill(FLEET).await;
        self.assert_never_over(&format!("{what}: after redis restart"));
        assert_eq!(
            held as usize + more.len(),
            FLEET,
            "{what}: the fleet's whole capacity, exactly, after the restart"
        );
        assert_eq!(self.backend_active(), vec![LIMIT as usize; PODS]);
        more
    }

    /// Connection attempts every 25 ms, through the instances in turn (moving on after each
    /// admission), until `until_ms` after `since`; no pod may go over its limit meanwhile.
    /// Returns the admitted connections with when they were admitted (since `since`).
    async fn attempts_until(
        &self,
        what: &str,
        since: Instant,
        until_ms: u64,
    ) -> Vec<(Duration, WsClient)> {
        let mut admitted = Vec::new();
        while since.elapsed() < Duration::from_millis(until_ms) {
            let port = self.ports[admitted.len() % INSTANCES];
            if let Outcome::Open(c) = connect(port, "/ws").await {
                admitted.push((since.elapsed(), c));
            }
            self.assert_never_over(what);
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        admitted
    }

    /// Waits until every live instance's fleet view says `expected` per pod.
    async fn expect_fleet_live(&self, what: &str, expected: &[u64], within: Duration) {
        for i in 0..self.envoys.len() {
            if self.envoys[i].is_none() {
                continue;
            }
            eventually(&format!("{what}: instance {i}"), within, || async {
                let got = self.fleet_live(i).await;
                (got == expected)
                    .then_some(())
                    .ok_or(format!("fleet view says {got:?}, want {expected:?}"))
            })
            .await;
        }
    }
}

fn by_backend(open: &[WsClient]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for c in open {
        *m.entry(c.backend.clone()).or_insert(0) += 1;
    }
    m
}

async fn close_all(open: Vec<WsClient>) {
    for c in open {
        c.close().await;
    }
}

// (a) ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_over_three_envoys_admits_exactly_the_fleet_limit() {
    let fleet = Fleet::start("keep_share").await;
    const CLIENTS: usize = 200;
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let (b, port) = (barrier.clone(), fleet.ports[i % INSTANCES]);
        tasks.push(tokio::spawn(async move {
            b.wait().await;
            connect(port, "/ws").await
        }));
    }
    let (mut open, mut refused, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    for t in tasks {
        match t.await.expect("client task") {
            Outcome::Open(c) => open.push(c),
            Outcome::Refused(r) => refused.push(r),
            Outcome::Failed(e) => failed.push(e),
        }
    }
    assert!(failed.is_empty(), "no response: {failed:?}");
    if open.len() != FLEET {
        for i in 0..INSTANCES {
            let p = fleet.envoy(i).prometheus().await;
            eprintln!(
                "envoy-{i}: mismatches {} admitted {} view {}",
                wscap_e2e::metrics::sum(
                    &p,
                    "envoy_dynamicmodulescustom_wscap_steering_mismatch",
                    &[]
                ),
                wscap_e2e::metrics::sum(&p, "envoy_dynamicmodulescustom_wscap_admitted", &[]),
                fleet.view(i).await
            );
        }
        eprintln!(
            "backends: active {:?} max {:?} by client {:?}",
            fleet.backend_active(),
            fleet
                .backends
                .iter()
                .map(Backend::max_seen)
                .collect::<Vec<_>>(),
            by_backend(&open)
        );
    }
    assert_eq!(
        open.len(),
        FLEET,
        "101s fleet-wide (refused {})",
        refused.len()
    );
    assert_eq!(refused.len(), CLIENTS - FLEET);
    for r in &refused {
        assert_wscap_refusal(r, "no_capacity");
    }
    fleet.assert_never_over("storm");
    assert_eq!(fleet.backend_active(), vec![LIMIT as usize; PODS]);
    let per = by_backend(&open);
    for b in &fleet.backends {
        assert_eq!(per.get(&b.name), Some(&(LIMIT as usize)), "{per:?}");
    }
    fleet
        .expect_fleet_live("storm", &[LIMIT as u64; PODS], SETTLE)
        .await;
    // Not one more, through any instance.
    let (more, _) = fleet.fill(1).await;
    assert!(more.is_empty(), "a 31st connection was admitted");
    close_all(open).await;
    fleet
        .expect_fleet_live("after the storm", &[0; PODS], SETTLE)
        .await;
    assert_eq!(fleet.backend_active(), vec![0; PODS]);
}

// (b) ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_random_churn_across_instances_never_breaks_the_invariant() {
    let secs: u64 = std::env::var("WSCAP_GLOBAL_E2E_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let seed = std::env::var("WSCAP_GLOBAL_E2E_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("churn: {secs} s, seed {seed} (WSCAP_GLOBAL_E2E_SEED to replay)");
    let close_mode = std::env::var("WSCAP_GLOBAL_E2E_CLOSE").unwrap_or_else(|_| "mixed".into());
    let fleet = Arc::new(Fleet::start("keep_share").await);
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicUsize::new(0));
    let refusals = Arc::new(AtomicUsize::new(0));
    const WORKERS: u64 = 45;
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let close_mode = close_mode.clone();
        let (fleet, stop, opened, refusals) = (
            fleet.clone(),
            stop.clone(),
            opened.clone(),
            refusals.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(seed.wrapping_add(w.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1);
            let mut held: Vec<WsClient> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if held.is_empty() || rng.below(3) > 0 && held.len() < 3 {
                    let port = fleet.ports[rng.below(INSTANCES as u64) as usize];
                    match connect(port, "/ws").await {
                        Outcome::Open(c) => {
                            opened.fetch_add(1, Ordering::Relaxed);
                            held.push(c)
                        }
                        Outcome::Refused(r) => {
                            assert_wscap_refusal(&r, "no_capacity");
                            refusals.fetch_add(1, Ordering::Relaxed);
                        }
                        Outcome::Failed(e) => panic!("no response: {e}"),
                    }
                } else {
                    let i = rng.below(held.len() as u64) as usize;
                    let c = held.swap_remove(i);
                    // Close paths: close handshake (the pod closes first) and RST (Envoy
                    // closes the upstream socket, then the module releases the slot).
                    // WSCAP_GLOBAL_E2E_CLOSE=mixed|close|reset.
                    let reset = match close_mode.as_str() {
                        "close" => false,
                        "reset" => true,
                        _ => rng.below(3) == 0,
                    };
                    if reset {
                        c.reset()
                    } else {
                        c.close().await
                    }
                }
                tokio::time::sleep(Duration::from_millis(rng.below(60))).await;
            }
            held
        }));
    }
    // Watch the backends' own counts while it runs.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        fleet.assert_never_over("churn");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut open = Vec::new();
    for t in tasks {
        open.extend(t.await.expect("churn task"));
    }
    eprintln!(
        "churn: {} opened, {} refused, {} still open, backends' peaks {:?}",
        opened.load(Ordering::Relaxed),
        refusals.load(Ordering::Relaxed),
        open.len(),
        fleet
            .backends
            .iter()
            .map(Backend::max_seen)
            .collect::<Vec<_>>()
    );
    fleet.assert_never_over("churn");
    assert!(
        refusals.load(Ordering::Relaxed) > 0,
        "the churn never reached the fleet limit: not a test of it"
    );
    assert!(opened.load(Ordering::Relaxed) > 2 * FLEET);
    // Final counts are exact: what the clients hold = what the backends hold = the fleet view.
    let per = by_backend(&open);
    let held: Vec<usize> = fleet
        .backends
        .iter()
        .map(|b| per.get(&b.name).copied().unwrap_or(0))
        .collect();
    eventually("backends hold what clients hold", SETTLE, || async {
        let got = fleet.backend_active();
        (got == held)
            .then_some(())
            .ok_or(format!("backends {got:?}, clients {held:?}"))
    })
    .await;
    let want: Vec<u64> = held.iter().map(|&n| n as u64).collect();
    fleet.expect_fleet_live("after churn", &want, SETTLE).await;
    close_all(open).await;
    fleet
        .expect_fleet_live("all closed", &[0; PODS], SETTLE)
        .await;
    // And the whole fleet capacity is usable again, exactly.
    let (open, _) = fleet.fill(FLEET + 1).await;
    assert_eq!(open.len(), FLEET);
    fleet.assert_never_over("refill");
    close_all(open).await;
}

// (c) ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_a_killed_envoy_frees_its_connections_within_two_ttls() {
    let mut fleet = Fleet::start("keep_share").await;
    const K: usize = 12;
    // K connections through instance 0 only.
    let mut victims = Vec::new();
    for _ in 0..K {
        victims.push(
            connect(fleet.ports[0], "/ws")
                .await
                .expect_open("through envoy-0"),
        );
    }
    // The rest of the fleet's capacity through the others.
    let (mut rest, _) = {
        let saved = fleet.envoys[0].take();
        let r = fleet.fill(FLEET).await;
        fleet.envoys[0] = saved;
        r
    };
    fleet.assert_never_over("filled");
    eprintln!(
        "c: victims {:?} rest {:?} backends {:?} view {}",
        by_backend(&victims),
        by_backend(&rest),
        fleet.backend_active(),
        fleet.view(1).await
    );
    assert_eq!(rest.len(), FLEET - K);
    fleet
        .expect_fleet_live("full", &[LIMIT as u64; PODS], SETTLE)
        .await;
    assert!(connect(fleet.ports[1], "/ws").await.status() == 503);

    // kill -9 envoy-0: no teardown hook runs; its lease must end on Redis's clock, and is then
    // held for one more ttl (an instance that only stalled would lose nothing).
    let killed_at = Instant::now();
    fleet.envoys[0].as_mut().unwrap().kill();
    fleet.envoys[0] = None;
    drop(victims);
    let before: u64 = fleet.fleet_live(1).await.iter().sum();
    assert_eq!(
        before, FLEET as u64,
        "the view still counts envoy-0 before its lease ends"
    );
    let bound = Duration::from_millis(2 * TTL_MS + 2 * REFRESH_MS);
    let slack = Duration::from_millis(600);
    loop {
        let live: u64 = fleet.fleet_live(1).await.iter().sum();
        if live == (FLEET - K) as u64 {
            break;
        }
        assert!(
            killed_at.elapsed() < bound + slack,
            "fleet view still says {live} live {:?} after kill -9 (2 × lease ttl {TTL_MS} ms + 2 × refresh {REFRESH_MS} ms)",
            killed_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dropped_after = killed_at.elapsed();
    eprintln!("fleet view dropped by {K} {dropped_after:?} after kill -9 (bound {bound:?})");
    // That capacity is usable through the other instances, and not one more.
    let (more, _) = fleet.fill(K + 1).await;
    assert_eq!(
        more.len(),
        K,
        "the killed instance's capacity is usable again"
    );
    fleet.assert_never_over("after kill -9");
    assert_eq!(fleet.backend_active(), vec![LIMIT as usize; PODS]);
    rest.extend(more);
    close_all(rest).await;
}

// (d) ------------------------------------------------------------------------------------------

/// Redis killed (-9) while the fleet holds 15 connections, restarted empty later.
async fn redis_restart(fail_mode: &str) {
    let mut fleet = Fleet::start(fail_mode).await;
    let (mut held, _) = fleet.fill(15).await;
    assert_eq!(held.len(), 15);
    fleet.redis.kill();
    let killed_at = Instant::now();

    // While Redis is down: attempts through every instance; no pod may go over its limit.
    let admitted_while_down = fleet
        .attempts_until("redis down", killed_at, TTL_MS + 3 * REFRESH_MS)
        .await;
    match fail_mode {
        // Exact: whatever share was held, until its lease would have ended on the server.
        "keep_share" => {
            for (at, _) in &admitted_while_down {
                assert!(
                    *at < Duration::from_millis(TTL_MS + REFRESH_MS),
                    "keep_share admitted {at:?} after Redis died, past the held lease"
                );
            }
        }
        // Nothing new once an instance noticed (its first failed round, within one refresh).
        "reject" => {
            for (at, _) in &admitted_while_down {
                assert!(
                    *at < Duration::from_millis(2 * REFRESH_MS),
                    "reject admitted {at:?} after Redis died"
                );
            }
        }
        other => panic!("{other}"),
    }
    // Past the lease, both modes refuse everything new, and the view says Redis is down.
    let (none, _) = fleet.fill(1).await;
    assert!(
        none.is_empty(),
        "{fail_mode}: admitted with Redis down past the lease"
    );
    let v = fleet.view(1).await;
    assert_eq!(v["redis_ok"], false, "{v}");
    eprintln!(
        "{fail_mode}: {} admitted while Redis was down, at {:?}",
        admitted_while_down.len(),
        admitted_while_down
            .iter()
            .map(|(t, _)| *t)
            .collect::<Vec<_>>()
    );
    held.extend(admitted_while_down.into_iter().map(|(_, c)| c));
    // Connections held through the outage stay open.
    for c in held.iter_mut() {
        c.echo("still here")
            .await
            .expect("a held connection survived the outage");
    }

    // Redis comes back empty: the grace lets instances reclaim only what they hold, then the
    // state reconverges, exactly.
    fleet.redis.start_again();
    let per = by_backend(&held);
    let want: Vec<u64> = fleet
        .backends
        .iter()
        .map(|b| per.get(&b.name).copied().unwrap_or(0) as u64)
        .collect();
    let more = fleet.reconverge_after_restart(fail_mode, &want).await;
    held.extend(more);
    close_all(held).await;
    fleet.expect_fleet_live("closed", &[0; PODS], SETTLE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d1_redis_killed_and_restarted_empty_keep_share() {
    redis_restart("keep_share").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d2_redis_killed_and_restarted_empty_reject() {
    redis_restart("reject").await;
}

/// `fail_mode: local_limit`: with Redis down past every lease (when `keep_share` would admit
/// nothing), each instance admits up to `local_limit` per pod on its own, counted from what it
/// already holds; with `local_limit` × instances within the limit, the pods stay within it.
/// When Redis comes back empty, the instances reclaim what they hold and the fleet reconverges
/// to exactly the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d3_redis_killed_local_limit_admits_per_instance_and_reconverges() {
    let mut fleet = Fleet::start("local_limit").await;
    // One connection through each instance before the outage.
    let mut held: Vec<(usize, WsClient)> = Vec::new();
    for (i, port) in fleet.ports.iter().enumerate() {
        held.push((
            i,
            connect(*port, "/ws").await.expect_open("before the outage"),
        ));
    }
    fleet.redis.kill();
    // Past every lease: keep_share would refuse everything from here on.
    tokio::time::sleep(Duration::from_millis(TTL_MS + 2 * REFRESH_MS)).await;
    for i in 0..INSTANCES {
        let v = fleet.view(i).await;
        assert_eq!(v["redis_ok"], false, "instance {i}: {v}");
    }
    // Fill through each instance alone until it refuses for a while (the backends' peaks
    // record any moment over the limit).
    for (i, port) in fleet.ports.iter().enumerate() {
        let (open, _) = fleet.fill_through(&[*port], usize::MAX).await;
        held.extend(open.into_iter().map(|c| (i, c)));
        fleet.assert_never_over("redis down, local_limit");
    }
    // Exactly local_limit per pod on every instance, seen by the clients (x-backend).
    let mut per: HashMap<(usize, String), u32> = HashMap::new();
    for (i, c) in &held {
        *per.entry((*i, c.backend.clone())).or_insert(0) += 1;
    }
    for i in 0..INSTANCES {
        for b in &fleet.backends {
            assert_eq!(
                per.get(&(i, b.name.clone())).copied().unwrap_or(0),
                LOCAL_LIMIT,
                "instance {i} on {}: {per:?}",
                b.name
            );
        }
    }
    let during = INSTANCES * LOCAL_LIMIT as usize;
    assert_eq!(fleet.backend_active(), vec![during; PODS]);
    fleet.assert_never_over("redis down, local_limit");
    eprintln!("local_limit: {during} per pod while Redis was down ({LOCAL_LIMIT} per instance)");

    // Redis back, empty: what is held is reclaimed, then exactly the rest of the limit.
    fleet.redis.start_again();
    let more = fleet
        .reconverge_after_restart("local_limit", &[during as u64; PODS])
        .await;
    let mut all: Vec<WsClient> = held.into_iter().map(|(_, c)| c).collect();
    all.extend(more);
    close_all(all).await;
    fleet.expect_fleet_live("closed", &[0; PODS], SETTLE).await;
}

/// TLS and AUTH through the URL: Redis requires TLS with a client certificate and a password;
/// the Envoys' bootstrap config gives `rediss://:<password>@...` and the three TLS files. The
/// fleet is exactly as exact as over plain TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d4_tls_and_auth_through_the_url() {
    let fleet = Fleet::start_link("keep_share", 2, 2, Link::Secure).await;
    let v = fleet.view(0).await;
    assert_eq!(v["redis_ok"], true, "{v}");
    let (open, _) = fleet.fill(FLEET + 5).await;
    assert_eq!(open.len(), FLEET, "exactly the fleet's capacity over TLS");
    fleet.assert_never_over("tls");
    assert_eq!(fleet.backend_active(), vec![LIMIT as usize; PODS]);
    fleet
        .expect_fleet_live("tls", &[LIMIT as u64; PODS], SETTLE)
        .await;
    close_all(open).await;
    fleet.expect_fleet_live("closed", &[0; PODS], SETTLE).await;
}

// (e) ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e_a_frozen_redis_applies_keep_share_and_recovers() {
    let mut fleet = Fleet::start("keep_share").await;
    let (mut held, _) = fleet.fill(8).await;
    assert_eq!(held.len(), 8);
    fleet.redis.freeze();
    let frozen_at = Instant::now();
    let during = fleet
        .attempts_until("redis frozen", frozen_at, TTL_MS + 4 * REFRESH_MS)
        .await;
    for (at, _) in &during {
        assert!(
            *at < Duration::from_millis(TTL_MS + REFRESH_MS),
            "admitted {at:?} into a freeze, past the held lease"
        );
    }
    let (none, _) = fleet.fill(1).await;
    assert!(none.is_empty(), "admitted with Redis frozen past the lease");
    eprintln!("frozen: {} admitted within the held shares", during.len());
    held.extend(during.into_iter().map(|(_, c)| c));
    fleet.redis.thaw();
    let per = by_backend(&held);
    let want: Vec<u64> = fleet
        .backends
        .iter()
        .map(|b| per.get(&b.name).copied().unwrap_or(0) as u64)
        .collect();
    fleet
        .expect_fleet_live("after SIGCONT", &want, SETTLE)
        .await;
    let (more, _) = fleet.fill(FLEET).await;
    assert_eq!(
        held.len() + more.len(),
        FLEET,
        "full capacity after recovery"
    );
    fleet.assert_never_over("after SIGCONT");
    held.extend(more);
    close_all(held).await;
}

// (f) ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_connections_outlive_many_lease_ttls_and_stay_counted() {
    let fleet = Fleet::start("keep_share").await;
    let (mut open, _) = fleet.fill(FLEET).await;
    assert_eq!(open.len(), FLEET);
    fleet
        .expect_fleet_live("full", &[LIMIT as u64; PODS], SETTLE)
        .await;
    let start = Instant::now();
    let mut rounds = 0;
    while start.elapsed() < Duration::from_millis(5 * TTL_MS) {
        for c in open.iter_mut() {
            c.echo("ping")
                .await
                .expect("a long-lived connection was dropped");
        }
        for i in 0..INSTANCES {
            assert_eq!(
                fleet.fleet_live(i).await,
                vec![LIMIT as u64; PODS],
                "instance {i} lost count at {:?}",
                start.elapsed()
            );
        }
        assert_eq!(fleet.backend_active(), vec![LIMIT as usize; PODS]);
        let (more, _) = fleet.fill(1).await;
        assert!(
            more.is_empty(),
            "admitted past the limit at {:?}",
            start.elapsed()
        );
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(rounds >= 3, "{rounds} rounds");
    fleet.assert_never_over("long-lived");
    assert_eq!(fleet.backend_max(), LIMIT as usize);
    close_all(open).await;
}

// (g) ------------------------------------------------------------------------------------------

/// With headroom 0 an instance holds no spare share: every admission pauses its stream, borrows,
/// and resumes it from the scheduler. Streams whose client leaves while their borrow is in
/// flight (Redis frozen, so the round takes an I/O timeout) are destroyed with the borrow
/// pending: the scheduler is deleted first, Envoy keeps running, nothing leaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g_every_admission_borrows_and_streams_may_leave_mid_borrow() {
    use tokio::io::AsyncWriteExt;
    let mut fleet = Fleet::start_with("keep_share", INSTANCES, 0).await;
    let borrows = |v: &Value| v["borrows"].as_u64().unwrap_or(0);
    let b0 = borrows(&fleet.view(0).await);
    let mut open = Vec::new();
    for _ in 0..LIMIT {
        open.push(
            connect(fleet.ports[0], "/ws")
                .await
                .expect_open("resumed after a borrow"),
        );
    }
    let b1 = borrows(&fleet.view(0).await);
    assert!(
        b1 - b0 >= LIMIT as u64,
        "{} borrows for {LIMIT} admissions: some did not pause",
        b1 - b0
    );
    for c in open.iter_mut() {
        c.echo("resumed")
            .await
            .expect("a resumed stream is a working tunnel");
    }
    close_all(open).await;
    fleet.expect_fleet_live("closed", &[0; PODS], SETTLE).await;

    let mut before = 0;
    for i in 0..INSTANCES {
        before += borrows(&fleet.view(i).await);
    }
    fleet.redis.freeze();
    tokio::time::sleep(Duration::from_millis(2 * REFRESH_MS)).await;
    for i in 0..30 {
        let port = fleet.ports[i % INSTANCES];
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        s.write_all(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .expect("write");
        tokio::time::sleep(Duration::from_millis(50 + (i as u64 % 4) * 10)).await;
        drop(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    fleet.redis.thaw();
    for e in fleet.envoys.iter_mut().flatten() {
        e.assert_running();
        assert!(!e.log().contains("wscap: panic"), "{}", e.log());
    }
    assert_eq!(fleet.backend_active(), vec![0; PODS]);
    fleet
        .expect_fleet_live("after the abandoned borrows", &[0; PODS], SETTLE)
        .await;
    eventually(
        "every abandoned stream had asked for a borrow",
        SETTLE,
        || async {
            let mut after = 0;
            let mut each = Vec::new();
            for i in 0..INSTANCES {
                let v = fleet.view(i).await;
                after += borrows(&v);
                each.push((borrows(&v), v["redis_ok"].clone()));
            }
            // A client may leave before Envoy has read its request (a loaded host): most, not all.
            (after - before >= 20).then_some(()).ok_or(format!(
                "{} borrows for 30 abandoned streams; per instance {each:?}",
                after - before
            ))
        },
    )
    .await;
    for i in 0..INSTANCES {
        let doc = fleet.envoy(i).wscap().await;
        for h in wscap_e2e::metrics::hosts(&doc, CLUSTER) {
            assert_eq!(h.active, 0, "envoy-{i} still counts {h:?}");
        }
    }
    let (open, _) = fleet.fill(FLEET + 1).await;
    assert_eq!(
        open.len(),
        FLEET,
        "the whole capacity after the abandoned borrows"
    );
    fleet.assert_never_over("after the abandoned borrows");
    close_all(open).await;
}

// bad config ------------------------------------------------------------------------------------

/// A bad global-mode config is refused at load, with a message that names the problem.
#[test]
fn bad_global_config_is_refused_at_load() {
    let dir = wscap_e2e::scratch_dir("bad-tls");
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").expect("write");
    let missing_ca = format!(
        r#"{{"redis_url":"rediss://127.0.0.1:1","tls_ca_file":"{}"}}"#,
        dir.join("missing.pem").display()
    );
    let garbage_ca = format!(
        r#"{{"redis_url":"rediss://127.0.0.1:1","tls_ca_file":"{}"}}"#,
        garbage.display()
    );
    let cases = [
        (missing_ca.as_str(), "tls_ca_file"),
        (garbage_ca.as_str(), "no PEM certificate"),
        (
            r#"{"redis_url":"redis://127.0.0.1:1","tls_ca_file":"/etc/hostname"}"#,
            "tls_ca_file needs a rediss:// redis_url",
        ),
        (
            r#"{"redis_url":"redis://127.0.0.1:1","lease_ttl_ms":1000,"refresh_ms":900}"#,
            "refresh_ms must be at least 10 and at most a third of lease_ttl_ms",
        ),
        (
            r#"{"redis_url":"http://x"}"#,
            "redis_url must start with redis://",
        ),
        // Break #9: the URL is shown without its user info, never with the password.
        (
            r#"{"redis_url":"http://app:hunter2-secret@127.0.0.1:1"}"#,
            "redis_url must start with redis:// or rediss://, got \"http://***@127.0.0.1:1\"",
        ),
        (
            r#"{"redis_url":"redis://:hunter2-secret@127.0.0.1:1","lease_ttl_ms":1000,"refresh_ms":900}"#,
            "refresh_ms must be at least 10",
        ),
        (r#"{"lease_ttl_ms":1500}"#, "need \"redis_url\""),
        (
            r#"{"redis_url":"redis://127.0.0.1:1","fail_mode":"local_limit"}"#,
            "fail_mode local_limit needs local_limit",
        ),
        (
            r#"{"redis_url":"redis://127.0.0.1:1","fail_mod":"reject"}"#,
            "unknown field `fail_mod`",
        ),
    ];
    for (json, why) in cases {
        let l = ListenerSpec::new(
            LISTENER,
            CLUSTER,
            vec![config::wscap_filter(&config::filter_config(CLUSTER, 1, 1))],
        );
        let mut boot = config::bootstrap(
            std::slice::from_ref(&l),
            vec![config::static_cluster(
                CLUSTER,
                &[Endpoint::new("127.0.0.1:9".parse().unwrap())],
                true,
            )],
            true,
        );
        boot["bootstrap_extensions"][0]["typed_config"]["extension_config"]["value"] = json.into();
        let (status, log) =
            wscap_e2e::envoy::run_to_exit(&boot, &Opts::with_module(1), Duration::from_secs(30));
        assert!(!status.success(), "{json}: Envoy accepted it");
        assert!(
            log.contains("wscap: bootstrap extension config \"wscap\" refused")
                && log.contains(why),
            "{json}: expected {why:?} in the log:\n{log}"
        );
        assert!(
            !log.contains("hunter2"),
            "{json}: the password is in Envoy's log:\n{log}"
        );
    }
}

// examples -------------------------------------------------------------------------------------

/// `examples/envoy/multi-instance/envoy-{1,2,3}.yaml` run as written (only ports and the Redis
/// port rewritten): 3 instances, one Redis, exactly 5 + 5 + 3 connections fleet-wide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_run_as_written() {
    use wscap_e2e::example;
    let redis = RedisServer::start();
    let mut pods = Vec::new();
    for i in 0..PODS {
        pods.push(Backend::start(&format!("pod-{i}")).await);
    }
    let addrs: Vec<_> = pods.iter().map(|b| b.addr).collect();
    let mut envoys = Vec::new();
    let mut ports = Vec::new();
    for i in 1..=3 {
        let file = format!("multi-instance/envoy-{i}.yaml");
        let text = example::read(&file);
        assert!(text.contains("redis://127.0.0.1:6379"), "{file}");
        let text = text
            .replace(&format!("port_value: 1000{i}"), "port_value: 0")
            .replace(&format!("port_value: 990{i}"), "port_value: 0")
            .replace(
                "redis://127.0.0.1:6379",
                &format!("redis://127.0.0.1:{}", redis.port),
            );
        let text = example::rewrite_pods(&text, &file, &addrs);
        let dir = wscap_e2e::scratch_dir("multi-instance");
        let envoy = Envoy::try_start_yaml(&dir, &text, &Opts::with_module(2))
            .await
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        ports.push(envoy.listener_port(example::EXAMPLE_LISTENER).await);
        envoys.push(envoy);
    }
    // A fresh ledger: its short grace (about 1.5 refresh intervals), then the fleet grants it all.
    let want: usize = example::EXAMPLE_LIMITS.iter().sum();
    let mut open: Vec<WsClient> = Vec::new();
    let start = Instant::now();
    let mut i = 0;
    while open.len() < want {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "only {} of {want} admitted",
            open.len()
        );
        match connect(ports[i % 3], "/").await {
            Outcome::Open(c) => open.push(c),
            Outcome::Refused(r) => {
                assert_eq!(r.header("x-wscap-reason"), Some("no_capacity"));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Outcome::Failed(e) => panic!("{e}"),
        }
        i += 1;
    }
    // Then not one more, through any instance, for a few refresh rounds.
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        for &p in &ports {
            let r = connect(p, "/").await.expect_refused("past the fleet limit");
            assert_eq!(r.header("x-wscap-reason"), Some("no_capacity"));
        }
    }
    for (b, limit) in pods.iter().zip(example::EXAMPLE_LIMITS) {
        assert_eq!(b.active(), limit, "{}", b.name);
        assert!(
            b.max_seen() <= limit,
            "{} peaked at {}",
            b.name,
            b.max_seen()
        );
    }
    let r = envoys[0].admin_get("/wscap?scope=global").await;
    let v: Value = serde_json::from_slice(&r.body).expect("fleet view");
    let live: Vec<u64> = v["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["live"].as_u64().unwrap())
        .collect();
    assert_eq!(live.iter().sum::<u64>(), want as u64, "{v}");
    close_all(open).await;
}

// measurement ----------------------------------------------------------------------------------

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Handshake latency in local mode vs global mode (share suffices / a borrow is needed), and
/// Redis commands per admitted connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: run with --ignored --nocapture"]
async fn global_latency() {
    let n: usize = std::env::var("WSCAP_E2E_HANDSHAKES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    // Local mode: one Envoy, the same pods, no Redis.
    let pod = Backend::start("pod-local").await;
    let l = ListenerSpec::new(
        LISTENER,
        CLUSTER,
        vec![config::wscap_filter(&config::filter_config(
            CLUSTER, 100_000, 1,
        ))],
    );
    let boot = config::bootstrap(
        std::slice::from_ref(&l),
        vec![config::static_cluster(
            CLUSTER,
            &[Endpoint::new(pod.addr)],
            true,
        )],
        true,
    );
    let local = Envoy::start(&boot, &Opts::with_module(2)).await;
    let local_port = local.listener_port(LISTENER).await;
    let mut t_local = Vec::new();
    for i in 0..(n + 20) {
        let t0 = Instant::now();
        let c = connect(local_port, "/ws").await.expect_open("local");
        if i >= 20 {
            t_local.push(t0.elapsed());
        }
        c.close().await;
    }
    drop(local);

    let plain = global_phases(Link::Plain, n).await;
    let tls = global_phases(Link::Secure, n).await;
    let GlobalPhases {
        mut t_share,
        mut t_borrow,
        idle_rate,
        c0,
        c1,
        c2,
        b0,
        b1,
        share_secs,
        borrow_secs,
        borrow_admitted,
    } = plain;
    let (mut tls_share, mut tls_borrow) = (tls.t_share, tls.t_borrow);
    tls_share.sort();
    tls_borrow.sort();
    t_local.sort();
    t_share.sort();
    t_borrow.sort();
    println!(
        "WebSocket handshake latency through Envoy 1.40 (--concurrency 2), test built {}:",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    println!("  {:<34} {:>6} {:>10} {:>10}", "", "n", "p50 µs", "p99 µs");
    for (name, t) in [
        ("local mode", &t_local),
        ("global, share suffices", &t_share),
        ("global, borrow needed", &t_borrow),
        ("global over TLS, share suffices", &tls_share),
        ("global over TLS, borrow needed", &tls_borrow),
    ] {
        if t.is_empty() {
            println!("  {name:<34} {:>6}", 0);
            continue;
        }
        println!(
            "  {:<34} {:>6} {:>10.1} {:>10.1}",
            name,
            t.len(),
            us(percentile(t, 0.5)),
            us(percentile(t, 0.99))
        );
    }
    let per = |cmds: u64, secs: f64, admitted: usize| {
        (cmds as f64 - idle_rate * secs).max(0.0) / admitted as f64
    };
    println!(
        "  redis commands: idle {idle_rate:.1}/s (refresh {REFRESH_MS} ms, {PODS} pods); share phase {} in {share_secs:.2} s for {n} admitted; borrow phase {} in {borrow_secs:.2} s for {borrow_admitted} admitted with {} borrows",
        c1 - c0,
        c2 - c1,
        b1 - b0
    );
    println!(
        "  redis commands per admitted connection beyond the idle refresh: share phase {:.2}, borrow phase {:.2} ({:.2} per borrow); raw, refresh included: {:.2}",
        per(c1 - c0, share_secs, n),
        per(c2 - c1, borrow_secs, borrow_admitted),
        per(c2 - c1, borrow_secs, (b1 - b0).max(1) as usize),
        (c2 - c0) as f64 / (n + borrow_admitted) as f64
    );
}

/// What [`global_phases`] measured on one fleet.
struct GlobalPhases {
    t_share: Vec<Duration>,
    t_borrow: Vec<Duration>,
    idle_rate: f64,
    c0: u64,
    c1: u64,
    c2: u64,
    b0: u64,
    b1: u64,
    share_secs: f64,
    borrow_secs: f64,
    borrow_admitted: usize,
}

/// The global-mode phases of [`global_latency`] on a one-instance fleet reaching Redis over
/// `link`.
async fn global_phases(link: Link, n: usize) -> GlobalPhases {
    // Global mode, one instance (so the fleet's commands are this instance's), headroom 2:
    // a handshake while fewer than `headroom` are open uses the held share; opening past it
    // needs a borrow round.
    let fleet = Fleet::start_link("keep_share", 1, 2, link).await;
    let port = fleet.ports[0];
    let counters = |v: &Value| {
        (
            v["redis_commands"].as_u64().unwrap_or(0),
            v["borrows"].as_u64().unwrap_or(0),
        )
    };
    // Idle: the refresh rounds alone (one claim per pod per refresh).
    let (i0, _) = counters(&fleet.view(0).await);
    let idle_start = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (i1, _) = counters(&fleet.view(0).await);
    let idle_rate = (i1 - i0) as f64 / idle_start.elapsed().as_secs_f64();

    let (c0, _) = counters(&fleet.view(0).await);
    let share_start = Instant::now();
    let mut t_share = Vec::new();
    for _ in 0..n {
        let t0 = Instant::now();
        let c = connect(port, "/ws").await.expect_open("share");
        t_share.push(t0.elapsed());
        c.close().await;
    }
    let share_secs = share_start.elapsed().as_secs_f64();
    let (c1, b0) = counters(&fleet.view(0).await);
    // Borrow: hold connections so the live count climbs past the spare share; a handshake that
    // raised the borrow counter needed a round trip.
    let borrow_start = Instant::now();
    let mut t_borrow = Vec::new();
    let mut rounds = 0;
    while t_borrow.len() < n && rounds < 50 {
        rounds += 1;
        let mut held = Vec::new();
        for _ in 0..FLEET {
            let before = counters(&fleet.view(0).await).1;
            let t0 = Instant::now();
            let c = connect(port, "/ws").await.expect_open("borrow");
            let dt = t0.elapsed();
            if counters(&fleet.view(0).await).1 > before {
                t_borrow.push(dt);
            }
            held.push(c);
        }
        close_all(held).await;
        // Let the spare share flow back, so the next round borrows again.
        tokio::time::sleep(Duration::from_millis(3 * REFRESH_MS)).await;
    }
    let borrow_secs = borrow_start.elapsed().as_secs_f64();
    let (c2, b1) = counters(&fleet.view(0).await);
    let borrow_admitted = rounds * FLEET;
    GlobalPhases {
        t_share,
        t_borrow,
        idle_rate,
        c0,
        c1,
        c2,
        b0,
        b1,
        share_secs,
        borrow_secs,
        borrow_admitted,
    }
}
