//! Helpers for the global-mode tests: proxy instances over one real redis-server per test
//! ([`RedisServer`] from `wscap-testkit`: a free loopback port, killed by PID however the test
//! ends).
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use wscap_core::{HostSpec, Registry};
use wscap_global::{Coordinator, FailMode, GlobalConfig};
#[allow(unused_imports)]
pub use wscap_testkit::{eventually, RedisServer};

/// Restart grace in these tests: a pod new to Redis admits nothing beyond what instances
/// reclaim for this long (cold starts too: a new Redis cannot tell them from restarts).
pub const GRACE_MS: u64 = 300;

pub const PODS: [&str; 3] = ["10.9.0.1:8080", "10.9.0.2:8080", "10.9.0.3:8080"];

/// One proxy instance: its own registry (as one Envoy process has) and coordinator.
pub struct Instance {
    pub registry: &'static Registry,
    pub coordinator: Option<Coordinator>,
}

pub fn config(url: &str, id: &str, fail_mode: FailMode) -> GlobalConfig {
    let mut c = GlobalConfig::new(url);
    c.instance_id = Some(id.to_owned());
    c.lease_ttl_ms = 900;
    c.refresh_ms = 100;
    c.restart_grace_ms = Some(GRACE_MS);
    c.fail_mode = fail_mode;
    if fail_mode == FailMode::LocalLimit {
        c.local_limit = Some(4);
    }
    c
}

impl Instance {
    pub fn start(config: GlobalConfig, limit: u32) -> Self {
        let registry: &'static Registry = Box::leak(Box::new(Registry::new()));
        let coordinator = Coordinator::start(config, registry).unwrap();
        registry.set_default_limit("pods", limit).unwrap();
        let hosts: Vec<_> = PODS.iter().map(|p| HostSpec::parse(p).unwrap()).collect();
        registry.set_hosts("pods", &hosts).unwrap();
        Instance {
            registry,
            coordinator: Some(coordinator),
        }
    }

    pub fn coordinator(&self) -> &Coordinator {
        self.coordinator.as_ref().unwrap()
    }

    /// Admits one connection: locally if the share allows, else after one borrow round.
    pub fn admit(&self) -> Option<wscap_core::Permit> {
        if let Ok(p) = self.registry.acquire("pods") {
            return Some(p);
        }
        loop {
            let (tx, rx) = std::sync::mpsc::channel();
            self.coordinator().request_borrow("pods", move |o| {
                let _ = tx.send(o);
            });
            let outcome = rx
                .recv_timeout(Duration::from_secs(10))
                .expect("borrow answered");
            if let Ok(p) = self.registry.acquire("pods") {
                return Some(p);
            }
            if outcome != wscap_global::BorrowOutcome::Granted {
                return None;
            }
        }
    }
}

/// Connections held fleet-wide per pod, counted by the holders themselves (after admission,
/// before release): what the pods would see.
#[derive(Default)]
pub struct FleetCount(pub [AtomicU32; 3]);

impl FleetCount {
    pub fn hold(self: &Arc<Self>, p: wscap_core::Permit) -> Held {
        let i = PODS.iter().position(|a| *a == p.host().as_str()).unwrap();
        self.0[i].fetch_add(1, Ordering::SeqCst);
        Held {
            permit: Some(p),
            fleet: Arc::clone(self),
            i,
        }
    }
    pub fn max(&self) -> u32 {
        self.0
            .iter()
            .map(|a| a.load(Ordering::SeqCst))
            .max()
            .unwrap()
    }
    pub fn total(&self) -> u32 {
        self.0.iter().map(|a| a.load(Ordering::SeqCst)).sum()
    }
}

pub struct Held {
    permit: Option<wscap_core::Permit>,
    fleet: Arc<FleetCount>,
    i: usize,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.fleet.0[self.i].fetch_sub(1, Ordering::SeqCst);
        drop(self.permit.take());
    }
}

/// A loopback TCP relay to Redis that can be cut or slowed: while cut, it drops every
/// connection it accepts and every one it relays (an instance cut off from Redis while others
/// reach it); with a delay, every chunk from Redis waits that long before it is passed on (a
/// slow link: each reply comes `delay_ms` late).
pub struct Relay {
    pub port: u16,
    pub cut: Arc<AtomicBool>,
    pub delay_ms: Arc<AtomicU64>,
}

impl Relay {
    pub fn start(upstream: u16) -> Relay {
        use std::io::{Read, Write};
        use std::net::{Shutdown, TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let live: Arc<parking_lot::Mutex<Vec<TcpStream>>> = Arc::default();
        {
            let (cut, live, delay_ms) = (cut.clone(), live.clone(), delay_ms.clone());
            std::thread::spawn(move || {
                for client in listener.incoming().flatten() {
                    if cut.load(Ordering::SeqCst) {
                        continue; // dropped: the client sees its connection closed
                    }
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                        continue;
                    };
                    live.lock().push(client.try_clone().unwrap());
                    for (mut from, mut to, delay) in [
                        (
                            client.try_clone().unwrap(),
                            server.try_clone().unwrap(),
                            None,
                        ),
                        (server, client, Some(delay_ms.clone())),
                    ] {
                        std::thread::spawn(move || {
                            let mut buf = [0u8; 16 * 1024];
                            while let Ok(n @ 1..) = from.read(&mut buf) {
                                if let Some(d) = &delay {
                                    let ms = d.load(Ordering::SeqCst);
                                    if ms > 0 {
                                        std::thread::sleep(Duration::from_millis(ms));
                                    }
                                }
                                if to.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                            let _ = to.shutdown(Shutdown::Both);
                            let _ = from.shutdown(Shutdown::Both);
                        });
                    }
                }
            });
        }
        let relay = Relay {
            port,
            cut,
            delay_ms,
        };
        // Cutting also closes what is relayed now.
        let (cut2, live2) = (relay.cut.clone(), live);
        std::thread::spawn(move || loop {
            if cut2.load(Ordering::SeqCst) {
                for s in live2.lock().drain(..) {
                    let _ = s.shutdown(Shutdown::Both);
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        });
        relay
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}
