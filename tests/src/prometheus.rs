//! A real Prometheus server (Debian's `prometheus` package, installed by `scripts/setup`) as a
//! child process: its own config, rule files and storage directory, a free loopback port, killed
//! by PID when dropped. Queried through its HTTP API with [`crate::http`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::http;

/// One series of an instant-query result: its labels (without `__name__`) and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Labels, `__name__` removed.
    pub labels: BTreeMap<String, String>,
    /// The sample value (may be NaN or ±Inf).
    pub value: f64,
}

impl Series {
    /// Value of label `name` ("" when absent).
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

/// A running Prometheus. Dropping it kills the process (by PID).
pub struct Prometheus {
    child: Option<Child>,
    /// HTTP address (`127.0.0.1:port`).
    pub addr: SocketAddr,
    /// Scratch directory: config, log, TSDB.
    pub dir: PathBuf,
}

/// The `prometheus` binary: `$PROMETHEUS_BIN`, else `prometheus` on `PATH`.
pub fn prometheus_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PROMETHEUS_BIN") {
        return PathBuf::from(p);
    }
    find_on_path("prometheus").unwrap_or_else(|| {
        panic!("prometheus not found on PATH: run scripts/setup (apt package `prometheus`)")
    })
}

/// `name` on `PATH`, if there.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Percent-encodes a query-string value.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

impl Prometheus {
    /// Starts Prometheus scraping `/stats/prometheus` of every Envoy admin address in `targets`
    /// (job `envoy`) every second, evaluating `rule_files` every second, and waits until it is
    /// ready. Panics with its log if it does not start.
    pub async fn start(targets: &[SocketAddr], rule_files: &[&Path]) -> Prometheus {
        let dir = crate::scratch_dir("prometheus");
        let rules: Vec<String> = rule_files
            .iter()
            .map(|p| format!("  - '{}'\n", p.display()))
            .collect();
        let targets: Vec<String> = targets.iter().map(|a| format!("'{a}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n{}\
             scrape_configs:\n- job_name: envoy\n  metrics_path: /stats/prometheus\n  \
             static_configs:\n  - targets: [{}]\n",
            rules.concat(),
            targets.join(", ")
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let port = crate::free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let log = File::create(dir.join("prometheus.log")).expect("prometheus log");
        let child = Command::new(prometheus_bin())
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", prometheus_bin().display()));
        let mut p = Prometheus {
            child: Some(child),
            addr,
            dir,
        };
        let start = Instant::now();
        loop {
            if let Some(Ok(Some(st))) = p.child.as_mut().map(Child::try_wait) {
                panic!("prometheus exited during start-up ({st}):\n{}", p.log());
            }
            if let Ok(r) = http::get(addr, "/-/ready").await {
                if r.status == 200 {
                    break;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "prometheus not ready after 30 s:\n{}",
                p.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        p
    }

    /// Everything Prometheus logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// `GET path` on the HTTP API; the `data` member of a `success` answer.
    pub async fn api(&self, path: &str) -> Result<Value, String> {
        let r = http::get(self.addr, path)
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        let v: Value = serde_json::from_slice(&r.body)
            .map_err(|e| format!("GET {path}: not JSON ({e}): {}", r.text()))?;
        if r.status != 200 || v["status"] != "success" {
            return Err(format!("GET {path}: {} {v}", r.status));
        }
        Ok(v["data"].clone())
    }

    /// An instant query: the series of its vector result (a scalar becomes one unlabelled
    /// series).
    pub async fn query(&self, expr: &str) -> Result<Vec<Series>, String> {
        let data = self
            .api(&format!("/api/v1/query?query={}", encode(expr)))
            .await
            .map_err(|e| format!("query {expr:?}: {e}"))?;
        let number = |v: &Value| -> Result<f64, String> {
            let s = v[1]
                .as_str()
                .ok_or(format!("query {expr:?}: bad sample {v}"))?;
            match s {
                "NaN" => Ok(f64::NAN),
                "+Inf" => Ok(f64::INFINITY),
                "-Inf" => Ok(f64::NEG_INFINITY),
                _ => s
                    .parse()
                    .map_err(|e| format!("query {expr:?}: bad value {s:?}: {e}")),
            }
        };
        match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|s| {
                    let mut labels: BTreeMap<String, String> = s["metric"]
                        .as_object()
                        .map(|m| {
                            m.iter()
                                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                                .collect()
                        })
                        .unwrap_or_default();
                    labels.remove("__name__");
                    Ok(Series {
                        labels,
                        value: number(&s["value"])?,
                    })
                })
                .collect(),
            Some("scalar") => Ok(vec![Series {
                labels: BTreeMap::new(),
                value: number(&data["result"])?,
            }]),
            other => Err(format!("query {expr:?}: unexpected result type {other:?}")),
        }
    }

    /// The values of label `name` over the series matching `matcher` (what Grafana's
    /// `label_values(matcher, name)` lists).
    pub async fn label_values(&self, name: &str, matcher: &str) -> Result<Vec<String>, String> {
        let data = self
            .api(&format!(
                "/api/v1/label/{name}/values?match[]={}",
                encode(matcher)
            ))
            .await?;
        Ok(data
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect())
    }

    /// Kills Prometheus (SIGKILL to its PID) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log();
            let tail: String = log
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            eprintln!("--- prometheus log ({}) ---\n{tail}", self.dir.display());
        }
    }
}
