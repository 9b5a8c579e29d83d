//! Global mode through the C entry points, against a real redis-server (one per test, on a free
//! loopback port, killed by PID however the test ends: `wscap_testkit::RedisServer`): two
//! registries stand for two proxy instances sharing one Redis.

use std::ffi::{c_char, c_void, CString};
use std::ptr::{null, null_mut};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{cs, host_of, sentinel, text};
use wscap_ffi::*;

mod common;
use wscap_testkit::pki::TestPki;
use wscap_testkit::{eventually, free_port, RedisOptions, RedisServer};

type R = wscap_result;

/// Restart grace in these tests (see `global/tests/common/mod.rs`).
const GRACE_MS: u64 = 300;
const PODS: [&str; 3] = ["10.9.0.1:8080", "10.9.0.2:8080", "10.9.0.3:8080"];
const REGISTRY: &str = r#"{"clusters":[{"name":"pods","max_connections_per_host":2,
    "hosts":[{"address":"10.9.0.1:8080"},{"address":"10.9.0.2:8080"},{"address":"10.9.0.3:8080"}]}]}"#;

fn global_config(url: &str, id: &str) -> String {
    format!(
        r#"{{"redis_url":"{url}","instance_id":"{id}","lease_ttl_ms":900,"refresh_ms":100,
            "restart_grace_ms":{GRACE_MS}}}"#
    )
}

fn config_error(json: &str) -> String {
    let json = cs(json);
    text(|b, l, n| wscap_global_config_error(json.as_ptr(), b, l, n))
}

fn fleet(g: *const wscap_global) -> serde_json::Value {
    serde_json::from_str(&text(|b, l, n| wscap_global_fleet_json(g, b, l, n))).unwrap()
}

/// The borrow callback: `user_data` is a boxed channel sender, taken back here (so a second
/// call would be a double free, which the tests would not survive quietly).
extern "C" fn send_outcome(user_data: *mut c_void, outcome: wscap_borrow_outcome) {
    // SAFETY: `user_data` is the `Box<Sender>` leaked by `borrow`, and the callback runs exactly
    // once, so it is taken back once.
    let tx = unsafe { Box::from_raw(user_data.cast::<mpsc::Sender<wscap_borrow_outcome>>()) };
    let _ = tx.send(outcome);
}

/// Requests a borrow; the receiver gets the outcome.
fn borrow(g: *const wscap_global, cluster: &str) -> mpsc::Receiver<wscap_borrow_outcome> {
    let (tx, rx) = mpsc::channel();
    let user_data = Box::into_raw(Box::new(tx)).cast::<c_void>();
    let cluster = cs(cluster);
    let r = wscap_global_request_borrow(g, cluster.as_ptr(), Some(send_outcome), user_data);
    assert_eq!(r, R::Ok);
    rx
}

/// One proxy instance: its own registry and global mode over it.
struct Instance {
    registry: *mut wscap_registry,
    global: *mut wscap_global,
}

impl Instance {
    fn start(url: &str, id: &str) -> Self {
        Self::start_json(&global_config(url, id))
    }

    fn start_json(config_json: &str) -> Self {
        let mut registry = null_mut();
        assert_eq!(
            wscap_registry_new(cs(REGISTRY).as_ptr(), &mut registry),
            R::Ok
        );
        let mut global = null_mut();
        let config = cs(config_json);
        assert_eq!(
            wscap_global_start(registry, config.as_ptr(), &mut global),
            R::Ok
        );
        assert!(!global.is_null());
        Instance { registry, global }
    }

    /// Admits as a C proxy would: acquire; on NO_CAPACITY borrow, then acquire again.
    fn admit(&self) -> Option<*mut wscap_permit> {
        let pods = cs("pods");
        let mut p = null_mut();
        match wscap_acquire(self.registry, pods.as_ptr(), &mut p) {
            R::Ok => return Some(p),
            R::NoCapacity => {}
            other => panic!("{other:?}"),
        }
        loop {
            let outcome = borrow(self.global, "pods")
                .recv_timeout(Duration::from_secs(10))
                .expect("the borrow callback ran");
            if wscap_acquire(self.registry, pods.as_ptr(), &mut p) == R::Ok {
                return Some(p);
            }
            if outcome != wscap_borrow_outcome::Granted {
                return None;
            }
        }
    }
}

#[test]
fn two_instances_admit_exactly_the_fleet_limit_through_the_c_api() {
    let redis = RedisServer::start();
    let insts = [
        Instance::start(&redis.url(), "proxy-a"),
        Instance::start(&redis.url(), "proxy-b"),
    ];
    // Nothing is admitted before Redis grants a share.
    let mut p = sentinel();
    let pods = cs("pods");
    assert_eq!(
        wscap_acquire(insts[0].registry, pods.as_ptr(), &mut p),
        R::NoCapacity
    );
    assert_eq!(p, sentinel());
    assert!(eventually(Duration::from_secs(5), || {
        insts
            .iter()
            .all(|i| fleet(i.global)["pods"].as_array().unwrap().len() == 3)
    }));
    std::thread::sleep(Duration::from_millis(GRACE_MS + 200));

    // Round robin until the fleet holds 6, retrying refusals as clients do after a 503
    // (unused share flows back within a refresh).
    let mut held: Vec<*mut wscap_permit> = Vec::new();
    let mut per_host = [0u32; 3];
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut i = 0;
    while held.len() < 6 && Instant::now() < deadline {
        match insts[i % 2].admit() {
            Some(p) => {
                let k = PODS.iter().position(|a| *a == host_of(p)).unwrap();
                per_host[k] += 1;
                assert!(per_host[k] <= 2, "{} over its fleet limit", PODS[k]);
                held.push(p);
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
        i += 1;
    }
    assert_eq!(held.len(), 6, "per host {per_host:?}");
    assert_eq!(per_host, [2, 2, 2]);

    // Full: neither instance admits more, however often it borrows.
    for _ in 0..5 {
        for inst in &insts {
            assert!(inst.admit().is_none(), "a 7th connection was admitted");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let outcome = borrow(insts[1].global, "pods")
        .recv_timeout(Duration::from_secs(10))
        .unwrap();
    assert_eq!(outcome, wscap_borrow_outcome::Full);
    // An unknown cluster has nothing to borrow.
    let outcome = borrow(insts[1].global, "nope")
        .recv_timeout(Duration::from_secs(10))
        .unwrap();
    assert_eq!(outcome, wscap_borrow_outcome::Full);

    // The fleet view, from either instance: 2 live per pod across the fleet, shares within it.
    for inst in &insts {
        assert!(
            eventually(Duration::from_secs(5), || {
                let view = fleet(inst.global);
                view["redis_ok"] == true
                    && view["pods"].as_array().unwrap().iter().all(|p| {
                        p["cluster"] == "pods"
                            && p["limit"] == 2
                            && p["live"] == 2
                            && p["shares"].as_u64().unwrap() <= 2
                    })
            }),
            "{}",
            fleet(inst.global)
        );
    }
    let view = fleet(insts[0].global);
    assert_eq!(view["instance"], "proxy-a");
    let addrs: Vec<_> = view["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["address"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(addrs, PODS);

    // Stop global mode with permits still held: they stay valid; the registry outlives the
    // coordinator (and the other way round for the second instance).
    let [a, b] = insts;
    wscap_global_free(a.global);
    wscap_registry_free(b.registry);
    for p in held {
        assert!(PODS.contains(&host_of(p).as_str()));
        wscap_permit_release(p);
    }
    wscap_registry_free(a.registry);
    wscap_global_free(b.global);
}

/// TLS with a client certificate and a password, through the C entry points: the same JSON as
/// Envoy's bootstrap config. A malformed certificate file is explained by
/// `wscap_global_config_error` and refused by `wscap_global_start`.
#[test]
fn tls_and_auth_through_the_c_api() {
    let dir = wscap_testkit::scratch_dir("ffi-pki");
    let pki = TestPki::generate(&dir);
    let redis = RedisServer::start_with(RedisOptions {
        password: Some("c-s3cret".into()),
        tls: Some(pki.redis_tls(true)),
        extra_args: Vec::new(),
    });
    let json = |ca: &std::path::Path| {
        serde_json::json!({
            "redis_url": redis.url_with_auth("", "c-s3cret"),
            "instance_id": "proxy-tls",
            "lease_ttl_ms": 1500,
            "refresh_ms": 500,
            "restart_grace_ms": GRACE_MS,
            "tls_ca_file": ca,
            "tls_cert_file": pki.client_cert_file,
            "tls_key_file": pki.client_key_file,
        })
        .to_string()
    };
    let good = json(&pki.ca_file);
    assert_eq!(config_error(&good), "");
    let inst = Instance::start_json(&good);
    assert!(
        eventually(Duration::from_secs(10), || {
            let v = fleet(inst.global);
            v["redis_ok"] == true && v["pods"].as_array().unwrap().len() == 3
        }),
        "{}",
        fleet(inst.global)
    );
    std::thread::sleep(Duration::from_millis(GRACE_MS + 200));
    let mut held = Vec::new();
    while let Some(p) = inst.admit() {
        held.push(p);
        assert!(held.len() <= 6, "over the fleet limit of 3 pods x 2");
    }
    assert_eq!(held.len(), 6);
    for p in held {
        wscap_permit_release(p);
    }
    wscap_global_free(inst.global);
    wscap_registry_free(inst.registry);

    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let bad = json(&garbage);
    let message = config_error(&bad);
    assert!(
        message.contains("tls_ca_file") && message.contains("no PEM certificate"),
        "{message}"
    );
    let mut reg = null_mut();
    assert_eq!(wscap_registry_new(cs(REGISTRY).as_ptr(), &mut reg), R::Ok);
    let mut g = sentinel();
    assert_eq!(
        wscap_global_start(reg, cs(&bad).as_ptr(), &mut g),
        R::InvalidConfig
    );
    assert_eq!(g, sentinel());
    wscap_registry_free(reg);
}

#[test]
fn pending_borrows_are_answered_once_when_global_mode_stops() {
    // No Redis on this port: start succeeds (Redis is reached lazily), borrows say UNAVAILABLE.
    let url = format!("redis://127.0.0.1:{}", free_port());
    let inst = Instance::start(&url, "lonely");
    let rxs: Vec<_> = (0..3).map(|_| borrow(inst.global, "pods")).collect();
    let started = Instant::now();
    wscap_global_free(inst.global);
    assert!(started.elapsed() < Duration::from_secs(5));
    for rx in rxs {
        // Answered before free returned, exactly once (the callback frees its sender).
        assert_eq!(rx.try_recv(), Ok(wscap_borrow_outcome::Unavailable));
        assert!(rx.try_recv().is_err());
    }
    let mut p = sentinel();
    assert_eq!(
        wscap_acquire(inst.registry, cs("pods").as_ptr(), &mut p),
        R::NoCapacity,
        "caps stay at what the coordinator last set"
    );
    wscap_registry_free(inst.registry);
}

#[test]
fn refused_configs_say_why_and_change_nothing() {
    let mut reg = null_mut();
    assert_eq!(wscap_registry_new(cs(REGISTRY).as_ptr(), &mut reg), R::Ok);
    let cases = [
        ("{", "EOF while parsing"),
        (
            r#"{"redis_url":"redis://127.0.0.1:1","bogus":1}"#,
            "unknown field `bogus`",
        ),
        (r#"{"lease_ttl_ms":900}"#, "missing field `redis_url`"),
        (
            r#"{"redis_url":"http://127.0.0.1:1"}"#,
            "redis_url must start with redis://",
        ),
        (
            r#"{"redis_url":"redis://127.0.0.1:1","lease_ttl_ms":900,"refresh_ms":500}"#,
            "refresh_ms must be at least 10 and at most a third of lease_ttl_ms",
        ),
        (
            r#"{"redis_url":"redis://127.0.0.1:1","fail_mode":"local_limit"}"#,
            "fail_mode local_limit needs local_limit",
        ),
        (
            r#"{"redis_url":"redis://127.0.0.1:notaport"}"#,
            "bad redis_url",
        ),
    ];
    for (json, why) in cases {
        let mut g = sentinel();
        assert_eq!(
            wscap_global_start(reg, cs(json).as_ptr(), &mut g),
            R::InvalidConfig,
            "{json}"
        );
        assert_eq!(g, sentinel(), "{json}: out written on failure");
        let message = config_error(json);
        assert!(message.starts_with("invalid global config: "), "{message}");
        assert!(message.contains(why), "{json}: {message}");
    }
    // Nothing was started: the registry still admits on its own limits.
    let mut p = null_mut();
    assert_eq!(wscap_acquire(reg, cs("pods").as_ptr(), &mut p), R::Ok);
    wscap_permit_release(p);

    assert_eq!(config_error(&global_config("redis://127.0.0.1:1", "x")), "");
    let bad = CString::new(&b"{\"redis_url\":\"\xff\"}"[..]).unwrap();
    let mut g = sentinel();
    assert_eq!(
        wscap_global_start(reg, bad.as_ptr(), &mut g),
        R::InvalidUtf8
    );
    assert!(
        text(|b, l, n| wscap_global_config_error(bad.as_ptr(), b, l, n))
            .contains("not valid UTF-8")
    );
    assert_eq!(g, sentinel());
    wscap_registry_free(reg);
}

#[test]
fn null_arguments_are_refused() {
    let mut reg = null_mut();
    assert_eq!(wscap_registry_new(null(), &mut reg), R::Ok);
    let config = cs(&global_config(
        &format!("redis://127.0.0.1:{}", free_port()),
        "nulls",
    ));
    let mut g = sentinel();
    assert_eq!(
        wscap_global_start(null(), config.as_ptr(), &mut g),
        R::NullArgument
    );
    assert_eq!(wscap_global_start(reg, null(), &mut g), R::NullArgument);
    assert_eq!(
        wscap_global_start(reg, config.as_ptr(), null_mut()),
        R::NullArgument
    );
    assert_eq!(g, sentinel());
    let mut n = 7usize;
    assert_eq!(
        wscap_global_config_error(null(), null_mut(), 0, &mut n),
        R::NullArgument
    );
    assert_eq!(
        wscap_global_config_error(config.as_ptr(), null_mut(), 0, null_mut()),
        R::NullArgument
    );
    assert_eq!(n, 7);

    assert_eq!(wscap_global_start(reg, config.as_ptr(), &mut g), R::Ok);
    let pods = cs("pods");
    assert_eq!(
        wscap_global_request_borrow(null(), pods.as_ptr(), Some(send_outcome), null_mut()),
        R::NullArgument
    );
    assert_eq!(
        wscap_global_request_borrow(g, null(), Some(send_outcome), null_mut()),
        R::NullArgument
    );
    assert_eq!(
        wscap_global_request_borrow(g, pods.as_ptr(), None, null_mut()),
        R::NullArgument
    );
    let bad = CString::new(&b"\xff"[..]).unwrap();
    assert_eq!(
        wscap_global_request_borrow(g, bad.as_ptr(), Some(send_outcome), null_mut()),
        R::InvalidUtf8
    );
    assert_eq!(
        wscap_global_fleet_json(null(), null_mut(), 0, &mut n),
        R::NullArgument
    );
    assert_eq!(
        wscap_global_fleet_json(g, null_mut(), 0, null_mut()),
        R::NullArgument
    );
    assert_eq!(
        wscap_global_fleet_json(g, null_mut(), 1, &mut n),
        R::NullArgument
    );
    assert_eq!(n, 7);
    // Too small: nothing written, the size needed reported.
    let mut buf = [0x55 as c_char; 4];
    assert_eq!(
        wscap_global_fleet_json(g, buf.as_mut_ptr(), buf.len(), &mut n),
        R::BufferTooSmall
    );
    assert!(n > 4);
    assert!(buf.iter().all(|&b| b == 0x55));
    assert_eq!(fleet(g)["instance"], "nulls");

    wscap_global_free(g);
    wscap_global_free(null_mut());
    wscap_registry_free(reg);
}
