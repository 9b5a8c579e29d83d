//! Both cores hammer one cluster with about a million operations while membership churns;
//! at the end every count is exact and no host was ever seen above its limit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;

use wscap_core::{HostSpec, Registry};

#[test]
fn a_million_operations_keep_every_invariant() {
    const THREADS: usize = 4;
    const OPS: usize = 250_000;
    let reg = Registry::new();
    let c = reg.set_default_limit("pods", 8).unwrap();
    let all: Vec<_> = (1..=6)
        .map(|i| HostSpec::parse(&format!("10.0.0.{i}:80")).unwrap())
        .collect();
    c.set_hosts(&all);
    let stop = AtomicBool::new(false);
    let start = Barrier::new(THREADS + 1);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let c = c.clone();
                let start = &start;
                s.spawn(move || {
                    start.wait();
                    let mut held = Vec::with_capacity(16);
                    let mut admitted = 0u64;
                    let mut rng = fastrand::Rng::with_seed(t as u64);
                    for _ in 0..OPS {
                        if held.len() < 12 && rng.bool() {
                            if let Ok(p) = c.acquire() {
                                let h = c.host(p.host());
                                if let Some(h) = h {
                                    assert!(h.active() <= h.limit(), "over the limit");
                                }
                                held.push(p);
                                admitted += 1;
                            }
                        } else if !held.is_empty() {
                            held.swap_remove(rng.usize(..held.len()));
                        }
                    }
                    admitted
                })
            })
            .collect();
        // Churn membership on the main thread: hosts leave (drain) and come back.
        let churn = s.spawn(|| {
            start.wait();
            let mut rng = fastrand::Rng::with_seed(99);
            while !stop.load(Ordering::Relaxed) {
                let k = rng.usize(3..=all.len());
                let mut subset = all.clone();
                rng.shuffle(&mut subset);
                subset.truncate(k);
                c.set_hosts(&subset);
                std::thread::yield_now();
            }
            c.set_hosts(&all);
        });
        let admitted: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
        stop.store(true, Ordering::Relaxed);
        churn.join().unwrap();
        assert!(admitted > 10_000, "the stress admitted too little to mean anything: {admitted}");
        let snap = c.snapshot();
        assert_eq!(snap.hosts.len(), all.len());
        assert_eq!(c.active(), 0, "every permit released exactly once");
        for h in &snap.hosts {
            assert!(h.peak <= h.limit, "{h:?}");
        }
        let admitted_by_hosts: u64 = snap.hosts.iter().map(|h| h.admitted).sum();
        // Hosts removed while idle and re-added start fresh counters, so this is a lower bound.
        assert!(admitted_by_hosts <= admitted);
    });
}
