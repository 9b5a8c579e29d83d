//! The real Envoy binary as a child process.
//!
//! [`Envoy`] writes the bootstrap to a scratch directory, starts Envoy with `--disable-hot-restart`
//! (so parallel tests do not share memory), waits for the admin port and `/ready`, and kills the
//! process by PID when dropped — also when the test panics, in which case it prints the log.

use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::http::{self, Response};
use crate::metrics::{self, Sample};

/// How to run Envoy.
#[derive(Debug, Clone)]
pub struct Opts {
    /// `--concurrency`.
    pub concurrency: u32,
    /// Set `ENVOY_DYNAMIC_MODULES_SEARCH_PATH` to the directory of `libwscap.so`.
    pub module: bool,
    /// Extra command-line arguments.
    pub extra_args: Vec<String>,
    /// Hot restart on, as `(base id, restart epoch)`; `None`: `--disable-hot-restart`.
    pub hot_restart: Option<(u32, u32)>,
}

impl Opts {
    /// Envoy with the module available, at `concurrency` workers.
    pub fn with_module(concurrency: u32) -> Opts {
        Opts {
            concurrency,
            module: true,
            extra_args: Vec::new(),
            hot_restart: None,
        }
    }

    /// Envoy without the module (plain config), at `concurrency` workers.
    pub fn plain(concurrency: u32) -> Opts {
        Opts {
            concurrency,
            module: false,
            extra_args: Vec::new(),
            hot_restart: None,
        }
    }
}

/// A running Envoy. Dropping it kills the process (by PID).
pub struct Envoy {
    child: Option<Child>,
    /// Admin address.
    pub admin: SocketAddr,
    /// Scratch directory holding the config and the log.
    pub dir: PathBuf,
    log_path: PathBuf,
}

fn command(config_path: &Path, log_path: &Path, admin_path: &Path, opts: &Opts) -> Command {
    let mut cmd = Command::new(crate::envoy_bin());
    cmd.arg("-c")
        .arg(config_path)
        .arg("--concurrency")
        .arg(opts.concurrency.to_string());
    match opts.hot_restart {
        None => cmd.arg("--disable-hot-restart"),
        Some((base_id, epoch)) => cmd
            .arg("--base-id")
            .arg(base_id.to_string())
            .arg("--restart-epoch")
            .arg(epoch.to_string()),
    };
    cmd.arg("--admin-address-path")
        .arg(admin_path)
        .arg("-l")
        .arg(std::env::var("WSCAP_E2E_ENVOY_LOG_LEVEL").unwrap_or_else(|_| "info".into()))
        .args(&opts.extra_args);
    if opts.module {
        cmd.env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", crate::module_dir());
    } else {
        cmd.env_remove("ENVOY_DYNAMIC_MODULES_SEARCH_PATH");
    }
    let log = File::create(log_path).expect("create envoy log");
    let log2 = log.try_clone().expect("clone log fd");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2));
    // SAFETY:
    // - the closure runs in the forked child between fork and exec; it only calls prctl(2), which is
    //   async-signal-safe, allocates nothing and takes no lock;
    // - PR_SET_PDEATHSIG makes the kernel SIGKILL Envoy if the thread that spawned it dies without
    //   running our Drop (e.g. the test binary is killed), so no Envoy outlives its test.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            Ok(())
        });
    }
    cmd
}

fn write_config(dir: &Path, bootstrap: &Value) -> PathBuf {
    write_config_text(
        dir,
        &serde_json::to_string_pretty(bootstrap).expect("serialise"),
    )
}

fn write_config_text(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("envoy.yaml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// Run Envoy on a config that is expected to be refused; returns its exit status and log.
///
/// Panics if Envoy is still running after `timeout` (it is then killed by PID).
pub fn run_to_exit(bootstrap: &Value, opts: &Opts, timeout: Duration) -> (ExitStatus, String) {
    let dir = crate::scratch_dir("refused");
    let config = write_config(&dir, bootstrap);
    let log_path = dir.join("envoy.log");
    let mut child = command(&config, &log_path, &dir.join("admin.addr"), opts)
        .spawn()
        .expect("spawn envoy");
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let _ = std::fs::remove_dir_all(&dir);
            return (st, log);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            panic!(
                "envoy accepted a config it should refuse (still running after {timeout:?}); log:\n{log}"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A one-line description of how a process ended (code or signal).
pub fn describe_exit(st: &ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!(
            "killed by signal {s}{}",
            if st.core_dumped() {
                " (core dumped)"
            } else {
                ""
            }
        ),
        _ => "unknown".into(),
    }
}

impl Envoy {
    /// Start Envoy on `bootstrap` and wait until it is ready; panics with the log if it is not.
    pub async fn start(bootstrap: &Value, opts: &Opts) -> Envoy {
        match Self::try_start(bootstrap, opts).await {
            Ok(e) => e,
            Err(e) => panic!("{e}"),
        }
    }

    /// Start Envoy on `bootstrap` in a fresh scratch directory.
    pub async fn try_start(bootstrap: &Value, opts: &Opts) -> Result<Envoy, String> {
        let dir = crate::scratch_dir("envoy");
        Self::try_start_in(&dir, bootstrap, opts).await
    }

    /// Start Envoy on `bootstrap` with its files in `dir` (which may already hold EDS/LDS files).
    pub async fn try_start_in(dir: &Path, bootstrap: &Value, opts: &Opts) -> Result<Envoy, String> {
        let config = write_config(dir, bootstrap);
        Self::launch(dir, config, opts).await
    }

    /// Start Envoy on a YAML config given as text (e.g. an example file), files in `dir`.
    pub async fn try_start_yaml(dir: &Path, yaml: &str, opts: &Opts) -> Result<Envoy, String> {
        let config = write_config_text(dir, yaml);
        Self::launch(dir, config, opts).await
    }

    async fn launch(dir: &Path, config: PathBuf, opts: &Opts) -> Result<Envoy, String> {
        let log_path = dir.join("envoy.log");
        let admin_path = dir.join("admin.addr");
        let child = command(&config, &log_path, &admin_path, opts)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", crate::envoy_bin().display()))?;
        let mut envoy = Envoy {
            child: Some(child),
            admin: "127.0.0.1:0".parse().expect("addr"),
            dir: dir.to_path_buf(),
            log_path,
        };
        let start = Instant::now();
        let deadline = Duration::from_secs(30);
        // 1. admin address file.
        loop {
            if let Some(st) = envoy.try_wait() {
                return Err(envoy.failure(&format!(
                    "envoy exited during start-up ({})",
                    describe_exit(&st)
                )));
            }
            if let Ok(s) = std::fs::read_to_string(&admin_path) {
                if let Ok(a) = s.trim().parse::<SocketAddr>() {
                    envoy.admin = a;
                    break;
                }
            }
            if start.elapsed() > deadline {
                return Err(envoy.failure("envoy did not write its admin address"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // 2. /ready says LIVE (server initialised, listeners bound).
        loop {
            if let Some(st) = envoy.try_wait() {
                return Err(envoy.failure(&format!(
                    "envoy exited during start-up ({})",
                    describe_exit(&st)
                )));
            }
            if let Ok(r) = http::get(envoy.admin, "/ready").await {
                if r.status == 200 {
                    break;
                }
            }
            if start.elapsed() > deadline {
                return Err(envoy.failure("envoy did not become ready (/ready != 200)"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(envoy)
    }

    fn failure(&mut self, what: &str) -> String {
        self.kill();
        format!(
            "{what}\n--- envoy log ({}) ---\n{}",
            self.log_path.display(),
            self.log()
        )
    }

    /// PID of the Envoy process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `Some(status)` if Envoy has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Kill Envoy (SIGKILL to its PID) and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`) to Envoy's PID: a frozen instance holds its sockets
    /// and answers nothing (a stalled process, as Redis and clients see it).
    pub fn freeze(&self, stop: bool) {
        let Some(pid) = self.pid() else {
            return;
        };
        let sig = if stop { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: kill(2) on the PID of our own child, not yet reaped (still in `self.child`), so
        // the PID cannot have been reused.
        let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
    }

    /// Panic if Envoy is no longer running (e.g. it crashed), with the log.
    pub fn assert_running(&mut self) {
        if let Some(st) = self.try_wait() {
            panic!(
                "envoy is no longer running ({}); log:\n{}",
                describe_exit(&st),
                self.log()
            );
        }
    }

    /// Everything Envoy logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Port a listener (by name) is bound to.
    pub async fn listener_port(&self, name: &str) -> u16 {
        let r = self.admin_get("/listeners?format=json").await;
        let v: Value = serde_json::from_slice(&r.body).expect("/listeners json");
        let ls = v["listener_statuses"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for l in ls {
            if l["name"].as_str() == Some(name) {
                if let Some(p) = l["local_address"]["socket_address"]["port_value"].as_u64() {
                    return p as u16;
                }
            }
        }
        panic!("listener {name} not found in /listeners: {}", r.text());
    }

    /// `GET path` on the admin port; panics on transport errors.
    pub async fn admin_get(&self, path: &str) -> Response {
        http::get(self.admin, path)
            .await
            .unwrap_or_else(|e| panic!("admin GET {path}: {e}\n--- envoy log ---\n{}", self.log()))
    }

    /// `GET /wscap`, parsed.
    pub async fn wscap(&self) -> Value {
        let r = self.admin_get("/wscap").await;
        assert_eq!(
            r.status,
            200,
            "GET /wscap: status {} body {}",
            r.status,
            r.text()
        );
        serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("GET /wscap is not JSON ({e}): {}", r.text()))
    }

    /// `GET /stats/prometheus`, parsed.
    pub async fn prometheus(&self) -> Vec<Sample> {
        let r = self.admin_get("/stats/prometheus").await;
        assert_eq!(r.status, 200, "/stats/prometheus status {}", r.status);
        metrics::parse_prometheus(&r.text())
    }

    /// A plain Envoy stat (counter or gauge) by exact name, from `/stats?format=json`.
    pub async fn stat(&self, name: &str) -> Option<u64> {
        let r = self
            .admin_get(&format!("/stats?format=json&filter=^{name}$"))
            .await;
        let v: Value = serde_json::from_slice(&r.body).ok()?;
        v["stats"]
            .as_array()?
            .iter()
            .find(|s| s["name"].as_str() == Some(name))
            .and_then(|s| s["value"].as_u64())
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let from = lines.len().saturating_sub(200);
            eprintln!(
                "--- envoy log, last {} lines ({}; config in {}) ---\n{}\n--- end of envoy log ---",
                lines.len() - from,
                self.log_path.display(),
                self.dir.display(),
                lines[from..].join("\n")
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
