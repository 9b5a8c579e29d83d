//! Every entry point through its C signature: success paths, NULL arguments, invalid UTF-8,
//! too-small buffers, refused configurations, and the out-params-only-on-success rule.

use std::ffi::{c_char, CStr, CString};
use std::ptr::{null, null_mut};
use std::sync::atomic::AtomicPtr;

use common::{cs, host_of, sentinel, text};
use wscap_ffi::*;

mod common;

type R = wscap_result;

fn new_registry(config: Option<&str>) -> *mut wscap_registry {
    let cfg = config.map(cs);
    let mut reg = null_mut();
    let r = wscap_registry_new(cfg.as_ref().map_or(null(), |c| c.as_ptr()), &mut reg);
    assert_eq!(r, R::Ok, "{config:?}");
    assert!(!reg.is_null());
    reg
}

const PODS: &str = r#"{"clusters":[{"name":"pods","max_connections_per_host":2,
    "hosts":[{"address":"10.0.0.1:80","max_connections":1},{"address":"10.0.0.2:80"}]}]}"#;

fn prometheus(reg: *const wscap_registry) -> String {
    text(|b, l, n| wscap_export_prometheus(reg, b, l, n))
}

fn json(reg: *const wscap_registry) -> String {
    text(|b, l, n| wscap_export_json(reg, b, l, n))
}

fn acquire(reg: *const wscap_registry, cluster: &str) -> Result<*mut wscap_permit, R> {
    let c = cs(cluster);
    let mut p = sentinel();
    match wscap_acquire(reg, c.as_ptr(), &mut p) {
        R::Ok => Ok(p),
        e => {
            assert_eq!(p, sentinel(), "out written on failure");
            Err(e)
        }
    }
}

fn acquire_host(
    reg: *const wscap_registry,
    cluster: &str,
    addr: &str,
) -> Result<*mut wscap_permit, R> {
    let (c, a) = (cs(cluster), cs(addr));
    let mut p = sentinel();
    match wscap_acquire_host(reg, c.as_ptr(), a.as_ptr(), &mut p) {
        R::Ok => Ok(p),
        e => {
            assert_eq!(p, sentinel(), "out written on failure");
            Err(e)
        }
    }
}

fn config_error(json: &[u8]) -> String {
    let c = CString::new(json).unwrap();
    text(|b, l, n| wscap_config_error(c.as_ptr(), b, l, n))
}

#[test]
fn registry_new_and_free() {
    wscap_registry_free(new_registry(None));
    wscap_registry_free(new_registry(Some("{}")));
    let reg = new_registry(Some(PODS));
    assert!(json(reg).contains(r#""name":"pods","default_limit":2"#));
    wscap_registry_free(reg);
    wscap_registry_free(null_mut()); // no-op
    assert_eq!(wscap_registry_new(null(), null_mut()), R::NullArgument);
}

#[test]
fn refused_configs_leave_out_untouched_and_are_explained() {
    for (json, code, why) in [
        (&b"not json"[..], R::InvalidConfig, "config: expected a JSON object"),
        (b"{", R::InvalidConfig, "EOF while parsing"),
        (br#"{"clusters":{}}"#, R::InvalidConfig, "invalid type: map, expected a sequence"),
        (b"{\"clusters\":[{\"name\":\"p\xe9\"}]}", R::InvalidUtf8, "not valid UTF-8 (at byte 23)"),
        (br#"{"clusterz":[]}"#, R::InvalidConfig, "unknown field `clusterz`"),
        (
            br#"{"clusters":[{"name":"a","max_connections_per_host":1,"hosts":[{"address":"pod-1:80"}]}]}"#,
            R::InvalidConfig,
            "clusters[0].hosts[0].address: invalid host address \"pod-1:80\"",
        ),
        (
            br#"{"clusters":[{"name":"a","max_connections_per_host":1},{"name":"a","max_connections_per_host":1}]}"#,
            R::InvalidConfig,
            "clusters[1].name: cluster \"a\" is listed twice",
        ),
    ] {
        let c = CString::new(json).unwrap();
        let mut reg = sentinel();
        assert_eq!(wscap_registry_new(c.as_ptr(), &mut reg), code, "{json:?}");
        assert_eq!(reg, sentinel());
        let msg = config_error(json);
        assert!(msg.contains(why), "{msg}");
    }
    assert_eq!(config_error(PODS.as_bytes()), "");
    assert_eq!(text(|b, l, n| wscap_config_error(null(), b, l, n)), "");
    assert_eq!(
        wscap_config_error(null(), null_mut(), 0, null_mut()),
        R::NullArgument
    );
}

#[test]
fn a_config_with_two_errors_reports_the_first_and_changes_nothing() {
    let reg = new_registry(Some(PODS));
    let before = json(reg);
    let bad = br#"{"clusters":[
        {"name":"pods","max_connections_per_host":9,"hosts":[{"address":"10.0.0.9:80"}]},
        {"name":"","max_connections_per_host":1},
        {"name":"b","max_connections_per_host":1,"hosts":[{"address":"b:1"}]}]}"#;
    let c = CString::new(&bad[..]).unwrap();
    assert_eq!(
        wscap_registry_apply_config(reg, c.as_ptr()),
        R::InvalidConfig
    );
    assert_eq!(
        wscap_registry_apply_config(reg, c.as_ptr()),
        R::InvalidConfig
    );
    assert_eq!(json(reg), before, "a refused config changes nothing");
    let msg = config_error(bad);
    assert!(msg.contains("clusters[1].name: must not be empty"), "{msg}");
    // Syntax and type errors are found while parsing, before any semantic check.
    let typo = br#"{"clusters":[{"name":"","max_connections_per_host":1},{"name":"b","max_connections_per_host":99999999999}]}"#;
    let msg = config_error(typo);
    assert!(
        msg.contains("invalid value: integer `99999999999`, expected u32 at line 1"),
        "{msg}"
    );
    assert_eq!(wscap_registry_apply_config(reg, null()), R::NullArgument);
    assert_eq!(
        wscap_registry_apply_config(null(), c.as_ptr()),
        R::NullArgument
    );
    wscap_registry_free(reg);
}

#[test]
fn apply_config_reloads_and_keeps_live_counts() {
    let reg = new_registry(Some(PODS));
    let p = acquire_host(reg, "pods", "10.0.0.1:80").unwrap();
    let reload = cs(
        r#"{"clusters":[{"name":"pods","max_connections_per_host":3,"hosts":[{"address":"10.0.0.2:80"}]}]}"#,
    );
    assert_eq!(wscap_registry_apply_config(reg, reload.as_ptr()), R::Ok);
    let j = json(reg);
    assert!(
        j.contains(r#""address":"10.0.0.1:80","active":1,"limit":1,"state":"draining""#),
        "{j}"
    );
    assert!(
        j.contains(r#""address":"10.0.0.2:80","active":0,"limit":3,"state":"active""#),
        "{j}"
    );
    assert_eq!(acquire_host(reg, "pods", "10.0.0.1:80"), Err(R::Draining));
    wscap_permit_release(p);
    assert!(
        !json(reg).contains("10.0.0.1:80"),
        "drained host dropped after its last release"
    );
    wscap_registry_free(reg);
}

#[test]
fn set_default_limit_checks_its_arguments() {
    let reg = new_registry(None);
    let pods = cs("pods");
    assert_eq!(wscap_set_default_limit(reg, pods.as_ptr(), 5), R::Ok);
    assert_eq!(
        wscap_set_default_limit(null(), pods.as_ptr(), 5),
        R::NullArgument
    );
    assert_eq!(wscap_set_default_limit(reg, null(), 5), R::NullArgument);
    assert_eq!(
        wscap_set_default_limit(reg, cs("").as_ptr(), 5),
        R::InvalidClusterName
    );
    let bad = CString::new(&b"p\xffds"[..]).unwrap();
    assert_eq!(
        wscap_set_default_limit(reg, bad.as_ptr(), 5),
        R::InvalidUtf8
    );
    assert_eq!(
        wscap_set_default_limit(reg, pods.as_ptr(), WSCAP_MAX_LIMIT + 1),
        R::LimitTooLarge
    );
    assert_eq!(
        wscap_set_default_limit(reg, pods.as_ptr(), WSCAP_MAX_LIMIT),
        R::Ok
    );
    assert_eq!(WSCAP_MAX_LIMIT, wscap_core::MAX_LIMIT);
    wscap_registry_free(reg);
}

#[test]
fn set_hosts_validates_everything_before_changing_anything() {
    let reg = new_registry(None);
    let pods = cs("pods");
    assert_eq!(wscap_set_default_limit(reg, pods.as_ptr(), 2), R::Ok);
    let (a, b, bad) = (cs("10.0.0.1:80"), cs("[::1]:80"), cs("10.0.0.1"));
    let hosts = [
        wscap_host {
            address: a.as_ptr(),
            max_connections: 0,
            has_max_connections: 0,
        },
        wscap_host {
            address: b.as_ptr(),
            max_connections: 0,
            has_max_connections: 1,
        },
    ];
    let mut change = wscap_membership_change {
        added: 99,
        ..Default::default()
    };
    assert_eq!(
        wscap_set_hosts(reg, pods.as_ptr(), hosts.as_ptr(), 2, &mut change),
        R::Ok
    );
    assert_eq!(
        change,
        wscap_membership_change {
            added: 2,
            ..Default::default()
        }
    );
    // has_max_connections with 0: a valid limit that admits nothing.
    assert_eq!(acquire_host(reg, "pods", "[::1]:80"), Err(R::NoCapacity));
    let p = acquire(reg, "pods").unwrap();
    assert_eq!(host_of(p), "10.0.0.1:80");

    let before = json(reg);
    let with_bad = [
        hosts[0],
        wscap_host {
            address: bad.as_ptr(),
            ..hosts[0]
        },
    ];
    let mut change = wscap_membership_change {
        added: 99,
        ..Default::default()
    };
    assert_eq!(
        wscap_set_hosts(reg, pods.as_ptr(), with_bad.as_ptr(), 2, &mut change),
        R::InvalidAddress
    );
    assert_eq!(change.added, 99, "out_change untouched on failure");
    let with_null = [
        hosts[0],
        wscap_host {
            address: null(),
            ..hosts[0]
        },
    ];
    assert_eq!(
        wscap_set_hosts(reg, pods.as_ptr(), with_null.as_ptr(), 2, null_mut()),
        R::NullArgument
    );
    let bad_utf8 = CString::new(&b"10.0.0.\xff:80"[..]).unwrap();
    let with_utf8 = [wscap_host {
        address: bad_utf8.as_ptr(),
        ..hosts[0]
    }];
    assert_eq!(
        wscap_set_hosts(reg, pods.as_ptr(), with_utf8.as_ptr(), 1, null_mut()),
        R::InvalidUtf8
    );
    let too_big = [wscap_host {
        max_connections: WSCAP_MAX_LIMIT + 1,
        has_max_connections: 1,
        ..hosts[0]
    }];
    assert_eq!(
        wscap_set_hosts(reg, pods.as_ptr(), too_big.as_ptr(), 1, null_mut()),
        R::LimitTooLarge
    );
    assert_eq!(
        wscap_set_hosts(reg, pods.as_ptr(), null(), 1, null_mut()),
        R::NullArgument
    );
    assert_eq!(
        wscap_set_hosts(reg, pods.as_ptr(), hosts.as_ptr(), usize::MAX, null_mut()),
        R::InvalidArgument
    );
    assert_eq!(
        wscap_set_hosts(reg, cs("").as_ptr(), hosts.as_ptr(), 1, null_mut()),
        R::InvalidClusterName
    );
    assert_eq!(
        wscap_set_hosts(null(), pods.as_ptr(), hosts.as_ptr(), 1, null_mut()),
        R::NullArgument
    );
    assert_eq!(
        wscap_set_hosts(reg, null(), hosts.as_ptr(), 1, null_mut()),
        R::NullArgument
    );
    assert_eq!(json(reg), before, "refused calls changed nothing");

    // NULL hosts with length 0: every member leaves; the one with a connection drains.
    assert_eq!(
        wscap_set_hosts(reg, pods.as_ptr(), null(), 0, &mut change),
        R::Ok
    );
    assert_eq!(
        change,
        wscap_membership_change {
            drained: 1,
            removed: 1,
            ..Default::default()
        }
    );
    assert_eq!(acquire(reg, "pods"), Err(R::NoHosts));
    assert_eq!(
        wscap_set_hosts(reg, pods.as_ptr(), hosts.as_ptr(), 1, &mut change),
        R::Ok
    );
    assert_eq!(
        change,
        wscap_membership_change {
            revived: 1,
            ..Default::default()
        }
    );
    assert!(json(reg).contains(r#""address":"10.0.0.1:80","active":1"#));
    wscap_permit_release(p);
    wscap_registry_free(reg);
}

#[test]
fn acquire_and_release() {
    let reg = new_registry(Some(PODS));
    let p1 = acquire(reg, "pods").unwrap();
    let p2 = acquire(reg, "pods").unwrap();
    let p3 = acquire(reg, "pods").unwrap();
    let mut hosts = [host_of(p1), host_of(p2), host_of(p3)];
    hosts.sort();
    assert_eq!(hosts, ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.2:80"]);
    assert_eq!(acquire(reg, "pods"), Err(R::NoCapacity));
    assert_eq!(acquire(reg, "nope"), Err(R::UnknownCluster));
    assert_eq!(acquire(reg, ""), Err(R::UnknownCluster));
    let bad = CString::new(&b"\xc3\x28"[..]).unwrap();
    let mut p = sentinel();
    assert_eq!(wscap_acquire(reg, bad.as_ptr(), &mut p), R::InvalidUtf8);
    assert_eq!(
        wscap_acquire(null(), cs("pods").as_ptr(), &mut p),
        R::NullArgument
    );
    assert_eq!(wscap_acquire(reg, null(), &mut p), R::NullArgument);
    assert_eq!(p, sentinel());
    wscap_permit_release(p2);
    // A NULL out-param fails before admitting: nothing is held.
    assert_eq!(
        wscap_acquire(reg, cs("pods").as_ptr(), null_mut()),
        R::NullArgument
    );
    let p4 = acquire(reg, "pods").unwrap();
    let text = prometheus(reg);
    assert!(
        text.contains("wscap_active_connections{cluster=\"pods\",host=\"10.0.0.2:80\"} 2\n"),
        "{text}"
    );
    assert!(
        text.contains("wscap_rejected{cluster=\"pods\",reason=\"no_capacity\"} 1\n"),
        "{text}"
    );
    for p in [p1, p3, p4] {
        wscap_permit_release(p);
    }
    wscap_permit_release(null_mut()); // no-op
    assert!(prometheus(reg)
        .contains("wscap_active_connections{cluster=\"pods\",host=\"10.0.0.2:80\"} 0\n"));
    let empty = new_registry(Some(
        r#"{"clusters":[{"name":"e","max_connections_per_host":1}]}"#,
    ));
    assert_eq!(acquire(empty, "e"), Err(R::NoHosts));
    wscap_registry_free(empty);
    wscap_registry_free(reg);
}

#[test]
fn acquire_host_errors() {
    let reg = new_registry(Some(PODS));
    let p = acquire_host(reg, "pods", "10.0.0.1:80").unwrap();
    assert_eq!(acquire_host(reg, "pods", "10.0.0.1:80"), Err(R::NoCapacity));
    assert_eq!(
        acquire_host(reg, "pods", "10.0.0.3:80"),
        Err(R::UnknownHost)
    );
    assert_eq!(
        acquire_host(reg, "pods", "pod-1:80"),
        Err(R::InvalidAddress)
    );
    assert_eq!(
        acquire_host(reg, "nope", "10.0.0.1:80"),
        Err(R::UnknownCluster)
    );
    let mut out = sentinel();
    assert_eq!(
        wscap_acquire_host(reg, cs("pods").as_ptr(), null(), &mut out),
        R::NullArgument
    );
    let bad = CString::new(&b"\xff"[..]).unwrap();
    assert_eq!(
        wscap_acquire_host(reg, cs("pods").as_ptr(), bad.as_ptr(), &mut out),
        R::InvalidUtf8
    );
    assert_eq!(
        wscap_acquire_host(
            reg,
            cs("pods").as_ptr(),
            cs("10.0.0.2:80").as_ptr(),
            null_mut()
        ),
        R::NullArgument
    );
    assert_eq!(out, sentinel());
    // Leading/trailing blanks are tolerated, as in core.
    let q = acquire_host(reg, "pods", " 10.0.0.2:80").unwrap();
    assert_eq!(host_of(q), "10.0.0.2:80");
    let cluster = text(|b, l, n| wscap_permit_cluster(q, b, l, n));
    assert_eq!(cluster, "pods");
    wscap_permit_release(q);
    wscap_permit_release(p);
    assert!(json(reg).contains(r#""active":0,"limit":2"#));
    wscap_registry_free(reg);
}

#[test]
fn buffers_too_small_get_the_size_and_nothing_written() {
    let reg = new_registry(Some(PODS));
    let p = acquire_host(reg, "pods", "10.0.0.2:80").unwrap();
    let host = "10.0.0.2:80";
    for len in 0..=host.len() {
        let mut buf = vec![0x7f as c_char; 32];
        let mut n = 12345usize;
        assert_eq!(
            wscap_permit_host(p, buf.as_mut_ptr(), len, &mut n),
            R::BufferTooSmall
        );
        assert_eq!(n, host.len() + 1);
        assert!(
            buf.iter().all(|&b| b == 0x7f),
            "nothing written at len {len}"
        );
    }
    let mut buf = vec![0x7f as c_char; host.len() + 1];
    let mut n = 0usize;
    assert_eq!(
        wscap_permit_host(p, buf.as_mut_ptr(), buf.len(), &mut n),
        R::Ok
    );
    assert_eq!(n, host.len());
    assert_eq!(buf[host.len()], 0);
    assert_eq!(wscap_permit_host(p, null_mut(), 4, &mut n), R::NullArgument);
    assert_eq!(
        wscap_permit_host(p, buf.as_mut_ptr(), buf.len(), null_mut()),
        R::NullArgument
    );
    assert_eq!(
        wscap_permit_host(null(), buf.as_mut_ptr(), buf.len(), &mut n),
        R::NullArgument
    );
    assert_eq!(
        wscap_permit_cluster(null(), buf.as_mut_ptr(), buf.len(), &mut n),
        R::NullArgument
    );

    let full = prometheus(reg);
    let mut buf = vec![0x7f as c_char; full.len()];
    assert_eq!(
        wscap_export_prometheus(reg, buf.as_mut_ptr(), full.len(), &mut n),
        R::BufferTooSmall
    );
    assert_eq!(n, full.len() + 1);
    assert!(buf.iter().all(|&b| b == 0x7f));
    assert_eq!(
        wscap_export_json(reg, buf.as_mut_ptr(), 1, &mut n),
        R::BufferTooSmall
    );
    assert_eq!(n, json(reg).len() + 1);
    assert_eq!(
        wscap_export_json(null(), buf.as_mut_ptr(), 1, &mut n),
        R::NullArgument
    );
    assert_eq!(
        wscap_export_prometheus(reg, null_mut(), 1, &mut n),
        R::NullArgument
    );
    assert_eq!(
        wscap_export_prometheus(reg, buf.as_mut_ptr(), 1, null_mut()),
        R::NullArgument
    );
    let msg = cs("{");
    assert_eq!(
        wscap_config_error(msg.as_ptr(), buf.as_mut_ptr(), 3, &mut n),
        R::BufferTooSmall
    );
    assert_eq!(n, config_error(b"{").len() + 1);
    wscap_permit_release(p);
    wscap_registry_free(reg);
}

#[test]
fn result_strings_are_static_and_total() {
    let mut seen = std::collections::HashSet::new();
    for code in 0..16u32 {
        let p = wscap_result_str(code);
        assert!(!p.is_null());
        // SAFETY: documented as a static NUL-terminated string.
        let s = unsafe { CStr::from_ptr(p) }.to_str().unwrap();
        assert!(!s.starts_with("unknown:"), "{code}: {s}");
        assert!(seen.insert(s.to_owned()));
    }
    // SAFETY: as above.
    let s = unsafe { CStr::from_ptr(wscap_result_str(R::NoCapacity as u32)) };
    assert_eq!(
        s.to_str().unwrap(),
        "no_capacity: every host is at its connection limit"
    );
    for code in [16, 1000, u32::MAX] {
        // SAFETY: as above.
        let s = unsafe { CStr::from_ptr(wscap_result_str(code)) };
        assert!(s.to_str().unwrap().starts_with("unknown:"));
    }
    // SAFETY: documented as a static NUL-terminated string.
    let v = unsafe { CStr::from_ptr(wscap_version()) };
    assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
}

#[test]
fn permits_outlive_their_registry_and_release_on_any_thread() {
    let reg = new_registry(Some(PODS));
    // AtomicPtr: a Send wrapper for handing the raw handle to another thread.
    let p = AtomicPtr::new(acquire(reg, "pods").unwrap());
    wscap_registry_free(reg);
    std::thread::spawn(move || {
        let p = p.into_inner();
        assert!(host_of(p).starts_with("10.0.0."));
        wscap_permit_release(p);
    })
    .join()
    .unwrap();
}

#[test]
fn concurrent_admission_never_exceeds_limits() {
    let reg = new_registry(Some(
        r#"{"clusters":[{"name":"pods","max_connections_per_host":3,
        "hosts":[{"address":"10.0.0.1:80"},{"address":"10.0.0.2:80","max_connections":1},{"address":"10.0.0.3:80","max_connections":5}]}]}"#,
    ));
    let shared = AtomicPtr::new(reg);
    let limits = [("10.0.0.1:80", 3), ("10.0.0.2:80", 1), ("10.0.0.3:80", 5)];
    let counts: Vec<_> = limits
        .iter()
        .map(|_| std::sync::atomic::AtomicI64::new(0))
        .collect();
    std::thread::scope(|s| {
        for _ in 0..if cfg!(miri) { 2 } else { 4 } {
            s.spawn(|| {
                let reg = shared
                    .load(std::sync::atomic::Ordering::Relaxed)
                    .cast_const();
                let mut held = Vec::new();
                for i in 0..if cfg!(miri) { 40 } else { 2000 } {
                    if let Ok(p) = acquire(reg, "pods") {
                        let h = host_of(p);
                        let k = limits.iter().position(|(a, _)| *a == h).unwrap();
                        let now = counts[k].fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                        assert!(now <= limits[k].1, "{h} over its limit: {now}");
                        held.push((k, p));
                    }
                    if i % 3 != 0 || held.len() > 4 {
                        if let Some((k, p)) = held.pop() {
                            counts[k].fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                            wscap_permit_release(p);
                        }
                    }
                }
                for (k, p) in held {
                    counts[k].fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    wscap_permit_release(p);
                }
            });
        }
    });
    let j = json(reg);
    assert_eq!(j.matches(r#""active":0"#).count(), 3, "{j}");
    wscap_registry_free(reg);
}

/// The rules the crate is built on, checked on its source: every exported function runs its body
/// in the gate, and `unsafe` appears only in `src/cast.rs`.
#[test]
#[cfg_attr(miri, ignore = "reads the source tree")]
fn every_entry_point_is_gated_and_unsafe_is_confined() {
    let src_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut entry_points = 0;
    for entry in std::fs::read_dir(&src_dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let src = std::fs::read_to_string(&path).unwrap();
        if name != "cast.rs" {
            for (i, line) in src.lines().enumerate() {
                let code = line.split("//").next().unwrap();
                assert!(
                    !code.contains("unsafe"),
                    "{name}:{}: unsafe outside cast.rs",
                    i + 1
                );
            }
        }
        for body in src.split("pub extern \"C\" fn ").skip(1) {
            entry_points += 1;
            let fn_name = body.split('(').next().unwrap();
            let after_sig = body.split_once("{\n").unwrap().1.trim_start();
            assert!(
                after_sig.starts_with("gate!({"),
                "{fn_name} does not run its body in gate!"
            );
            let before = src
                .split(&format!("pub extern \"C\" fn {fn_name}("))
                .next()
                .unwrap();
            assert!(
                before.trim_end().ends_with("#[no_mangle]"),
                "{fn_name} is not #[no_mangle]"
            );
        }
    }
    assert_eq!(entry_points, 23);
}

#[test]
fn cluster_handles_admit_without_the_lookup() {
    let reg = new_registry(None);
    let mut c = sentinel();
    assert_eq!(
        wscap_cluster_get(reg, cs("").as_ptr(), &mut c),
        R::InvalidClusterName
    );
    assert_eq!(wscap_cluster_get(reg, null(), &mut c), R::NullArgument);
    assert_eq!(
        wscap_cluster_get(null(), cs("pods").as_ptr(), &mut c),
        R::NullArgument
    );
    let bad = CString::new(&b"\xff"[..]).unwrap();
    assert_eq!(wscap_cluster_get(reg, bad.as_ptr(), &mut c), R::InvalidUtf8);
    assert_eq!(
        wscap_cluster_get(reg, cs("pods").as_ptr(), null_mut()),
        R::NullArgument
    );
    assert_eq!(c, sentinel());
    assert_eq!(wscap_cluster_get(reg, cs("pods").as_ptr(), &mut c), R::Ok);

    let mut p = sentinel();
    assert_eq!(
        wscap_cluster_acquire(c, &mut p),
        R::NoHosts,
        "a new cluster has no hosts"
    );
    assert_eq!(p, sentinel());
    // The handle follows membership and limits set later through the registry.
    let pods = cs("pods");
    assert_eq!(wscap_set_default_limit(reg, pods.as_ptr(), 1), R::Ok);
    let a = cs("10.0.0.1:80");
    let hosts = [wscap_host {
        address: a.as_ptr(),
        max_connections: 0,
        has_max_connections: 0,
    }];
    assert_eq!(
        wscap_set_hosts(reg, pods.as_ptr(), hosts.as_ptr(), 1, null_mut()),
        R::Ok
    );
    assert_eq!(wscap_cluster_acquire(c, &mut p), R::Ok);
    assert_eq!(host_of(p), "10.0.0.1:80");
    let mut q = sentinel();
    assert_eq!(wscap_cluster_acquire(c, &mut q), R::NoCapacity);
    assert_eq!(wscap_cluster_acquire(null(), &mut q), R::NullArgument);
    assert_eq!(wscap_cluster_acquire(c, null_mut()), R::NullArgument);
    assert_eq!(q, sentinel());
    assert!(json(reg).contains(r#""active":1"#));

    // Handles and permits outlive the registry.
    wscap_registry_free(reg);
    wscap_permit_release(p);
    assert_eq!(wscap_cluster_acquire(c, &mut p), R::Ok);
    wscap_permit_release(p);
    wscap_cluster_free(c);
    wscap_cluster_free(null_mut());
}
