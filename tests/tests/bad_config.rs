//! (g) Bad filter configs make Envoy refuse the config with a message naming the problem;
//! nothing crashes (no signal, no core).

use std::time::Duration;

use wscap_e2e::backend::Backend;
use wscap_e2e::config::{self, Endpoint, ListenerSpec};
use wscap_e2e::envoy::{describe_exit, run_to_exit, Envoy, Opts};
use wscap_e2e::rig::{CLUSTER, LISTENER};
use wscap_e2e::{eventually, write_atomic, SETTLE};

/// (name, config, words that one log line must contain together).
const CASES: &[(&str, &str, &[&str])] = &[
    (
        "malformed JSON",
        r#"{"cluster": "pods", "max_connections_per_host": 3"#,
        &["JSON"],
    ),
    (
        "empty cluster",
        r#"{"cluster": "", "max_connections_per_host": 3}"#,
        &["cluster", "must not be empty"],
    ),
    (
        "missing limit",
        r#"{"cluster": "pods"}"#,
        &["missing", "max_connections_per_host"],
    ),
    (
        "negative limit",
        r#"{"cluster": "pods", "max_connections_per_host": -1}"#,
        &["max_connections_per_host", "negative"],
    ),
    (
        "unknown field",
        r#"{"cluster": "pods", "max_connections_per_host": 3, "bogus_field": 1}"#,
        &["bogus_field"],
    ),
];

/// One line of `log` names the problem: it contains every word in `words`.
fn assert_named(name: &str, log: &str, words: &[&str]) {
    assert!(
        log.lines().any(|l| words.iter().all(|w| l.contains(w))),
        "{name}: no log line contains all of {words:?}; log:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_bad_filter_config_is_refused() {
    let pod = Backend::start("pod-0").await;
    for (name, cfg, words) in CASES {
        let l = ListenerSpec::new(LISTENER, CLUSTER, vec![config::wscap_filter(cfg)]);
        let boot = config::bootstrap(
            std::slice::from_ref(&l),
            vec![config::static_cluster(
                CLUSTER,
                &[Endpoint::new(pod.addr)],
                true,
            )],
            true,
        );
        let (st, log) = run_to_exit(&boot, &Opts::with_module(1), Duration::from_secs(20));
        assert!(
            st.code().is_some_and(|c| c != 0),
            "{name}: expected a non-zero exit code, got {}; log:\n{log}",
            describe_exit(&st)
        );
        assert_named(name, &log, words);
    }
}

/// The same configs delivered by LDS to a running Envoy are rejected; Envoy keeps serving with the
/// good config it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lds_bad_filter_config_is_rejected_and_envoy_keeps_serving() {
    let pod = Backend::start("pod-0").await;
    let dir = wscap_e2e::scratch_dir("lds-bad");
    let lds_dir = dir.join("lds");
    std::fs::create_dir_all(&lds_dir).unwrap();
    let lds = lds_dir.join("listeners.json");
    let port = wscap_e2e::free_port();
    let listener = |cfg: &str| {
        let mut l = ListenerSpec::new(LISTENER, CLUSTER, vec![config::wscap_filter(cfg)]);
        l.port = port;
        l
    };
    let good = config::filter_config(CLUSTER, 2, 7);
    write_atomic(&lds, &config::lds_file_contents(&[listener(&good)], 1));
    let boot = config::file_lds_bootstrap(CLUSTER, &[Endpoint::new(pod.addr)], &lds);
    let mut envoy = Envoy::try_start_in(&dir, &boot, &Opts::with_module(wscap_e2e::concurrency()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut live = wscap_e2e::client::connect(port, "/ws")
        .await
        .expect_open("before bad updates");
    for (i, (name, cfg, words)) in CASES.iter().enumerate() {
        let before = envoy
            .stat("listener_manager.lds.update_rejected")
            .await
            .unwrap_or(0);
        let log_from = envoy.log().len();
        write_atomic(
            &lds,
            &config::lds_file_contents(&[listener(cfg)], 2 + i as u64),
        );
        eventually(&format!("{name}: LDS update rejected"), SETTLE, || async {
            let n = envoy
                .stat("listener_manager.lds.update_rejected")
                .await
                .unwrap_or(0);
            (n > before)
                .then_some(())
                .ok_or(format!("update_rejected {n}"))
        })
        .await;
        envoy.assert_running();
        assert_named(name, &envoy.log()[log_from..], words);
        live.echo(name).await.expect("existing tunnel still alive");
    }
    // Still the good config: limit 2.
    let _b = wscap_e2e::client::connect(port, "/ws")
        .await
        .expect_open("second under the good config");
    let r = wscap_e2e::client::connect(port, "/ws")
        .await
        .expect_refused("third");
    wscap_e2e::rig::assert_wscap_refusal(&r, "no_capacity");
    envoy.assert_running();
}

/// A filter whose cluster has no `wscap` LB policy: the module never learns the cluster's hosts.
/// Envoy accepts the config; every WebSocket is refused with `no_hosts` (fail closed) and never
/// reaches the pod, while plain HTTP still passes; the log says why, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_without_lb_policy_fails_closed() {
    let pod = Backend::start("pod-0").await;
    let l = ListenerSpec::new(
        LISTENER,
        CLUSTER,
        vec![config::wscap_filter(&config::filter_config(CLUSTER, 2, 7))],
    );
    let boot = config::bootstrap(
        std::slice::from_ref(&l),
        vec![config::static_cluster(
            CLUSTER,
            &[Endpoint::new(pod.addr)],
            false,
        )],
        true,
    );
    let mut envoy = Envoy::start(&boot, &Opts::with_module(wscap_e2e::concurrency())).await;
    let port = envoy.listener_port(LISTENER).await;
    for i in 0..3 {
        let r = wscap_e2e::client::connect(port, "/ws")
            .await
            .expect_refused(&format!("attempt {i}"));
        wscap_e2e::rig::assert_wscap_refusal(&r, "no_hosts");
    }
    assert_eq!(pod.accepted(), 0, "no WebSocket reached the pod");
    // The operator is told why, once.
    let log = envoy.log();
    let warning = format!("wscap: cluster \"{CLUSTER}\" has no wscap load_balancing_policy");
    assert_eq!(log.matches(&warning).count(), 1, "{log}");
    let r = wscap_e2e::http::get(format!("127.0.0.1:{port}").parse().unwrap(), "/plain")
        .await
        .expect("plain GET");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), wscap_e2e::backend::plain_body("pod-0"));
    envoy.assert_running();
}
