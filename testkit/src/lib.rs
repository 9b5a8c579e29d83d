//! Test support for the wscap crates; not part of any shipped library.
//!
//! One guard for a real `redis-server` ([`RedisServer`]), shared by the global-mode tests of
//! `wscap-global`, `wscap-ffi` and `wscap-e2e` (and the benchmarks through `wscap-e2e`), plus
//! the two small helpers it needs ([`free_port`], [`scratch_dir`]); and [`envoy_log`], which
//! reads the order of events from Envoy's debug log; [`envoy_version`], which Envoy a test runs
//! (checked against `WSCAP_EXPECT_ENVOY_VERSION`); [`pki`], a throwaway CA with server and
//! client certificates for TLS tests.
//!
//! The server listens on 127.0.0.1 only, persists nothing, and is only ever signalled by the
//! PID of the child this process spawned (never by name), so tests running side by side, or
//! other Redis servers on the machine, are left alone.

pub mod envoy_log;
pub mod envoy_version;
pub mod pki;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Polls `f` every 20 ms until it holds (true) or `within` passes (false).
pub fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A loopback port that was free a moment ago (bind port 0, read it, release it).
///
/// Use only where the port must be known in advance (a server configured on the command line).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// A fresh, unique, empty scratch directory under the system temp dir
/// (`wscap-testkit-<pid>-<tag>-<n>`).
pub fn scratch_dir(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("wscap-testkit-{}-{tag}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// A real `redis-server` child process for global-mode tests.
///
/// Started on a free loopback port with no persistence (`--save ""`, `--appendonly no`, its own
/// scratch `--dir`); killed by PID when dropped (also when the test panics), and its scratch
/// directory removed. It also produces the failures global mode must survive: kill -9
/// ([`kill`](RedisServer::kill)), restart empty on the same port
/// ([`restart_empty`](RedisServer::restart_empty)), SIGSTOP / SIGCONT
/// ([`freeze`](RedisServer::freeze) / [`thaw`](RedisServer::thaw)).
pub struct RedisServer {
    /// Loopback port it listens on (kept across restarts).
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
    frozen: bool,
    options: RedisOptions,
}

/// How [`RedisServer::start_with`] configures the server.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// `--requirepass`: clients must AUTH (`redis://:<password>@...`).
    pub password: Option<String>,
    /// TLS only (`--port 0`, `--tls-port`): the server's certificate, key and the CA it trusts
    /// for client certificates.
    pub tls: Option<RedisTls>,
    /// More `redis-server` arguments (e.g. `--user ...` ACL rules).
    pub extra_args: Vec<String>,
}

/// The server side of TLS for [`RedisOptions::tls`].
#[derive(Debug, Clone)]
pub struct RedisTls {
    /// PEM server certificate.
    pub cert_file: PathBuf,
    /// PEM server key.
    pub key_file: PathBuf,
    /// PEM CA that client certificates must chain to.
    pub ca_file: PathBuf,
    /// `--tls-auth-clients yes`: a client certificate is required (mutual TLS).
    pub require_client_cert: bool,
}

impl RedisServer {
    /// Starts `redis-server` on a free loopback port and waits until it accepts connections.
    ///
    /// Panics if `redis-server` is not installed or does not start within 10 s.
    pub fn start() -> RedisServer {
        Self::start_with(RedisOptions::default())
    }

    /// Like [`start`](RedisServer::start), with a password and/or TLS.
    pub fn start_with(options: RedisOptions) -> RedisServer {
        let port = free_port();
        let dir = scratch_dir("redis");
        let mut r = RedisServer {
            port,
            child: None,
            dir,
            frozen: false,
            options,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let port = self.port.to_string();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir);
        match &self.options.tls {
            None => {
                cmd.args(["--port", &port]);
            }
            Some(tls) => {
                cmd.args(["--port", "0", "--tls-port", &port])
                    .arg("--tls-cert-file")
                    .arg(&tls.cert_file)
                    .arg("--tls-key-file")
                    .arg(&tls.key_file)
                    .arg("--tls-ca-cert-file")
                    .arg(&tls.ca_file)
                    .args([
                        "--tls-auth-clients",
                        if tls.require_client_cert { "yes" } else { "no" },
                    ]);
            }
        }
        if let Some(pw) = &self.options.password {
            cmd.args(["--requirepass", pw]);
        }
        cmd.args(&self.options.extra_args);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/setup installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis://127.0.0.1:<port>` (`rediss://` with TLS), without credentials.
    pub fn url(&self) -> String {
        let scheme = if self.options.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// [`url`](RedisServer::url) with `user:password@` (an empty user is the default user).
    pub fn url_with_auth(&self, user: &str, password: &str) -> String {
        self.url()
            .replacen("://", &format!("://{user}:{password}@"), 1)
    }

    /// PID of the running server (`None` after [`kill`](RedisServer::kill)).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// kill -9 by PID and reap: the server and its data are gone.
    pub fn kill(&mut self) {
        if self.frozen {
            self.thaw();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// kill -9, then a new, empty server on the same port.
    pub fn restart_empty(&mut self) {
        self.kill();
        self.start_again();
    }

    /// Starts a new, empty server on the same port after [`RedisServer::kill`] (any RDB
    /// snapshot or append-only file in its directory is removed first).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "still running");
        let _ = std::fs::remove_file(self.dir.join("dump.rdb"));
        let _ = std::fs::remove_dir_all(self.dir.join("appendonlydir"));
        self.spawn();
    }

    /// Starts a new server on the same port and directory after [`RedisServer::kill`], which
    /// loads what persistence left there (the append-only file of a server started with
    /// `--appendonly yes`, or an RDB snapshot).
    pub fn start_again_from_disk(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.spawn();
    }

    /// `SHUTDOWN SAVE` (an RDB snapshot of everything, then a clean exit), `down` without a
    /// server, then a new server on the same port and directory, which loads the snapshot: the
    /// data survive, while server time went on (every lease in it may have ended). Plain TCP
    /// servers only.
    pub fn restart_from_snapshot(&mut self, down: Duration) {
        use std::io::{Read, Write};
        assert!(self.options.tls.is_none(), "plain TCP servers only");
        if self.frozen {
            self.thaw();
        }
        let mut child = self.child.take().expect("redis-server is running");
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", self.port))
            .expect("connect to redis-server");
        let auth = match &self.options.password {
            Some(pw) => format!("AUTH {pw}\r\n"),
            None => String::new(),
        };
        conn.write_all(format!("{auth}SHUTDOWN SAVE\r\n").as_bytes())
            .expect("send SHUTDOWN SAVE");
        let _ = conn.read(&mut [0u8; 256]); // the server closes the connection as it exits
        let status = child.wait().expect("reap redis-server");
        assert!(status.success(), "SHUTDOWN SAVE failed: {status}");
        assert!(
            self.dir.join("dump.rdb").exists(),
            "no RDB snapshot was written"
        );
        std::thread::sleep(down);
        self.spawn();
    }

    fn signal(&self, sig: i32) {
        let pid = self.pid().expect("redis-server is running");
        // SAFETY: kill(2) on the PID of our own child, which we have not reaped (it is still in
        // `self.child`), so the PID cannot have been reused.
        let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
    }

    /// SIGSTOP: the server holds its connections but answers nothing (a partition, as clients
    /// see it).
    pub fn freeze(&mut self) {
        self.signal(libc::SIGSTOP);
        self.frozen = true;
    }

    /// SIGCONT after [`RedisServer::freeze`].
    pub fn thaw(&mut self) {
        self.signal(libc::SIGCONT);
        self.frozen = false;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
