//! Faults inside an instance, against a real redis-server: a coordinator round that panics, and
//! a pod that leaves and comes back. Connections are counted by the holders themselves.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use wscap_core::HostSpec;
use wscap_global::{BorrowOutcome, FailMode};

const LIMIT: u32 = 10;

/// `n` instances that see every pod, once their restart grace (if any) is over.
/// `headroom` 0 makes every admission beyond the live count a borrow that claims.
fn instances(redis: &RedisServer, n: usize, headroom: u32) -> Vec<Instance> {
    let insts: Vec<_> = (0..n)
        .map(|i| {
            let mut c = config(&redis.url(), &format!("envoy-{i}"), FailMode::KeepShare);
            c.headroom = headroom;
            Instance::start(c, LIMIT)
        })
        .collect();
    assert!(eventually(Duration::from_secs(5), || insts
        .iter()
        .all(|i| i.coordinator().fleet_view().pods.len() == PODS.len())));
    std::thread::sleep(Duration::from_millis(GRACE_MS + 200));
    insts
}

/// Samples the fleet count until stopped; returns the highest per-pod count seen.
fn sampler(fleet: Arc<FleetCount>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u32> {
    std::thread::spawn(move || {
        let mut max = 0;
        while !stop.load(Ordering::Relaxed) {
            max = max.max(fleet.max());
            std::thread::sleep(Duration::from_micros(200));
        }
        max.max(fleet.max())
    })
}

/// Admits round robin over `insts` until `n` are held or nothing was admitted for a while.
fn fill(insts: &[&Instance], fleet: &Arc<FleetCount>, held: &mut Vec<Held>, n: usize) {
    let mut last = Instant::now();
    let mut i = 0;
    while held.len() < n && last.elapsed() < Duration::from_secs(2) {
        match insts[i % insts.len()].admit() {
            Some(p) => {
                held.push(fleet.hold(p));
                last = Instant::now();
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
        i += 1;
    }
}

/// Break #8: a panic in a coordinator round must not end the thread. Rounds go on, the borrow
/// that was waiting when its round panicked is answered `unavailable`, the panics are counted in
/// the fleet view, and afterwards the fleet admits exactly its limit again.
#[test]
fn a_panicking_round_is_survived_and_waiting_borrows_are_answered() {
    let redis = RedisServer::start();
    let insts = instances(&redis, 2, 0);
    let a = &insts[0];
    const PANICS: u64 = 4;
    a.coordinator().inject_round_panics(PANICS);
    // With no spare share, a borrow's round claims, and the grant panics.
    let (tx, rx) = std::sync::mpsc::channel();
    a.coordinator().request_borrow("pods", move |o| {
        let _ = tx.send(o);
    });
    let outcome = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the borrow was answered although its round panicked");
    assert_eq!(outcome, BorrowOutcome::Unavailable);
    // Later rounds still run (refresh rounds use up the remaining injected panics).
    assert!(
        eventually(Duration::from_secs(5), || a
            .coordinator()
            .fleet_view()
            .panics
            == PANICS),
        "{:?}",
        a.coordinator().fleet_view()
    );
    let v = a.coordinator().fleet_view();
    assert!(
        v.last_error
            .as_deref()
            .is_some_and(|e| e.contains("coordinator round panicked: injected fault")),
        "{v:?}"
    );
    // Then the fleet is whole and exact: both instances together admit exactly 3 x LIMIT.
    let fleet = Arc::new(FleetCount::default());
    let stop = Arc::new(AtomicBool::new(false));
    let sample = sampler(fleet.clone(), stop.clone());
    let mut held = Vec::new();
    fill(&[&insts[0], &insts[1]], &fleet, &mut held, 100);
    stop.store(true, Ordering::Relaxed);
    assert_eq!(
        held.len(),
        3 * LIMIT as usize,
        "the whole capacity, exactly"
    );
    assert!(
        sample.join().unwrap() <= LIMIT,
        "a pod went above its limit"
    );
    // And the instance that panicked keeps refreshing: its view follows the live counts.
    assert!(eventually(Duration::from_secs(3), || {
        let v = a.coordinator().fleet_view();
        v.redis_ok && v.pods.iter().all(|p| p.live == LIMIT)
    }));
    drop(held);
    assert!(eventually(Duration::from_secs(3), || {
        a.coordinator()
            .fleet_view()
            .pods
            .iter()
            .all(|p| p.live == 0)
    }));
}
