//! Item 5 of issue 10: a fresh fleet and a new pod are usable at once (within about two refresh
//! intervals), while a Redis that lost its data still gets the full restart grace, also when an
//! instance that never saw the old ledger reaches Redis first. Real redis-server per test.
//!
//! The restart grace here is 3 s (as the default, the lease ttl, would be with a 3 s ttl), 30
//! refresh intervals: the admission-time bounds asserted below (2 × refresh + a 1 s margin for a
//! loaded machine) fail whenever the grace applies to a cold start or a new pod.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use wscap_core::HostSpec;
use wscap_global::{FailMode, GlobalConfig};

const LIMIT: u32 = 10;
const REFRESH_MS: u64 = 100;
const LONG_GRACE_MS: u64 = 3000;
/// 2 × refresh, plus a margin for a shared machine; far below the 3 s grace.
const BOUND: Duration = Duration::from_millis(2 * REFRESH_MS + 1000);

fn cfg(redis: &RedisServer, id: &str) -> GlobalConfig {
    let mut c = config(&redis.url(), id, FailMode::KeepShare);
    c.refresh_ms = REFRESH_MS;
    c.restart_grace_ms = Some(LONG_GRACE_MS);
    c
}

/// Admits on `inst` until one connection is admitted (each refusal retried after 5 ms);
/// returns it and how long that took.
fn first_admission(inst: &Instance, since: Instant) -> (wscap_core::Permit, Duration) {
    loop {
        if let Some(p) = inst.admit() {
            return (p, since.elapsed());
        }
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "nothing admitted for 10 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_fresh_fleet_and_a_new_pod_admit_within_two_refreshes() {
    let redis = RedisServer::start();
    let t0 = Instant::now();
    let insts = [
        Instance::start(cfg(&redis, "envoy-0"), LIMIT),
        Instance::start(cfg(&redis, "envoy-1"), LIMIT),
    ];
    let mut held = Vec::new();
    for (i, inst) in insts.iter().enumerate() {
        let (p, took) = first_admission(inst, t0);
        eprintln!("cold start: instance {i} admitted its first connection {took:?} after start (refresh {REFRESH_MS} ms, restart grace {LONG_GRACE_MS} ms)");
        assert!(took < BOUND, "instance {i}: first admission after {took:?}");
        held.push(p);
    }
    // The fleet fills up: every pod to exactly its limit.
    let mut i = 0;
    let mut last = Instant::now();
    while last.elapsed() < Duration::from_secs(2) {
        if let Some(p) = insts[i % 2].admit() {
            held.push(p);
            last = Instant::now();
        } else {
            std::thread::sleep(Duration::from_millis(10));
        }
        i += 1;
    }
    assert_eq!(held.len(), 3 * LIMIT as usize);

    // A pod appears on both instances: usable within the same bound, nothing in grace.
    let new_pod = HostSpec::parse("10.9.0.4:8080").unwrap();
    let t1 = Instant::now();
    for inst in &insts {
        let mut hosts: Vec<_> = PODS.iter().map(|p| HostSpec::parse(p).unwrap()).collect();
        hosts.push(new_pod.clone());
        inst.registry.cluster("pods").unwrap().set_hosts(&hosts);
    }
    for (i, inst) in insts.iter().enumerate() {
        let (p, took) = first_admission(inst, t1);
        eprintln!("new pod: instance {i} admitted on it {took:?} after it appeared");
        assert_eq!(p.host(), &new_pod.addr);
        assert!(took < BOUND, "instance {i}: new pod usable after {took:?}");
        held.push(p);
    }
}

/// Redis restarts empty while instance A holds every pod full; a new instance C (which never
/// saw the old ledger, so to it the ledger looks fresh) starts at once and keeps asking. A
/// reaches Redis within the fresh window and turns it into the full restart grace, so C never
/// gets what A's live connections occupy: no pod ever holds more than its limit, and C admits
/// nothing (A reclaims all of it).
#[test]
fn after_a_loss_a_new_instance_gets_nothing_held_by_others() {
    let mut redis = RedisServer::start();
    let fleet = Arc::new(FleetCount::default());
    let a = Instance::start(cfg(&redis, "envoy-a"), LIMIT);
    let mut held = Vec::new();
    let t0 = Instant::now();
    while held.len() < 3 * LIMIT as usize && t0.elapsed() < Duration::from_secs(5) {
        match a.admit() {
            Some(p) => held.push(fleet.hold(p)),
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    assert_eq!(held.len(), 3 * LIMIT as usize);
    let stop = Arc::new(AtomicBool::new(false));
    let sample = {
        let (fleet, stop) = (fleet.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut max = 0;
            while !stop.load(Ordering::Relaxed) {
                max = max.max(fleet.max());
                std::thread::sleep(Duration::from_micros(200));
            }
            max
        })
    };
    redis.restart_empty();
    let c = Instance::start(cfg(&redis, "envoy-c"), LIMIT);
    let mut on_c = Vec::new();
    let until = Instant::now() + Duration::from_millis(LONG_GRACE_MS + 1000);
    while Instant::now() < until {
        if let Some(p) = c.admit() {
            on_c.push(fleet.hold(p));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    let max = sample.join().unwrap();
    assert!(max <= LIMIT, "a pod held {max}, limit {LIMIT}");
    assert_eq!(on_c.len(), 0, "C was granted what A's connections occupy");
    // A's connections close: C gets the capacity.
    drop(held);
    let t1 = Instant::now();
    while on_c.len() < 3 * LIMIT as usize && t1.elapsed() < Duration::from_secs(5) {
        match c.admit() {
            Some(p) => on_c.push(fleet.hold(p)),
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    assert_eq!(on_c.len(), 3 * LIMIT as usize);
    assert!(fleet.max() <= LIMIT);
}

/// The case the fleet epoch is for: Redis restarts empty while instances A and B hold a pod
/// full between them; B is cut off from Redis for 600 ms (4 fresh windows) after the restart;
/// a new instance C, to which the ledger looks fresh, starts at once and keeps asking. A
/// reaches Redis within the fresh window and, remembering the old epoch, turns it into the
/// full restart grace, so B is back in time to reclaim its connections: C gets nothing, and the
/// pod never holds more than its limit.
#[test]
fn a_holder_that_saw_the_old_ledger_extends_the_grace_for_a_slower_one() {
    let mut redis = RedisServer::start();
    let relay = Relay::start(redis.url().rsplit(':').next().unwrap().parse().unwrap());
    let relay_url = relay.url();
    let pod = HostSpec::parse(PODS[0]).unwrap();
    let one_pod = |c: GlobalConfig| {
        let i = Instance::start(c, LIMIT);
        i.registry
            .cluster("pods")
            .unwrap()
            .set_hosts(std::slice::from_ref(&pod));
        i
    };
    let a = one_pod(cfg(&redis, "envoy-a"));
    let mut b_cfg = cfg(&redis, "envoy-b");
    b_cfg.redis_url = relay_url;
    let b = one_pod(b_cfg);
    let fleet = Arc::new(FleetCount::default());
    let mut held = Vec::new();
    for inst in [&a, &b] {
        let t0 = Instant::now();
        let mut n = 0;
        while n < LIMIT / 2 && t0.elapsed() < Duration::from_secs(5) {
            match inst.admit() {
                Some(p) => {
                    held.push(fleet.hold(p));
                    n += 1;
                }
                None => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }
    assert_eq!(held.len(), LIMIT as usize, "A and B hold the pod full");
    let stop = Arc::new(AtomicBool::new(false));
    let sample = {
        let (fleet, stop) = (fleet.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut max = 0;
            while !stop.load(Ordering::Relaxed) {
                max = max.max(fleet.max());
                std::thread::sleep(Duration::from_micros(200));
            }
            max
        })
    };
    relay.cut.store(true, Ordering::SeqCst);
    redis.restart_empty();
    let c = one_pod(cfg(&redis, "envoy-c"));
    let restarted = Instant::now();
    let mut on_c = Vec::new();
    while restarted.elapsed() < Duration::from_millis(LONG_GRACE_MS + 1000) {
        if restarted.elapsed() > Duration::from_millis(600) {
            relay.cut.store(false, Ordering::SeqCst);
        }
        if let Some(p) = c.admit() {
            on_c.push(fleet.hold(p));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    let max = sample.join().unwrap();
    assert!(max <= LIMIT, "the pod held {max}, limit {LIMIT}");
    assert_eq!(on_c.len(), 0, "C was granted room B's connections occupy");
    assert!(
        b.coordinator().fleet_view().redis_ok,
        "B reaches Redis again"
    );
}
