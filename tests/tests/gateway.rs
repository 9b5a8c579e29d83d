//! (k) A shared gateway: one listener, many routes, many clusters. wscap governs exactly the
//! WebSockets whose route goes to a cluster with the wscap LB policy, and leaves everything
//! else alone.
//!
//! One listener, one wscap filter without `"cluster"` (default 3 per pod), and:
//! - `chat` (wscap): 2 pods, the filter's default 3 each;
//! - `games` (wscap): 2 pods; its route sets `max_connections_per_host: 2` and
//!   `retry_after_seconds: 11`; `games-1` has endpoint metadata `max_connections: 1`
//!   (metadata over per-route over the filter default: capacity 2 + 1);
//! - `other` (round robin, no wscap): 1 WebSocket pod, never capped;
//! - `plain` (round robin): plain HTTP;
//! - the virtual host sets `retry_after_seconds: 9` for every route without its own;
//! - routes: `/chat-free` (to `chat`, per-route `{"disabled": true}`), `/chat`, `/games`,
//!   `/other`, `/plain`, `/mixed` (`weighted_clusters` chat 50 / other 50), `/hdr`
//!   (`cluster_header: x-cluster`), `/direct` (a direct response: no cluster).
//!
//! The verdicts are what the pods and clients saw: pods count their own connections.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};
use wscap_e2e::backend::Backend;
use wscap_e2e::client::{connect, connect_with, Outcome, WsClient};
use wscap_e2e::config::{self, Endpoint, ListenerSpec, STRING_VALUE};
use wscap_e2e::envoy::{describe_exit, run_to_exit, Envoy, Opts};
use wscap_e2e::{eventually, metrics, SETTLE};

const LISTENER: &str = "gw";
const DEFAULT_LIMIT: usize = 3;
const GAMES_ROUTE_LIMIT: usize = 2;
const GAMES_1_METADATA_LIMIT: usize = 1;

fn per_route(value: &str) -> Value {
    json!({"wscap": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilterPerRoute",
        "dynamic_module_config": {"name": "wscap", "do_not_close": true},
        "filter_name": "wscap",
        "filter_config": {"@type": STRING_VALUE, "value": value},
    }})
}

fn route(prefix: &str, action: Value) -> Value {
    json!({"match": {"prefix": prefix}, "route": action})
}

fn routes() -> Vec<Value> {
    let mut chat_free = route("/chat-free", json!({"cluster": "chat", "timeout": "0s"}));
    chat_free["typed_per_filter_config"] = per_route(r#"{"disabled": true}"#);
    let mut games = route("/games", json!({"cluster": "games", "timeout": "0s"}));
    games["typed_per_filter_config"] =
        per_route(r#"{"max_connections_per_host": 2, "retry_after_seconds": 11}"#);
    vec![
        chat_free,
        route("/chat", json!({"cluster": "chat", "timeout": "0s"})),
        games,
        route("/other", json!({"cluster": "other", "timeout": "0s"})),
        route("/plain", json!({"cluster": "plain"})),
        route(
            "/mixed",
            json!({"weighted_clusters": {"clusters": [
                {"name": "chat", "weight": 50}, {"name": "other", "weight": 50}
            ]}, "timeout": "0s"}),
        ),
        route(
            "/hdr",
            json!({"cluster_header": "x-cluster", "timeout": "0s"}),
        ),
        json!({"match": {"prefix": "/direct"},
               "direct_response": {"status": 200, "body": {"inline_string": "direct"}}}),
    ]
}

/// The gateway bootstrap, with `routes` on the one virtual host.
fn gateway_bootstrap(pods: &Pods, filter: &str, routes: Vec<Value>) -> Value {
    let l = ListenerSpec::new(LISTENER, "chat", vec![config::wscap_filter(filter)]);
    let clusters = vec![
        config::static_cluster(
            "chat",
            &[
                Endpoint::new(pods.chat[0].addr),
                Endpoint::new(pods.chat[1].addr),
            ],
            true,
        ),
        config::static_cluster(
            "games",
            &[
                Endpoint::new(pods.games[0].addr),
                Endpoint::with_limit(pods.games[1].addr, GAMES_1_METADATA_LIMIT as u32),
            ],
            true,
        ),
        config::static_cluster("other", &[Endpoint::new(pods.other.addr)], false),
        config::static_cluster("plain", &[Endpoint::new(pods.plain.addr)], false),
    ];
    let mut boot = config::bootstrap(std::slice::from_ref(&l), clusters, true);
    let vhost = &mut boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]["route_config"]["virtual_hosts"][0];
    vhost["routes"] = Value::Array(routes);
    // Virtual-host-wide: a retry-after for every route that does not set its own.
    vhost["typed_per_filter_config"] = per_route(r#"{"retry_after_seconds": 9}"#);
    boot
}

struct Pods {
    chat: Vec<Backend>,
    games: Vec<Backend>,
    other: Backend,
    plain: Backend,
}

impl Pods {
    async fn start() -> Pods {
        Pods {
            chat: vec![
                Backend::start("chat-0").await,
                Backend::start("chat-1").await,
            ],
            games: vec![
                Backend::start("games-0").await,
                Backend::start("games-1").await,
            ],
            other: Backend::start("other-0").await,
            plain: Backend::start("plain-0").await,
        }
    }

    fn all(&self) -> Vec<&Backend> {
        let mut v: Vec<&Backend> = self.chat.iter().chain(&self.games).collect();
        v.push(&self.other);
        v.push(&self.plain);
        v
    }
}

/// Opens `n` WebSockets on `path` (with `headers`) all at once.
async fn storm(
    port: u16,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    n: usize,
) -> Vec<Outcome> {
    let tasks: Vec<_> = (0..n)
        .map(|_| tokio::spawn(connect_with(port, path, headers)))
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("client task"));
    }
    out
}

fn split(outcomes: Vec<Outcome>, what: &str) -> (Vec<WsClient>, Vec<wscap_e2e::http::Response>) {
    let mut open = Vec::new();
    let mut refused = Vec::new();
    for o in outcomes {
        match o {
            Outcome::Open(c) => open.push(c),
            Outcome::Refused(r) => refused.push(r),
            Outcome::Failed(e) => panic!("{what}: a connection failed outright: {e}"),
        }
    }
    (open, refused)
}

fn by_backend(open: &[WsClient]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for c in open {
        *m.entry(c.backend.clone()).or_insert(0) += 1;
    }
    m
}

fn assert_no_capacity(r: &wscap_e2e::http::Response, cluster: &str, retry_after: &str) {
    assert_eq!(
        r.status,
        503,
        "refusal status: {:?} {}",
        r.headers,
        r.text()
    );
    assert_eq!(
        r.header("x-wscap-reason"),
        Some("no_capacity"),
        "{:?}",
        r.headers
    );
    assert_eq!(
        r.header("retry-after"),
        Some(retry_after),
        "{:?}",
        r.headers
    );
    let body: Value = serde_json::from_slice(&r.body).expect("refusal body is JSON");
    assert_eq!(body["cluster"], cluster, "refusal body {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shared_gateway_governs_only_wscap_clusters() {
    let pods = Pods::start().await;
    let filter = r#"{"max_connections_per_host": 3, "retry_after_seconds": 5}"#;
    let boot = gateway_bootstrap(&pods, filter, routes());
    let envoy = Envoy::start(&boot, &Opts::with_module(wscap_e2e::concurrency())).await;
    let port = envoy.listener_port(LISTENER).await;
    eventually("both wscap clusters list their pods", SETTLE, || async {
        let doc = envoy.wscap().await;
        let n = metrics::hosts(&doc, "chat").len() + metrics::hosts(&doc, "games").len();
        (n == 4).then_some(()).ok_or(format!("{n} hosts: {doc}"))
    })
    .await;

    // Storms on every route at once.
    let (chat, games, other, mixed, hdr_other) = tokio::join!(
        storm(port, "/chat", &[], 8),
        storm(port, "/games", &[], 6),
        storm(port, "/other", &[], 5),
        storm(port, "/mixed", &[], 12),
        storm(port, "/hdr", &[("x-cluster", "other")], 4),
    );
    let (chat_open, chat_refused) = split(chat, "/chat");
    let (games_open, games_refused) = split(games, "/games");
    let (other_open, other_refused) = split(other, "/other");
    let (mixed_open, mixed_refused) = split(mixed, "/mixed");
    let (hdr_open, hdr_refused) = split(hdr_other, "/hdr other");

    eprintln!(
        "gateway: /chat {} open {} refused; /games {} open; /other {} open; /mixed {} open ({} to chat) {} refused; /hdr {} open",
        chat_open.len(),
        chat_refused.len(),
        games_open.len(),
        other_open.len(),
        mixed_open.len(),
        mixed_open.iter().filter(|c| c.backend.starts_with("chat")).count(),
        mixed_refused.len(),
        hdr_open.len()
    );
    // Non-wscap WebSockets all get their 101, from the non-wscap pod.
    assert!(
        other_refused.is_empty(),
        "/other refused {}",
        other_refused.len()
    );
    assert!(
        hdr_refused.is_empty(),
        "/hdr (other) refused {}",
        hdr_refused.len()
    );
    assert!(other_open
        .iter()
        .chain(&hdr_open)
        .all(|c| c.backend == "other-0"));
    let mixed_to_other = mixed_open.iter().filter(|c| c.backend == "other-0").count();
    let mixed_to_chat = mixed_open.len() - mixed_to_other;
    assert!(
        mixed_refused
            .iter()
            .all(|r| r.header("x-wscap-reason") == Some("no_capacity")),
        "a /mixed refusal that is not wscap's: {:?}",
        mixed_refused
            .iter()
            .map(|r| (r.status, r.headers.clone()))
            .collect::<Vec<_>>()
    );
    // chat: 2 pods x 3, reached through /chat and the chat half of /mixed; demand 8 + ~6 > 6.
    assert_eq!(
        chat_open.len() + mixed_to_chat,
        2 * DEFAULT_LIMIT,
        "chat admitted exactly its capacity (by /chat {}, by /mixed {mixed_to_chat})",
        chat_open.len()
    );
    // The virtual host's retry-after (over the filter's 5); /games sets its own (11).
    for r in &chat_refused {
        assert_no_capacity(r, "chat", "9");
    }
    // games: per-route 2 on games-0, metadata 1 on games-1; the route's retry-after.
    let g = by_backend(&games_open);
    assert_eq!(
        g.get("games-0").copied().unwrap_or(0),
        GAMES_ROUTE_LIMIT,
        "games-0: {g:?}"
    );
    assert_eq!(
        g.get("games-1").copied().unwrap_or(0),
        GAMES_1_METADATA_LIMIT,
        "games-1: {g:?}"
    );
    assert_eq!(games_refused.len(), 6 - 3);
    for r in &games_refused {
        assert_no_capacity(r, "games", "11");
    }
    // Every wscap pod within its own limit, as it counted itself.
    for (b, lim) in pods.chat.iter().map(|b| (b, DEFAULT_LIMIT)).chain([
        (&pods.games[0], GAMES_ROUTE_LIMIT),
        (&pods.games[1], GAMES_1_METADATA_LIMIT),
    ]) {
        assert!(
            b.max_seen() <= lim,
            "{} peaked at {} > {lim}",
            b.name,
            b.max_seen()
        );
        assert_eq!(b.active(), lim, "{} full", b.name);
    }
    assert_eq!(pods.other.active(), 5 + mixed_to_other + 4);

    // With chat full: a cluster_header WebSocket to chat is refused by wscap; one to other is
    // not; a disabled route to chat passes uncounted; a direct response and plain HTTP are
    // untouched.
    assert_no_capacity(
        &connect_with(port, "/hdr", &[("x-cluster", "chat")])
            .await
            .expect_refused("cluster_header chat while chat is full"),
        "chat",
        "9",
    );
    let free = connect(port, "/chat-free")
        .await
        .expect_open("disabled route");
    assert!(
        free.backend.starts_with("chat-"),
        "disabled route went to {}",
        free.backend
    );
    let direct = connect(port, "/direct")
        .await
        .expect_refused("direct response");
    assert_eq!(direct.status, 200, "direct response: {:?}", direct.headers);
    assert_eq!(direct.text(), "direct");
    assert!(direct.header("x-wscap-reason").is_none());
    let plain = wscap_e2e::http::get(format!("127.0.0.1:{port}").parse().unwrap(), "/plain")
        .await
        .expect("plain request");
    assert_eq!(plain.status, 200);
    assert_eq!(plain.text(), wscap_e2e::backend::plain_body("plain-0"));

    // /wscap and Prometheus show only the wscap clusters, with the pods' own counts (the
    // disabled route's connection is not wscap's).
    let doc = envoy.wscap().await;
    let names: Vec<&str> = doc["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(
        names.iter().all(|n| *n == "chat" || *n == "games"),
        "only wscap clusters in /wscap: {names:?}"
    );
    let chat_pods: usize = pods.chat.iter().map(Backend::active).sum();
    let wscap_chat: i64 = metrics::hosts(&doc, "chat").iter().map(|h| h.active).sum();
    assert_eq!(
        chat_pods,
        2 * DEFAULT_LIMIT + 1,
        "pods hold the capped six and the free one"
    );
    assert_eq!(
        wscap_chat,
        (2 * DEFAULT_LIMIT) as i64,
        "wscap counts only what it admitted"
    );
    for b in &pods.games {
        assert_eq!(
            metrics::host(&doc, "games", &b.host()).map(|h| h.active),
            Some(b.active() as i64),
            "{}",
            b.name
        );
    }
    let prom = envoy.prometheus().await;
    let clusters: std::collections::BTreeSet<String> = prom
        .iter()
        .filter(|s| s.name.contains("wscap_"))
        .filter_map(|s| s.labels.get("cluster").cloned())
        .collect();
    assert!(
        clusters.iter().all(|c| c == "chat" || c == "games"),
        "wscap series only for wscap clusters: {clusters:?}"
    );

    // Everyone leaves: counts return to 0.
    drop((
        chat_open, games_open, other_open, mixed_open, hdr_open, free,
    ));
    eventually("pods empty", SETTLE, || async {
        let held: Vec<(String, usize)> = pods
            .all()
            .iter()
            .filter(|b| b.active() > 0)
            .map(|b| (b.name.clone(), b.active()))
            .collect();
        held.is_empty().then_some(()).ok_or(format!("{held:?}"))
    })
    .await;
    eventually("wscap counts back to 0", SETTLE, || async {
        let doc = envoy.wscap().await;
        let total: i64 = ["chat", "games"]
            .iter()
            .flat_map(|c| metrics::hosts(&doc, c))
            .map(|h| h.active)
            .sum();
        (total == 0).then_some(()).ok_or(format!("{doc}"))
    })
    .await;
}

/// Bad per-route JSON is refused at load with a message naming the field; nothing crashes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_per_route_config_is_refused_naming_the_field() {
    let pods = Pods::start().await;
    let cases: &[(&str, &[&str])] = &[
        (
            r#"{"max_connections": 2}"#,
            &["unknown field", "max_connections"],
        ),
        (
            r#"{"max_connections_per_host": -2}"#,
            &["max_connections_per_host", "negative"],
        ),
        (r#"{"disabled": "yes"}"#, &["invalid type"]),
        ("{}", &["per-route config is empty"]),
    ];
    for (cfg, words) in cases {
        let mut r = route("/chat", json!({"cluster": "chat", "timeout": "0s"}));
        r["typed_per_filter_config"] = per_route(cfg);
        let boot = gateway_bootstrap(&pods, r#"{"max_connections_per_host": 3}"#, vec![r]);
        let (st, log) = run_to_exit(&boot, &Opts::with_module(1), Duration::from_secs(20));
        assert!(
            st.code().is_some_and(|c| c != 0),
            "{cfg}: expected a non-zero exit, got {}; log:\n{log}",
            describe_exit(&st)
        );
        assert!(
            log.lines().any(|l| words.iter().all(|w| l.contains(w))),
            "{cfg}: no log line contains all of {words:?}; log:\n{log}"
        );
    }
}
