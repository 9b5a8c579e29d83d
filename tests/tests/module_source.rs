//! (l) Loading the module without a search path, and renaming its metrics:
//! `dynamic_module_config: {module: {local: {filename: /abs/libwscap.so}}, metrics_namespace: NS}`
//! on all three extensions, with `ENVOY_DYNAMIC_MODULES_SEARCH_PATH` unset. The series are then
//! `envoy_NS_wscap_*` instead of `envoy_dynamicmodulescustom_wscap_*`. A remote module source is
//! refused for the bootstrap extension: Envoy exits with an error, no crash. Envoy 1.38 ignores
//! `module` (it looks up `lib.so`), which the test checks there instead.

use std::time::Duration;

use serde_json::{json, Value};
use wscap_e2e::backend::Backend;
use wscap_e2e::client::connect;
use wscap_e2e::config::{self, Endpoint, ListenerSpec};
use wscap_e2e::envoy::{describe_exit, run_to_exit, Envoy, Opts};
use wscap_e2e::rig::{CLUSTER, LISTENER};
use wscap_e2e::{eventually, metrics, SETTLE};

/// Replaces every `dynamic_module_config` in `v` with `with`.
fn set_module_config(v: &mut Value, with: &Value) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                if k == "dynamic_module_config" {
                    *child = with.clone();
                } else {
                    set_module_config(child, with);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|c| set_module_config(c, with)),
        _ => {}
    }
}

fn bootstrap(pod: &Backend) -> Value {
    let l = ListenerSpec::new(
        LISTENER,
        CLUSTER,
        vec![config::wscap_filter(&config::filter_config(CLUSTER, 1, 5))],
    );
    config::bootstrap(
        std::slice::from_ref(&l),
        vec![config::static_cluster(
            CLUSTER,
            &[Endpoint::new(pod.addr)],
            true,
        )],
        true,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_filename_without_search_path_and_a_metrics_namespace() {
    let so = wscap_e2e::module_dir().join("libwscap.so");
    let so = so.canonicalize().unwrap_or(so);
    assert!(so.is_file(), "{} not built", so.display());
    let pod = Backend::start("pod-0").await;
    let mut boot = bootstrap(&pod);
    set_module_config(
        &mut boot,
        &json!({
            "module": {"local": {"filename": so.display().to_string()}},
            "do_not_close": true,
            "metrics_namespace": "edge",
        }),
    );
    // `Opts::plain`: ENVOY_DYNAMIC_MODULES_SEARCH_PATH is removed from Envoy's environment.
    let version = wscap_e2e::envoy_version();
    if wscap_testkit::envoy_version::major_minor(&version) < (1, 39) {
        // Envoy 1.38 ignores `module` and looks the (empty) name up as `lib.so`: the config is
        // refused, so users of 1.38 keep `name` + ENVOY_DYNAMIC_MODULES_SEARCH_PATH (README).
        let (st, log) = run_to_exit(&boot, &Opts::plain(1), Duration::from_secs(20));
        assert!(st.code().is_some_and(|c| c != 0), "{}", describe_exit(&st));
        assert!(
            log.contains("lib.so not found in any search path"),
            "Envoy {version}: expected the module source to be ignored; log:\n{log}"
        );
        return;
    }
    let envoy = Envoy::start(&boot, &Opts::plain(1)).await;
    let port = envoy.listener_port(LISTENER).await;
    eventually("the pod is listed", SETTLE, || async {
        let n = metrics::hosts(&envoy.wscap().await, CLUSTER).len();
        (n == 1).then_some(()).ok_or(format!("{n} hosts"))
    })
    .await;
    let held = connect(port, "/ws").await.expect_open("first");
    let refused = connect(port, "/ws")
        .await
        .expect_refused("over the limit of 1");
    assert_eq!(refused.header("x-wscap-reason"), Some("no_capacity"));
    assert_eq!(pod.active(), 1);
    let host = pod.host();
    eventually("renamed series", SETTLE, || async {
        let prom = envoy.prometheus().await;
        let active = metrics::value(
            &prom,
            "envoy_edge_wscap_active_connections",
            &[("cluster", CLUSTER), ("host", &host)],
        );
        let admitted = metrics::value(
            &prom,
            "envoy_edge_wscap_admitted",
            &[("cluster", CLUSTER), ("host", &host)],
        );
        let rejected = metrics::value(
            &prom,
            "envoy_edge_wscap_rejected",
            &[("cluster", CLUSTER), ("reason", "no_capacity")],
        );
        let old = prom
            .iter()
            .any(|s| s.name.starts_with("envoy_dynamicmodulescustom_wscap_"));
        (active == Some(1.0) && admitted == Some(1.0) && rejected == Some(1.0) && !old)
            .then_some(())
            .ok_or(format!(
                "active {active:?} admitted {admitted:?} rejected {rejected:?} old prefix {old}"
            ))
    })
    .await;
    drop(held);
}

#[test]
fn a_remote_module_for_the_bootstrap_extension_is_refused() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pod = rt.block_on(Backend::start("pod-0"));
    let mut boot = bootstrap(&pod);
    boot["bootstrap_extensions"][0]["typed_config"]["dynamic_module_config"] = json!({
        "module": {"remote": {
            "http_uri": {"uri": "http://127.0.0.1:9/libwscap.so", "cluster": CLUSTER, "timeout": "1s"},
            "sha256": "0000000000000000000000000000000000000000000000000000000000000000",
        }},
        "do_not_close": true,
    });
    let (st, log) = run_to_exit(&boot, &Opts::with_module(1), Duration::from_secs(20));
    assert!(
        st.code().is_some_and(|c| c != 0),
        "expected Envoy to refuse the config with an exit code, got {}; log:\n{log}",
        describe_exit(&st)
    );
    let line = log
        .lines()
        .filter(|l| !l.contains("statically linked extensions") && !l.contains("server.cc:467"))
        .find(|l| l.to_ascii_lowercase().contains("remote"))
        .unwrap_or_else(|| panic!("no log line about the remote source; log:\n{log}"));
    eprintln!("Envoy says: {line}");
}
