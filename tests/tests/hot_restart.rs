//! (n) Envoy hot restart in local mode: while the old process drains, it and the new one both
//! hold WebSockets; each pod's limit holds across the two (counts shared through
//! `/dev/shm/wscap.<uid>.<base-id>`), including under a storm of connections during the
//! handover; once the old process is gone, its share comes back.
//!
//! A real hot restart: the same config, `--base-id B --restart-epoch 0`, then `--restart-epoch 1`
//! (which takes the listening sockets over and ends the old process after
//! `--parent-shutdown-time-s`). The pods count their own connections.

use std::time::Duration;

use wscap_e2e::backend::Backend;
use wscap_e2e::client::{connect, Outcome, WsClient};
use wscap_e2e::config::{self, Endpoint, ListenerSpec};
use wscap_e2e::envoy::{Envoy, Opts};
use wscap_e2e::rig::{CLUSTER, LISTENER};
use wscap_e2e::{eventually, SETTLE};

const LIMIT: usize = 4;

fn opts(base_id: u32, epoch: u32) -> Opts {
    let mut o = Opts::with_module(2);
    o.hot_restart = Some((base_id, epoch));
    o.extra_args = ["--parent-shutdown-time-s", "6", "--drain-time-s", "3"]
        .map(str::to_owned)
        .to_vec();
    o
}

async fn try_open(port: u16) -> Option<WsClient> {
    match connect(port, "/ws").await {
        Outcome::Open(c) => Some(c),
        Outcome::Refused(r) => {
            assert_eq!(
                r.header("x-wscap-reason"),
                Some("no_capacity"),
                "a refusal that is not wscap's: {} {:?}",
                r.status,
                r.headers
            );
            None
        }
        // The old process may close a connection it accepted while its listener drains.
        Outcome::Failed(_) => None,
    }
}

/// Two pods, one listener on a fixed port (the new process takes the socket over), and a base
/// id of this test's own in `[first, first + 20000)`, so no other Envoy shares the family; the
/// family's shared-count table is removed first.
async fn family(
    first: u32,
) -> (
    [Backend; 2],
    u16,
    serde_json::Value,
    u32,
    std::path::PathBuf,
) {
    let pods = [Backend::start("pod-0").await, Backend::start("pod-1").await];
    let eps: Vec<Endpoint> = pods.iter().map(|b| Endpoint::new(b.addr)).collect();
    let port = wscap_e2e::free_port();
    let mut l = ListenerSpec::new(
        LISTENER,
        CLUSTER,
        vec![config::wscap_filter(&config::filter_config(
            CLUSTER,
            LIMIT as u32,
            5,
        ))],
    );
    l.port = port;
    let boot = config::bootstrap(
        std::slice::from_ref(&l),
        vec![config::static_cluster(CLUSTER, &eps, true)],
        true,
    );
    let base_id = first + std::process::id() % 20_000;
    let shm = wscap_e2e::hot_restart_table(base_id);
    let _ = std::fs::remove_file(&shm);
    (pods, port, boot, base_id, shm)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pod_limit_holds_across_a_hot_restart() {
    let (pods, port, boot, base_id, shm) = family(20_000).await;

    let old = Envoy::start(&boot, &opts(base_id, 0)).await;
    assert!(
        old.log().contains("per-host counts shared through"),
        "the old process shares its counts; log:\n{}",
        old.log()
    );
    let mut held: Vec<WsClient> = Vec::new();
    for i in 0..LIMIT {
        held.push(connect(port, "/ws").await.expect_open(&format!("old {i}")));
    }
    let total = || pods.iter().map(Backend::active).sum::<usize>();
    assert_eq!(total(), LIMIT, "half the capacity held by the old process");

    // A storm while the new process starts and takes the sockets over.
    let storm = tokio::spawn(async move {
        let mut got = Vec::new();
        let until = tokio::time::Instant::now() + Duration::from_secs(4);
        while tokio::time::Instant::now() < until {
            let batch: Vec<_> = (0..8).map(|_| tokio::spawn(try_open(port))).collect();
            for b in batch {
                if let Some(c) = b.await.unwrap() {
                    got.push(c);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        got
    });
    let new = Envoy::start(&boot, &opts(base_id, 1)).await;
    let stormed = storm.await.unwrap();
    assert!(
        new.log().contains("per-host counts shared through"),
        "the new process shares its counts; log:\n{}",
        new.log()
    );
    for p in &pods {
        assert!(
            p.max_seen() <= LIMIT,
            "{} held {} > {LIMIT} during the hot restart",
            p.name,
            p.max_seen()
        );
    }
    let mut alive = 0;
    let mut held_alive = 0;
    let mut stormed = stormed;
    for c in held.iter_mut() {
        if c.echo("still there?").await.is_ok() {
            held_alive += 1;
        }
    }
    for c in stormed.iter_mut() {
        if c.echo("still there?").await.is_ok() {
            alive += 1;
        }
    }
    alive += held_alive;
    eprintln!(
        "hot restart: held {} stormed {} alive {alive}; pods {:?}",
        held.len(),
        stormed.len(),
        pods.iter()
            .map(|p| (p.active(), p.max_seen(), p.accepted()))
            .collect::<Vec<_>>()
    );
    assert_eq!(alive, total(), "every live WebSocket is on a pod");
    assert_eq!(total(), 2 * LIMIT, "the storm filled exactly the room left");

    // Every live WebSocket is now on the new process; the pods are full, and stay within
    // their limit once the old process is gone.
    let old_pid = old.pid();
    eventually("the old process exits", Duration::from_secs(20), || async {
        gone(old_pid)
            .then_some(())
            .ok_or("still running".to_owned())
    })
    .await;
    // The new process reaps the old one's share (its last connections closed with it), then
    // fills exactly the room the pods have, and refuses the next one at once with a 503 (a pod
    // full across both processes is refused, never spun on).
    eventually("the new process reaped the old one", SETTLE, || async {
        new.log()
            .contains("freed the counts of 1 exited Envoy process")
            .then_some(())
            .ok_or("not yet".to_owned())
    })
    .await;
    let mut refill = Vec::new();
    loop {
        match connect(port, "/ws").await {
            Outcome::Open(c) => refill.push(c),
            Outcome::Refused(r) => {
                assert_eq!(
                    r.header("x-wscap-reason"),
                    Some("no_capacity"),
                    "{:?}",
                    r.headers
                );
                break;
            }
            Outcome::Failed(e) => panic!("after the handover, a connection failed: {e}"),
        }
        assert!(refill.len() <= 2 * LIMIT, "admitted past the capacity");
    }
    assert_eq!(total(), 2 * LIMIT, "full again, exactly");
    for p in &pods {
        assert!(
            p.max_seen() <= LIMIT,
            "{} peaked at {}",
            p.name,
            p.max_seen()
        );
    }
    drop((held, stormed, refill, new, old));
    let _ = std::fs::remove_file(&shm);
}

/// Is process `pid` gone (or a zombie)?
fn gone(pid: Option<u32>) -> bool {
    pid.is_none_or(|p| {
        std::fs::read_to_string(format!("/proc/{p}/stat")).map_or(true, |s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
    })
}

/// The old process crashes (SIGKILL: no teardown) while it holds every slot: its connections
/// close, and the new process takes their slots back once it has reaped the old process's
/// share of the shared counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crashed_old_process_gives_its_slots_back() {
    let (pods, port, boot, base_id, shm) = family(40_000).await;
    let mut old = Envoy::start(&boot, &opts(base_id, 0)).await;
    let mut held = Vec::new();
    for i in 0..2 * LIMIT {
        held.push(connect(port, "/ws").await.expect_open(&format!("old {i}")));
    }
    let new = Envoy::start(&boot, &opts(base_id, 1)).await;
    old.kill();
    let total = || pods.iter().map(Backend::active).sum::<usize>();
    eventually(
        "the crashed process's connections are closed",
        SETTLE,
        || async {
            (total() == 0)
                .then_some(())
                .ok_or(format!("pods hold {}", total()))
        },
    )
    .await;
    drop(held);
    let mut again = Vec::new();
    for i in 0..2 * LIMIT {
        let c = eventually(&format!("slot {i} back"), SETTLE, || async {
            try_open(port).await.ok_or(format!("pods hold {}", total()))
        })
        .await;
        again.push(c);
    }
    let r = connect(port, "/ws")
        .await
        .expect_refused("full again, no more");
    assert_eq!(r.header("x-wscap-reason"), Some("no_capacity"));
    assert_eq!(total(), 2 * LIMIT);
    assert!(
        new.log()
            .contains("freed the counts of 1 exited Envoy process"),
        "the new process reaped the old one's share; log:\n{}",
        new.log()
    );
    for p in &pods {
        assert!(
            p.max_seen() <= LIMIT,
            "{} peaked at {}",
            p.name,
            p.max_seen()
        );
    }
    drop((again, new));
    let _ = std::fs::remove_file(&shm);
}
