//! wscap-global-scale: what global mode (protocol v1) costs one Redis at fleet scale.
//!
//! N coordinators ([`wscap_global::Coordinator`], each over its own [`wscap_core::Registry`],
//! as N Envoy processes would run) share P pods (limit 100 each by default) through one real
//! `redis-server` pinned to CPU 0; this process pins itself (every coordinator thread and the
//! driver) to CPU 1. Each instance but the first holds a share of a fleet-wide fill (50 % of
//! capacity by default) and churns 1 % of its connections per second, spread evenly over the
//! second (close a permit, admit a new one: locally when its share allows, else after a
//! borrow). The first instance is the borrow probe: headroom 0, so every admission beyond what
//! it holds needs a borrow; it admits one connection five times per second and times
//! `request_borrow` until its callback.
//!
//! Measured over the window after a warm-up (at least two refreshes, until the fill is in place
//! or 20 s passed): Redis CPU (INFO `used_cpu_user` + `used_cpu_sys`, as % of one core),
//! commands per second (`total_commands_processed`), claims (`cmdstat_evalsha` calls) and Redis
//! CPU µs per claim, refresh coverage (claims made / claims due: N × P per refresh), claim errors
//! (the coordinators' counters, Redis's error replies, and reconnections: a failed claim drops its
//! connection), borrow latency p50 / p99 of the probe, Redis's and this process's time waiting
//! for a CPU (`/proc/PID/task/*/schedstat`: the machine may be shared), and this process's CPU
//! (the simulated fleet shares one core, so a coverage below 100 % may be the client side). A run
//! is *saturated* when Redis CPU ≥ 90 % of one core, or CPU plus waiting for a CPU ≥ 90 % (Redis
//! had work queued the whole window), or a claim failed.
//!
//! ```text
//! wscap-global-scale --instances N --pods P [--secs S] [--limit L] [--fill PCT]
//!                    [--refresh-ms MS] [--headroom H]     # one run, a summary
//! wscap-global-scale --all [--secs S]                     # the matrix, a markdown table
//! wscap-global-scale --smoke                              # CI: 2 × 10 for a few seconds
//! ```
//!
//! Every run is a child process of its own (`--row`): its Redis is killed by PID and the
//! process exits when the window ends, even if coordinator rounds still lag behind (a round of a
//! saturated fleet may take minutes; nobody waits for it).

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wscap_core::{HostSpec, Permit, Registry};
use wscap_global::{BorrowOutcome, Coordinator, GlobalConfig};

#[allow(dead_code)]
#[path = "../sys.rs"]
mod sys;

/// The matrix of `--all`: (instances, pods).
const MATRIX: [(u32, u32); 5] = [(3, 100), (10, 1000), (30, 1000), (100, 1000), (100, 10_000)];
/// Probe admissions per second.
const PROBES_PER_SEC: u32 = 5;
/// Longest warm-up before the window starts, whatever the fill.
const MAX_WARMUP: Duration = Duration::from_secs(20);
/// Driver tick: churn is spread over the second in this many steps.
const TICK: Duration = Duration::from_millis(10);

/// Settings of one run.
#[derive(Debug, Clone)]
struct Spec {
    instances: u32,
    pods: u32,
    secs: u64,
    limit: u32,
    fill_pct: u32,
    refresh_ms: u64,
    headroom: Option<u32>,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            instances: 3,
            pods: 100,
            secs: 20,
            limit: 100,
            fill_pct: 50,
            refresh_ms: 1000,
            headroom: None,
        }
    }
}

/// A `redis-server` pinned to one CPU (`taskset -c`), killed by PID on drop.
struct PinnedRedis {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl PinnedRedis {
    fn start(cpu: Option<usize>) -> PinnedRedis {
        let port = wscap_testkit::free_port();
        let dir = wscap_testkit::scratch_dir("scale-redis");
        let mut cmd = match cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string(), "redis-server"]);
                c
            }
            None => Command::new("redis-server"),
        };
        cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // taskset execs redis-server: the child's PID is the server's.
        let child = cmd
            .spawn()
            .expect("redis-server and taskset must be installed");
        let redis = PinnedRedis { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// INFO all, as `field -> value` lines.
    fn info(&self) -> Info {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).ok();
        s.write_all(b"*2\r\n$4\r\nINFO\r\n$3\r\nall\r\n")
            .expect("send INFO");
        let mut r = BufReader::new(s);
        let mut head = String::new();
        r.read_line(&mut head).expect("INFO reply");
        let len: usize = head
            .trim()
            .strip_prefix('$')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("INFO reply: {head:?}"));
        let mut body = vec![0; len];
        r.read_exact(&mut body).expect("INFO body");
        Info(String::from_utf8_lossy(&body).into_owned())
    }
}

impl Drop for PinnedRedis {
    fn drop(&mut self) {
        // By the PID of our own unreaped child only, never by name.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The text of `INFO all`.
struct Info(String);

impl Info {
    fn field(&self, name: &str) -> Option<&str> {
        self.0.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|r| r.strip_prefix(':'))
                .map(str::trim)
        })
    }
    fn num(&self, name: &str) -> f64 {
        self.field(name).and_then(|v| v.parse().ok()).unwrap_or(0.0)
    }
    fn cpu_secs(&self) -> f64 {
        self.num("used_cpu_user") + self.num("used_cpu_sys")
    }
    /// `calls=` of one `cmdstat_<cmd>` line.
    fn calls(&self, cmd: &str) -> f64 {
        self.field(&format!("cmdstat_{cmd}"))
            .and_then(|v| v.split(',').find_map(|kv| kv.strip_prefix("calls=")))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0.0)
    }
}

/// One simulated proxy instance.
struct Instance {
    registry: &'static Registry,
    coordinator: Coordinator,
    held: Vec<(Permit, Instant)>,
    target: usize,
    /// Borrow requests sent and not answered yet.
    outstanding: Arc<AtomicU32>,
    /// Churn owed (fractional closes carried between ticks).
    churn_debt: f64,
    /// After a refused admission, no new try before this (a refused `acquire` scans every pod:
    /// at 10,000 pods, trying every tick would make this driver the load).
    next_try: Instant,
}

impl Instance {
    fn start(spec: &Spec, url: &str, k: u32, hosts: &[HostSpec], target: usize) -> Instance {
        let mut config = GlobalConfig::new(url);
        config.instance_id = Some(format!("scale-{k:03}"));
        config.refresh_ms = spec.refresh_ms;
        if k == 0 {
            config.headroom = 0; // the borrow probe
        } else if let Some(h) = spec.headroom {
            config.headroom = h;
        }
        let registry: &'static Registry = Box::leak(Box::new(Registry::new()));
        let coordinator = Coordinator::start(config, registry).expect("start coordinator");
        registry
            .set_default_limit("pods", spec.limit)
            .expect("limit");
        registry.set_hosts("pods", hosts).expect("hosts");
        Instance {
            registry,
            coordinator,
            held: Vec::with_capacity(target),
            target,
            outstanding: Arc::new(AtomicU32::new(0)),
            churn_debt: 0.0,
            next_try: Instant::now(),
        }
    }

    /// Admits up to the target, locally while the share allows, then asks for the rest in one
    /// grouped borrow (at most 256 slots in flight).
    fn top_up(&mut self, now: Instant) {
        if now < self.next_try {
            return;
        }
        while self.held.len() < self.target {
            match self.registry.acquire("pods") {
                Ok(p) => self.held.push((p, now)),
                Err(_) => {
                    self.next_try = now + Duration::from_millis(100);
                    break;
                }
            }
        }
        let deficit = self.target - self.held.len().min(self.target);
        if deficit > 0 && self.outstanding.load(Ordering::Acquire) == 0 {
            let n = deficit.min(256) as u32;
            self.outstanding.store(n, Ordering::Release);
            for _ in 0..n {
                let o = Arc::clone(&self.outstanding);
                self.coordinator.request_borrow("pods", move |_| {
                    o.fetch_sub(1, Ordering::AcqRel);
                });
            }
        }
    }

    /// Closes `rate` of the held connections per second (this tick's part of it).
    fn churn(&mut self, rate: f64, dt: f64, rng: &mut u64) {
        self.churn_debt += self.held.len() as f64 * rate * dt;
        while self.churn_debt >= 1.0 && !self.held.is_empty() {
            self.churn_debt -= 1.0;
            *rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let i = ((*rng >> 33) as usize) % self.held.len();
            drop(self.held.swap_remove(i));
        }
    }
}

/// One run: its numbers, and its Redis (still running; the caller reports, then drops it).
fn run_one(spec: &Spec, redis_cpu: Option<usize>, announce: bool) -> (Value, PinnedRedis) {
    let load_start = sys::loadavg();
    let redis = PinnedRedis::start(redis_cpu);
    if announce {
        // The parent kills this PID too if this process has to be killed.
        println!("REDIS_PID {} {}", redis.child.id(), redis.port);
        let _ = std::io::stdout().flush();
    }
    let url = redis.url();
    let hosts: Vec<HostSpec> = (1..=spec.pods)
        .map(|i| {
            let a = format!("10.{}.{}.{}:8080", (i >> 16) & 255, (i >> 8) & 255, i & 255);
            HostSpec::parse(&a).expect("pod address")
        })
        .collect();
    let fillers = u64::from(spec.instances - 1);
    let fleet_fill = u64::from(spec.limit) * u64::from(spec.pods) * u64::from(spec.fill_pct) / 100;
    let per_instance = (fleet_fill / fillers) as usize;

    // Starts spread over one refresh, as unsynchronised proxies would be.
    let started = Instant::now();
    let mut fleet: Vec<Instance> = Vec::new();
    for k in 0..spec.instances {
        let target = if k == 0 { 0 } else { per_instance };
        fleet.push(Instance::start(spec, &url, k, &hosts, target));
        std::thread::sleep(Duration::from_millis(spec.refresh_ms) / spec.instances.max(1));
    }

    eprintln!(
        "  [{:5.1} s] {} coordinators started",
        started.elapsed().as_secs_f64(),
        spec.instances
    );
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let (probe_tx, probe_rx) = mpsc::channel::<(Duration, BorrowOutcome)>();
    let mut probe_asked: Option<Instant> = None;
    let mut next_probe = Instant::now();
    let mut probe_latencies: Vec<Duration> = Vec::new();
    let mut probes_answered_not_granted = 0u64;
    let mut measuring = false;
    let mut last_tick = Instant::now();

    let min_warmup = Duration::from_millis(2 * spec.refresh_ms);
    let redis_pid = redis.child.id();
    let mut window_start: Option<(Instant, Info, Duration, u64, Duration)> = None;
    let mut fill_at_start = 0usize;
    let mut bench_wait0 = Duration::ZERO;
    loop {
        let now = Instant::now();
        let dt = now.duration_since(last_tick).as_secs_f64();
        last_tick = now;
        for inst in fleet.iter_mut().skip(1) {
            if measuring {
                inst.churn(0.01, dt, &mut rng);
            }
            inst.top_up(now);
        }
        // The probe: one admission beyond its share, timed when it needs a borrow.
        // It keeps what it admitted (its cap then stays at its live count: headroom 0), so that
        // each probe needs a borrow.
        let probe = &mut fleet[0];
        while let Ok((waited, outcome)) = probe_rx.try_recv() {
            probe_asked = None;
            if measuring {
                if outcome == BorrowOutcome::Granted {
                    probe_latencies.push(waited);
                } else {
                    probes_answered_not_granted += 1;
                }
            }
            if let Ok(p) = probe.registry.acquire("pods") {
                probe.held.push((p, now));
            }
        }
        if probe_asked.is_none() && now >= next_probe {
            next_probe = now + Duration::from_secs(1) / PROBES_PER_SEC;
            match probe.registry.acquire("pods") {
                Ok(p) => probe.held.push((p, now)), // room was left: no borrow to time
                Err(_) => {
                    let tx = probe_tx.clone();
                    probe_asked = Some(now);
                    probe.coordinator.request_borrow("pods", move |o| {
                        let _ = tx.send((now.elapsed(), o));
                    });
                }
            }
        }

        let held: usize = fleet.iter().skip(1).map(|i| i.held.len()).sum();
        let wanted: usize = fleet.iter().skip(1).map(|i| i.target).sum();
        match &window_start {
            None => {
                let warm = now.duration_since(started);
                if (warm >= min_warmup && held >= wanted * 98 / 100) || warm >= MAX_WARMUP {
                    let coord_errors: u64 = fleet
                        .iter()
                        .map(|i| i.coordinator.fleet_view().claim_errors)
                        .sum();
                    fill_at_start = held;
                    window_start = Some((
                        now,
                        redis.info(),
                        sys::sched_wait(redis_pid),
                        coord_errors,
                        sys::cpu_time(std::process::id()),
                    ));
                    bench_wait0 = sys::sched_wait(std::process::id());
                    measuring = true;
                    eprintln!(
                        "  [{:5.1} s] window starts: fill {held} of {wanted}",
                        started.elapsed().as_secs_f64()
                    );
                }
            }
            Some((t0, ..)) => {
                if now.duration_since(*t0) >= Duration::from_secs(spec.secs) {
                    break;
                }
            }
        }
        std::thread::sleep(TICK.saturating_sub(now.elapsed()));
    }
    let Some((t0, info0, wait0, errors0, cpu0)) = window_start else {
        unreachable!("the loop ends only inside the window")
    };
    eprintln!("  [{:5.1} s] window ends", started.elapsed().as_secs_f64());
    let info1 = redis.info();
    let wait1 = sys::sched_wait(redis_pid);
    let wall = t0.elapsed().as_secs_f64();
    let cpu1 = sys::cpu_time(std::process::id());
    let held_end: usize = fleet.iter().skip(1).map(|i| i.held.len()).sum();
    let wanted: usize = fleet.iter().skip(1).map(|i| i.target).sum();
    let mut errors1 = 0u64;
    let mut redis_down = 0u32;
    let mut last_errors: Vec<String> = Vec::new();
    for inst in &fleet {
        let v = inst.coordinator.fleet_view();
        errors1 += v.claim_errors;
        // The view is published at the end of a round: before that it is the default (not ok).
        redis_down += u32::from(!v.redis_ok && v.last_error.is_none());
        if let Some(e) = v.last_error {
            if last_errors.len() < 3 && !last_errors.contains(&e) {
                last_errors.push(e);
            }
        }
    }
    let bench_wait1 = sys::sched_wait(std::process::id());
    // Never dropped: dropping a coordinator joins its thread, which first finishes its round,
    // and a lagging round of a saturated fleet takes minutes. The process exits instead.
    std::mem::forget(fleet);
    // A probe still waiting: how long (its borrow queues behind a refresh round that lags).
    let unanswered_s = probe_asked.map(|t| t.elapsed().as_secs_f64());
    let load_end = sys::loadavg();
    eprintln!(
        "  [{:5.1} s] measured; stopping redis-server",
        started.elapsed().as_secs_f64()
    );

    let redis_cpu_pct = (info1.cpu_secs() - info0.cpu_secs()) / wall * 100.0;
    let commands = info1.num("total_commands_processed") - info0.num("total_commands_processed");
    let claims =
        info1.calls("evalsha") + info1.calls("eval") - info0.calls("evalsha") - info0.calls("eval");
    let error_replies = info1.num("total_error_replies") - info0.num("total_error_replies");
    let claims_due =
        f64::from(spec.instances) * f64::from(spec.pods) * wall * 1000.0 / spec.refresh_ms as f64;
    // A failed claim drops its connection and the next one reconnects: Redis counts the
    // reconnections (less the one INFO connection of the window's end) even while a lagging
    // coordinator has not yet published its error count (it does at the end of a round).
    let reconnects =
        (info1.num("total_connections_received") - info0.num("total_connections_received") - 1.0)
            .max(0.0) as u64;
    let claim_errors = (errors1 - errors0).max(reconnects) + error_replies as u64;
    let redis_wait_pct = wait1.saturating_sub(wait0).as_secs_f64() / wall * 100.0;
    probe_latencies.sort();
    let pct = |q: f64| -> Option<f64> {
        if probe_latencies.is_empty() {
            return None;
        }
        let i = ((probe_latencies.len() as f64 - 1.0) * q).round() as usize;
        Some(probe_latencies[i].as_secs_f64() * 1000.0)
    };
    let bench_cpu_pct = (cpu1.saturating_sub(cpu0)).as_secs_f64() / wall * 100.0;
    let row = json!({
        "instances": spec.instances,
        "pods": spec.pods,
        "limit": spec.limit,
        "refresh_ms": spec.refresh_ms,
        "window_s": wall,
        "redis_cpu_pct": redis_cpu_pct,
        "commands_per_s": commands / wall,
        "claims_per_s": claims / wall,
        "claims_due_per_s": claims_due / wall,
        "refresh_coverage_pct": claims / claims_due * 100.0,
        "us_cpu_per_claim": if claims > 0.0 { (info1.cpu_secs() - info0.cpu_secs()) / claims * 1e6 } else { 0.0 },
        "borrow_p50_ms": pct(0.5),
        "borrow_p99_ms": pct(0.99),
        "borrows_timed": probe_latencies.len(),
        "borrows_not_granted": probes_answered_not_granted,
        "borrow_unanswered_waiting_s": unanswered_s,
        "claim_errors": claim_errors,
        "redis_error_replies": error_replies,
        "instances_without_a_finished_round": redis_down,
        "reconnects": reconnects,
        "last_errors": last_errors,
        "bench_runqueue_wait_pct": bench_wait1.saturating_sub(bench_wait0).as_secs_f64() / wall * 100.0,
        "redis_runqueue_wait_pct": redis_wait_pct,
        "bench_cpu_pct": bench_cpu_pct,
        "fill_pct_start": if wanted > 0 { fill_at_start as f64 / wanted as f64 * 100.0 } else { 100.0 },
        "fill_pct_end": if wanted > 0 { held_end as f64 / wanted as f64 * 100.0 } else { 100.0 },
        "peak_rss_mb": peak_rss_mb(),
        "saturated": redis_cpu_pct >= 90.0 || redis_cpu_pct + redis_wait_pct >= 90.0 || claim_errors > 0,
        "load_start": load_start,
        "load_end": load_end,
    });
    (row, redis)
}

/// VmHWM of this process, MiB.
fn peak_rss_mb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

fn ms(v: &Value) -> String {
    v.as_f64()
        .map_or_else(|| "–".to_owned(), |x| format!("{x:.2}"))
}

fn f(v: &Value, digits: usize) -> String {
    v.as_f64()
        .map_or_else(|| "?".to_owned(), |x| format!("{x:.digits$}"))
}

const TABLE_HEAD: &str = "| instances × pods | Redis CPU, % of one core (+ waiting for a CPU) | commands/s | claims/s (refresh due) | refresh coverage | Redis CPU µs per claim | borrow p50 / p99 ms (timed) | claim errors | bench CPU % (core 1) | fill start / end | saturated? |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|";

fn table_row(r: &Value) -> String {
    let sat = if r["saturated"].as_bool() == Some(true) {
        "**yes**"
    } else {
        "no"
    };
    format!(
        "| {} × {} | {} (+{}) | {} | {} ({}) | {} % | {} | {} / {} ({}) | {} | {} | {} / {} % | {} |",
        r["instances"],
        r["pods"],
        f(&r["redis_cpu_pct"], 1),
        f(&r["redis_runqueue_wait_pct"], 1),
        f(&r["commands_per_s"], 0),
        f(&r["claims_per_s"], 0),
        f(&r["claims_due_per_s"], 0),
        f(&r["refresh_coverage_pct"], 1),
        f(&r["us_cpu_per_claim"], 1),
        ms(&r["borrow_p50_ms"]),
        ms(&r["borrow_p99_ms"]),
        match r["borrow_unanswered_waiting_s"].as_f64() {
            Some(w) if w >= 1.0 => format!("{}; one unanswered after {w:.0} s", r["borrows_timed"]),
            _ => r["borrows_timed"].to_string(),
        },
        r["claim_errors"],
        f(&r["bench_cpu_pct"], 0),
        f(&r["fill_pct_start"], 0),
        f(&r["fill_pct_end"], 0),
        sat
    )
}

/// Runs one spec in a child process (`--row`); the row, or an error if it failed or overran.
fn run_child(spec: &Spec) -> Result<Value, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut args = vec![
        "--row".to_owned(),
        "--instances".to_owned(),
        spec.instances.to_string(),
        "--pods".to_owned(),
        spec.pods.to_string(),
        "--secs".to_owned(),
        spec.secs.to_string(),
        "--limit".to_owned(),
        spec.limit.to_string(),
        "--fill".to_owned(),
        spec.fill_pct.to_string(),
        "--refresh-ms".to_owned(),
        spec.refresh_ms.to_string(),
    ];
    if let Some(h) = spec.headroom {
        args.extend(["--headroom".to_owned(), h.to_string()]);
    }
    let mut child = Command::new(exe)
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| e.to_string())?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Warm-up, start-up spread, window, and a generous margin for the child's own teardown.
    let mut deadline = Instant::now() + MAX_WARMUP + Duration::from_secs(spec.secs + 90);
    let mut redis: Option<(i32, String)> = None;
    let mut row: Option<Value> = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                if let Some(p) = line.strip_prefix("REDIS_PID ") {
                    let mut w = p.split_whitespace();
                    redis = w
                        .next()
                        .and_then(|pid| pid.parse().ok())
                        .zip(w.next().map(str::to_owned));
                } else if let Some(j) = line.strip_prefix("ROW ") {
                    row = serde_json::from_str(j).ok();
                    // Reported: what is left is teardown, which a starved process may drag out.
                    deadline = deadline.min(Instant::now() + Duration::from_secs(15));
                } else {
                    println!("  {line}");
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            // The child's redis-server, if it is still that process (its command line names the
            // port the child reported): an orphan now, which only we know of.
            if let Some((pid, port)) = &redis {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&cmdline);
                if cmdline.contains("redis-server") && cmdline.contains(port.as_str()) {
                    // SAFETY: kill(2) on a PID whose command line we just checked.
                    unsafe { libc::kill(*pid, libc::SIGKILL) };
                }
            }
            if let Some(r) = row {
                eprintln!("  (the run reported, then did not exit in time: killed)");
                return Ok(r);
            }
            return Err(format!("{spec:?}: overran its time cap, killed"));
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    match row {
        Some(r) if status.success() => Ok(r),
        _ => Err(format!("{spec:?}: child failed ({status})")),
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: wscap-global-scale --instances N --pods P [--secs S] [--limit L] [--fill PCT] \
         [--refresh-ms MS] [--headroom H] | --all [--secs S] | --smoke"
    );
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut spec = Spec::default();
    let (mut all, mut smoke, mut row) = (false, false, false);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || -> u64 {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| usage())
        };
        match a.as_str() {
            "--instances" => spec.instances = val() as u32,
            "--pods" => spec.pods = val() as u32,
            "--secs" => spec.secs = val(),
            "--limit" => spec.limit = val() as u32,
            "--fill" => spec.fill_pct = val() as u32,
            "--refresh-ms" => spec.refresh_ms = val(),
            "--headroom" => spec.headroom = Some(val() as u32),
            "--all" => all = true,
            "--smoke" => smoke = true,
            "--row" => row = true,
            _ => usage(),
        }
    }
    if spec.instances < 2 || spec.pods == 0 || spec.secs == 0 || spec.limit == 0 {
        usage();
    }

    // Redis on CPU 0, everything of this process on CPU 1 (on a machine with two or more).
    let two_cores = sys::nproc() >= 2;
    if two_cores {
        if let Err(e) = sys::pin(0, 1) {
            eprintln!("cannot pin to CPU 1 ({e}); running unpinned");
        }
    }
    let redis_cpu = two_cores.then_some(0);

    if row {
        let (r, redis) = run_one(&spec, redis_cpu, true);
        println!("ROW {r}");
        let _ = std::io::stdout().flush();
        eprintln!("  reported; stopping redis-server");
        drop(redis); // killed by PID
                     // The coordinators are not joined: a lagging round could take minutes.
        std::process::exit(0);
    }

    println!(
        "wscap-global-scale: {} CPUs ({}), kernel {}; redis-server on CPU 0, coordinators on CPU 1{}",
        sys::nproc(),
        sys::cpu_model(),
        sys::kernel(),
        if two_cores { "" } else { " (not pinned: one CPU)" }
    );
    println!("load average at start: {}", sys::loadavg());

    if smoke {
        spec = Spec {
            instances: 2,
            pods: 10,
            secs: 4,
            ..Spec::default()
        };
        let r = run_child(&spec).unwrap_or_else(|e| panic!("smoke run failed: {e}"));
        println!("{TABLE_HEAD}\n{}", table_row(&r));
        let commands = r["commands_per_s"].as_f64().unwrap_or(0.0);
        let claims = r["claims_per_s"].as_f64().unwrap_or(0.0);
        let cpu = r["redis_cpu_pct"].as_f64().unwrap_or(-1.0);
        assert!(commands > 0.0, "no Redis commands in the window: {r}");
        assert!(claims > 0.0, "no claims in the window: {r}");
        assert!((0.0..=400.0).contains(&cpu), "Redis CPU out of range: {r}");
        assert!(
            r["borrows_timed"].as_u64() > Some(0),
            "no borrow timed: {r}"
        );
        println!("load average at end: {}", sys::loadavg());
        println!("smoke: ok");
        return;
    }

    let specs: Vec<Spec> = if all {
        MATRIX
            .iter()
            .map(|&(instances, pods)| Spec {
                instances,
                pods,
                ..spec.clone()
            })
            .collect()
    } else {
        vec![spec]
    };
    let mut rows = Vec::new();
    for s in &specs {
        println!(
            "run: {} instances × {} pods, limit {}, fill {} %, refresh {} ms, window {} s (load {})",
            s.instances,
            s.pods,
            s.limit,
            s.fill_pct,
            s.refresh_ms,
            s.secs,
            sys::loadavg()
        );
        match run_child(s) {
            Ok(r) => {
                println!("  {r}");
                rows.push(table_row(&r));
            }
            Err(e) => {
                println!("  {e}");
                rows.push(format!(
                    "| {} × {} | run failed: {e} |",
                    s.instances, s.pods
                ));
            }
        }
    }
    println!("\n{TABLE_HEAD}");
    for r in &rows {
        println!("{r}");
    }
    println!("\nload average at end: {}", sys::loadavg());
}
