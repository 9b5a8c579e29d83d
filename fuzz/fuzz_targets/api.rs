//! Random call sequences over the whole C ABI, with arbitrary bytes for cluster names, host
//! addresses and configuration JSON.
//!
//! Checked on every input:
//! - no entry point returns `WSCAP_RESULT_PANIC` (the gate caught nothing) or crashes;
//! - every result code is one the function documents;
//! - out-params are written only on success; a too-small buffer is left untouched and the size
//!   needed is reported; a written text is NUL-terminated at `*out_n`;
//! - the live count the JSON export reports for each host equals the permits this run holds on
//!   it, and an admission never leaves a host above its limit;
//! - after every permit is released, every count is back to zero.
#![no_main]

use std::collections::HashMap;
use std::ffi::{c_char, CStr, CString};
use std::ptr::{null, null_mut};
use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use wscap_ffi::*;

type R = wscap_result;

const NAMES: [&str; 3] = ["pods", "chat", "a\"b\\c"];
const ADDRS: [&str; 6] = [
    "10.0.0.1:80",
    "10.0.0.2:80",
    "10.0.0.3:8080",
    "[::1]:80",
    "[fe80::1%2]:443",
    " 10.0.0.1:80",
];

/// Bytes for a C string: a known value most of the time, arbitrary bytes (cut at the first NUL,
/// possibly invalid UTF-8) otherwise, or NULL.
#[derive(Arbitrary, Debug)]
enum Text {
    Known(u8),
    Raw(Vec<u8>),
    Null,
}

impl Text {
    fn c_string(&self, known: &[&str]) -> Option<CString> {
        match self {
            Text::Known(i) => Some(CString::new(known[*i as usize % known.len()]).unwrap()),
            Text::Raw(bytes) => {
                let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
                Some(CString::new(&bytes[..end]).unwrap())
            }
            Text::Null => None,
        }
    }
}

fn ptr(c: &Option<CString>) -> *const c_char {
    c.as_ref().map_or(null(), |c| c.as_ptr())
}

#[derive(Arbitrary, Debug)]
struct HostIn {
    address: Text,
    limit: Option<u8>,
}

#[derive(Arbitrary, Debug)]
struct ClusterIn {
    name: Text,
    default_limit: Option<u32>,
    hosts: Vec<HostIn>,
    extra_field: bool,
}

/// Configuration JSON: built from parts (mostly valid, so reloads get exercised), or raw bytes.
#[derive(Arbitrary, Debug)]
enum ConfigIn {
    Built(Vec<ClusterIn>),
    Raw(Vec<u8>),
    Null,
}

impl ConfigIn {
    fn c_string(&self) -> Option<CString> {
        match self {
            ConfigIn::Built(clusters) => {
                let clusters: Vec<_> = clusters
                    .iter()
                    .map(|c| {
                        let name = c.name.c_string(&NAMES).unwrap_or_default();
                        let mut v = serde_json::json!({
                            "name": String::from_utf8_lossy(name.as_bytes()),
                            "hosts": c.hosts.iter().map(|h| {
                                let a = h.address.c_string(&ADDRS).unwrap_or_default();
                                let mut o = serde_json::json!({"address": String::from_utf8_lossy(a.as_bytes())});
                                if let Some(l) = h.limit { o["max_connections"] = l.into(); }
                                o
                            }).collect::<Vec<_>>(),
                        });
                        if let Some(l) = c.default_limit {
                            v["max_connections_per_host"] = (l % 8).into();
                        }
                        if c.extra_field {
                            v["max_connection"] = 1.into();
                        }
                        v
                    })
                    .collect();
                Some(CString::new(serde_json::json!({ "clusters": clusters }).to_string()).unwrap())
            }
            ConfigIn::Raw(bytes) => {
                let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
                Some(CString::new(&bytes[..end]).unwrap())
            }
            ConfigIn::Null => None,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    SetDefaultLimit {
        cluster: Text,
        limit: u32,
    },
    SetHosts {
        cluster: Text,
        hosts: Vec<HostIn>,
        null_array: bool,
    },
    Acquire {
        cluster: Text,
    },
    AcquireHost {
        cluster: Text,
        address: Text,
    },
    Release {
        index: u8,
    },
    PermitText {
        index: u8,
        len: u8,
        cluster: bool,
    },
    Export {
        len: u16,
        json: bool,
    },
    ApplyConfig {
        config: ConfigIn,
    },
    ConfigError {
        config: ConfigIn,
        len: u8,
    },
    ResultStr {
        code: u32,
    },
    Check,
    ClusterGet {
        cluster: Text,
    },
    ClusterAcquire {
        index: u8,
    },
    ClusterFree {
        index: u8,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    config: ConfigIn,
    ops: Vec<Op>,
}

/// `WSCAP_FUZZ_TRACE=1 fuzz/target/.../api FILE...` prints each call and its result, to see what
/// a corpus reaches.
fn trace(what: &str, r: R) {
    static ON: OnceLock<bool> = OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("WSCAP_FUZZ_TRACE").is_some()) {
        eprintln!("trace {what} -> {r:?}");
    }
}

/// What out-params hold before a call: a failing call must leave it there.
fn sentinel<T>() -> *mut T {
    std::ptr::without_provenance_mut(0x5a5a_5a5a)
}

struct Held {
    permit: *mut wscap_permit,
    cluster: String,
    host: String,
}

/// Calls a text entry point with a buffer of `len` bytes and checks the buffer convention.
fn text_call(len: usize, f: impl Fn(*mut c_char, usize, *mut usize) -> R) -> (R, Option<String>) {
    const FILL: c_char = 0x5a;
    let mut buf = vec![FILL; len + 1];
    let mut n = usize::MAX;
    let r = f(
        if len == 0 {
            null_mut()
        } else {
            buf.as_mut_ptr()
        },
        len,
        &mut n,
    );
    match r {
        R::Ok => {
            assert!(n < len, "out_n {n} with len {len}");
            assert_eq!(buf[n], 0, "not NUL-terminated");
            assert!(buf[..n].iter().all(|&b| b != 0), "interior NUL");
            assert!(
                buf[n + 1..].iter().all(|&b| b == FILL),
                "wrote past the text"
            );
            let bytes: Vec<u8> = buf[..n].iter().map(|&b| b as u8).collect();
            (
                r,
                Some(String::from_utf8(bytes).expect("exports are UTF-8")),
            )
        }
        R::BufferTooSmall => {
            assert!(n > len, "too small but needs {n} <= {len}");
            assert!(
                buf.iter().all(|&b| b == FILL),
                "wrote into a too-small buffer"
            );
            (r, None)
        }
        other => {
            assert_eq!(n, usize::MAX, "out_n written on {other:?}");
            (r, None)
        }
    }
}

fn full_text(f: impl Fn(*mut c_char, usize, *mut usize) -> R) -> String {
    let mut len = 0;
    loop {
        match text_call(len, &f) {
            (R::Ok, Some(s)) => return s,
            (R::BufferTooSmall, _) => {
                let mut n = 0;
                assert_eq!(f(null_mut(), 0, &mut n), R::BufferTooSmall);
                len = n;
            }
            (other, _) => panic!("export failed: {other:?}"),
        }
    }
}

/// The JSON export must match what this run holds: per host, `active` = permits held on it.
fn check_counts(reg: *const wscap_registry, held: &[Held], after_admission: Option<(&str, &str)>) {
    let json = full_text(|b, l, n| wscap_export_json(reg, b, l, n));
    let doc: serde_json::Value = serde_json::from_str(&json).expect("export is JSON");
    let mut want: HashMap<(&str, &str), u64> = HashMap::new();
    for h in held {
        *want
            .entry((h.cluster.as_str(), h.host.as_str()))
            .or_default() += 1;
    }
    let mut seen = 0;
    for c in doc["clusters"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        for h in c["hosts"].as_array().unwrap() {
            let addr = h["address"].as_str().unwrap();
            let active = h["active"].as_u64().unwrap();
            let expected = want.get(&(name, addr)).copied().unwrap_or(0);
            assert_eq!(active, expected, "{name}/{addr}: {json}");
            seen += expected;
            if after_admission == Some((name, addr)) {
                assert!(
                    active <= h["limit"].as_u64().unwrap(),
                    "over the limit: {json}"
                );
            }
            if h["state"] == "draining" {
                assert!(active > 0, "an empty draining host is still listed: {json}");
            }
        }
    }
    assert_eq!(
        seen,
        held.len() as u64,
        "permits on hosts the export does not list: {json}"
    );
}

fn permit_text(p: *const wscap_permit, cluster: bool) -> String {
    full_text(|b, l, n| {
        if cluster {
            wscap_permit_cluster(p, b, l, n)
        } else {
            wscap_permit_host(p, b, l, n)
        }
    })
}

fn admitted(r: R, out: *mut wscap_permit, held: &mut Vec<Held>, reg: *const wscap_registry) {
    if r == R::Ok {
        assert!(!out.is_null() && out != sentinel());
        let h = Held {
            permit: out,
            cluster: permit_text(out, true),
            host: permit_text(out, false),
        };
        held.push(h);
        let last = held.last().unwrap();
        check_counts(reg, held, Some((&last.cluster, &last.host)));
    } else {
        assert_eq!(out, sentinel(), "out written on {r:?}");
    }
}

fn run(input: Input) {
    let config = input.config.c_string();
    let mut reg: *mut wscap_registry = sentinel();
    let r = wscap_registry_new(ptr(&config), &mut reg);
    trace("registry_new", r);
    match r {
        R::Ok => {}
        R::InvalidConfig | R::InvalidUtf8 => {
            assert_eq!(reg, sentinel(), "out written on {r:?}");
            let (r, msg) = text_call(4096, |b, l, n| wscap_config_error(ptr(&config), b, l, n));
            assert_eq!(r, R::Ok);
            assert!(!msg.unwrap().is_empty(), "refused without a reason");
            return;
        }
        other => panic!("wscap_registry_new: {other:?}"),
    }
    let mut held: Vec<Held> = Vec::new();
    let mut handles: Vec<*mut wscap_cluster> = Vec::new();
    for op in input.ops.into_iter().take(256) {
        match op {
            Op::SetDefaultLimit { cluster, limit } => {
                let c = cluster.c_string(&NAMES);
                let limit = if limit % 4 == 0 { limit } else { limit % 8 };
                let r = wscap_set_default_limit(reg, ptr(&c), limit);
                trace("set_default_limit", r);
                assert!(
                    matches!(
                        r,
                        R::Ok
                            | R::NullArgument
                            | R::InvalidUtf8
                            | R::InvalidClusterName
                            | R::LimitTooLarge
                    ),
                    "{r:?}"
                );
            }
            Op::SetHosts {
                cluster,
                hosts,
                null_array,
            } => {
                let c = cluster.c_string(&NAMES);
                let addrs: Vec<_> = hosts.iter().map(|h| h.address.c_string(&ADDRS)).collect();
                let arr: Vec<wscap_host> = hosts
                    .iter()
                    .zip(&addrs)
                    .map(|(h, a)| wscap_host {
                        address: ptr(a),
                        max_connections: h.limit.map_or(0, u32::from),
                        has_max_connections: u8::from(h.limit.is_some()),
                    })
                    .collect();
                let mut change = wscap_membership_change {
                    added: usize::MAX,
                    ..Default::default()
                };
                let arr_ptr = if null_array { null() } else { arr.as_ptr() };
                let r = wscap_set_hosts(reg, ptr(&c), arr_ptr, arr.len(), &mut change);
                trace("set_hosts", r);
                assert!(
                    matches!(
                        r,
                        R::Ok
                            | R::NullArgument
                            | R::InvalidUtf8
                            | R::InvalidClusterName
                            | R::InvalidAddress
                    ),
                    "{r:?}"
                );
                if r != R::Ok {
                    assert_eq!(change.added, usize::MAX, "out_change written on {r:?}");
                }
                check_counts(reg, &held, None);
            }
            Op::Acquire { cluster } => {
                let c = cluster.c_string(&NAMES);
                let mut out: *mut wscap_permit = sentinel();
                let r = wscap_acquire(reg, ptr(&c), &mut out);
                trace("acquire", r);
                assert!(
                    matches!(
                        r,
                        R::Ok
                            | R::NullArgument
                            | R::InvalidUtf8
                            | R::UnknownCluster
                            | R::NoHosts
                            | R::NoCapacity
                    ),
                    "{r:?}"
                );
                admitted(r, out, &mut held, reg);
            }
            Op::AcquireHost { cluster, address } => {
                let (c, a) = (cluster.c_string(&NAMES), address.c_string(&ADDRS));
                let mut out: *mut wscap_permit = sentinel();
                let r = wscap_acquire_host(reg, ptr(&c), ptr(&a), &mut out);
                trace("acquire_host", r);
                assert!(
                    matches!(
                        r,
                        R::Ok
                            | R::NullArgument
                            | R::InvalidUtf8
                            | R::InvalidAddress
                            | R::UnknownCluster
                            | R::UnknownHost
                            | R::Draining
                            | R::NoCapacity
                    ),
                    "{r:?}"
                );
                admitted(r, out, &mut held, reg);
            }
            Op::Release { index } => {
                if held.is_empty() {
                    wscap_permit_release(null_mut());
                } else {
                    let h = held.swap_remove(index as usize % held.len());
                    wscap_permit_release(h.permit);
                    check_counts(reg, &held, None);
                }
            }
            Op::PermitText {
                index,
                len,
                cluster,
            } => {
                if let Some(h) = held.get(index as usize % held.len().max(1)) {
                    let p = h.permit;
                    let (r, s) = text_call(len as usize, |b, l, n| {
                        if cluster {
                            wscap_permit_cluster(p, b, l, n)
                        } else {
                            wscap_permit_host(p, b, l, n)
                        }
                    });
                    assert!(matches!(r, R::Ok | R::BufferTooSmall), "{r:?}");
                    if let Some(s) = s {
                        assert_eq!(&s, if cluster { &h.cluster } else { &h.host });
                    }
                }
            }
            Op::Export { len, json } => {
                let (r, _) = text_call(len as usize, |b, l, n| {
                    if json {
                        wscap_export_json(reg, b, l, n)
                    } else {
                        wscap_export_prometheus(reg, b, l, n)
                    }
                });
                assert!(matches!(r, R::Ok | R::BufferTooSmall), "{r:?}");
            }
            Op::ApplyConfig { config } => {
                let c = config.c_string();
                let before = full_text(|b, l, n| wscap_export_json(reg, b, l, n));
                let r = wscap_registry_apply_config(reg, ptr(&c));
                trace("apply_config", r);
                let (er, msg) = text_call(4096, |b, l, n| wscap_config_error(ptr(&c), b, l, n));
                assert_eq!(er, R::Ok);
                match r {
                    R::Ok => assert_eq!(msg.as_deref(), Some("")),
                    R::InvalidConfig | R::InvalidUtf8 => {
                        assert!(!msg.unwrap().is_empty());
                        let after = full_text(|b, l, n| wscap_export_json(reg, b, l, n));
                        assert_eq!(before, after, "a refused config changed the registry");
                    }
                    R::NullArgument => assert!(c.is_none()),
                    other => panic!("apply_config: {other:?}"),
                }
                check_counts(reg, &held, None);
            }
            Op::ConfigError { config, len } => {
                let c = config.c_string();
                let (r, _) =
                    text_call(len as usize, |b, l, n| wscap_config_error(ptr(&c), b, l, n));
                assert!(matches!(r, R::Ok | R::BufferTooSmall), "{r:?}");
            }
            Op::ResultStr { code } => {
                let p = wscap_result_str(code);
                assert!(!p.is_null());
                // SAFETY: documented as a static NUL-terminated string.
                let s = unsafe { CStr::from_ptr(p) };
                assert!(s.to_str().unwrap().contains(": "));
            }
            Op::Check => check_counts(reg, &held, None),
            Op::ClusterGet { cluster } => {
                let c = cluster.c_string(&NAMES);
                let mut out: *mut wscap_cluster = sentinel();
                let r = wscap_cluster_get(reg, ptr(&c), &mut out);
                trace("cluster_get", r);
                assert!(
                    matches!(
                        r,
                        R::Ok | R::NullArgument | R::InvalidUtf8 | R::InvalidClusterName
                    ),
                    "{r:?}"
                );
                if r == R::Ok {
                    handles.push(out);
                } else {
                    assert_eq!(out, sentinel(), "out written on {r:?}");
                }
            }
            Op::ClusterAcquire { index } => {
                if let Some(&c) = handles.get(index as usize % handles.len().max(1)) {
                    let mut out: *mut wscap_permit = sentinel();
                    let r = wscap_cluster_acquire(c, &mut out);
                    trace("cluster_acquire", r);
                    assert!(matches!(r, R::Ok | R::NoHosts | R::NoCapacity), "{r:?}");
                    admitted(r, out, &mut held, reg);
                }
            }
            Op::ClusterFree { index } => {
                if handles.is_empty() {
                    wscap_cluster_free(null_mut());
                } else {
                    wscap_cluster_free(handles.swap_remove(index as usize % handles.len()));
                }
            }
        }
    }
    // Half the permits outlive the registry.
    let keep = held.len() / 2;
    for h in held.drain(keep..) {
        wscap_permit_release(h.permit);
    }
    check_counts(reg, &held, None);
    let json = full_text(|b, l, n| wscap_export_json(reg, b, l, n));
    wscap_registry_free(reg);
    // Cluster handles outlive the registry too.
    for c in handles.drain(..) {
        let mut out: *mut wscap_permit = sentinel();
        if wscap_cluster_acquire(c, &mut out) == R::Ok {
            wscap_permit_release(out);
        }
        wscap_cluster_free(c);
    }
    for h in held.drain(..) {
        assert!(!permit_text(h.permit, false).is_empty());
        wscap_permit_release(h.permit);
    }
    let _ = json;
}

fuzz_target!(|data: &[u8]| {
    if let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) {
        run(input);
    }
});
