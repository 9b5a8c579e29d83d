//! (d) Dynamic membership through file-based EDS: adding a pod raises capacity at once; removing
//! one marks it draining (no new connections; its live ones still counted and reported) until
//! they close; a returning pod keeps its live count; a per-host limit from endpoint metadata is
//! honoured.

use std::path::PathBuf;

use wscap_e2e::backend::Backend;
use wscap_e2e::client::{connect, WsClient};
use wscap_e2e::config::{self, Endpoint, ListenerSpec};
use wscap_e2e::envoy::{Envoy, Opts};
use wscap_e2e::metrics::{self, HostView};
use wscap_e2e::rig::{
    assert_wscap_refusal, CLUSTER, LISTENER, PROM_ACTIVE, PROM_LIMIT, RETRY_AFTER,
};
use wscap_e2e::{eventually, write_atomic, SETTLE};

const LIMIT: u32 = 2;

struct EdsRig {
    envoy: Envoy,
    eds: PathBuf,
    version: u64,
    port: u16,
}

impl EdsRig {
    async fn start(concurrency: u32, eps: &[Endpoint]) -> EdsRig {
        let dir = wscap_e2e::scratch_dir("eds");
        let eds_dir = dir.join("eds");
        std::fs::create_dir_all(&eds_dir).unwrap();
        let eds = eds_dir.join("pods.json");
        write_atomic(&eds, &config::eds_file_contents(CLUSTER, eps, 1));
        let l = ListenerSpec::new(
            LISTENER,
            CLUSTER,
            vec![config::wscap_filter(&config::filter_config(
                CLUSTER,
                LIMIT,
                RETRY_AFTER,
            ))],
        );
        let boot = config::bootstrap(
            std::slice::from_ref(&l),
            vec![config::eds_cluster(CLUSTER, &eds, true)],
            true,
        );
        let envoy = Envoy::try_start_in(&dir, &boot, &Opts::with_module(concurrency))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let port = envoy.listener_port(LISTENER).await;
        EdsRig {
            envoy,
            eds,
            version: 1,
            port,
        }
    }

    fn publish(&mut self, eps: &[Endpoint]) {
        self.version += 1;
        write_atomic(
            &self.eds,
            &config::eds_file_contents(CLUSTER, eps, self.version),
        );
    }

    async fn hosts(&self) -> Vec<HostView> {
        metrics::hosts(&self.envoy.wscap().await, CLUSTER)
    }

    /// Wait until /wscap shows exactly `want` as (address, state, active) (sorted by address).
    async fn wait_hosts(&self, what: &str, want: &[(&Backend, &str, i64)]) {
        let mut want: Vec<(String, String, i64)> = want
            .iter()
            .map(|(b, s, n)| (b.host(), s.to_string(), *n))
            .collect();
        want.sort();
        eventually(what, SETTLE, || async {
            let mut got: Vec<(String, String, i64)> = self
                .hosts()
                .await
                .into_iter()
                .map(|h| (h.address, h.state, h.active))
                .collect();
            got.sort();
            (got == want)
                .then_some(())
                .ok_or(format!("/wscap {got:?}, want {want:?}"))
        })
        .await;
    }

    async fn open(&self, what: &str) -> WsClient {
        connect(self.port, "/ws").await.expect_open(what)
    }

    async fn refused(&self, what: &str) {
        assert_wscap_refusal(
            &connect(self.port, "/ws").await.expect_refused(what),
            "no_capacity",
        );
    }

    async fn prom_active(&self, b: &Backend) -> Option<f64> {
        metrics::value(
            &self.envoy.prometheus().await,
            PROM_ACTIVE,
            &[("cluster", CLUSTER), ("host", &b.host())],
        )
    }
}

fn take_on(held: &mut Vec<WsClient>, backend: &str) -> WsClient {
    let i = held
        .iter()
        .position(|c| c.backend == backend)
        .unwrap_or_else(|| panic!("no connection on {backend}"));
    held.remove(i)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eds_membership_add_remove_drain_return() {
    let a = Backend::start("pod-a").await;
    let b = Backend::start("pod-b").await;
    let mut rig = EdsRig::start(wscap_e2e::concurrency(), &[Endpoint::new(a.addr)]).await;
    rig.wait_hosts("initial membership", &[(&a, "active", 0)])
        .await;

    // One pod: exactly LIMIT fit.
    let mut held = vec![rig.open("a1").await, rig.open("a2").await];
    assert!(held.iter().all(|c| c.backend == "pod-a"));
    rig.refused("one pod full").await;

    // Add pod-b: capacity rises as soon as the module has the new membership.
    rig.publish(&[Endpoint::new(a.addr), Endpoint::new(b.addr)]);
    rig.wait_hosts("pod-b added", &[(&a, "active", 2), (&b, "active", 0)])
        .await;
    for i in 0..LIMIT {
        let c = rig.open(&format!("b{i}")).await;
        assert_eq!(c.backend, "pod-b", "new capacity is on pod-b");
        held.push(c);
    }
    rig.refused("both full").await;
    assert_eq!((a.active(), b.active()), (2, 2));

    // Remove pod-a while it holds 2: it is draining, still counted and reported.
    rig.publish(&[Endpoint::new(b.addr)]);
    rig.wait_hosts("pod-a draining", &[(&a, "draining", 2), (&b, "active", 2)])
        .await;
    eventually("prometheus still reports pod-a's 2", SETTLE, || async {
        let v = rig.prom_active(&a).await;
        (v == Some(2.0)).then_some(()).ok_or(format!("{v:?}"))
    })
    .await;
    for c in held.iter_mut().filter(|c| c.backend == "pod-a") {
        c.echo("draining but alive")
            .await
            .expect("tunnel to a draining pod stays open");
    }
    // One of pod-a's leaves: pod-a has room by its limit, but draining takes nothing new.
    take_on(&mut held, "pod-a").close().await;
    rig.wait_hosts(
        "pod-a draining with 1",
        &[(&a, "draining", 1), (&b, "active", 2)],
    )
    .await;
    let accepted_a = a.accepted();
    rig.refused("pod-b full, pod-a draining").await;
    assert_eq!(
        a.accepted(),
        accepted_a,
        "no new connection reached the draining pod"
    );
    // Room on pod-b is used.
    take_on(&mut held, "pod-b").close().await;
    let c = rig.open("room on b").await;
    assert_eq!(c.backend, "pod-b");
    held.push(c);
    assert_eq!(a.accepted(), accepted_a);

    // pod-a returns while it still holds 1: active again, its live count intact.
    rig.publish(&[Endpoint::new(a.addr), Endpoint::new(b.addr)]);
    rig.wait_hosts("pod-a back", &[(&a, "active", 1), (&b, "active", 2)])
        .await;
    let c = rig.open("room on returning a").await;
    assert_eq!(c.backend, "pod-a");
    held.push(c);
    rig.refused("all full after return").await;
    assert_eq!((a.active(), b.active()), (2, 2));
    assert_eq!(a.max_seen(), 2, "pod-a never over its limit");

    // Remove pod-a again; when its last connection closes it leaves the report.
    rig.publish(&[Endpoint::new(b.addr)]);
    rig.wait_hosts(
        "pod-a draining again",
        &[(&a, "draining", 2), (&b, "active", 2)],
    )
    .await;
    take_on(&mut held, "pod-a").close().await;
    take_on(&mut held, "pod-a").close().await;
    eventually("pod-a gone or idle", SETTLE, || async {
        match rig
            .hosts()
            .await
            .into_iter()
            .find(|h| h.address == a.host())
        {
            None => Ok(()),
            Some(h) => Err(format!("still listed: {h:?}")),
        }
    })
    .await;
    eventually("prometheus pod-a at 0", SETTLE, || async {
        let v = rig.prom_active(&a).await;
        (v.is_none() || v == Some(0.0))
            .then_some(())
            .ok_or(format!("{v:?}"))
    })
    .await;
    assert_eq!(a.active(), 0);

    // Every pod removed while pod-b still holds 2: no host takes connections -> `no_hosts`.
    rig.publish(&[]);
    rig.wait_hosts("pod-b draining, nothing active", &[(&b, "draining", 2)])
        .await;
    let r = connect(rig.port, "/ws")
        .await
        .expect_refused("no pods at all");
    assert_wscap_refusal(&r, "no_hosts");
    assert_eq!(b.active(), 2, "pod-b's tunnels are untouched");
    for c in held.iter_mut() {
        c.echo("no pods listed").await.expect("tunnel alive");
    }
    rig.envoy.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eds_per_host_limit_from_metadata() {
    let a = Backend::start("pod-a").await;
    let c = Backend::start("pod-c").await;
    let mut rig = EdsRig::start(wscap_e2e::concurrency(), &[Endpoint::new(a.addr)]).await;
    rig.wait_hosts("initial", &[(&a, "active", 0)]).await;
    rig.publish(&[Endpoint::new(a.addr), Endpoint::with_limit(c.addr, 5)]);
    rig.wait_hosts("pod-c added", &[(&a, "active", 0), (&c, "active", 0)])
        .await;
    let doc = rig.envoy.wscap().await;
    assert_eq!(
        metrics::host(&doc, CLUSTER, &c.host()).unwrap().limit,
        5,
        "/wscap limit from metadata"
    );
    assert_eq!(
        metrics::host(&doc, CLUSTER, &a.host()).unwrap().limit,
        LIMIT as i64,
        "default limit"
    );
    eventually("prometheus limit gauge", SETTLE, || async {
        let s = rig.envoy.prometheus().await;
        let lc = metrics::value(&s, PROM_LIMIT, &[("cluster", CLUSTER), ("host", &c.host())]);
        let la = metrics::value(&s, PROM_LIMIT, &[("cluster", CLUSTER), ("host", &a.host())]);
        (lc == Some(5.0) && la == Some(LIMIT as f64))
            .then_some(())
            .ok_or(format!("c {lc:?} a {la:?}"))
    })
    .await;
    let mut held = Vec::new();
    for i in 0..(5 + LIMIT) {
        held.push(rig.open(&format!("conn {i}")).await);
    }
    rig.refused("a and c full").await;
    assert_eq!((a.active(), c.active()), (LIMIT as usize, 5));
    assert_eq!((a.max_seen(), c.max_seen()), (LIMIT as usize, 5));

    // Lower pod-c's limit to 3 while it holds 5: nothing is cut, nothing new is admitted there
    // until it is below 3.
    rig.publish(&[Endpoint::new(a.addr), Endpoint::with_limit(c.addr, 3)]);
    eventually("limit lowered", SETTLE, || async {
        let h = metrics::host(&rig.envoy.wscap().await, CLUSTER, &c.host()).unwrap();
        (h.limit == 3 && h.active == 5)
            .then_some(())
            .ok_or(format!("{h:?}"))
    })
    .await;
    for _ in 0..3 {
        take_on(&mut held, "pod-c").close().await;
    }
    rig.wait_hosts(
        "pod-c at 2 of 3",
        &[(&a, "active", LIMIT as i64), (&c, "active", 2)],
    )
    .await;
    let n = rig.open("one more on c").await;
    assert_eq!(n.backend, "pod-c");
    held.push(n);
    rig.refused("c at its new limit").await;
    assert_eq!(c.active(), 3);
    rig.envoy.assert_running();
}
