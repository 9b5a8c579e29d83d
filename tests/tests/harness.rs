//! Checks of the harness itself against the real Envoy *without* the module: backends, clients,
//! the launcher and file-based EDS. If these fail, the module tests' failures mean nothing.

use std::time::Duration;

use wscap_e2e::backend::{plain_body, Backend};
use wscap_e2e::client::{connect, Outcome};
use wscap_e2e::config::{self, Endpoint, ListenerSpec};
use wscap_e2e::envoy::{Envoy, Opts};
use wscap_e2e::{eventually, http, SETTLE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_envoy_proxies_websockets_and_http() {
    let b = Backend::start("pod-a").await;
    let l = ListenerSpec::new("ingress", "backend", vec![]);
    let boot = config::bootstrap(
        std::slice::from_ref(&l),
        vec![config::static_cluster(
            "backend",
            &[Endpoint::new(b.addr)],
            false,
        )],
        false,
    );
    let envoy = Envoy::start(&boot, &Opts::plain(1)).await;
    let port = envoy.listener_port("ingress").await;

    let mut c1 = connect(port, "/ws").await.expect_open("first");
    let mut c2 = connect(port, "/ws").await.expect_open("second");
    assert_eq!(c1.backend, "pod-a");
    c1.echo("hello").await.expect("echo 1");
    c2.echo("again").await.expect("echo 2");
    assert_eq!(b.active(), 2);
    assert_eq!(b.max_seen(), 2);

    // Client close frame: the backend sees the connection go.
    c1.close().await;
    eventually("backend back to 1", SETTLE, || async {
        (b.active() == 1)
            .then_some(())
            .ok_or(format!("active={}", b.active()))
    })
    .await;

    // Client reset.
    c2.reset();
    eventually("backend back to 0", SETTLE, || async {
        (b.active() == 0)
            .then_some(())
            .ok_or(format!("active={}", b.active()))
    })
    .await;

    // Server close frame reaches the client.
    let mut c3 = connect(port, "/ws").await.expect_open("third");
    assert_eq!(b.close_all(), 1);
    let how = c3
        .wait_closed(Duration::from_secs(10))
        .await
        .expect("closed by server");
    assert!(how.contains("close") || how.contains("eof"), "{how}");

    // Refused upgrade is passed through with the backend's status.
    b.refuse_upgrades(Some(403));
    let r = connect(port, "/ws").await.expect_refused("refused");
    assert_eq!(r.status, 403);
    b.refuse_upgrades(None);

    // Plain HTTP.
    let r = http::get(format!("127.0.0.1:{port}").parse().unwrap(), "/plain")
        .await
        .expect("plain GET");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), plain_body("pod-a"));
    assert_eq!(b.plain_requests(), 1);

    // Killed backend: the client's connection ends.
    let mut c4 = connect(port, "/ws").await.expect_open("fourth");
    b.kill();
    c4.wait_closed(Duration::from_secs(10))
        .await
        .expect("ended by kill");
    match connect(port, "/ws").await {
        Outcome::Refused(r) => assert_eq!(r.status, 503),
        other => panic!("expected 503 after kill, got {}", other.status()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_envoy_follows_file_eds() {
    let a = Backend::start("pod-a").await;
    let b = Backend::start("pod-b").await;
    let dir = wscap_e2e::scratch_dir("eds-plain");
    let eds = dir.join("eds").join("backend.json");
    std::fs::create_dir_all(eds.parent().unwrap()).unwrap();
    wscap_e2e::write_atomic(
        &eds,
        &config::eds_file_contents("backend", &[Endpoint::new(a.addr)], 1),
    );
    let l = ListenerSpec::new("ingress", "backend", vec![]);
    let boot = config::bootstrap(
        std::slice::from_ref(&l),
        vec![config::eds_cluster("backend", &eds, false)],
        false,
    );
    let envoy = Envoy::try_start_in(&dir, &boot, &Opts::plain(1))
        .await
        .unwrap();
    let port = envoy.listener_port("ingress").await;
    let c = connect(port, "/").await.expect_open("to a");
    assert_eq!(c.backend, "pod-a");

    wscap_e2e::write_atomic(
        &eds,
        &config::eds_file_contents("backend", &[Endpoint::new(b.addr)], 2),
    );
    let c2 = eventually("EDS switched to b", SETTLE, || async {
        match connect(port, "/").await {
            Outcome::Open(c) if c.backend == "pod-b" => Ok(c),
            Outcome::Open(c) => Err(format!("still {}", c.backend)),
            o => Err(format!("status {}", o.status())),
        }
    })
    .await;
    assert_eq!(b.active(), 1);
    // The connection to the removed host stays open.
    let mut c = c;
    c.echo("still here").await.expect("old connection alive");
    drop(c2);
}
