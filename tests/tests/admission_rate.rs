//! Storm-safe admission on the real Envoy: `max_new_per_second_per_host` and `warmup_seconds`.
//! Two full pods and one new empty pod (added by EDS) take a storm of 200 simultaneous
//! upgrades; the new pod measures its own opens per second. Without the queue the excess is
//! refused at once; with the queue it waits and gets in at the pod's pace.

use std::path::PathBuf;

use serde_json::{json, Value};
use wscap_e2e::backend::Backend;
use wscap_e2e::client::{connect, Outcome, WsClient};
use wscap_e2e::config::{self, Endpoint, ListenerSpec};
use wscap_e2e::envoy::{Envoy, Opts};
use wscap_e2e::rig::{assert_wscap_refusal, CLUSTER, LISTENER, RETRY_AFTER};
use wscap_e2e::{eventually, metrics, write_atomic, SETTLE};

const FULL_LIMIT: u32 = 3;
const NEW_LIMIT: u32 = 250;
const STORM: usize = 200;
const RATE: usize = 40;
/// wscap counts R per second when it admits; the pod counts when the upgrade reaches it, a
/// little later and not always equally later (a busy machine bunches a few): allowance for that.
const MARGIN: usize = RATE / 4;

struct Setup {
    envoy: Envoy,
    _dir: PathBuf,
    pods: Vec<Backend>,
    held: Vec<WsClient>,
    port: u16,
}

async fn setup(extra: Value) -> Setup {
    let pods = vec![
        Backend::start("pod-0").await,
        Backend::start("pod-1").await,
        Backend::start("pod-new").await,
    ];
    let dir = wscap_e2e::scratch_dir("admission-rate");
    let eds_dir = dir.join("eds");
    std::fs::create_dir_all(&eds_dir).unwrap();
    let eds = eds_dir.join("pods.json");
    let old: Vec<Endpoint> = pods[..2].iter().map(|b| Endpoint::new(b.addr)).collect();
    write_atomic(&eds, &config::eds_file_contents(CLUSTER, &old, 1));
    let mut filter: Value =
        serde_json::from_str(&config::filter_config(CLUSTER, FULL_LIMIT, RETRY_AFTER)).unwrap();
    if let (Some(o), Some(e)) = (filter.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    let l = ListenerSpec::new(
        LISTENER,
        CLUSTER,
        vec![config::wscap_filter(&filter.to_string())],
    );
    let boot = config::bootstrap(
        std::slice::from_ref(&l),
        vec![config::eds_cluster(CLUSTER, &eds, true)],
        true,
    );
    let envoy = Envoy::try_start_in(&dir, &boot, &Opts::with_module(2))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let port = envoy.listener_port(LISTENER).await;
    eventually("2 pods listed", SETTLE, || async {
        let n = metrics::hosts(&envoy.wscap().await, CLUSTER).len();
        (n == 2).then_some(()).ok_or(format!("{n} hosts"))
    })
    .await;
    // Fill the two old pods (slowly enough for any rate setting).
    let mut held = Vec::new();
    for i in 0..2 * FULL_LIMIT as usize {
        let c = loop {
            match connect(port, "/ws").await {
                Outcome::Open(c) => break c,
                Outcome::Refused(_) => wscap_e2e::rig::pause(50).await,
                Outcome::Failed(e) => panic!("fill {i}: {e}"),
            }
        };
        held.push(c);
    }
    assert_eq!(pods[0].active() + pods[1].active(), 2 * FULL_LIMIT as usize);
    // The new pod joins, empty, with room for the whole storm.
    let mut all = old;
    all.push(Endpoint::with_limit(pods[2].addr, NEW_LIMIT));
    write_atomic(&eds, &config::eds_file_contents(CLUSTER, &all, 2));
    eventually("3 pods listed", SETTLE, || async {
        let n = metrics::hosts(&envoy.wscap().await, CLUSTER).len();
        (n == 3).then_some(()).ok_or(format!("{n} hosts"))
    })
    .await;
    Setup {
        envoy,
        _dir: dir,
        pods,
        held,
        port,
    }
}

/// 200 upgrades at once; returns the open ones and the refusals.
async fn storm(port: u16) -> (Vec<WsClient>, Vec<wscap_e2e::http::Response>) {
    let tasks: Vec<_> = (0..STORM)
        .map(|_| tokio::spawn(async move { connect(port, "/ws").await }))
        .collect();
    let mut open = Vec::new();
    let mut refused = Vec::new();
    for t in tasks {
        match t.await.expect("join") {
            Outcome::Open(c) => open.push(c),
            Outcome::Refused(r) => refused.push(r),
            Outcome::Failed(e) => panic!("storm connection failed: {e}"),
        }
    }
    (open, refused)
}

/// The client has its 101 a moment before the pod has counted the connection: wait for the
/// pod's own count to reach the number the clients saw.
async fn settle(pod: &Backend, n: usize) {
    eventually(
        "the new pod counted every admitted connection",
        SETTLE,
        || async {
            let got = pod.accepted();
            (got >= n)
                .then_some(())
                .ok_or(format!("accepted {got}, clients saw {n}"))
        },
    )
    .await;
}

async fn finish(s: Setup, open: Vec<WsClient>) {
    for c in s.held.into_iter().chain(open) {
        c.close().await;
    }
    eventually("all closed", SETTLE, || async {
        let got: Vec<usize> = s.pods.iter().map(Backend::active).collect();
        (got == [0, 0, 0]).then_some(()).ok_or(format!("{got:?}"))
    })
    .await;
    for (b, lim) in s.pods.iter().zip([FULL_LIMIT, FULL_LIMIT, NEW_LIMIT]) {
        assert!(
            b.max_seen() <= lim as usize,
            "{} peaked at {}",
            b.name,
            b.max_seen()
        );
    }
    drop(s.envoy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_caps_a_new_pods_opens_and_refuses_the_excess() {
    let s = setup(json!({"max_new_per_second_per_host": RATE})).await;
    let (open, refused) = storm(s.port).await;
    let new = &s.pods[2];
    settle(new, open.len()).await;
    let peak = new.max_opens_per_second();
    eprintln!(
        "rate {RATE}/s: {} admitted, {} refused; the new pod's most opens in one second: {peak}",
        open.len(),
        refused.len()
    );
    assert!(
        peak <= RATE + MARGIN,
        "the new pod opened {peak} in one second (R = {RATE})"
    );
    assert!(!open.is_empty(), "some admitted");
    assert_eq!(open.len() + refused.len(), STORM);
    assert!(
        refused.len() >= STORM - 2 * RATE - MARGIN,
        "the excess is refused"
    );
    for r in &refused {
        assert_wscap_refusal(r, "no_capacity");
    }
    assert_eq!(
        new.accepted(),
        open.len(),
        "every admitted storm connection is on the new pod"
    );
    finish(s, open).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn warmup_and_rate_with_queue_admit_the_whole_storm_at_the_pods_pace() {
    let s = setup(json!({
        "max_new_per_second_per_host": RATE,
        "warmup_seconds": 2,
        "queue": {"max_waiting": STORM, "timeout_ms": 9000},
    }))
    .await;
    let started = std::time::Instant::now();
    let (open, refused) = storm(s.port).await;
    let took = started.elapsed();
    let new = &s.pods[2];
    settle(new, open.len()).await;
    let peak = new.max_opens_per_second();
    eprintln!(
        "rate {RATE}/s + warmup 2 s + queue: {} admitted, {} refused in {took:?}; peak opens/s {peak}",
        open.len(),
        refused.len()
    );
    assert!(
        refused.is_empty(),
        "with the queue the excess waits: refused {:?}",
        refused
            .iter()
            .map(|r| r.header("x-wscap-reason"))
            .collect::<Vec<_>>()
    );
    assert_eq!(open.len(), STORM);
    assert_eq!(new.accepted(), STORM);
    // At R per second, 200 opens take at least (200 - R) / R seconds (a lower bound: a slow
    // machine only stretches it); without the rate they all open within a fraction of a second.
    let span = new.opens_span();
    let min_span = std::time::Duration::from_millis(((STORM - RATE) * 1000 / RATE) as u64);
    assert!(
        span >= min_span,
        "the new pod's opens spanned {span:?} < {min_span:?}"
    );
    assert!(
        peak <= RATE + MARGIN,
        "the new pod opened {peak} in one second (R = {RATE})"
    );
    finish(s, open).await;
}
