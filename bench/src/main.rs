//! wscap-bench: wscap in the real Envoy 1.40 against Envoy alone, a Lua filter, ext_authz and
//! circuit breakers (and wscap's global mode with Redis), measured in one run.
//!
//! ```text
//! cargo build --release -p wscap-envoy
//! cargo build --release -p wscap-bench        # both binaries (this one runs wscap-hookcost)
//! cargo run --release -p wscap-bench -- [--smoke] [--out docs/BENCHMARKS.md]
//! ```
//!
//! Every Envoy, Redis and backend is started by this process and killed by PID when dropped (also
//! on panic, Ctrl-C and SIGTERM; Envoy also dies with this process through PR_SET_PDEATHSIG).
//! Everything runs on loopback. Envoys are pinned to CPU 0, this process (load generator, backend
//! pods, the ext_authz service) and Redis to CPU 1, when there are two CPUs.
//!
//! (f), wscap's global mode with Redis, is in every run (`--no-global` leaves it out); it waits
//! until Redis has granted this instance a share of every pod (the restart grace of a fresh Redis).
//!
//! Only a release `libwscap.so` is loaded (`$WSCAP_MODULE_DIR`, else `target/release`); a debug
//! build is refused with a message.
//!
//! Ratios are per round (setup ÷ (a) measured in the same round), reported as their median with
//! the 95 % interval of that median (`stats.rs`); targets are met / not met / inconclusive by
//! where the interval lies. The report also carries the instructions wscap's hooks execute per
//! handshake, frame and request, from `wscap-hookcost` (callgrind; `src/bin/wscap-hookcost.rs`).
//!
//! `--smoke` runs every scenario with tiny counts in a few seconds, writes no docs, and exits
//! non-zero if any scenario failed to run. `--out FILE` replaces the section between
//! `<!-- envoy:begin -->` and `<!-- envoy:end -->` of FILE and writes the plots (handshake latency
//! CDF; handshake rate and Envoy CPU per setup) to `plots/` beside it; `--plots DIR` keeps the
//! plots of a run without `--out`; `--note TEXT` puts a bold note at the top of the section.
//! `--plot-global FILE` plots the global-mode latency table of FILE (`plots/` beside it).
//! `--plot-rebalance CSV PNG` plots the per-pod counts of a rebalance run (`tests/tests/rebalance.rs`).

mod alloc;
mod authz;
mod global_plot;
mod load;
mod plot;
mod rebalance_plot;
mod report;
mod run;
mod scenario;
mod stats;
mod sys;

use std::path::PathBuf;
use std::time::Duration;

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

/// Sizes of one run.
#[derive(Debug, Clone)]
pub struct Cfg {
    /// `--smoke`.
    pub smoke: bool,
    /// `--out`.
    pub out: Option<PathBuf>,
    /// `--plots DIR`: keep the plots of a run without `--out` (e.g. `--smoke`) in DIR.
    pub keep_plots: Option<PathBuf>,
    /// `--note TEXT`: a bold note at the top of the generated section (e.g. "measured under load").
    pub note: Option<String>,
    /// Leave out (f) (`--no-global`); it is in by default.
    pub no_global: bool,
    /// Interleaved rounds of each timed phase.
    pub rounds: usize,
    /// Concurrent handshake loops.
    pub hs_conns: usize,
    /// Length of one handshake round per setup.
    pub hs_dur: Duration,
    /// Open WebSockets moving frames.
    pub msg_conns: usize,
    /// Frames in flight per WebSocket.
    pub msg_window: usize,
    /// Length of one frame round per setup.
    pub msg_dur: Duration,
    /// Concurrent keep-alive HTTP connections.
    pub plain_conns: usize,
    /// Length of one plain-HTTP round per setup.
    pub plain_dur: Duration,
    /// Idle WebSockets held for the memory measurement.
    pub idle: usize,
    /// The file limit, when it forced fewer idle WebSockets than asked.
    pub idle_limited_by: Option<u64>,
    /// Clients in the storm.
    pub storm_clients: usize,
    /// Per-pod limit in the storm.
    pub storm_limit: u32,
    /// How long each storm client waits for an answer.
    pub storm_wait: Duration,
    /// Pods.
    pub pods: usize,
    /// Upper bound on the whole run.
    pub deadline: Duration,
}

impl Cfg {
    fn full() -> Cfg {
        Cfg {
            smoke: false,
            out: None,
            keep_plots: None,
            note: None,
            no_global: false,
            rounds: 9,
            hs_conns: 16,
            hs_dur: Duration::from_millis(600),
            msg_conns: 8,
            msg_window: 16,
            msg_dur: Duration::from_millis(400),
            plain_conns: 16,
            plain_dur: Duration::from_millis(400),
            idle: 10_000,
            idle_limited_by: None,
            storm_clients: 100,
            storm_limit: 20,
            storm_wait: Duration::from_secs(3),
            pods: 3,
            deadline: Duration::from_secs(20 * 60),
        }
    }

    fn smoke() -> Cfg {
        Cfg {
            smoke: true,
            rounds: 6,
            hs_conns: 4,
            hs_dur: Duration::from_millis(100),
            msg_conns: 2,
            msg_window: 4,
            msg_dur: Duration::from_millis(80),
            plain_conns: 2,
            plain_dur: Duration::from_millis(80),
            idle: 100,
            storm_clients: 30,
            storm_limit: 5,
            storm_wait: Duration::from_secs(1),
            deadline: Duration::from_secs(180),
            ..Cfg::full()
        }
    }
}

fn usage() -> ! {
    eprintln!("usage: wscap-bench [--smoke] [--out docs/BENCHMARKS.md] [--plots DIR] [--note TEXT] [--global | --no-global]\n       wscap-bench --plot-global docs/BENCHMARKS.md\n       wscap-bench --plot-rebalance rebalance.csv docs/plots/rebalance.png");
    std::process::exit(2)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut smoke = false;
    let mut out = None;
    // (f) is opt-in for now: in the module at the time of writing, global mode refused every
    // handshake of this bench's setup (503 no_capacity from the first one on).
    let mut no_global = false;
    let mut keep_plots = None;
    let mut note = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--smoke" => smoke = true,
            "--out" => out = Some(PathBuf::from(args.next().unwrap_or_else(|| usage()))),
            "--no-global" => no_global = true,
            "--plots" => keep_plots = Some(PathBuf::from(args.next().unwrap_or_else(|| usage()))),
            "--plot-global" => {
                let md = PathBuf::from(args.next().unwrap_or_else(|| usage()));
                match global_plot::run(&md) {
                    Ok(p) => {
                        eprintln!("wrote {}", p.display());
                        std::process::exit(0)
                    }
                    Err(e) => {
                        eprintln!("wscap-bench --plot-global: {e}");
                        std::process::exit(1)
                    }
                }
            }
            "--plot-rebalance" => {
                let csv = PathBuf::from(args.next().unwrap_or_else(|| usage()));
                let png = PathBuf::from(args.next().unwrap_or_else(|| usage()));
                match rebalance_plot::run(&csv, &png) {
                    Ok(()) => {
                        eprintln!("wrote {}", png.display());
                        std::process::exit(0)
                    }
                    Err(e) => {
                        eprintln!("wscap-bench --plot-rebalance: {e}");
                        std::process::exit(1)
                    }
                }
            }
            "--note" => note = Some(args.next().unwrap_or_else(|| usage())),
            "--global" => no_global = false,
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    let mut cfg = if smoke { Cfg::smoke() } else { Cfg::full() };
    cfg.out = if smoke { None } else { out };
    cfg.no_global = no_global;
    cfg.keep_plots = keep_plots;
    cfg.note = note;

    // Only a release module is worth measuring: a debug build (what `scripts/test` builds) is
    // several times slower, and a table of it would mislead. Refuse one, say what to do.
    match wscap_e2e::release_module_dir() {
        Ok(dir) => std::env::set_var("WSCAP_MODULE_DIR", dir),
        Err(e) => {
            eprintln!("wscap-bench: {e}");
            std::process::exit(2);
        }
    }

    let two = sys::nproc() >= 2;
    if two {
        if let Err(e) = sys::pin(0, 1) {
            eprintln!("warning: could not pin the load generator to CPU 1: {e}");
        }
    }
    // Envoy holds two sockets per WebSocket (downstream and upstream), and so does this process
    // (client and pod): stay within the file limit both inherit.
    let nofile = sys::raise_nofile(65_536);
    let fit = (nofile.saturating_sub(1000) / 2) as usize;
    if fit < cfg.idle {
        eprintln!(
            "RLIMIT_NOFILE is {nofile} and cannot be raised (no CAP_SYS_RESOURCE): {fit} idle WebSockets instead of {}",
            cfg.idle
        );
        cfg.idle_limited_by = Some(nofile);
        cfg.idle = fit;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let local = tokio::task::LocalSet::new();
    let code = local.block_on(&rt, async move {
        let deadline = cfg.deadline;
        tokio::select! {
            r = tokio::time::timeout(deadline, run::run(cfg, two)) => match r {
                Ok(Ok(())) => 0,
                Ok(Err(e)) => {
                    eprintln!("wscap-bench: FAILED: {e}");
                    1
                }
                Err(_) => {
                    eprintln!("wscap-bench: FAILED: did not finish within {deadline:?}");
                    1
                }
            },
            _ = signal() => {
                eprintln!("wscap-bench: interrupted; killing what it started");
                130
            }
        }
    });
    // Everything the run started was dropped (and killed by PID) when its future was.
    drop(local);
    drop(rt);
    std::process::exit(code);
}

async fn signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
