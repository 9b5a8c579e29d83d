//! Smoke proof against the real Envoy binary (1.40; `scripts/test-matrix`: 1.39 and 1.38)
//! (`--concurrency 2`): every ABI binding the module uses is exercised here. Build the module
//! first: `cargo build -p wscap-envoy`.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{eventually, free_port, http_get, run_to_exit, Backend, Envoy, Setup};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A refusal as the client saw it.
#[derive(Debug)]
struct Refusal {
    status: u16,
    retry_after: Option<String>,
    reason: Option<String>,
    body: String,
}

async fn open(port: u16) -> Result<Ws, Refusal> {
    let url = format!("ws://127.0.0.1:{port}/ws");
    match tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .expect("websocket connect timed out")
    {
        Ok((ws, resp)) => {
            assert_eq!(resp.status(), 101);
            Ok(ws)
        }
        Err(tungstenite::Error::Http(resp)) => {
            let h = |n: &str| {
                resp.headers()
                    .get(n)
                    .map(|v| v.to_str().unwrap_or_default().to_owned())
            };
            Err(Refusal {
                status: resp.status().as_u16(),
                retry_after: h("retry-after"),
                reason: h("x-wscap-reason"),
                body: String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default())
                    .into_owned(),
            })
        }
        Err(e) => panic!("websocket connect failed: {e}"),
    }
}

async fn whoami(ws: &mut Ws) -> SocketAddr {
    ws.send(Message::text("whoami")).await.expect("send");
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("whoami timed out")
            .expect("stream ended")
            .expect("ws error");
        if let Message::Text(t) = msg {
            return t.as_str().parse().expect("backend address");
        }
    }
}

async fn wscap_json(envoy: &Envoy) -> Value {
    let r = envoy.admin_get("/wscap").await;
    assert_eq!(r.status, 200, "{r:?}");
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("/wscap not JSON ({e}): {}", r.body))
}

fn host(json: &Value, addr: SocketAddr) -> &Value {
    let cluster = json["clusters"]
        .as_array()
        .expect("clusters")
        .iter()
        .find(|c| c["name"] == "pods")
        .unwrap_or_else(|| panic!("no cluster pods in {json}"));
    cluster["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .find(|h| h["address"] == addr.to_string())
        .unwrap_or_else(|| panic!("no host {addr} in {json}"))
}

/// The value of the Prometheus sample `name{...}` whose labels include all of `labels`.
fn prom_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn prometheus(envoy: &Envoy) -> String {
    let r = envoy.admin_get("/stats/prometheus").await;
    assert_eq!(r.status, 200);
    r.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cap_steering_refusal_admin_and_stats() {
    let b1 = Backend::start().await;
    let b2 = Backend::start().await;
    let port = free_port();
    // b1 has its own limit (endpoint metadata) of 1; b2 follows the filter's default of 2.
    let backends = [(b1.addr, Some(1)), (b2.addr, None)];
    let setup = Setup::new(port, &backends, 2);
    let envoy = Envoy::start(
        &setup.bootstrap(),
        &["--component-log-level", "dynamic_modules:debug,http:debug"],
    )
    .await;

    // The LB policy fed the membership (with the metadata limit) before any traffic.
    let json = wscap_json(&envoy).await;
    assert_eq!(host(&json, b1.addr)["limit"], 1, "{json}");
    assert_eq!(host(&json, b2.addr)["limit"], 2, "{json}");
    assert_eq!(host(&json, b1.addr)["state"], "active");

    // Three WebSockets fill the cluster exactly; each lands on the host core chose.
    let mut open_ws = Vec::new();
    for _ in 0..3 {
        let mut ws = open(port).await.expect("admitted");
        let at = whoami(&mut ws).await;
        open_ws.push((ws, at));
    }
    let on = |a: SocketAddr, v: &[(Ws, SocketAddr)]| v.iter().filter(|(_, h)| *h == a).count();
    assert_eq!(on(b1.addr, &open_ws), 1);
    assert_eq!(on(b2.addr, &open_ws), 2);

    // The fourth is refused by the filter itself.
    let refused = open(port).await.expect_err("cluster is full");
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(refused.retry_after.as_deref(), Some("3"), "{refused:?}");
    assert_eq!(
        refused.reason.as_deref(),
        Some("no_capacity"),
        "{refused:?}"
    );
    let body: Value = serde_json::from_str(&refused.body).expect("JSON body");
    assert_eq!(
        body,
        serde_json::json!({"error": "no_capacity", "cluster": "pods"})
    );

    // Admin JSON agrees.
    let json = wscap_json(&envoy).await;
    for (addr, active, limit) in [(b1.addr, 1, 1), (b2.addr, 2, 2)] {
        let h = host(&json, addr);
        assert_eq!(h["active"], active, "{json}");
        assert_eq!(h["limit"], limit, "{json}");
        assert_eq!(h["admitted"], active, "{json}");
    }
    let pods = &json["clusters"][0];
    assert_eq!(pods["rejected"]["no_capacity"], 1, "{json}");
    let prom_admin = envoy.admin_get("/wscap?format=prometheus").await;
    assert_eq!(prom_admin.status, 200);
    assert!(
        prom_admin.body.contains(&format!(
            "wscap_active_connections{{cluster=\"pods\",host=\"{}\"}} 2",
            b2.addr
        )),
        "{}",
        prom_admin.body
    );

    // Envoy's own stats carry the labelled gauges (bootstrap timer) and counters (filter).
    let (h1, h2) = (b1.addr.to_string(), b2.addr.to_string());
    let active = "envoy_dynamicmodulescustom_wscap_active_connections";
    let limit = "envoy_dynamicmodulescustom_wscap_connection_limit";
    let admitted = "envoy_dynamicmodulescustom_wscap_admitted";
    let rejected = "envoy_dynamicmodulescustom_wscap_rejected";
    let text = eventually(
        "gauges in /stats/prometheus",
        Duration::from_secs(5),
        || async {
            let t = prometheus(&envoy).await;
            let ok = prom_value(&t, active, &[("cluster", "pods"), ("host", &h1)]) == Some(1)
                && prom_value(&t, active, &[("cluster", "pods"), ("host", &h2)]) == Some(2);
            ok.then_some(t)
        },
    )
    .await;
    assert_eq!(
        prom_value(&text, limit, &[("cluster", "pods"), ("host", &h1)]),
        Some(1)
    );
    assert_eq!(
        prom_value(&text, limit, &[("cluster", "pods"), ("host", &h2)]),
        Some(2)
    );
    assert_eq!(
        prom_value(&text, admitted, &[("cluster", "pods"), ("host", &h1)]),
        Some(1)
    );
    assert_eq!(
        prom_value(&text, admitted, &[("cluster", "pods"), ("host", &h2)]),
        Some(2)
    );
    assert_eq!(
        prom_value(
            &text,
            rejected,
            &[("cluster", "pods"), ("reason", "no_capacity")]
        ),
        Some(1)
    );
    let stats = envoy.admin_get("/stats?filter=wscap_active").await.body;
    assert!(
        stats.contains("dynamicmodulescustom.wscap_active_connections"),
        "{stats}"
    );

    // A close frame on a b2 connection frees its slot; the next WebSocket goes to b2.
    let idx = open_ws.iter().position(|(_, h)| *h == b2.addr).unwrap();
    let (mut ws, _) = open_ws.remove(idx);
    ws.close(None).await.expect("close");
    drop(ws);
    eventually(
        "b2 released after a close frame",
        Duration::from_secs(5),
        || async { (host(&wscap_json(&envoy).await, b2.addr)["active"] == 1).then_some(()) },
    )
    .await;
    let mut ws = open(port).await.expect("room again on b2");
    assert_eq!(whoami(&mut ws).await, b2.addr);
    open_ws.push((ws, b2.addr));

    // A TCP drop without a close frame also releases.
    let idx = open_ws.iter().position(|(_, h)| *h == b1.addr).unwrap();
    let (ws, _) = open_ws.remove(idx);
    drop(ws);
    eventually(
        "b1 released after a TCP drop",
        Duration::from_secs(5),
        || async { (host(&wscap_json(&envoy).await, b1.addr)["active"] == 0).then_some(()) },
    )
    .await;

    // Plain requests pass the filter untouched and are placed by the LB policy (round robin).
    let mut seen = std::collections::HashSet::new();
    for _ in 0..6 {
        let listener: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let r = http_get(listener, "/plain").await.expect("plain GET");
        assert_eq!(r.status, 200, "{r:?}");
        seen.insert(r.body.clone());
    }
    // Each worker's LB instance round-robins from its own counter; 6 requests over 2 workers
    // give one of them at least 3, so both backends are seen.
    let expected: std::collections::HashSet<String> =
        [b1.addr.to_string(), b2.addr.to_string()].into();
    assert_eq!(seen, expected, "round robin over both healthy hosts");
    let json = wscap_json(&envoy).await;
    assert_eq!(
        host(&json, b1.addr)["active"],
        0,
        "plain requests take no slot: {json}"
    );
    assert_eq!(host(&json, b2.addr)["active"], 2, "{json}");

    // Everything closed: back to zero, in core and in Envoy's gauges.
    for (mut ws, _) in open_ws.drain(..) {
        let _ = ws.close(None).await;
    }
    eventually("all released", Duration::from_secs(5), || async {
        let j = wscap_json(&envoy).await;
        (host(&j, b1.addr)["active"] == 0 && host(&j, b2.addr)["active"] == 0).then_some(())
    })
    .await;
    eventually("gauges back to 0", Duration::from_secs(5), || async {
        let t = prometheus(&envoy).await;
        (prom_value(&t, active, &[("cluster", "pods"), ("host", &h2)]) == Some(0)).then_some(())
    })
    .await;

    let log = envoy.log();
    if std::env::var_os("WSCAP_SHOW_LOG").is_some() {
        eprintln!("{log}");
    }
    assert!(!log.contains("wscap: panic"), "{log}");
    // The UpstreamAddress attribute gave the real endpoint at each 101, equal to the permit's.
    for b in [&b1, &b2] {
        assert!(
            log.contains(&format!("upgraded on {} as admitted", b.addr)),
            "no confirmed upgrade on {}:\n{log}",
            b.addr
        );
    }
    assert!(!log.contains("upstream address unknown"), "{log}");
    // send_response's details buffer arrived (the 6-argument form of the callback).
    assert!(
        log.contains("local reply with details wscap_no_capacity"),
        "{log}"
    );
    // Documented Envoy 1.40 behaviour (module README): a strict override host is selected by
    // Envoy itself; the LB policy's choose_host is not called for those streams.
    assert!(
        !log.contains("choose_host called with override host"),
        "Envoy consulted choose_host for an override-host stream:\n{log}"
    );
    // program_init's ABI string: 1.40 matches it; 1.38 and 1.39 (ABI v0.1.0) only warn.
    let version = common::envoy_version();
    let abi_line = if wscap_testkit::envoy_version::major_minor(&version) >= (1, 40) {
        "Dynamic module ABI version v0.2.0 matched"
    } else {
        "Dynamic module ABI version v0.2.0 is deprecated"
    };
    assert!(
        log.contains(abi_line),
        "Envoy {version}: expected {abi_line:?} in:\n{log}"
    );
}

fn refused_with(setup: &Setup<'_>, needle: &str) {
    let (status, log) = run_to_exit(&setup.bootstrap(), Duration::from_secs(20));
    assert!(!status.success(), "envoy should exit non-zero; log:\n{log}");
    assert!(
        status.code().is_some(),
        "envoy must exit, not crash ({status}); log:\n{log}"
    );
    assert!(
        log.contains(needle),
        "log should mention {needle:?}:\n{log}"
    );
}

#[test]
fn bad_configs_are_refused_at_load_with_a_message() {
    let backends = [("127.0.0.1:9".parse().unwrap(), None)];
    let port = free_port();

    let mut s = Setup::new(port, &backends, 1);
    s.filter_json = r#"{"cluster":"pods","max_connections_per_host":-1}"#.into();
    refused_with(
        &s,
        "\"max_connections_per_host\" must not be negative (got -1)",
    );

    let mut s = Setup::new(port, &backends, 1);
    s.filter_json = r#"{"cluster":"pods","max_connections_per_host":1,"bogus":1}"#.into();
    refused_with(&s, "unknown field `bogus`");

    let mut s = Setup::new(port, &backends, 1);
    s.filter_json = r#"{"cluster":"pods"}"#.into();
    refused_with(&s, "missing field `max_connections_per_host`");

    let mut s = Setup::new(port, &backends, 1);
    s.lb_json = r#"{"mode":"x"}"#.into();
    refused_with(&s, "wscap: lb policy config \"wscap\" refused");

    let mut s = Setup::new(port, &backends, 1);
    s.bootstrap_json = "{not json".into();
    refused_with(
        &s,
        "wscap: bootstrap extension config \"wscap\" refused: invalid JSON",
    );
}
