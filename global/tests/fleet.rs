//! Global mode against a real redis-server: several instances (each its own registry and
//! coordinator, as separate Envoy processes have), pods of limit 10, connections counted by the
//! holders themselves. The Envoy end-to-end version of these lives with the module.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::*;
use wscap_global::FailMode;

const LIMIT: u32 = 10;

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

/// Admits round robin over `insts` until `held` has `n`, retrying refusals as clients do after
/// a 503 (unused share flows back within a refresh), for at most `within`.
fn fill(
    insts: &[&Instance],
    fleet: &Arc<FleetCount>,
    held: &mut Vec<Held>,
    n: usize,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    let mut i = 0;
    while held.len() < n && Instant::now() < deadline {
        match insts[i % insts.len()].admit() {
            Some(p) => held.push(fleet.hold(p)),
            None => std::thread::sleep(Duration::from_millis(10)),
        }
        i += 1;
    }
}

/// `n` instances, once their first claims' restart grace is over.
fn instances(redis: &RedisServer, n: usize, mode: FailMode) -> Vec<Instance> {
    let insts: Vec<_> = (0..n)
        .map(|i| Instance::start(config(&redis.url(), &format!("envoy-{i}"), mode), LIMIT))
        .collect();
    assert!(eventually(Duration::from_secs(5), || insts
        .iter()
        .all(|i| i.coordinator().fleet_view().pods.len() == 3)));
    std::thread::sleep(Duration::from_millis(GRACE_MS + 200));
    insts
}

#[test]
fn a_storm_over_three_instances_admits_exactly_the_fleet_limit() {
    let redis = RedisServer::start();
    let fleet = Arc::new(FleetCount::default());
    let insts = instances(&redis, 3, FailMode::KeepShare);
    let stop = Arc::new(AtomicBool::new(false));
    let sample = sampler(fleet.clone(), stop.clone());
    let barrier = Barrier::new(200);
    let held: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..200)
            .map(|i| {
                let (inst, fleet, barrier) = (&insts[i % 3], fleet.clone(), &barrier);
                s.spawn(move || {
                    barrier.wait();
                    inst.admit().map(|p| fleet.hold(p))
                })
            })
            .collect();
        hs.into_iter().filter_map(|h| h.join().unwrap()).collect()
    });
    stop.store(true, Ordering::Relaxed);
    assert_eq!(
        held.len(),
        30,
        "exactly 3 pods x {LIMIT} admitted fleet-wide"
    );
    assert!(
        sample.join().unwrap() <= LIMIT,
        "a pod went above its limit"
    );
    // The fleet view agrees once a refresh ran.
    assert!(
        eventually(Duration::from_secs(3), || {
            let v = insts[0].coordinator().fleet_view();
            v.pods.len() == 3 && v.pods.iter().all(|p| p.live == LIMIT)
        }),
        "{:?}",
        insts[0].coordinator().fleet_view()
    );
    drop(held);
    assert!(eventually(Duration::from_secs(3), || {
        insts[0]
            .coordinator()
            .fleet_view()
            .pods
            .iter()
            .all(|p| p.live == 0)
    }));
}

#[test]
fn random_churn_across_instances_never_breaks_the_invariant() {
    let secs: u64 = std::env::var("WSCAP_GLOBAL_CHURN_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let redis = RedisServer::start();
    let fleet = Arc::new(FleetCount::default());
    let insts = instances(&redis, 3, FailMode::KeepShare);
    let stop = Arc::new(AtomicBool::new(false));
    let sample = sampler(fleet.clone(), stop.clone());
    let end = Instant::now() + Duration::from_secs(secs);
    let admitted: u32 = std::thread::scope(|s| {
        let hs: Vec<_> = (0..9)
            .map(|t| {
                let (inst, fleet) = (&insts[t % 3], fleet.clone());
                s.spawn(move || {
                    let mut rng = fastrand::Rng::with_seed(t as u64);
                    let mut held = Vec::new();
                    let mut admitted = 0;
                    while Instant::now() < end {
                        if rng.u8(..100) < 55 {
                            if let Some(p) = inst.admit() {
                                held.push(fleet.hold(p));
                                admitted += 1;
                            }
                        } else if !held.is_empty() {
                            drop(held.swap_remove(rng.usize(..held.len())));
                        }
                        std::thread::sleep(Duration::from_millis(rng.u64(0..4)));
                    }
                    admitted
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });
    stop.store(true, Ordering::Relaxed);
    assert!(
        sample.join().unwrap() <= LIMIT,
        "a pod went above its limit"
    );
    assert!(
        admitted > 100,
        "too little churn to mean anything: {admitted}"
    );
    assert_eq!(fleet.total(), 0);
    for inst in &insts {
        assert!(
            eventually(Duration::from_secs(3), || {
                inst.coordinator()
                    .fleet_view()
                    .pods
                    .iter()
                    .all(|p| p.live == 0)
            }),
            "counts exact after the churn: {:?}",
            inst.coordinator().fleet_view()
        );
    }
}

#[test]
fn a_killed_instance_loses_its_share_within_two_ttls() {
    let redis = RedisServer::start();
    let fleet = Arc::new(FleetCount::default());
    let mut insts = instances(&redis, 3, FailMode::KeepShare);
    let mut first = insts.remove(0);
    // Instance 0 takes K = 12 connections.
    let mut victims = Vec::new();
    fill(&[&first], &fleet, &mut victims, 12, Duration::from_secs(3));
    assert_eq!(victims.len(), 12);
    assert!(eventually(Duration::from_secs(3), || {
        insts[1]
            .coordinator()
            .fleet_view()
            .pods
            .iter()
            .map(|p| p.live)
            .sum::<u32>()
            == 12
    }));
    // The others fill what is left: 18.
    let others = [&insts[0], &insts[1]];
    let mut rest = Vec::new();
    fill(&others, &fleet, &mut rest, 18, Duration::from_secs(3));
    assert_eq!(rest.len(), 18);
    // kill -9: no more refreshes, and its connections die with it.
    drop(first.coordinator.take());
    victims.clear();
    // Within twice the lease ttl (900 ms: the lease ends, then it is held for one more ttl) plus
    // two refreshes, the fleet view drops by K and the capacity is usable through the others.
    assert!(eventually(
        Duration::from_millis(2 * 900 + 2 * 100 + 1000),
        || {
            insts[1]
                .coordinator()
                .fleet_view()
                .pods
                .iter()
                .map(|p| p.live)
                .sum::<u32>()
                == 18
        }
    ));
    fill(&others, &fleet, &mut rest, 30, Duration::from_secs(3));
    assert_eq!(
        rest.len(),
        30,
        "the dead instance's capacity is usable again"
    );
    assert!(fleet.max() <= LIMIT);
    assert!(insts[1].admit().is_none(), "and not one more");
}

/// Redis killed, then restarted empty, under each fail mode: no over-admission at any moment,
/// and exact state again soon after it is back.
fn redis_restart(mode: FailMode) {
    let mut redis = RedisServer::start();
    let fleet = Arc::new(FleetCount::default());
    let insts = instances(&redis, 3, mode);
    let all: Vec<&Instance> = insts.iter().collect();
    let mut held = Vec::new();
    fill(&all, &fleet, &mut held, 15, Duration::from_secs(3));
    assert_eq!(held.len(), 15);
    let actives = |inst: &Instance| -> Vec<u32> {
        inst.registry.snapshot().clusters[0]
            .hosts
            .iter()
            .map(|h| h.active)
            .collect()
    };
    let before: Vec<Vec<u32>> = insts.iter().map(actives).collect();
    redis.kill();
    // Let every coordinator notice (a few refresh rounds).
    std::thread::sleep(Duration::from_millis(400));
    let during: Vec<_> = (0..60)
        .filter_map(|i| insts[i % 3].admit())
        .map(|p| fleet.hold(p))
        .collect();
    match mode {
        // Shares held (live + headroom) may be used up until the lease would have expired.
        FailMode::KeepShare => assert!(fleet.max() <= LIMIT),
        FailMode::Reject => assert!(
            during.is_empty(),
            "reject admits nothing while Redis is down"
        ),
        // Each instance alone, up to 4 per pod: 3 x 3 x 4 = 36 at most, not exact by design.
        FailMode::LocalLimit => {
            assert!(!during.is_empty(), "local_limit keeps admitting on its own");
            for (inst, before) in insts.iter().zip(&before) {
                for (now, was) in actives(inst).iter().zip(before) {
                    assert!(
                        *now <= 4.max(*was),
                        "{now} on a pod, local_limit is 4 ({was} before)"
                    );
                }
            }
        }
    }
    if mode != FailMode::LocalLimit {
        assert!(fleet.max() <= LIMIT, "over-admission while Redis was down");
    }
    drop(during);
    // After the lease ttl, keep_share admits nothing new either.
    std::thread::sleep(Duration::from_millis(1000));
    if mode != FailMode::LocalLimit {
        assert!((0..6).all(|i| insts[i % 3].admit().is_none()));
    }
    // Back, empty. Instances reclaim what they hold (grace), then borrow as usual.
    redis.restart_empty();
    assert!(
        eventually(Duration::from_secs(3), || {
            insts.iter().all(|i| i.coordinator().fleet_view().redis_ok)
                && insts[0]
                    .coordinator()
                    .fleet_view()
                    .pods
                    .iter()
                    .map(|p| p.live)
                    .sum::<u32>()
                    == 15
        }),
        "{:?}",
        insts[0].coordinator().fleet_view()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let sample = sampler(fleet.clone(), stop.clone());
    fill(&all, &fleet, &mut held, 30, Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    assert_eq!(held.len(), 30, "the full fleet capacity is usable again");
    assert!(
        sample.join().unwrap() <= LIMIT,
        "over-admission after the restart"
    );
    assert!((0..6).all(|i| insts[i % 3].admit().is_none()));
}

#[test]
fn redis_restarted_empty_keep_share() {
    redis_restart(FailMode::KeepShare);
}

#[test]
fn redis_restarted_empty_reject() {
    redis_restart(FailMode::Reject);
}

#[test]
fn redis_restarted_empty_local_limit() {
    redis_restart(FailMode::LocalLimit);
}

#[test]
fn a_frozen_redis_applies_the_fail_mode_and_recovers() {
    let mut redis = RedisServer::start();
    let fleet = Arc::new(FleetCount::default());
    let insts = instances(&redis, 2, FailMode::Reject);
    let all: Vec<&Instance> = insts.iter().collect();
    let mut held = Vec::new();
    fill(&all, &fleet, &mut held, 8, Duration::from_secs(3));
    assert_eq!(held.len(), 8);
    redis.freeze();
    assert!(eventually(Duration::from_secs(3), || {
        insts.iter().all(|i| !i.coordinator().fleet_view().redis_ok)
    }));
    // `reject` stops admissions from the first failed round on each pod, within `refresh_ms`:
    // a round that reached Redis for one pod just before the freeze leaves that pod's share
    // usable until its next round (exact: within the share). Wait two rounds.
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        (0..6).all(|i| insts[i % 2].admit().is_none()),
        "reject while partitioned"
    );
    redis.thaw();
    assert!(eventually(Duration::from_secs(3), || {
        insts.iter().all(|i| i.coordinator().fleet_view().redis_ok)
    }));
    fill(&all, &fleet, &mut held, 30, Duration::from_secs(5));
    assert_eq!(held.len(), 30);
    assert!(fleet.max() <= LIMIT);
}

#[test]
fn connections_outlive_many_lease_ttls_and_stay_counted() {
    let redis = RedisServer::start();
    let fleet = Arc::new(FleetCount::default());
    let insts = instances(&redis, 2, FailMode::KeepShare);
    let mut held = Vec::new();
    fill(&[&insts[0]], &fleet, &mut held, 30, Duration::from_secs(5));
    assert_eq!(
        held.len(),
        30,
        "one instance can take the whole fleet's capacity"
    );
    let until = Instant::now() + Duration::from_millis(5 * 900);
    while Instant::now() < until {
        assert!(
            insts[1].admit().is_none(),
            "a long-lived connection's slot was handed out again"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let v = insts[1].coordinator().fleet_view();
    assert_eq!(v.pods.iter().map(|p| p.live).sum::<u32>(), 30, "{v:?}");
    drop(held);
}

#[test]
fn garbage_from_a_fake_redis_is_an_error_not_a_crash() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(4) {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 || s.write_all(b"*2\r\n:-5\r\n+what\r\n").is_err() {
                    break;
                }
            }
        }
    });
    let mut ledger = wscap_global::Ledger::new(&config(
        &format!("redis://127.0.0.1:{port}"),
        "x",
        FailMode::Reject,
    ))
    .unwrap();
    let err = ledger.claim("pods", PODS[0], 3, 0, 10).unwrap_err();
    assert!(
        matches!(
            err,
            wscap_global::LedgerError::BadReply(_) | wscap_global::LedgerError::Redis(_)
        ),
        "{err}"
    );
}
