//! One run: start every setup, measure them interleaved, then the storms, then report.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use wscap_e2e::backend::Backend;
use wscap_e2e::envoy::{Envoy, Opts};
use wscap_e2e::redis::RedisServer;

use crate::authz::Authz;
use crate::load::{self, Phase};
use crate::scenario::{self, Kind, Limits, CLUSTER, LISTENER};
use crate::{alloc, report, sys, Cfg};

/// A timed phase of one setup, with Envoy's CPU time spent in it.
#[derive(Debug, Default, Clone)]
pub struct Measured {
    /// What the generator saw.
    pub phase: Phase,
    /// CPU time Envoy used meanwhile.
    pub envoy_cpu: Duration,
    /// Envoy CPU µs per operation, per merged round.
    pub cpu_rounds: Vec<f64>,
}

impl Measured {
    /// Envoy CPU µs per operation (median over rounds).
    pub fn cpu_us_per_op(&self) -> f64 {
        if self.cpu_rounds.is_empty() {
            self.envoy_cpu.as_secs_f64() * 1e6 / (self.phase.ops.max(1) as f64)
        } else {
            load::median(&self.cpu_rounds)
        }
    }
}

/// The storm's outcome for one setup.
#[derive(Debug, Default, Clone)]
pub struct StormResult {
    /// Clients that got 101.
    pub opened: usize,
    /// Clients refused, by HTTP status.
    pub refused: BTreeMap<u16, usize>,
    /// Clients without an answer within the wait.
    pub no_answer: usize,
    /// Most connections each pod held at once (the pods' own count).
    pub per_pod_max: Vec<usize>,
    /// Anything else worth saying (e.g. the authz service's count).
    pub note: String,
    /// Clients that got 101 in a second, identical storm after every first-wave connection closed.
    pub second_wave_opened: usize,
}

/// Everything measured for one setup.
#[derive(Debug, Default, Clone)]
pub struct KindResult {
    /// Why the setup could not run, if it could not.
    pub failed: Option<String>,
    /// Handshakes.
    pub hs: Measured,
    /// 64-byte frames.
    pub m64: Measured,
    /// 4 KiB frames.
    pub m4k: Measured,
    /// Plain HTTP requests.
    pub plain: Measured,
    /// Envoy RSS before the idle WebSockets (bytes).
    pub rss_base: u64,
    /// Envoy RSS with them open (bytes).
    pub rss_idle: u64,
    /// Idle WebSockets that opened.
    pub idle_opened: usize,
    /// Idle WebSockets that did not, and why (first).
    pub idle_failed: (usize, Option<String>),
    /// The storm.
    pub storm: Option<StormResult>,
    /// Why the storm could not run.
    pub storm_failed: Option<String>,
}

/// The whole run.
pub struct RunResult {
    /// The sizes used.
    pub cfg: Cfg,
    /// Per setup, in [`Kind::ALL`] order (setups left out are absent).
    pub kinds: Vec<(Kind, KindResult)>,
    /// Why (f) was left out, if it was.
    pub global_left_out: Option<String>,
    /// wscap-core's memory per connection.
    pub core: alloc::CoreMemory,
    /// Wall time of the run.
    pub wall: Duration,
    /// Load average at the start and at the end.
    pub load: (String, String),
    /// Envoy and the generator were pinned to different CPUs.
    pub pinned: bool,
    /// log10 range (µs) of the latency plot's x axis, once drawn.
    pub plot_range: Option<(i32, i32)>,
    /// Instructions wscap's hooks execute per handshake, frame and plain request
    /// (`wscap-hookcost`, callgrind), or why they were not counted.
    pub instructions: Result<serde_json::Value, String>,
}

/// Run `wscap-hookcost --json` (built beside this binary) over the module being measured.
fn hookcost() -> Result<serde_json::Value, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let bin = exe.with_file_name("wscap-hookcost");
    if !bin.is_file() {
        return Err(format!(
            "{} is not built (`cargo build --release -p wscap-bench` builds it)",
            bin.display()
        ));
    }
    let so = wscap_e2e::module_dir().join("libwscap.so");
    let out = std::process::Command::new(&bin)
        .arg("--so")
        .arg(&so)
        .arg("--json")
        .output()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// A running setup.
struct Setup {
    kind: Kind,
    envoy: Envoy,
    port: u16,
    _authz: Option<Authz>,
}

async fn wait_for<F, Fut>(what: &str, deadline: Duration, mut f: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let start = Instant::now();
    loop {
        match f().await {
            Ok(()) => return Ok(()),
            Err(e) if start.elapsed() > deadline => {
                return Err(format!("{what}: not true after {deadline:?}: {e}"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Start one setup's Envoy (and authz service), pinned to CPU 0, and wait until it serves.
async fn start(
    kind: Kind,
    pods: &[SocketAddr],
    limits: &Limits,
    concurrency: u32,
    redis: Option<&RedisServer>,
    pin: bool,
) -> Result<Setup, String> {
    let authz = if kind == Kind::ExtAuthz {
        Some(Authz::start(limits.per_cluster).await)
    } else {
        None
    };
    if kind == Kind::Global && redis.is_none() {
        return Err("no redis-server".into());
    }
    let boot = scenario::bootstrap(
        kind,
        pods,
        limits,
        authz.as_ref().map(|a| a.port),
        redis
            .filter(|_| kind == Kind::Global)
            .map(|r| r.url())
            .as_deref(),
    );
    let opts = Opts {
        concurrency,
        module: kind.module(),
        extra_args: Vec::new(),
        hot_restart: None,
    };
    let envoy = Envoy::try_start(&boot, &opts).await?;
    if pin {
        if let Some(pid) = envoy.pid() {
            sys::pin(pid, 0)?;
        }
    }
    let port = envoy.listener_port(LISTENER).await;
    if kind.module() {
        let want = pods.len();
        wait_for("wscap lists every pod", Duration::from_secs(10), || async {
            let r = wscap_e2e::http::get(envoy.admin, "/wscap").await?;
            let doc: serde_json::Value =
                serde_json::from_slice(&r.body).map_err(|e| format!("{e}: {}", r.text()))?;
            let n = wscap_e2e::metrics::hosts(&doc, CLUSTER).len();
            (n == want)
                .then_some(())
                .ok_or(format!("{n} hosts listed, want {want}"))
        })
        .await?;
    }
    if kind == Kind::Global {
        let want = pods.len();
        wait_for(
            "global mode reaches Redis",
            Duration::from_secs(10),
            || async {
                let r = wscap_e2e::http::get(envoy.admin, "/wscap?scope=global").await?;
                let v: serde_json::Value =
                    serde_json::from_slice(&r.body).map_err(|e| format!("{e}: {}", r.text()))?;
                // A pod new to Redis grants nothing beyond what instances hold for the restart
                // grace (cold starts too): wait until every pod has given this instance a share.
                let pods = v["pods"].as_array().cloned().unwrap_or_default();
                let shared = pods
                    .iter()
                    .filter(|p| p["my_share"].as_u64() > Some(0))
                    .count();
                (v["redis_ok"] == true && pods.len() == want && shared == want)
                    .then_some(())
                    .ok_or(format!("fleet view {v}"))
            },
        )
        .await?;
    }
    Ok(Setup {
        kind,
        envoy,
        port,
        _authz: authz,
    })
}

async fn measured<F, Fut>(pid: Option<u32>, f: F) -> Measured
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Phase>,
{
    let c0 = pid.map(sys::cpu_time).unwrap_or_default();
    let phase = f().await;
    let c1 = pid.map(sys::cpu_time).unwrap_or_default();
    Measured {
        phase,
        envoy_cpu: c1.saturating_sub(c0),
        cpu_rounds: Vec::new(),
    }
}

fn merge(into: &mut Measured, m: Measured) {
    into.cpu_rounds.push(m.cpu_us_per_op());
    into.phase.merge(m.phase);
    into.envoy_cpu += m.envoy_cpu;
}

/// Run everything; `Err` when a setup failed to run (or a measurement is empty).
pub async fn run(cfg: Cfg, pin: bool) -> Result<(), String> {
    let t0 = Instant::now();
    let load0 = sys::loadavg();
    eprintln!(
        "wscap-bench: {} run, {} CPUs ({}), load {load0}, Envoy {}",
        if cfg.smoke { "smoke" } else { "full" },
        sys::nproc(),
        sys::cpu_model(),
        wscap_e2e::envoy_bin().display()
    );

    let mut global_left_out = None;
    let have_redis = std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let kinds: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|k| {
            if *k != Kind::Global {
                return true;
            }
            if cfg.no_global {
                global_left_out = Some("left out of this run (`--no-global`)".into());
                false
            } else if !have_redis {
                global_left_out = Some("redis-server is not installed".into());
                false
            } else {
                true
            }
        })
        .collect();
    let mut results: Vec<(Kind, KindResult)> =
        kinds.iter().map(|k| (*k, KindResult::default())).collect();

    // ---- performance: one Envoy per setup, --concurrency 1, pinned to CPU 0 -------------------
    {
        let mut backends = Vec::new();
        for i in 0..cfg.pods {
            backends.push(Backend::start(&format!("pod-{i}")).await);
        }
        let pods: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
        let redis = kinds.contains(&Kind::Global).then(RedisServer::start);
        if let (Some(r), true) = (&redis, pin) {
            if let Some(pid) = r.pid() {
                let _ = sys::pin(pid, 1);
            }
        }
        let mut setups = Vec::new();
        for (k, res) in results.iter_mut() {
            match start(*k, &pods, &Limits::perf(), 1, redis.as_ref(), pin).await {
                Ok(s) => setups.push(s),
                Err(e) => {
                    eprintln!("{}: failed to start: {e}", k.label());
                    res.failed = Some(first_line(&e));
                }
            }
        }
        // Warm-up: a few handshakes and plain requests through each.
        for s in &setups {
            let w = load::handshakes(s.port, 2, Duration::from_millis(100)).await;
            if w.ops == 0 {
                let r = slot(&mut results, s.kind);
                r.failed = Some(format!(
                    "warm-up handshakes failed: {}",
                    w.first_error.unwrap_or_default()
                ));
            }
        }
        setups.retain(|s| slot(&mut results, s.kind).failed.is_none());

        eprintln!("[{:>4.0} s] handshakes...", t0.elapsed().as_secs_f64());
        for round in 0..cfg.rounds {
            for i in 0..setups.len() {
                let s = &setups[(i + round) % setups.len()];
                let m = measured(s.envoy.pid(), || {
                    load::handshakes(s.port, cfg.hs_conns, cfg.hs_dur)
                })
                .await;
                merge(&mut slot(&mut results, s.kind).hs, m);
            }
        }
        for (size, name) in [(64usize, "64 B"), (4096, "4 KiB")] {
            eprintln!("[{:>4.0} s] {name} frames...", t0.elapsed().as_secs_f64());
            for round in 0..cfg.rounds {
                for i in 0..setups.len() {
                    let s = &setups[(i + round) % setups.len()];
                    let m = measured(s.envoy.pid(), || {
                        load::messages(s.port, cfg.msg_conns, cfg.msg_window, size, cfg.msg_dur)
                    })
                    .await;
                    let r = slot(&mut results, s.kind);
                    merge(if size == 64 { &mut r.m64 } else { &mut r.m4k }, m);
                }
            }
        }
        eprintln!("[{:>4.0} s] plain HTTP...", t0.elapsed().as_secs_f64());
        for round in 0..cfg.rounds {
            for i in 0..setups.len() {
                let s = &setups[(i + round) % setups.len()];
                let m = measured(s.envoy.pid(), || {
                    load::plain(s.port, cfg.plain_conns, cfg.plain_dur)
                })
                .await;
                merge(&mut slot(&mut results, s.kind).plain, m);
            }
        }
        eprintln!(
            "[{:>4.0} s] {} idle WebSockets per setup...",
            t0.elapsed().as_secs_f64(),
            cfg.idle
        );
        for s in &setups {
            let pid = s.envoy.pid().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(300)).await;
            let base = sys::rss_bytes(pid).unwrap_or(0);
            let (held, nf, e) = load::idle(s.port, cfg.idle, 32).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let idle = sys::rss_bytes(pid).unwrap_or(0);
            if nf > 0 && s.kind.module() {
                if let Ok(r) = wscap_e2e::http::get(s.envoy.admin, "/wscap").await {
                    eprintln!(
                        "{}: {nf} idle WebSockets refused; /wscap: {}",
                        s.kind.label(),
                        r.text()
                    );
                }
            }
            let r = slot(&mut results, s.kind);
            r.rss_base = base;
            r.rss_idle = idle;
            r.idle_opened = held.len();
            r.idle_failed = (nf, e);
            eprintln!(
                "[{:>4.0} s]   {}: {} open, {nf} failed",
                t0.elapsed().as_secs_f64(),
                s.kind.label(),
                r.idle_opened
            );
            drop(held);
            // Let Envoy and the pods see every close before the next setup.
            let _ = wait_for("pods drained", Duration::from_secs(20), || async {
                let n: usize = backends.iter().map(Backend::active).sum();
                (n == 0).then_some(()).ok_or(format!("{n} still open"))
            })
            .await;
        }
        for s in &mut setups {
            if let Some(st) = s.envoy.try_wait() {
                slot(&mut results, s.kind).failed = Some(format!(
                    "Envoy exited during the run ({})",
                    wscap_e2e::envoy::describe_exit(&st)
                ));
            }
        }
        drop(setups);
        drop(redis);
    }

    // ---- enforcement: a storm on fresh pods, --concurrency 2 ----------------------------------
    eprintln!(
        "[{:>4.0} s] storm: {} clients, {} pods, limit {} per pod...",
        t0.elapsed().as_secs_f64(),
        cfg.storm_clients,
        cfg.pods,
        cfg.storm_limit
    );
    for (k, res) in results.iter_mut() {
        match storm(*k, &cfg, pin).await {
            Ok(s) => res.storm = Some(s),
            Err(e) => {
                eprintln!("{}: storm failed: {e}", k.label());
                res.storm_failed = Some(first_line(&e));
            }
        }
    }

    let core = alloc::core_memory(if cfg.smoke { 1_000 } else { 10_000 });
    eprintln!(
        "[{:>4.0} s] instructions per hook call (callgrind)...",
        t0.elapsed().as_secs_f64()
    );
    let instructions = hookcost();
    let run = RunResult {
        cfg: cfg.clone(),
        kinds: results,
        global_left_out,
        core,
        wall: t0.elapsed(),
        load: (load0, sys::loadavg()),
        pinned: pin,
        plot_range: None,
        instructions,
    };
    report::finish(run)
}

async fn storm(kind: Kind, cfg: &Cfg, pin: bool) -> Result<StormResult, String> {
    let mut backends = Vec::new();
    for i in 0..cfg.pods {
        backends.push(Backend::start(&format!("pod-{i}")).await);
    }
    let pods: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let limits = Limits {
        per_pod: cfg.storm_limit,
        per_cluster: u64::from(cfg.storm_limit) * cfg.pods as u64,
    };
    let redis = (kind == Kind::Global).then(RedisServer::start);
    let setup = start(kind, &pods, &limits, 2, redis.as_ref(), pin).await?;
    let s = load::storm(setup.port, cfg.storm_clients, cfg.storm_wait).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let per_pod_max: Vec<usize> = backends.iter().map(Backend::max_seen).collect();
    let note = String::new();
    let r = StormResult {
        opened: s.opened,
        refused: s.refused.clone(),
        no_answer: s.no_answer,
        per_pod_max,
        note,
        second_wave_opened: 0,
    };
    // Second wave: close every connection of the first with a close handshake, wait until the
    // pods see them gone, and send the same storm again. An approach that cannot give slots back
    // shows it here.
    for c in s.held {
        c.close().await;
    }
    let _ = wait_for("pods drained", Duration::from_secs(10), || async {
        let n: usize = backends.iter().map(Backend::active).sum();
        (n == 0).then_some(()).ok_or(format!("{n} still open"))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s2 = load::storm(setup.port, cfg.storm_clients, cfg.storm_wait).await;
    let mut r = r;
    r.second_wave_opened = s2.opened;
    if let Some(a) = &setup._authz {
        r.note = format!(
            "the service allowed {} of {} checks over both storms",
            a.allowed(),
            a.checks()
        );
    }
    for c in s2.held {
        c.reset();
    }
    drop(setup);
    Ok(r)
}

fn slot(results: &mut [(Kind, KindResult)], k: Kind) -> &mut KindResult {
    &mut results
        .iter_mut()
        .find(|(kk, _)| *kk == k)
        .expect("kind in results")
        .1
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}
