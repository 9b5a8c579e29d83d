//! Behaviour of the registry through its public API.

use std::collections::HashMap;

use wscap_core::{HostAddr, HostSpec, HostState, Registry, Rejected, FULL_SCAN_MAX_HOSTS};

fn addr(s: &str) -> HostAddr {
    s.parse().unwrap()
}

fn hosts(n: usize) -> Vec<HostSpec> {
    (0..n)
        .map(|i| HostSpec::parse(&format!("10.0.{}.{}:8080", i / 250, i % 250 + 1)).unwrap())
        .collect()
}

#[test]
fn addresses_are_validated_and_canonical() {
    assert_eq!(addr("10.0.0.1:80").as_str(), "10.0.0.1:80");
    assert_eq!(addr("[::1]:80").as_str(), "[::1]:80");
    assert_eq!(addr(" [0:0::1]:80 ").as_str(), "[::1]:80");
    for bad in [
        "",
        "10.0.0.1",
        "pod:80",
        "10.0.0.1:99999",
        "::1:80",
        "[::1]",
        "1.2.3.4:-1",
    ] {
        let err = bad.parse::<HostAddr>().unwrap_err();
        assert!(
            err.to_string().contains("invalid host address"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn fills_least_loaded_first_and_never_exceeds_limits() {
    let reg = Registry::new();
    let c = reg.set_default_limit("pods", 3).unwrap();
    c.set_hosts(&hosts(3));
    let mut held = Vec::new();
    for round in 1..=3u32 {
        for _ in 0..3 {
            held.push(c.acquire().unwrap());
        }
        // Least-loaded first: after each round of 3, every host holds `round`.
        for h in c.snapshot().hosts {
            assert_eq!(h.active, round, "{h:?}");
        }
    }
    assert_eq!(c.acquire().unwrap_err(), Rejected::NoCapacity);
    assert_eq!(c.snapshot().rejected.no_capacity, 1);
    held.clear();
    assert_eq!(c.active(), 0);
}

#[test]
fn relative_room_respects_per_host_limits() {
    let reg = Registry::new();
    let c = reg.set_default_limit("pods", 10).unwrap();
    c.set_hosts(&[
        HostSpec::parse("10.0.0.1:80").unwrap().with_limit(1),
        HostSpec::parse("10.0.0.2:80").unwrap(),
    ]);
    let held: Vec<_> = (0..11).map(|_| c.acquire().unwrap()).collect();
    let on_small = held
        .iter()
        .filter(|p| p.host().as_str() == "10.0.0.1:80")
        .count();
    assert_eq!(on_small, 1);
    assert_eq!(c.acquire().unwrap_err(), Rejected::NoCapacity);
}

#[test]
fn ties_spread_over_equal_hosts() {
    // With every host equally loaded, which one the first admission lands on is random: over
    // many fresh clusters, each host must be chosen first at least sometimes.
    let mut firsts: HashMap<String, usize> = HashMap::new();
    for i in 0..300 {
        let reg = Registry::new();
        let c = reg.set_default_limit(&format!("c{i}"), 5).unwrap();
        c.set_hosts(&hosts(3));
        let p = c.acquire().unwrap();
        *firsts.entry(p.host().to_string()).or_default() += 1;
    }
    assert_eq!(firsts.len(), 3, "{firsts:?}");
    assert!(firsts.values().all(|&n| n >= 30), "{firsts:?}");
}

#[test]
fn draining_counts_until_last_permit_then_disappears() {
    let reg = Registry::new();
    let c = reg.set_default_limit("pods", 5).unwrap();
    let all = hosts(2);
    c.set_hosts(&all);
    let a = c.acquire_host(&all[0].addr).unwrap();
    let b = c.acquire_host(&all[0].addr).unwrap();
    let change = c.set_hosts(&all[1..]);
    assert_eq!((change.drained, change.removed), (1, 0));
    let snap = c.snapshot();
    let h0 = snap
        .hosts
        .iter()
        .find(|h| h.address == all[0].addr.as_str())
        .unwrap();
    assert_eq!((h0.state, h0.active), (HostState::Draining, 2));
    // No new admissions on it.
    assert_eq!(
        c.acquire_host(&all[0].addr).unwrap_err(),
        Rejected::Draining
    );
    for _ in 0..5 {
        assert_eq!(c.acquire().unwrap().host(), &all[1].addr);
    }
    drop(a);
    assert!(c.host(&all[0].addr).is_some());
    drop(b);
    assert!(
        c.host(&all[0].addr).is_none(),
        "removed with its last permit"
    );
    assert_eq!(c.snapshot().hosts.len(), 1);
}

#[test]
fn removing_an_idle_host_drops_it_at_once_and_idempotence() {
    let reg = Registry::new();
    let c = reg.set_default_limit("pods", 5).unwrap();
    let all = hosts(3);
    assert_eq!(c.set_hosts(&all).added, 3);
    assert_eq!(
        c.set_hosts(&all),
        Default::default(),
        "same set twice changes nothing"
    );
    let change = c.set_hosts(&all[..1]);
    assert_eq!((change.removed, change.drained), (2, 0));
    assert_eq!(c.snapshot().hosts.len(), 1);
}

#[test]
fn a_returning_host_is_revived_with_its_count() {
    let reg = Registry::new();
    let c = reg.set_default_limit("pods", 2).unwrap();
    let all = hosts(1);
    c.set_hosts(&all);
    let p = c.acquire().unwrap();
    c.set_hosts(&[]);
    assert_eq!(c.acquire().unwrap_err(), Rejected::NoHosts);
    assert_eq!(c.set_hosts(&all).revived, 1);
    let q = c.acquire().unwrap();
    assert_eq!(
        c.acquire().unwrap_err(),
        Rejected::NoCapacity,
        "count survived the revival"
    );
    drop((p, q));
    assert_eq!(c.active(), 0);
}

#[test]
fn lowering_a_limit_evicts_nobody() {
    let reg = Registry::new();
    let c = reg.set_default_limit("pods", 4).unwrap();
    c.set_hosts(&hosts(1));
    let held: Vec<_> = (0..4).map(|_| c.acquire().unwrap()).collect();
    c.set_default_limit(1).unwrap();
    assert_eq!(c.active(), 4);
    assert_eq!(c.acquire().unwrap_err(), Rejected::NoCapacity);
    drop(held);
    let _one = c.acquire().unwrap();
    assert_eq!(c.acquire().unwrap_err(), Rejected::NoCapacity);
}

#[test]
fn per_host_limit_overrides_default_until_dropped() {
    let reg = Registry::new();
    let c = reg.set_default_limit("pods", 4).unwrap();
    let a = HostSpec::parse("10.0.0.1:80").unwrap();
    c.set_hosts(&[a.clone().with_limit(9)]);
    c.set_default_limit(5).unwrap();
    assert_eq!(
        c.host(&a.addr).unwrap().limit(),
        9,
        "default change keeps an override"
    );
    c.set_hosts(std::slice::from_ref(&a));
    assert_eq!(
        c.host(&a.addr).unwrap().limit(),
        5,
        "dropping the override restores the default"
    );
}

#[test]
fn limit_zero_admits_none() {
    let reg = Registry::new();
    let c = reg.set_default_limit("pods", 0).unwrap();
    c.set_hosts(&hosts(2));
    assert_eq!(c.acquire().unwrap_err(), Rejected::NoCapacity);
}

#[test]
fn typed_errors_for_bad_input() {
    let reg = Registry::new();
    assert_eq!(reg.acquire("none").unwrap_err(), Rejected::UnknownCluster);
    assert_eq!(
        reg.acquire_host("none", &addr("1.1.1.1:1")).unwrap_err(),
        Rejected::UnknownCluster
    );
    assert!(reg.set_default_limit("", 1).is_err());
    assert!(reg.set_hosts("", &[]).is_err());
    assert!(reg
        .set_hosts(
            "c",
            &[HostSpec::parse("1.1.1.1:1").unwrap().with_limit(u32::MAX)]
        )
        .is_err());
    let c = reg.cluster_or_create("empty").unwrap();
    assert_eq!(c.acquire().unwrap_err(), Rejected::NoHosts);
    assert_eq!(c.snapshot().rejected.no_hosts, 1);
    assert_eq!(c.acquire().unwrap_err().reason(), "no_hosts");
}

#[test]
fn permits_outlive_their_host_and_registry() {
    let reg = Registry::new();
    let c = reg.set_default_limit("pods", 1).unwrap();
    c.set_hosts(&hosts(1));
    let p = c.acquire().unwrap();
    c.set_hosts(&[]);
    drop(c);
    drop(reg);
    assert_eq!(p.host().as_str(), "10.0.0.1:8080");
    assert_eq!(p.cluster(), "pods");
    drop(p); // releases into a slot nobody else references: no panic, no leak
}

#[test]
fn permits_are_send_and_released_on_another_thread() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<wscap_core::Permit>();
    let reg = Registry::new();
    let c = reg.set_default_limit("pods", 1).unwrap();
    c.set_hosts(&hosts(1));
    let p = c.acquire().unwrap();
    std::thread::spawn(move || drop(p)).join().unwrap();
    assert_eq!(c.active(), 0);
}

#[test]
fn track_host_counts_existing_connections_beyond_the_limit() {
    let reg = Registry::new();
    let c = reg.set_default_limit("pods", 1).unwrap();
    let all = hosts(1);
    c.set_hosts(&all);
    let a = c.acquire().unwrap();
    let b = c.track_host(&all[0].addr).unwrap();
    assert_eq!(c.active(), 2);
    assert_eq!(c.acquire().unwrap_err(), Rejected::NoCapacity);
    assert_eq!(
        c.track_host(&addr("9.9.9.9:9")).unwrap_err(),
        Rejected::UnknownHost
    );
    drop((a, b));
    assert_eq!(c.active(), 0);
}

#[test]
fn large_clusters_still_find_the_last_free_slot() {
    let reg = Registry::new();
    let n = FULL_SCAN_MAX_HOSTS * 10;
    let c = reg.set_default_limit("big", 1).unwrap();
    let all = hosts(n);
    c.set_hosts(&all);
    let held: Vec<_> = (0..n)
        .map(|_| c.acquire().expect("a free slot exists"))
        .collect();
    assert_eq!(c.acquire().unwrap_err(), Rejected::NoCapacity);
    let mut seen: Vec<_> = held.iter().map(|p| p.host().clone()).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), n, "every host got exactly one");
    // Free exactly one slot somewhere in the middle: it must be found.
    let mut held = held;
    let freed = held.swap_remove(n / 2).host().clone();
    let again = c.acquire().unwrap();
    assert_eq!(again.host(), &freed);
}

#[test]
fn exporters_follow_the_design_names_and_shape() {
    let reg = Registry::new();
    let c = reg.set_default_limit("we\"ird", 2).unwrap();
    c.set_hosts(&[
        HostSpec::parse("10.0.0.1:80").unwrap(),
        HostSpec::parse("[::1]:81").unwrap(),
    ]);
    let _p = c.acquire_host(&addr("[::1]:81")).unwrap();
    let snap = reg.snapshot();
    let json: serde_json::Value = serde_json::from_str(&snap.to_json()).unwrap();
    let h = &json["clusters"][0]["hosts"][0];
    assert_eq!(json["clusters"][0]["name"], "we\"ird");
    for key in [
        "address", "active", "limit", "state", "admitted", "rejected",
    ] {
        assert!(h.get(key).is_some(), "missing {key} in {h}");
    }
    assert_eq!(h["address"], "10.0.0.1:80");
    assert_eq!(json["clusters"][0]["hosts"][1]["active"], 1);
    assert_eq!(json["clusters"][0]["hosts"][1]["state"], "active");
    let text = snap.to_prometheus();
    assert!(text.contains("# TYPE wscap_active_connections gauge\n"));
    assert!(text.contains("# TYPE wscap_admitted counter\n"));
    assert!(
        text.contains("wscap_active_connections{cluster=\"we\\\"ird\",host=\"[::1]:81\"} 1\n"),
        "{text}"
    );
    assert!(text.contains("wscap_connection_limit{cluster=\"we\\\"ird\",host=\"10.0.0.1:80\"} 2\n"));
    assert!(text.contains("wscap_rejected{cluster=\"we\\\"ird\",reason=\"no_capacity\"} 0\n"));
    // Every sample line is `name{labels} value`.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (_, value) = line.rsplit_once(' ').unwrap();
        value.parse::<u64>().unwrap();
    }
}

/// A default cap (global mode: 0 until the ledger grants a share) holds through every path that
/// recomputes a host's limit.
#[test]
fn a_default_cap_survives_every_limit_recomputation() {
    let hosts = [HostSpec::parse("10.0.0.1:80").unwrap()];
    let addr = hosts[0].addr.clone();
    let check = |c: &wscap_core::Cluster, when: &str| {
        assert_eq!(
            c.acquire().unwrap_err(),
            Rejected::NoCapacity,
            "admitted {when}"
        );
        assert_eq!(c.host(&addr).unwrap().limit(), 0, "{when}");
    };
    let reg = Registry::new();
    reg.set_default_cap(Some(0));
    let c = reg.set_default_limit("pods", 10).unwrap();
    c.set_hosts(&hosts);
    check(&c, "after the first set_hosts");
    c.set_hosts(&hosts);
    check(&c, "after an idempotent set_hosts");
    c.set_hosts(&[hosts[0].clone().with_limit(7)]);
    check(&c, "after a per-host limit change");
    c.set_default_limit(12).unwrap();
    check(&c, "after set_default_limit");
    reg.set_default_cap(Some(0));
    check(&c, "after set_default_cap on existing hosts");
    c.set_host_cap(&addr, Some(3));
    assert_eq!(c.host(&addr).unwrap().limit(), 3);
    c.set_host_cap(&addr, None);
    check(&c, "after lifting the host's own cap");
    c.set_hosts(&[]);
    c.set_hosts(&hosts);
    check(&c, "after leaving and coming back");
    reg.set_default_cap(None);
    assert_eq!(
        c.host(&addr).unwrap().limit(),
        12,
        "the host came back without its own limit"
    );
    assert!(c.acquire().is_ok());
}

/// Tiers: the lowest tier with room wins, also past the sampling threshold (a sample of tier-1
/// hosts must not hide the one tier-0 host with room); standby hosts are never chosen, and a
/// cluster of standby hosts only refuses with `NoHosts`.
#[test]
fn tiers_are_honoured_with_and_without_sampling() {
    for n in [3usize, wscap_core::FULL_SCAN_MAX_HOSTS + 5] {
        let reg = Registry::new();
        let c = reg.set_default_limit("c", 2).unwrap();
        let mut specs: Vec<HostSpec> = (1..n)
            .map(|i| {
                HostSpec::parse(&format!("10.0.1.{i}:80"))
                    .unwrap()
                    .with_tier(1)
            })
            .collect();
        specs.push(HostSpec::parse("10.0.0.1:80").unwrap());
        specs.push(
            HostSpec::parse("10.0.2.1:80")
                .unwrap()
                .with_tier(wscap_core::STANDBY),
        );
        c.set_hosts(&specs);
        let first: Vec<_> = (0..2).map(|_| c.acquire().unwrap()).collect();
        assert!(
            first.iter().all(|p| p.host().as_str() == "10.0.0.1:80"),
            "n={n}"
        );
        let rest: Vec<_> = (0..2 * (n - 1)).map(|_| c.acquire().unwrap()).collect();
        assert!(rest
            .iter()
            .all(|p| p.host().as_str().starts_with("10.0.1.")));
        assert_eq!(
            c.acquire().unwrap_err(),
            Rejected::NoCapacity,
            "standby never used"
        );
    }
    let reg = Registry::new();
    let c = reg.set_default_limit("s", 2).unwrap();
    c.set_hosts(&[HostSpec::parse("10.0.0.1:80")
        .unwrap()
        .with_tier(wscap_core::STANDBY)]);
    assert_eq!(c.acquire().unwrap_err(), Rejected::NoHosts);
}

/// A per-admission default (`acquire_with_default`) gives way to a host's own limit and to its
/// cap, and never changes what other admissions obey.
#[test]
fn acquire_with_default_respects_own_limits_and_caps() {
    let reg = Registry::new();
    let c = reg.set_default_limit("c", 5).unwrap();
    let own: wscap_core::HostAddr = "10.0.0.1:80".parse().unwrap();
    let capped: wscap_core::HostAddr = "10.0.0.2:80".parse().unwrap();
    c.set_hosts(&[
        HostSpec::new(own.clone()).with_limit(1),
        HostSpec::new(capped.clone()),
    ]);
    c.set_host_cap(&capped, Some(2));
    let held: Vec<_> = (0..3)
        .map(|_| c.acquire_with_default(10).unwrap())
        .collect();
    assert_eq!(
        held.iter().filter(|p| *p.host() == own).count(),
        1,
        "own limit 1 wins"
    );
    assert_eq!(
        held.iter().filter(|p| *p.host() == capped).count(),
        2,
        "cap 2 wins"
    );
    assert_eq!(
        c.acquire_with_default(10).unwrap_err(),
        Rejected::NoCapacity
    );
    assert_eq!(
        c.host(&capped).unwrap().limit(),
        2,
        "reported limit unchanged"
    );
    c.set_host_cap(&capped, None);
    let more: Vec<_> = (0..3).map(|_| c.acquire().unwrap()).collect();
    assert!(
        more.iter().all(|p| *p.host() == capped),
        "the default 5 for plain acquire"
    );
    assert_eq!(c.acquire_with_default(1).unwrap_err(), Rejected::NoCapacity);
}

/// A host that leaves (removed, holding nothing) and comes back starts under the default cap,
/// not under the cap its earlier incarnation had (global mode: a share possibly no longer held);
/// a host that only drained and is revived keeps its cap.
#[test]
fn a_removed_host_comes_back_under_the_default_cap() {
    let reg = Registry::new();
    let c = reg.set_default_limit("c", 10).unwrap();
    reg.set_default_cap(Some(0));
    let addr: HostAddr = "10.0.0.1:80".parse().unwrap();
    let hosts = [HostSpec::new(addr.clone())];
    c.set_hosts(&hosts);
    c.set_host_cap(&addr, Some(5));
    let p = c.acquire().unwrap();
    // Drained with a live connection, then revived: the same host, its cap kept.
    c.set_hosts(&[]);
    assert_eq!(c.set_hosts(&hosts).revived, 1);
    assert_eq!(c.host(&addr).unwrap().limit(), 5);
    drop(p);
    // Removed outright, then added again: the default cap (0) holds until a new cap is set.
    assert_eq!(c.set_hosts(&[]).removed, 1);
    assert_eq!(c.set_hosts(&hosts).added, 1);
    assert_eq!(c.host(&addr).unwrap().limit(), 0);
    assert_eq!(c.acquire().unwrap_err(), Rejected::NoCapacity);
}

/// Shared counts: a host full across the processes is refused at once (not retried forever),
/// and the other hosts still admit.
#[test]
fn a_host_full_across_processes_is_refused_not_spun_on() {
    use std::sync::atomic::AtomicU64;
    use std::sync::{mpsc, Arc};
    use wscap_core::{SharedCounter, SharedCounts};
    struct Words(Vec<&'static AtomicU64>, u32);
    impl SharedCounts for Words {
        fn counter(&self, _: &str, host: &HostAddr) -> Option<SharedCounter> {
            let i = usize::from(host.as_str().starts_with("10.0.0.2"));
            SharedCounter::new(self.0[i], self.1)
        }
    }
    let words: Vec<&'static AtomicU64> = (0..2)
        .map(|_| &*Box::leak(Box::new(AtomicU64::new(0))))
        .collect();
    let (tx, rx) = mpsc::channel();
    let w = words.clone();
    std::thread::spawn(move || {
        let other = Registry::with_shared_counts(Arc::new(Words(w.clone(), 0)));
        let me = Registry::with_shared_counts(Arc::new(Words(w, 1)));
        let hosts = [
            HostSpec::parse("10.0.0.1:80").unwrap(),
            HostSpec::parse("10.0.0.2:80").unwrap(),
        ];
        for r in [&other, &me] {
            r.set_default_limit("c", 1).unwrap();
            r.set_hosts("c", &hosts).unwrap();
        }
        let theirs = other
            .acquire_host("c", &"10.0.0.1:80".parse().unwrap())
            .unwrap();
        let mine = me.acquire("c").unwrap();
        let host = mine.host().as_str().to_owned();
        let third = me.acquire("c").map(|p| p.host().as_str().to_owned());
        tx.send((host, third)).unwrap();
        drop((theirs, mine));
    });
    let (host, third) = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("acquire returned (it must not spin on a host full across processes)");
    assert_eq!(host, "10.0.0.2:80", "the host with room across processes");
    assert_eq!(third, Err(Rejected::NoCapacity));
}
