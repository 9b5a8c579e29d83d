//! wscap-coordcpu: the CPU global mode's coordinator thread takes in one proxy process while
//! the shares suffice (no borrows), at a given number of pods.
//!
//! One [`wscap_global::Coordinator`] (default settings: refresh 1000 ms, lease 10 s, headroom
//! 2) over one [`wscap_core::Registry`] with P pods (cluster `pods`, limit 100 each), against a
//! real `redis-server` (testkit's [`wscap_testkit::RedisServer`], killed by PID). It waits until
//! the ledger granted every pod its headroom, holds one connection per pod (admitted locally:
//! the shares suffice), lets two more refreshes pass, then measures a window (10 s by default):
//! the coordinator thread's CPU (`/proc/self/task/<tid>/stat` utime + stime, clock ticks; and
//! `schedstat`'s nanoseconds on a CPU), the lease watchdog thread's likewise, and Redis's own
//! CPU (`INFO cpu`: `used_cpu_user` + `used_cpu_sys`) and claims (`cmdstat_evalsha` calls).
//!
//! ```text
//! wscap-coordcpu [--pods 100,10000] [--secs 10] [--json]
//! ```
//!
//! Exits non-zero if the window saw a borrow, a failed claim or no claim at all (then the
//! shares did not suffice, or the coordinator did not refresh).

use std::io::{BufRead, BufReader, Read, Write};
use std::time::{Duration, Instant};

use serde_json::json;
use wscap_core::{HostSpec, Registry};
use wscap_global::{Coordinator, GlobalConfig};
use wscap_testkit::RedisServer;

/// `INFO all` of the server on `port`.
fn redis_info(port: u16) -> Result<String, String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"*2\r\n$4\r\nINFO\r\n$3\r\nall\r\n")
        .map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    let mut head = String::new();
    r.read_line(&mut head).map_err(|e| e.to_string())?;
    let len: usize = head
        .trim()
        .strip_prefix('$')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("INFO reply: {head:?}"))?;
    let mut body = vec![0; len];
    r.read_exact(&mut body).map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// A numeric `field:value` of an INFO text (0 if absent).
fn info_num(info: &str, name: &str) -> f64 {
    info.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// `calls=` of the `cmdstat_<cmd>` line of an INFO text.
fn info_calls(info: &str, cmd: &str) -> f64 {
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:")))
        .and_then(|v| v.split(',').find_map(|kv| kv.strip_prefix("calls=")))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0)
}

fn redis_cpu_s(info: &str) -> f64 {
    info_num(info, "used_cpu_user") + info_num(info, "used_cpu_sys")
}

/// The id of this process's thread named `name` (`/proc/self/task/*/comm`).
fn thread_id(name: &str) -> Option<String> {
    std::fs::read_dir("/proc/self/task")
        .ok()?
        .flatten()
        .find(|e| std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .and_then(|e| e.file_name().to_str().map(str::to_owned))
}

/// CPU time of thread `tid` of this process: (utime + stime from `stat`, in seconds at the
/// clock tick `ticks` per second; time on a CPU from `schedstat`, in seconds).
fn thread_cpu(tid: &str, ticks: f64) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, r)| r.split_whitespace().collect());
    let field = |n: usize| -> f64 { rest.get(n - 3).and_then(|v| v.parse().ok()).unwrap_or(0.0) };
    let ticks_s = (field(14) + field(15)) / ticks;
    let sched_ns: f64 = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    (ticks_s, sched_ns / 1e9)
}

/// One measurement at `pods` pods over a `secs` window.
fn run(pods: u32, secs: u64) -> Result<serde_json::Value, String> {
    let redis = RedisServer::start();
    let mut config = GlobalConfig::new(&redis.url());
    config.instance_id = Some("coordcpu".to_owned());
    let refresh = Duration::from_millis(config.refresh_ms);
    let headroom = config.headroom;
    let registry: &'static Registry = Box::leak(Box::new(Registry::new()));
    let coordinator =
        Coordinator::start(config, registry).map_err(|e| format!("start coordinator: {e}"))?;
    registry
        .set_default_limit("pods", 100)
        .map_err(|e| format!("{e:?}"))?;
    let hosts: Vec<HostSpec> = (1..=pods)
        .map(|i| {
            let a = format!("10.{}.{}.{}:8080", (i >> 16) & 255, (i >> 8) & 255, i & 255);
            HostSpec::parse(&a).map_err(|e| format!("{a}: {e:?}"))
        })
        .collect::<Result<_, _>>()?;
    registry
        .set_hosts("pods", &hosts)
        .map_err(|e| format!("{e:?}"))?;

    // Warm-up: every pod granted its headroom (the first rounds of a fresh ledger are in grace).
    let started = Instant::now();
    let granted = |min: u32| {
        let v = coordinator.fleet_view();
        v.pods.len() == pods as usize && v.pods.iter().all(|p| p.shares >= min)
    };
    while !granted(headroom) {
        if started.elapsed() > Duration::from_secs(120) {
            return Err(format!("{pods} pods: shares not granted within 120 s"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // One live connection per pod, admitted locally (least loaded first: one per pod).
    let mut held = Vec::with_capacity(pods as usize);
    for _ in 0..pods {
        held.push(
            registry
                .acquire("pods")
                .map_err(|e| format!("acquire: {e:?}"))?,
        );
    }
    std::thread::sleep(2 * refresh + Duration::from_millis(200));
    let coord_tid = thread_id("wscap-global").ok_or("no wscap-global thread")?;
    let leases_tid = thread_id("wscap-leases").ok_or("no wscap-leases thread")?;
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;

    let info0 = redis_info(redis.port)?;
    let c0 = thread_cpu(&coord_tid, ticks);
    let l0 = thread_cpu(&leases_tid, ticks);
    let errors0 = coordinator.fleet_view().claim_errors;
    let borrows0 = coordinator.fleet_view().borrows;
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let wall = t0.elapsed().as_secs_f64();
    let c1 = thread_cpu(&coord_tid, ticks);
    let l1 = thread_cpu(&leases_tid, ticks);
    let info1 = redis_info(redis.port)?;
    let view = coordinator.fleet_view();

    let refreshes = wall / refresh.as_secs_f64();
    let claims = info_calls(&info1, "evalsha") + info_calls(&info1, "eval")
        - info_calls(&info0, "evalsha")
        - info_calls(&info0, "eval");
    let coord_ms_per_s = (c1.0 - c0.0) / wall * 1000.0;
    let coord_sched_ms_per_s = (c1.1 - c0.1) / wall * 1000.0;
    let redis_ms_per_s = (redis_cpu_s(&info1) - redis_cpu_s(&info0)) / wall * 1000.0;
    let row = json!({
        "pods": pods,
        "window_s": wall,
        "refresh_ms": refresh.as_millis() as u64,
        "coordinator_cpu_ms_per_s": coord_ms_per_s,
        "coordinator_cpu_ms_per_s_schedstat": coord_sched_ms_per_s,
        "coordinator_us_per_pod_per_refresh": (c1.1 - c0.1) * 1e6 / refreshes / f64::from(pods),
        "lease_watchdog_cpu_ms_per_s_schedstat": (l1.1 - l0.1) / wall * 1000.0,
        "redis_cpu_ms_per_s": redis_ms_per_s,
        "redis_us_per_pod_per_refresh": (redis_cpu_s(&info1) - redis_cpu_s(&info0)) * 1e6 / refreshes / f64::from(pods),
        "claims_per_s": claims / wall,
        "claims_due_per_s": f64::from(pods) / refresh.as_secs_f64(),
        "claim_errors": view.claim_errors - errors0,
        "borrows": view.borrows - borrows0,
        "held": held.len(),
    });
    drop(held);
    // Stops the coordinator (joins its thread after its round), then the Redis, by PID.
    drop(coordinator);
    drop(redis);
    Ok(row)
}

fn usage() -> ! {
    eprintln!("usage: wscap-coordcpu [--pods 100,10000] [--secs 10] [--json]");
    std::process::exit(2)
}

fn main() {
    let mut pods: Vec<u32> = vec![100, 10_000];
    let mut secs = 10u64;
    let mut json_out = false;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--pods" => {
                pods = it
                    .next()
                    .unwrap_or_else(|| usage())
                    .split(',')
                    .map(|p| p.parse().unwrap_or_else(|_| usage()))
                    .collect();
            }
            "--secs" => {
                secs = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--json" => json_out = true,
            _ => usage(),
        }
    }
    let mut rows = Vec::new();
    for &p in &pods {
        eprintln!("wscap-coordcpu: {p} pods, {secs} s window");
        match run(p, secs) {
            Ok(r) => {
                eprintln!("  {r}");
                // The premise of the measurement: steady refreshes, no borrow, no failed claim.
                if r["borrows"].as_u64() != Some(0)
                    || r["claim_errors"].as_u64() != Some(0)
                    || r["claims_per_s"].as_f64().unwrap_or(0.0) <= 0.0
                {
                    eprintln!("wscap-coordcpu: not a steady state with shares sufficing: {r}");
                    std::process::exit(1);
                }
                rows.push(r);
            }
            Err(e) => {
                eprintln!("wscap-coordcpu: {e}");
                std::process::exit(1);
            }
        }
    }
    if json_out {
        println!("{}", serde_json::Value::Array(rows));
        return;
    }
    println!("| pods | coordinator CPU ms/s (utime+stime) | (schedstat) | µs per pod per refresh | lease watchdog ms/s | Redis CPU ms/s | Redis µs per pod per refresh | claims/s (due) | borrows | claim errors |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let f = |k: &str, d: usize| {
            r[k].as_f64()
                .map_or_else(|| "?".to_owned(), |x| format!("{x:.d$}"))
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} ({}) | {} | {} |",
            r["pods"],
            f("coordinator_cpu_ms_per_s", 1),
            f("coordinator_cpu_ms_per_s_schedstat", 2),
            f("coordinator_us_per_pod_per_refresh", 2),
            f("lease_watchdog_cpu_ms_per_s_schedstat", 3),
            f("redis_cpu_ms_per_s", 1),
            f("redis_us_per_pod_per_refresh", 2),
            f("claims_per_s", 0),
            f("claims_due_per_s", 0),
            r["borrows"],
            r["claim_errors"],
        );
    }
}
