//! Clients that reconnect as soon as the server side closes them, recording what they saw: for
//! the tests of chosen closes (rebalance, drain).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::client::{connect, Outcome};

/// What one reconnecting client saw.
#[derive(Debug, Clone)]
pub struct Seen {
    /// `(time since start, backend)` of every open.
    pub opens: Vec<(Duration, String)>,
    /// `(time since start, backend, what ended it)` of every close by the server side.
    pub closes: Vec<(Duration, String, String)>,
}

/// Clients that reconnect as soon as they are closed (refusals: retry after 100 ms).
pub struct Fleet {
    seen: Vec<Arc<Mutex<Seen>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    start: Instant,
}

impl Fleet {
    /// `n` clients of `127.0.0.1:port` (path `/ws`), times counted from `start`.
    pub fn start(port: u16, n: usize, start: Instant) -> Fleet {
        let stop = Arc::new(AtomicBool::new(false));
        let mut seen = Vec::new();
        let mut tasks = Vec::new();
        for _ in 0..n {
            let s = Arc::new(Mutex::new(Seen {
                opens: Vec::new(),
                closes: Vec::new(),
            }));
            seen.push(Arc::clone(&s));
            let stop = Arc::clone(&stop);
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match connect(port, "/ws").await {
                        Outcome::Open(mut c) => {
                            s.lock()
                                .unwrap()
                                .opens
                                .push((start.elapsed(), c.backend.clone()));
                            loop {
                                if stop.load(Ordering::Relaxed) {
                                    c.close().await;
                                    return;
                                }
                                if let Ok(what) = c.wait_closed(Duration::from_millis(200)).await {
                                    s.lock().unwrap().closes.push((
                                        start.elapsed(),
                                        c.backend.clone(),
                                        what,
                                    ));
                                    break;
                                }
                            }
                        }
                        _ => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            }));
        }
        Fleet {
            seen,
            stop,
            tasks,
            start,
        }
    }

    /// What each client saw so far.
    pub fn snapshot(&self) -> Vec<Seen> {
        self.seen
            .iter()
            .map(|s| s.lock().unwrap().clone())
            .collect()
    }

    /// Every close so far, in time order.
    pub fn closes(&self) -> Vec<(Duration, String, String)> {
        let mut all: Vec<_> = self.snapshot().into_iter().flat_map(|s| s.closes).collect();
        all.sort_by_key(|c| c.0);
        all
    }

    /// Stops the clients (each closes its connection) and returns what they saw.
    pub async fn stop(self) -> Vec<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        self.seen
            .iter()
            .map(|s| s.lock().unwrap().clone())
            .collect()
    }

    /// The most closes the clients saw in one whole second (counted from the fleet's start).
    pub fn max_closes_per_second(&self) -> usize {
        max_per_second(&self.closes())
    }

    /// Time since the fleet's start.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

/// The most of `closes` in one whole second (of their times).
pub fn max_per_second(closes: &[(Duration, String, String)]) -> usize {
    let mut per: HashMap<u64, usize> = HashMap::new();
    for (t, _, _) in closes {
        *per.entry(t.as_secs()).or_default() += 1;
    }
    per.values().copied().max().unwrap_or(0)
}
