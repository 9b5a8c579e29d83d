//! The example configs in `examples/envoy/` run as written (only ports and the EDS directory
//! rewritten) and do what their comments say.

use wscap_e2e::backend::Backend;
use wscap_e2e::client::{connect, WsClient};
use wscap_e2e::envoy::{Envoy, Opts};
use wscap_e2e::example::{
    self, EXAMPLE_CLUSTER, EXAMPLE_LIMITS, EXAMPLE_LISTENER, EXAMPLE_RETRY_AFTER,
};
use wscap_e2e::{eventually, metrics, write_atomic, SETTLE};

async fn pods() -> Vec<Backend> {
    let mut v = Vec::new();
    for i in 1..=3 {
        v.push(Backend::start(&format!("pod-{i}")).await);
    }
    v
}

/// Fill every pod of an example to its limit, check the refusal and all views of the counts.
async fn fill_and_check(envoy: &Envoy, port: u16, pods: &[Backend]) -> Vec<WsClient> {
    eventually("example pods listed with their limits", SETTLE, || async {
        let doc = envoy.wscap().await;
        let got: Vec<i64> = pods
            .iter()
            .map(|b| metrics::host(&doc, EXAMPLE_CLUSTER, &b.host()).map_or(-1, |h| h.limit))
            .collect();
        let want: Vec<i64> = EXAMPLE_LIMITS.iter().map(|&n| n as i64).collect();
        (got == want)
            .then_some(())
            .ok_or(format!("limits {got:?}; {doc}"))
    })
    .await;
    let total: usize = EXAMPLE_LIMITS.iter().sum();
    let mut held = Vec::new();
    for i in 0..total {
        held.push(
            connect(port, "/ws")
                .await
                .expect_open(&format!("example connection {i}")),
        );
    }
    let r = connect(port, "/ws")
        .await
        .expect_refused("example over capacity");
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some(EXAMPLE_RETRY_AFTER));
    assert_eq!(r.header("x-wscap-reason"), Some("no_capacity"));
    let got: Vec<usize> = pods.iter().map(Backend::active).collect();
    assert_eq!(got, EXAMPLE_LIMITS.to_vec(), "backends' own counts");
    let doc = envoy.wscap().await;
    for (b, lim) in pods.iter().zip(EXAMPLE_LIMITS) {
        assert_eq!(
            metrics::host(&doc, EXAMPLE_CLUSTER, &b.host())
                .unwrap()
                .active,
            lim as i64
        );
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_example_runs_as_documented() {
    let pods = pods().await;
    let addrs: Vec<_> = pods.iter().map(|b| b.addr).collect();
    let yaml = example::rewrite(&example::read("envoy.yaml"), "envoy.yaml", 0, &addrs, None);
    let dir = wscap_e2e::scratch_dir("example-static");
    let mut envoy =
        Envoy::try_start_yaml(&dir, &yaml, &Opts::with_module(wscap_e2e::concurrency()))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    let port = envoy.listener_port(EXAMPLE_LISTENER).await;
    let _held = fill_and_check(&envoy, port, &pods).await;
    envoy.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eds_example_runs_as_documented() {
    let pods = pods().await;
    let addrs: Vec<_> = pods.iter().map(|b| b.addr).collect();
    let dir = wscap_e2e::scratch_dir("example-eds");
    let eds_dir = dir.join("eds");
    std::fs::create_dir_all(&eds_dir).unwrap();
    let pods_yaml = example::rewrite_pods(&example::read("eds/pods.yaml"), "eds/pods.yaml", &addrs);
    write_atomic(&eds_dir.join("pods.yaml"), &pods_yaml);
    let yaml = example::rewrite(
        &example::read("eds/envoy.yaml"),
        "eds/envoy.yaml",
        0,
        &[],
        Some(&eds_dir),
    );
    let mut envoy =
        Envoy::try_start_yaml(&dir, &yaml, &Opts::with_module(wscap_e2e::concurrency()))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    let port = envoy.listener_port(EXAMPLE_LISTENER).await;
    let _held = fill_and_check(&envoy, port, &pods).await;

    // Remove pod 3 the documented way (new file renamed into place): it drains.
    let without_3: String = {
        let cut = pods_yaml
            .find(&format!("port_value: {}", addrs[2].port()))
            .unwrap();
        let start = pods_yaml[..cut].rfind("    - endpoint:").unwrap();
        format!("{}\n", pods_yaml[..start].trim_end())
    };
    write_atomic(
        &eds_dir.join("pods.yaml"),
        &without_3.replace("version_info: \"1\"", "version_info: \"2\""),
    );
    eventually("pod-3 draining", SETTLE, || async {
        let h = metrics::host(&envoy.wscap().await, EXAMPLE_CLUSTER, &pods[2].host());
        match h {
            Some(h) if h.state == "draining" && h.active == 3 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    envoy.assert_running();
}
