//! TLS and AUTH through the URL, against a real `redis-server` started with `--tls-port`,
//! `--tls-auth-clients yes` and `--requirepass`, over a throwaway CA (`wscap_testkit::pki`).
//! The good path is exact as over plain TCP; every bad credential, certificate or file is a
//! clear error that admits nothing and crashes nothing.

mod common;

use std::time::Duration;

use common::{config, eventually, Instance, RedisServer, GRACE_MS};
use wscap_global::{Coordinator, FailMode, GlobalConfig};
use wscap_testkit::pki::TestPki;
use wscap_testkit::{scratch_dir, RedisOptions};

const LIMIT: u32 = 4;
const PASSWORD: &str = "s3cret-pass";

fn secure_redis(pki: &TestPki) -> RedisServer {
    RedisServer::start_with(RedisOptions {
        password: Some(PASSWORD.to_owned()),
        tls: Some(pki.redis_tls(true)),
        extra_args: Vec::new(),
    })
}

/// A config over TLS with the test CA and the client certificate.
fn tls_config(url: &str, id: &str, pki: &TestPki) -> GlobalConfig {
    let mut c = config(url, id, FailMode::KeepShare);
    // I/O timeouts are half a refresh: leave a TLS handshake (debug-built crypto) 250 ms.
    c.refresh_ms = 500;
    c.lease_ttl_ms = 1500;
    c.tls_ca_file = Some(pki.ca_file.display().to_string());
    c.tls_cert_file = Some(pki.client_cert_file.display().to_string());
    c.tls_key_file = Some(pki.client_key_file.display().to_string());
    c
}

/// Waits until every instance reached Redis and sees the 3 pods, then out the restart grace.
fn wait_ready(insts: &[Instance]) {
    assert!(
        eventually(Duration::from_secs(10), || insts.iter().all(|i| {
            let v = i.coordinator().fleet_view();
            v.redis_ok && v.pods.len() == 3
        })),
        "{:?}",
        insts[0].coordinator().fleet_view()
    );
    std::thread::sleep(Duration::from_millis(GRACE_MS + 200));
}

/// Admits on `insts` round robin until nothing more comes for a while.
fn fill(insts: &[Instance]) -> Vec<wscap_core::Permit> {
    let mut held = Vec::new();
    let mut idle = 0;
    let mut i = 0;
    while idle < 30 {
        match insts[i % insts.len()].admit() {
            Some(p) => {
                held.push(p);
                idle = 0;
            }
            None => {
                idle += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        i += 1;
    }
    held
}

#[test]
fn mutual_tls_and_a_password_admit_exactly_the_fleet_limit() {
    let dir = scratch_dir("pki");
    let pki = TestPki::generate(&dir);
    let redis = secure_redis(&pki);
    let url = redis.url_with_auth("", PASSWORD);
    assert!(url.starts_with("rediss://:s3cret-pass@127.0.0.1:"), "{url}");
    let insts: Vec<Instance> = (0..2)
        .map(|i| Instance::start(tls_config(&url, &format!("tls-{i}"), &pki), LIMIT))
        .collect();
    wait_ready(&insts);
    let held = fill(&insts);
    assert_eq!(held.len(), 3 * LIMIT as usize, "3 pods x {LIMIT}, exactly");
    assert!(eventually(Duration::from_secs(3), || {
        let v = insts[1].coordinator().fleet_view();
        v.pods.iter().all(|p| p.live == LIMIT)
    }));
    drop(held);
}

/// Starts one instance on `c`; waits until a failed round's error contains one of `expect`
/// (an I/O timeout on a loaded machine may come first) and checks that nothing is admitted.
/// Returns that error.
fn failing(c: GlobalConfig, expect: &[&str]) -> String {
    let inst = Instance::start(c, LIMIT);
    let matches = |e: &str| expect.is_empty() || expect.iter().any(|x| e.contains(x));
    assert!(
        eventually(Duration::from_secs(10), || inst
            .coordinator()
            .fleet_view()
            .last_error
            .is_some_and(|e| matches(&e))),
        "no error with any of {expect:?}: {:?}",
        inst.coordinator().fleet_view()
    );
    assert!(inst.admit().is_none(), "admitted without a ledger");
    let v = inst.coordinator().fleet_view();
    assert!(!v.redis_ok);
    v.last_error.unwrap_or_default()
}

#[test]
fn bad_credentials_and_certificates_are_clear_errors_that_admit_nothing() {
    let dir = scratch_dir("pki");
    let pki = TestPki::generate(&dir);
    let redis = secure_redis(&pki);

    failing(
        tls_config(&redis.url_with_auth("", "wrong"), "wrong-pw", &pki),
        &["WRONGPASS", "auth"],
    );

    let mut untrusted = tls_config(&redis.url_with_auth("", PASSWORD), "untrusted", &pki);
    untrusted.tls_ca_file = Some(pki.other_ca_file.display().to_string());
    failing(untrusted, &["certificate", "Certificate"]);

    let mut no_client_cert = tls_config(&redis.url_with_auth("", PASSWORD), "no-cert", &pki);
    no_client_cert.tls_cert_file = None;
    no_client_cert.tls_key_file = None;
    failing(no_client_cert, &[]);

    // Plain TCP to a TLS port.
    let plain = redis
        .url_with_auth("", PASSWORD)
        .replacen("rediss://", "redis://", 1);
    failing(config(&plain, "plain", FailMode::KeepShare), &[]);
}

#[test]
fn tls_files_are_checked_with_the_config() {
    let dir = scratch_dir("pki");
    let pki = TestPki::generate(&dir);
    let registry: &'static wscap_core::Registry = Box::leak(Box::new(wscap_core::Registry::new()));
    let start = |c: GlobalConfig| Coordinator::start(c, registry).map(drop).unwrap_err();
    let base = || tls_config("rediss://127.0.0.1:1", "x", &pki);

    let mut c = base();
    c.tls_ca_file = Some(dir.join("missing.pem").display().to_string());
    let e = start(c).to_string();
    assert!(
        e.contains("tls_ca_file") && e.contains("missing.pem"),
        "{e}"
    );

    let mut c = base();
    c.redis_url = "redis://127.0.0.1:1".into();
    let e = start(c).to_string();
    assert!(e.contains("tls_ca_file needs a rediss://"), "{e}");

    let mut c = base();
    c.tls_key_file = None;
    let e = start(c).to_string();
    assert!(
        e.contains("tls_cert_file and tls_key_file go together"),
        "{e}"
    );

    // Files that exist but hold no PEM: refused at start, not at the first claim.
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let mut c = base();
    c.tls_ca_file = Some(garbage.display().to_string());
    let e = start(c).to_string();
    assert!(
        e.contains("tls_ca_file") && e.contains("no PEM certificate"),
        "{e}"
    );
    let mut c = base();
    c.tls_key_file = Some(garbage.display().to_string());
    let e = start(c).to_string();
    assert!(
        e.contains("tls_key_file") && e.contains("no PEM private key"),
        "{e}"
    );
    // Not a regular file: refused without reading it.
    for path in ["/dev/zero", "/tmp"] {
        let mut c = base();
        c.tls_ca_file = Some(path.to_owned());
        let e = start(c).to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }
    // A certificate where the key should be.
    let mut c = base();
    c.tls_key_file = Some(pki.client_cert_file.display().to_string());
    let e = start(c).to_string();
    assert!(e.contains("tls_key_file"), "{e}");

    let json = format!(
        r#"{{"redis_url":"rediss://127.0.0.1:1","tls_ca_file":"{}","bogus_tls":1}}"#,
        pki.ca_file.display()
    );
    assert!(
        GlobalConfig::from_json(&json).is_err(),
        "unknown fields refused"
    );
}

/// The least an ACL user needs: the ledger's keys, the script commands and what the script
/// calls. Documented in docs/GLOBAL.md; a user without `hset` gets a clear error in the fleet
/// view and admits nothing.
pub const ACL: &str =
    "~wscap:* +evalsha +eval +script|load +time +hget +hgetall +hset +hdel +pexpire";

#[test]
fn an_acl_user_with_the_documented_rules_is_enough() {
    // `--user NAME RULE...` (one argument per rule), and the default user switched off.
    let user = |rules: &str| -> Vec<String> {
        let mut a: Vec<String> = ["--user", "wscap", "on", ">acl-pass"]
            .map(String::from)
            .into();
        a.extend(rules.split(' ').map(String::from));
        a.extend(["--user", "default", "off"].map(String::from));
        a
    };
    let redis = RedisServer::start_with(RedisOptions {
        extra_args: user(ACL),
        ..RedisOptions::default()
    });
    let url = redis.url_with_auth("wscap", "acl-pass");
    let insts: Vec<Instance> = (0..2)
        .map(|i| {
            Instance::start(
                config(&url, &format!("acl-{i}"), FailMode::KeepShare),
                LIMIT,
            )
        })
        .collect();
    wait_ready(&insts);
    assert_eq!(fill(&insts).len(), 3 * LIMIT as usize);

    let short = RedisServer::start_with(RedisOptions {
        extra_args: user(&ACL.replace(" +hset", "")),
        ..RedisOptions::default()
    });
    // Redis 7.0 says "The user executing the script can't run this command or subcommand";
    // later versions say NOPERM.
    failing(
        config(
            &short.url_with_auth("wscap", "acl-pass"),
            "acl-short",
            FailMode::KeepShare,
        ),
        &["can't run this command", "NOPERM"],
    );
}
