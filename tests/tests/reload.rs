//! (e) A configuration update (the listener reloaded through file-based LDS, with a changed filter
//! config) keeps the live counts: connections admitted under the old config still count against
//! the limit under the new one.

use wscap_e2e::backend::Backend;
use wscap_e2e::client::connect;
use wscap_e2e::config::{self, Endpoint, ListenerSpec};
use wscap_e2e::envoy::{Envoy, Opts};
use wscap_e2e::metrics;
use wscap_e2e::rig::{CLUSTER, LISTENER};
use wscap_e2e::{eventually, write_atomic, SETTLE};

const LIMIT: u32 = 3;

fn listener(port: u16, retry_after: u32, version: &str) -> ListenerSpec {
    let mut l = ListenerSpec::new(
        LISTENER,
        CLUSTER,
        vec![config::wscap_filter(&config::filter_config(
            CLUSTER,
            LIMIT,
            retry_after,
        ))],
    );
    l.port = port;
    l.response_header = Some(("x-config-version".into(), version.into()));
    l
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lds_reload_keeps_live_counts() {
    let pod = Backend::start("pod-0").await;
    let dir = wscap_e2e::scratch_dir("lds");
    let lds_dir = dir.join("lds");
    std::fs::create_dir_all(&lds_dir).unwrap();
    let lds = lds_dir.join("listeners.json");
    let port = wscap_e2e::free_port();
    write_atomic(
        &lds,
        &config::lds_file_contents(&[listener(port, 7, "v1")], 1),
    );
    let boot = config::file_lds_bootstrap(CLUSTER, &[Endpoint::new(pod.addr)], &lds);
    let mut envoy = Envoy::try_start_in(&dir, &boot, &Opts::with_module(wscap_e2e::concurrency()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(envoy.listener_port(LISTENER).await, port);

    let mut old = vec![
        connect(port, "/ws").await.expect_open("old 1"),
        connect(port, "/ws").await.expect_open("old 2"),
    ];
    let wscap_active =
        |doc: &serde_json::Value| metrics::host(doc, CLUSTER, &pod.host()).map_or(-1, |h| h.active);
    assert_eq!(wscap_active(&envoy.wscap().await), 2);
    let before = envoy
        .stat("listener_manager.lds.update_success")
        .await
        .unwrap_or(0);

    // New listener config: another retry-after and another response header.
    write_atomic(
        &lds,
        &config::lds_file_contents(&[listener(port, 9, "v2")], 2),
    );
    eventually("LDS update applied", SETTLE, || async {
        let n = envoy
            .stat("listener_manager.lds.update_success")
            .await
            .unwrap_or(0);
        (n > before)
            .then_some(())
            .ok_or(format!("update_success {n} (was {before})"))
    })
    .await;
    let rejected = envoy
        .stat("listener_manager.lds.update_rejected")
        .await
        .unwrap_or(0);
    assert_eq!(rejected, 0, "LDS update rejected");

    // The old tunnels are alive and still counted, everywhere.
    for c in old.iter_mut() {
        c.echo("across the reload").await.expect("old tunnel alive");
    }
    assert_eq!(pod.active(), 2);
    assert_eq!(
        wscap_active(&envoy.wscap().await),
        2,
        "/wscap kept the count"
    );

    // Under the new config exactly one more fits (3 - 2), and the refusal comes from the new config.
    let n = eventually(
        "new connection served by the v2 listener",
        SETTLE,
        || async {
            match connect(port, "/ws").await {
                wscap_e2e::client::Outcome::Open(c) => Ok(c),
                o => Err(format!("status {}", o.status())),
            }
        },
    )
    .await;
    let r = eventually("refusal from the v2 config", SETTLE, || async {
        let r = connect(port, "/ws")
            .await
            .expect_refused("over the limit after reload");
        (r.header("retry-after") == Some("9"))
            .then_some(r.clone())
            .ok_or(format!("headers {:?}", r.headers))
    })
    .await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-wscap-reason"), Some("no_capacity"));
    assert_eq!(pod.active(), 3);
    assert_eq!(
        pod.max_seen(),
        3,
        "the reload never let the pod go over its limit"
    );
    assert_eq!(wscap_active(&envoy.wscap().await), 3);

    // Everyone leaves: back to 0 (the old config's streams release into the same counts).
    n.close().await;
    for c in old {
        c.close().await;
    }
    eventually("back to 0", SETTLE, || async {
        let a = wscap_active(&envoy.wscap().await);
        (a == 0 && pod.active() == 0)
            .then_some(())
            .ok_or(format!("/wscap {a}, pod {}", pod.active()))
    })
    .await;
    envoy.assert_running();
}

/// The backend cluster itself is replaced through file-based CDS (a new cluster object, a new LB
/// policy instance): connections admitted before still count, on the same pods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cds_cluster_update_keeps_live_counts() {
    let pods = [Backend::start("pod-0").await, Backend::start("pod-1").await];
    let eps: Vec<Endpoint> = pods.iter().map(|b| Endpoint::new(b.addr)).collect();
    let dir = wscap_e2e::scratch_dir("cds");
    let cds_dir = dir.join("cds");
    std::fs::create_dir_all(&cds_dir).unwrap();
    let cds = cds_dir.join("clusters.json");
    let cluster = |timeout: &str| {
        let mut c = config::static_cluster(CLUSTER, &eps, true);
        c["connect_timeout"] = serde_json::json!(timeout);
        c
    };
    write_atomic(&cds, &config::cds_file_contents(&[cluster("1s")], 1));
    let l = ListenerSpec::new(
        LISTENER,
        CLUSTER,
        vec![config::wscap_filter(&config::filter_config(CLUSTER, 2, 7))],
    );
    let mut boot = config::bootstrap(std::slice::from_ref(&l), vec![], true);
    // The route names a cluster that only CDS provides.
    boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["route_config"]["validate_clusters"] = serde_json::json!(false);
    config::use_file_cds(&mut boot, &cds);
    let mut envoy = Envoy::try_start_in(&dir, &boot, &Opts::with_module(wscap_e2e::concurrency()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let port = envoy.listener_port(LISTENER).await;
    eventually("pods known", SETTLE, || async {
        let n = metrics::hosts(&envoy.wscap().await, CLUSTER).len();
        (n == 2).then_some(()).ok_or(format!("{n} hosts"))
    })
    .await;
    let mut old = Vec::new();
    for i in 0..3 {
        old.push(connect(port, "/ws").await.expect_open(&format!("old {i}")));
    }
    let before = envoy
        .stat("cluster_manager.cds.update_success")
        .await
        .unwrap_or(0);

    write_atomic(&cds, &config::cds_file_contents(&[cluster("2s")], 2));
    eventually("CDS update applied", SETTLE, || async {
        let n = envoy
            .stat("cluster_manager.cds.update_success")
            .await
            .unwrap_or(0);
        (n > before)
            .then_some(())
            .ok_or(format!("update_success {n} (was {before})"))
    })
    .await;
    for c in old.iter_mut() {
        c.echo("across the cluster update")
            .await
            .expect("old tunnel alive");
    }
    let total = |doc: &serde_json::Value| -> i64 {
        metrics::hosts(doc, CLUSTER).iter().map(|h| h.active).sum()
    };
    assert_eq!(total(&envoy.wscap().await), 3, "/wscap kept the count");
    // Exactly one more fits (2 pods × 2 − 3), the next is refused.
    let n = eventually("one more after the update", SETTLE, || async {
        match connect(port, "/ws").await {
            wscap_e2e::client::Outcome::Open(c) => Ok(c),
            o => Err(format!("status {}", o.status())),
        }
    })
    .await;
    let r = connect(port, "/ws")
        .await
        .expect_refused("full after the update");
    wscap_e2e::rig::assert_wscap_refusal(&r, "no_capacity");
    let active: Vec<usize> = pods.iter().map(Backend::active).collect();
    assert_eq!(active, vec![2, 2], "pods' own counts");
    assert!(
        pods.iter().all(|b| b.max_seen() <= 2),
        "no pod over its limit"
    );
    n.close().await;
    for c in old {
        c.close().await;
    }
    eventually("back to 0", SETTLE, || async {
        let t = total(&envoy.wscap().await);
        (t == 0).then_some(()).ok_or(format!("/wscap total {t}"))
    })
    .await;
    envoy.assert_running();
}

/// A cluster that CDS removes stops being counted and its state is freed: at once when it held
/// no connection, once its last connection is gone otherwise; added back, it starts afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cds_removed_cluster_is_freed() {
    let pod = Backend::start("pod-0").await;
    let idle_pod = Backend::start("idle-0").await;
    let dir = wscap_e2e::scratch_dir("cds-rm");
    let cds_dir = dir.join("cds");
    std::fs::create_dir_all(&cds_dir).unwrap();
    let cds = cds_dir.join("clusters.json");
    let pods = config::static_cluster(CLUSTER, &[Endpoint::new(pod.addr)], true);
    let idle = config::static_cluster("idle", &[Endpoint::new(idle_pod.addr)], true);
    write_atomic(
        &cds,
        &config::cds_file_contents(&[pods.clone(), idle.clone()], 1),
    );
    let l = ListenerSpec::new(
        LISTENER,
        CLUSTER,
        vec![config::wscap_filter(&config::filter_config(CLUSTER, 2, 7))],
    );
    let mut boot = config::bootstrap(std::slice::from_ref(&l), vec![], true);
    boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["route_config"]["validate_clusters"] = serde_json::json!(false);
    config::use_file_cds(&mut boot, &cds);
    let mut envoy = Envoy::try_start_in(&dir, &boot, &Opts::with_module(wscap_e2e::concurrency()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let port = envoy.listener_port(LISTENER).await;
    let names = |doc: &serde_json::Value| -> Vec<String> {
        doc["clusters"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    eventually("both clusters known", SETTLE, || async {
        let doc = envoy.wscap().await;
        let n = metrics::hosts(&doc, CLUSTER).len() + metrics::hosts(&doc, "idle").len();
        (n == 2).then_some(()).ok_or(format!("{doc}"))
    })
    .await;
    let held = connect(port, "/ws").await.expect_open("before removal");
    let host = pod.host();
    let gauge = || async {
        metrics::value(
            &envoy.prometheus().await,
            wscap_e2e::rig::PROM_ACTIVE,
            &[("cluster", CLUSTER), ("host", &host)],
        )
    };
    eventually("its gauge reads 1", SETTLE, || async {
        let v = gauge().await;
        (v == Some(1.0)).then_some(()).ok_or(format!("{v:?}"))
    })
    .await;

    write_atomic(&cds, &config::cds_file_contents(&[], 2));
    eventually("the idle cluster is freed at once", SETTLE, || async {
        let n = names(&envoy.wscap().await);
        (!n.iter().any(|c| c == "idle"))
            .then_some(())
            .ok_or(format!("{n:?}"))
    })
    .await;
    held.close().await;
    eventually(
        "the removed cluster is freed once empty",
        SETTLE,
        || async {
            let n = names(&envoy.wscap().await);
            n.is_empty().then_some(()).ok_or(format!("{n:?}"))
        },
    )
    .await;
    eventually("its gauge reads 0", SETTLE, || async {
        let v = gauge().await;
        (v == Some(0.0)).then_some(()).ok_or(format!("{v:?}"))
    })
    .await;

    // Back again: admitted afresh, within the limit.
    write_atomic(&cds, &config::cds_file_contents(&[pods], 3));
    let c1 = eventually("admitted after the cluster came back", SETTLE, || async {
        match connect(port, "/ws").await {
            wscap_e2e::client::Outcome::Open(c) => Ok(c),
            o => Err(format!("status {}", o.status())),
        }
    })
    .await;
    let c2 = connect(port, "/ws").await.expect_open("second");
    wscap_e2e::rig::assert_wscap_refusal(
        &connect(port, "/ws").await.expect_refused("third"),
        "no_capacity",
    );
    assert!(pod.max_seen() <= 2);
    drop((c1, c2));
    envoy.assert_running();
}
