//! A real `redis-server` for global-mode tests: a free loopback port, no persistence, killed by
//! PID when dropped (also when the test panics), and the failures global mode must survive:
//! kill -9, restart empty on the same port, SIGSTOP / SIGCONT.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server` child process.
pub struct RedisServer {
    /// Loopback port it listens on (kept across restarts).
    pub port: u16,
    child: Option<Child>,
    dir: std::path::PathBuf,
    frozen: bool,
}

impl RedisServer {
    /// Starts `redis-server` on a free loopback port and waits until it accepts connections.
    pub fn start() -> RedisServer {
        let port = crate::free_port();
        let dir = crate::scratch_dir("redis");
        let mut r = RedisServer {
            port,
            child: None,
            dir,
            frozen: false,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
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

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// PID of the running server.
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
        self.spawn();
    }

    /// Starts a new, empty server on the same port after [`RedisServer::kill`].
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "still running");
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
