//! Admission + release costs, against the floor (a bare read-then-CAS + fetch_sub on one atomic)
//! and naive baselines, all in one run. `scripts/bench-core` runs it and writes the ratios into
//! docs/BENCHMARKS.md.
#![allow(missing_docs)] // criterion's macros generate undocumented items

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use crossbeam_utils::CachePadded;
use dashmap::DashMap;
use wscap_core::{HostSpec, Registry};

const LIMIT: u32 = 1_000_000;

fn hosts(n: usize) -> Vec<HostSpec> {
    (0..n)
        .map(|i| {
            HostSpec::parse(&format!(
                "10.{}.{}.{}:8080",
                i / 62500,
                (i / 250) % 250,
                i % 250 + 1
            ))
            .unwrap()
        })
        .collect()
}

/// The floor: what any exact counter must do at least.
#[inline]
fn floor_acquire(a: &AtomicU32, limit: u32) -> bool {
    let mut cur = a.load(Ordering::Acquire);
    loop {
        if cur >= limit {
            return false;
        }
        match a.compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return true,
            Err(now) => cur = now,
        }
    }
}

fn single_thread(c: &mut Criterion) {
    let mut g = c.benchmark_group("uncontended");
    let floor = AtomicU32::new(0);
    g.bench_function("floor_cas_fetch_sub", |b| {
        b.iter(|| {
            black_box(floor_acquire(&floor, LIMIT));
            floor.fetch_sub(1, Ordering::AcqRel);
        })
    });

    // The floor plus what a permit that owns its slot (`Arc`) must add: one clone, one drop.
    let shared = std::sync::Arc::new(AtomicU32::new(0));
    g.bench_function("floor_plus_arc_clone_drop", |b| {
        b.iter(|| {
            black_box(floor_acquire(&shared, LIMIT));
            let owner = black_box(std::sync::Arc::clone(&shared));
            owner.fetch_sub(1, Ordering::AcqRel);
            drop(owner);
        })
    });

    let reg = Registry::new();
    let cl = reg.set_default_limit("pods", LIMIT).unwrap();
    cl.set_hosts(&hosts(1));
    let host = cl.host(&"10.0.0.1:8080".parse().unwrap()).unwrap();
    g.bench_function("wscap_host_acquire_release", |b| {
        b.iter(|| drop(black_box(host.try_acquire().unwrap())))
    });

    let full = Registry::new();
    let fc = full.set_default_limit("pods", 0).unwrap();
    fc.set_hosts(&hosts(1));
    let fh = fc.host(&"10.0.0.1:8080".parse().unwrap()).unwrap();
    g.bench_function("wscap_host_reject", |b| {
        b.iter(|| black_box(fh.try_acquire().is_err()))
    });

    let mutex: Mutex<HashMap<String, u32>> =
        Mutex::new(HashMap::from([("10.0.0.1:8080".to_string(), 0)]));
    g.bench_function("baseline_mutex_hashmap", |b| {
        b.iter(|| {
            let key = black_box("10.0.0.1:8080");
            {
                let mut m = mutex.lock().unwrap();
                let v = m.get_mut(key).unwrap();
                if *v < LIMIT {
                    *v += 1;
                }
            }
            *mutex.lock().unwrap().get_mut(key).unwrap() -= 1;
        })
    });

    let dash: DashMap<String, u32> = DashMap::from_iter([("10.0.0.1:8080".to_string(), 0)]);
    g.bench_function("baseline_dashmap", |b| {
        b.iter(|| {
            let key = black_box("10.0.0.1:8080");
            if let Some(mut v) = dash.get_mut(key) {
                if *v < LIMIT {
                    *v += 1;
                }
            }
            *dash.get_mut(key).unwrap() -= 1;
        })
    });
    g.finish();
}

fn choose(c: &mut Criterion) {
    let mut g = c.benchmark_group("cluster_acquire_release");
    for n in [3usize, 100, 1000] {
        let reg = Registry::new();
        let cl = reg.set_default_limit("pods", LIMIT).unwrap();
        cl.set_hosts(&hosts(n));
        // Some load so that hosts differ.
        let held: Vec<_> = (0..n * 3).map(|_| cl.acquire().unwrap()).collect();
        g.bench_with_input(BenchmarkId::from_parameter(n), &cl, |b, cl| {
            b.iter(|| drop(black_box(cl.acquire().unwrap())))
        });
        drop(held);
    }
    let reg = Registry::new();
    reg.set_default_limit("pods", LIMIT).unwrap();
    reg.set_hosts("pods", &hosts(3)).unwrap();
    g.bench_function("by_name_3", |b| {
        b.iter(|| drop(black_box(reg.acquire("pods").unwrap())))
    });
    g.finish();
}

/// Runs `op` `iters` times on each of two threads at once; returns the mean time per op of one
/// thread.
fn two_threads(iters: u64, op: impl Fn(usize) + Sync) -> Duration {
    let start = Barrier::new(2);
    let times: Vec<Duration> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|t| {
                let (start, op) = (&start, &op);
                s.spawn(move || {
                    start.wait();
                    let t0 = Instant::now();
                    for _ in 0..iters {
                        op(t);
                    }
                    t0.elapsed()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    times.into_iter().max().unwrap()
}

fn contended(c: &mut Criterion) {
    let mut g = c.benchmark_group("two_threads");
    let floor = CachePadded::new(AtomicU32::new(0));
    g.bench_function("floor_same_counter", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, |_| {
                black_box(floor_acquire(&floor, LIMIT));
                floor.fetch_sub(1, Ordering::AcqRel);
            })
        })
    });
    let two = [
        CachePadded::new(AtomicU32::new(0)),
        CachePadded::new(AtomicU32::new(0)),
    ];
    g.bench_function("floor_different_counters", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, |t| {
                black_box(floor_acquire(&two[t], LIMIT));
                two[t].fetch_sub(1, Ordering::AcqRel);
            })
        })
    });
    let reg = Registry::new();
    let cl = reg.set_default_limit("pods", LIMIT).unwrap();
    cl.set_hosts(&hosts(2));
    let h = [
        cl.host(&"10.0.0.1:8080".parse().unwrap()).unwrap(),
        cl.host(&"10.0.0.2:8080".parse().unwrap()).unwrap(),
    ];
    g.bench_function("wscap_same_host", |b| {
        b.iter_custom(|iters| two_threads(iters, |_| drop(black_box(h[0].try_acquire().unwrap()))))
    });
    g.bench_function("wscap_different_hosts", |b| {
        b.iter_custom(|iters| two_threads(iters, |t| drop(black_box(h[t].try_acquire().unwrap()))))
    });
    let mutex: Mutex<HashMap<String, u32>> = Mutex::new(HashMap::from([
        ("10.0.0.1:8080".to_string(), 0),
        ("10.0.0.2:8080".to_string(), 0),
    ]));
    let keys = ["10.0.0.1:8080", "10.0.0.2:8080"];
    g.bench_function("baseline_mutex_hashmap_different_hosts", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, |t| {
                *mutex.lock().unwrap().get_mut(keys[t]).unwrap() += 1;
                *mutex.lock().unwrap().get_mut(keys[t]).unwrap() -= 1;
            })
        })
    });
    let dash: DashMap<String, u32> = keys.iter().map(|k| (k.to_string(), 0)).collect();
    g.bench_function("baseline_dashmap_different_hosts", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, |t| {
                *dash.get_mut(keys[t]).unwrap() += 1;
                *dash.get_mut(keys[t]).unwrap() -= 1;
            })
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    targets = single_thread, choose, contended
}
criterion_main!(benches);
