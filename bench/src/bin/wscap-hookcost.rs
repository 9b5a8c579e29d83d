//! wscap-hookcost: how many instructions wscap's hooks execute per WebSocket handshake, per
//! WebSocket frame and per plain HTTP request. Deterministic (valgrind's callgrind counts
//! instructions; no clock is read), so a test can hold it to a budget.
//!
//! ```text
//! wscap-hookcost [--so target/release/libwscap.so] [--json]     # measure (runs valgrind)
//! wscap-hookcost --global [--so ...] [--json]                   # local and global mode, ratio
//! wscap-hookcost --drive SO handshake|frame|plain|none N        # what valgrind runs
//! ```
//!
//! `--drive` is a fake Envoy host: it `dlopen`s the *release* `libwscap.so` (a debug build is
//! refused) and calls its exported Envoy entry points (`envoy_dynamic_module_on_*`) the way Envoy
//! 1.40 does for each kind of stream, answering the module's `envoy_dynamic_module_callback_*`
//! imports from this executable (exported with `-rdynamic`, see `build.rs`): a 3-pod cluster
//! `pods`, request headers `upgrade: websocket` + `connection: Upgrade` (or none), `:status 101`
//! (or `200`). Per stream: `http_filter_new`, `request_headers`, the LB's `choose_host`,
//! `response_headers`, `stream_complete`, `http_filter_destroy`; per frame, one `request_body`
//! and one `response_body` (a frame crosses Envoy in both directions, echoed).
//!
//! The measuring mode runs `valgrind --tool=callgrind` over `--drive` with collection toggled
//! **on** inside the module's per-stream hooks and **off** again inside the host callbacks they
//! call (`--toggle-collect` on both name patterns), so only instructions of `libwscap.so` count;
//! it runs each scenario with two stream counts and reports the difference per stream, which
//! cancels set-up (config parsing, first-use initialisation).
//!
//! `--global` measures every scenario twice: in local mode as above, then in global mode while
//! the shares suffice. For the global runs it starts a real `redis-server` (testkit's
//! [`wscap_testkit::RedisServer`], killed by PID when this process is done) and passes `--drive`
//! a bootstrap extension config (`WSCAP_HOOKCOST_BOOTSTRAP_CONFIG`: that Redis, default
//! `refresh_ms` 1000 and lease, `headroom` `GLOBAL_HEADROOM` (16), a key prefix of its own per
//! run). `--drive` then creates the bootstrap extension through the module's exported
//! `envoy_dynamic_module_on_bootstrap_extension_config_new`, which starts the coordinator
//! thread, and waits, outside the measured region, until the ledger in Redis shows this
//! instance's share of each of the 3 pods at `headroom` or more (the streams run one at a time,
//! so at most one slot per pod is ever live: no stream needs a borrow; a stream that did would
//! be paused, and `--drive` fails on any status but Continue). The coordinator thread keeps
//! running its refresh rounds while the streams are driven; its instructions are not counted:
//! callgrind keeps the collection state per thread, and that thread never enters a toggled
//! function. The output gives both modes and global / local per scenario.

#![allow(unsafe_code)]

use std::cell::Cell;
use std::ffi::{c_char, c_void, CString};
use std::path::{Path, PathBuf};
use std::process::Command;

use wscap_testkit::RedisServer;

#[repr(C)]
#[derive(Clone, Copy)]
struct Buf {
    ptr: *const c_char,
    len: usize,
}

impl Buf {
    fn of(s: &'static [u8]) -> Buf {
        Buf {
            ptr: s.as_ptr().cast(),
            len: s.len(),
        }
    }
    /// # Safety
    /// `ptr` is NULL or points at `len` readable bytes for the call.
    unsafe fn bytes<'a>(self) -> &'a [u8] {
        if self.ptr.is_null() || self.len == 0 {
            &[]
        } else {
            // SAFETY: the caller's contract.
            unsafe { std::slice::from_raw_parts(self.ptr.cast(), self.len) }
        }
    }
}

const PODS: [&[u8]; 3] = [b"10.0.0.1:8080", b"10.0.0.2:8080", b"10.0.0.3:8080"];

/// One fake stream, the `filter_envoy` (and LB context) handle the module is given.
struct Stream {
    upgrade: bool,
    /// Index into `PODS` of the override host the filter set, if any.
    override_host: Cell<Option<usize>>,
    /// Pod the LB picked.
    picked: Cell<usize>,
}

/// # Safety
/// `p` is a `*mut Stream` this program passed to the module.
unsafe fn stream<'a>(p: *mut c_void) -> &'a Stream {
    // SAFETY: the caller's contract; streams outlive every hook call made for them.
    unsafe { &*p.cast::<Stream>() }
}

/// # Safety
/// `out` is NULL or writable.
unsafe fn put(out: *mut Buf, s: &'static [u8]) {
    if !out.is_null() {
        // SAFETY: the caller's contract.
        unsafe { *out = Buf::of(s) }
    }
}

// ---- the callbacks the module imports (what Envoy exports) --------------------------------------

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_log(_level: i32, _message: Buf) {}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_log_enabled(_level: i32) -> bool {
    false
}
#[no_mangle]
unsafe extern "C" fn envoy_dynamic_module_callback_http_get_header(
    filter_envoy: *mut c_void,
    header_type: i32,
    name: Buf,
    out: *mut Buf,
    index: usize,
    count_out: *mut usize,
) -> bool {
    // SAFETY: the module passes back the handle it was given, and a valid name buffer.
    let (s, name) = unsafe { (stream(filter_envoy), name.bytes()) };
    let value: Option<&'static [u8]> = match (header_type, name) {
        (0, b"upgrade") if s.upgrade => Some(b"websocket"),
        (0, b"connection") if s.upgrade => Some(b"Upgrade"),
        (2, b":status") => Some(if s.upgrade { b"101" } else { b"200" }),
        _ => None,
    };
    if !count_out.is_null() {
        // SAFETY: non-null out-pointer from the module.
        unsafe { *count_out = usize::from(value.is_some()) }
    }
    match value {
        Some(v) if index == 0 => {
            // SAFETY: out-pointer from the module.
            unsafe { put(out, v) };
            true
        }
        _ => false,
    }
}
#[no_mangle]
unsafe extern "C" fn envoy_dynamic_module_callback_http_set_upstream_override_host(
    filter_envoy: *mut c_void,
    host: Buf,
    _strict: bool,
) -> bool {
    // SAFETY: the module passes back the handle it was given, and a valid buffer.
    let (s, host) = unsafe { (stream(filter_envoy), host.bytes()) };
    s.override_host.set(PODS.iter().position(|p| *p == host));
    true
}
#[no_mangle]
unsafe extern "C" fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
    filter_envoy: *mut c_void,
    _attribute: i32,
    out: *mut Buf,
) -> bool {
    // SAFETY: the module passes back the handle it was given.
    let s = unsafe { stream(filter_envoy) };
    // SAFETY: out-pointer from the module.
    unsafe { put(out, PODS[s.picked.get()]) };
    true
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_send_response(
    _: *mut c_void,
    _: u32,
    _: *const c_void,
    _: usize,
    _: Buf,
    _: Buf,
) {
}
// Callbacks added since this fake host was written: the stream is routed to `pods` (no
// per-route config); the bootstrap's counters/histograms and cluster lifecycle are inert; every
// host is healthy.
#[no_mangle]
unsafe extern "C" fn envoy_dynamic_module_callback_http_get_cluster_name(
    _: *mut c_void,
    out: *mut Buf,
) -> bool {
    // SAFETY: out-pointer from the module.
    unsafe { put(out, b"pods") };
    true
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_get_most_specific_route_config(
    _: *mut c_void,
) -> *const c_void {
    std::ptr::null()
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_bootstrap_extension_config_define_counter(
    _: *mut c_void,
    _: Buf,
    _: *const Buf,
    _: usize,
    _: *mut usize,
) -> i32 {
    1
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_bootstrap_extension_config_increment_counter(
    _: *mut c_void,
    _: usize,
    _: *const Buf,
    _: usize,
    _: u64,
) -> i32 {
    1
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_bootstrap_extension_config_define_histogram(
    _: *mut c_void,
    _: Buf,
    _: *const Buf,
    _: usize,
    _: *mut usize,
) -> i32 {
    1
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_bootstrap_extension_config_record_histogram_value(
    _: *mut c_void,
    _: usize,
    _: *const Buf,
    _: usize,
    _: u64,
) -> i32 {
    1
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_bootstrap_extension_enable_cluster_lifecycle(
    _: *mut c_void,
) -> bool {
    false
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_lb_get_host_health(
    _: *mut c_void,
    _: u32,
    _: usize,
) -> i32 {
    2
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_send_response_headers(
    _: *mut c_void,
    _: *const c_void,
    _: usize,
    _: bool,
) {
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_send_response_data(
    _: *mut c_void,
    _: Buf,
    _: bool,
) {
}
// A scheduler (never fired): every upgraded stream registers one for chosen closes, so its
// cost is in the handshake's count.
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_scheduler_new(
    _: *mut c_void,
) -> *mut c_void {
    std::ptr::NonNull::<u8>::dangling().as_ptr().cast()
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_scheduler_commit(_: *mut c_void, _: u64) {}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_scheduler_delete(_: *mut c_void) {}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_continue_decoding(_: *mut c_void) {}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_reset_stream(
    _: *mut c_void,
    _: i32,
    _: Buf,
) {
}
#[no_mangle]
unsafe extern "C" fn envoy_dynamic_module_callback_http_filter_config_define_counter(
    _: *mut c_void,
    _: Buf,
    _: *const Buf,
    _: usize,
    id_out: *mut usize,
) -> i32 {
    if !id_out.is_null() {
        // SAFETY: non-null out-pointer from the module.
        unsafe { *id_out = 1 }
    }
    0
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_increment_counter(
    _: *mut c_void,
    _: usize,
    _: *const Buf,
    _: usize,
    _: u64,
) -> i32 {
    0
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_bootstrap_extension_config_define_gauge(
    _: *mut c_void,
    _: Buf,
    _: *const Buf,
    _: usize,
    _: *mut usize,
) -> i32 {
    1
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_bootstrap_extension_config_set_gauge(
    _: *mut c_void,
    _: usize,
    _: *const Buf,
    _: usize,
    _: u64,
) -> i32 {
    1
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_bootstrap_extension_register_admin_handler(
    _: *mut c_void,
    _: Buf,
    _: Buf,
    _: bool,
    _: bool,
) -> bool {
    false
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_bootstrap_extension_admin_set_response(
    _: *mut c_void,
    _: Buf,
) {
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_bootstrap_extension_config_signal_init_complete(
    _: *mut c_void,
) {
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_bootstrap_extension_timer_new(
    _: *mut c_void,
) -> *mut c_void {
    std::ptr::null_mut()
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_bootstrap_extension_timer_enable(
    _: *mut c_void,
    _: u64,
) {
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_bootstrap_extension_timer_delete(_: *mut c_void) {}
#[no_mangle]
unsafe extern "C" fn envoy_dynamic_module_callback_lb_get_cluster_name(
    _: *mut c_void,
    out: *mut Buf,
) {
    // SAFETY: out-pointer from the module.
    unsafe { put(out, b"pods") }
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_lb_get_priority_set_size(_: *mut c_void) -> usize {
    1
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_lb_get_hosts_count(_: *mut c_void, p: u32) -> usize {
    if p == 0 {
        PODS.len()
    } else {
        0
    }
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_lb_get_healthy_hosts_count(
    _: *mut c_void,
    p: u32,
) -> usize {
    if p == 0 {
        PODS.len()
    } else {
        0
    }
}
/// # Safety
/// `out` is NULL or writable.
unsafe fn host_address(p: u32, i: usize, out: *mut Buf) -> bool {
    match PODS.get(i).filter(|_| p == 0) {
        Some(a) => {
            // SAFETY: out-pointer from the module.
            unsafe { put(out, a) };
            true
        }
        None => false,
    }
}
// The two address callbacks share a plain helper: one exported callback calling another would
// toggle callgrind's collection back on inside it.
#[no_mangle]
unsafe extern "C" fn envoy_dynamic_module_callback_lb_get_host_address(
    _: *mut c_void,
    p: u32,
    i: usize,
    out: *mut Buf,
) -> bool {
    // SAFETY: forwarded as received.
    unsafe { host_address(p, i, out) }
}
#[no_mangle]
unsafe extern "C" fn envoy_dynamic_module_callback_lb_get_healthy_host_address(
    _: *mut c_void,
    p: u32,
    i: usize,
    out: *mut Buf,
) -> bool {
    // SAFETY: forwarded as received.
    unsafe { host_address(p, i, out) }
}
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_lb_get_host_metadata_number(
    _: *mut c_void,
    _: u32,
    _: usize,
    _: Buf,
    _: Buf,
    _: *mut f64,
) -> bool {
    false
}
#[no_mangle]
unsafe extern "C" fn envoy_dynamic_module_callback_lb_context_get_override_host(
    context: *mut c_void,
    out: *mut Buf,
    strict_out: *mut bool,
) -> bool {
    // SAFETY: the context handle is the stream this program passed to `choose_host`.
    let s = unsafe { stream(context) };
    match s.override_host.get() {
        Some(i) => {
            // SAFETY: out-pointers from the module.
            unsafe {
                put(out, PODS[i]);
                if !strict_out.is_null() {
                    *strict_out = true;
                }
            }
            true
        }
        None => false,
    }
}

// ---- the driver --------------------------------------------------------------------------------

type ConfigNew = unsafe extern "C" fn(*mut c_void, Buf, Buf) -> *const c_void;
type New = unsafe extern "C" fn(*const c_void, *mut c_void) -> *const c_void;
type Headers = unsafe extern "C" fn(*mut c_void, *const c_void, bool) -> i32;
type Complete = unsafe extern "C" fn(*mut c_void, *const c_void);
type Destroy = unsafe extern "C" fn(*const c_void);
type Choose =
    unsafe extern "C" fn(*mut c_void, *const c_void, *mut c_void, *mut u32, *mut u32) -> bool;
type Membership = unsafe extern "C" fn(*mut c_void, *const c_void, usize, usize);
type Init = unsafe extern "C" fn() -> *const c_char;
type BootstrapNew = unsafe extern "C" fn(*mut c_void, Buf, Buf) -> *const c_void;

/// Spare share per pod the global runs ask for (`headroom`): more than the streams ever hold
/// at once (one), so none of them needs a borrow.
const GLOBAL_HEADROOM: u32 = 16;

/// One Redis command over a fresh loopback connection (RESP); the reply's bulk strings
/// (an array's elements, or the one bulk string). The driver's own code, outside the module:
/// callgrind does not count it.
fn redis_command(port: u16, args: &[&str]) -> Result<Vec<String>, String> {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))
        .map_err(|e| format!("connect redis 127.0.0.1:{port}: {e}"))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    let mut read_line = |r: &mut BufReader<std::net::TcpStream>| -> Result<String, String> {
        line.clear();
        r.read_line(&mut line).map_err(|e| e.to_string())?;
        Ok(line.trim_end().to_owned())
    };
    let head = read_line(&mut r)?;
    let bulk =
        |r: &mut BufReader<std::net::TcpStream>, h: &str| -> Result<Option<String>, String> {
            let len: i64 = h
                .strip_prefix('$')
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("unexpected redis reply {h:?}"))?;
            if len < 0 {
                return Ok(None);
            }
            let mut b = vec![0; len as usize + 2];
            r.read_exact(&mut b).map_err(|e| e.to_string())?;
            b.truncate(len as usize);
            Ok(Some(String::from_utf8_lossy(&b).into_owned()))
        };
    match head.chars().next() {
        Some('*') => {
            let n: i64 = head[1..]
                .parse()
                .map_err(|_| format!("bad reply {head:?}"))?;
            let mut out = Vec::new();
            for _ in 0..n.max(0) {
                let h = read_line(&mut r)?;
                out.extend(bulk(&mut r, &h)?);
            }
            Ok(out)
        }
        Some('$') => Ok(bulk(&mut r, &head)?.into_iter().collect()),
        Some('+') | Some(':') => Ok(vec![head[1..].to_owned()]),
        _ => Err(format!("redis {args:?}: {head}")),
    }
}

/// Waits until the ledger in the Redis of `bootstrap_config` (a global-mode bootstrap config)
/// shows this process's share of every pod in `PODS` at `headroom` or more, then a little
/// longer (the coordinator raises the local caps right after the ledger granted).
fn wait_for_shares(bootstrap_config: &str) -> Result<(), String> {
    let v: serde_json::Value =
        serde_json::from_str(bootstrap_config).map_err(|e| format!("bootstrap config: {e}"))?;
    let url = v["redis_url"]
        .as_str()
        .ok_or("bootstrap config: no redis_url")?;
    let port: u16 = url
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .ok_or_else(|| format!("no port in {url}"))?;
    let prefix = v["key_prefix"].as_str().unwrap_or("wscap");
    let want = v["headroom"].as_u64().unwrap_or(2);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let mut ok = true;
        for pod in PODS {
            let key = format!("{prefix}:{{pods/{}}}", String::from_utf8_lossy(pod));
            let fields = redis_command(port, &["HGETALL", &key])?;
            let share = fields
                .chunks(2)
                .filter(|kv| kv.len() == 2 && kv[0].starts_with("s:"))
                .filter_map(|kv| kv[1].parse::<u64>().ok())
                .max()
                .unwrap_or(0);
            ok &= share >= want;
        }
        if ok {
            std::thread::sleep(std::time::Duration::from_millis(300));
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "the coordinator claimed no share of {want} on every pod within 60 s ({url}, prefix {prefix})"
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

struct Module(*mut c_void);

impl Module {
    fn open(so: &Path) -> Result<Module, String> {
        let c = CString::new(so.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
        // SAFETY: a valid C string; the module's initialisers are Rust statics (no side effects).
        let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if h.is_null() {
            // SAFETY: dlerror returns NULL or a C string valid until the next dl call.
            let e = unsafe { libc::dlerror() };
            let msg = if e.is_null() {
                "unknown error".into()
            } else {
                // SAFETY: non-null C string from dlerror.
                unsafe { std::ffi::CStr::from_ptr(e) }
                    .to_string_lossy()
                    .into_owned()
            };
            return Err(format!("dlopen {}: {msg}", so.display()));
        }
        Ok(Module(h))
    }

    /// # Safety
    /// `T` is the function pointer type of the symbol `name`.
    unsafe fn sym<T: Copy>(&self, name: &str) -> Result<T, String> {
        let c = CString::new(name).map_err(|e| e.to_string())?;
        // SAFETY: valid handle and C string.
        let p = unsafe { libc::dlsym(self.0, c.as_ptr()) };
        if p.is_null() {
            return Err(format!("libwscap.so does not export {name}"));
        }
        // SAFETY: the caller's contract (`T` is a function pointer of the symbol's signature).
        Ok(unsafe { std::mem::transmute_copy::<*mut c_void, T>(&p) })
    }
}

fn drive(so: &Path, scenario: &str, n: usize) -> Result<(), String> {
    match wscap_e2e::module_profile(so)? {
        "release" => {}
        p => return Err(format!("{} is a {p} build: only a release module is measured (`cargo build --release -p wscap-envoy`)", so.display())),
    }
    let m = Module::open(so)?;
    // SAFETY: each symbol is looked up with the signature the module exports it with
    // (module/src/abi/{mod,filter,lb}.rs).
    let (
        init,
        fcfg_new,
        lcfg_new,
        lb_new,
        lb_sync,
        f_new,
        req_h,
        resp_h,
        req_b,
        resp_b,
        complete,
        destroy,
        choose,
    ) = unsafe {
        (
            m.sym::<Init>("envoy_dynamic_module_on_program_init")?,
            m.sym::<ConfigNew>("envoy_dynamic_module_on_http_filter_config_new")?,
            m.sym::<ConfigNew>("envoy_dynamic_module_on_lb_config_new")?,
            m.sym::<New>("envoy_dynamic_module_on_lb_new")?,
            m.sym::<Membership>("envoy_dynamic_module_on_lb_on_host_membership_update")?,
            m.sym::<New>("envoy_dynamic_module_on_http_filter_new")?,
            m.sym::<Headers>("envoy_dynamic_module_on_http_filter_request_headers")?,
            m.sym::<Headers>("envoy_dynamic_module_on_http_filter_response_headers")?,
            m.sym::<Headers>("envoy_dynamic_module_on_http_filter_request_body")?,
            m.sym::<Headers>("envoy_dynamic_module_on_http_filter_response_body")?,
            m.sym::<Complete>("envoy_dynamic_module_on_http_filter_stream_complete")?,
            m.sym::<Destroy>("envoy_dynamic_module_on_http_filter_destroy")?,
            m.sym::<Choose>("envoy_dynamic_module_on_lb_choose_host")?,
        )
    };
    let filter_config: &'static [u8] = match std::env::var("WSCAP_HOOKCOST_FILTER_CONFIG") {
        Ok(c) => Box::leak(c.into_bytes().into_boxed_slice()),
        Err(_) => {
            br#"{"cluster": "pods", "max_connections_per_host": 1000000, "retry_after_seconds": 5}"#
        }
    };
    // Global mode, when set: the bootstrap extension's config (with `redis_url`).
    let bootstrap_config = std::env::var("WSCAP_HOOKCOST_BOOTSTRAP_CONFIG").ok();
    let host = std::ptr::dangling_mut::<c_void>(); // config and LB handles: never dereferenced
    let b = |s: &'static [u8]| Buf::of(s);
    // SAFETY: the hooks are called in Envoy's order with the handles they returned; every
    // stream handle is a live `Stream` for the duration of its hooks.
    unsafe {
        if init().is_null() {
            return Err("envoy_dynamic_module_on_program_init refused".into());
        }
        // Global mode: the bootstrap extension comes first, as in Envoy; its config starts the
        // coordinator thread (which caps every host at 0 until the ledger grants a share).
        if let Some(bcfg) = &bootstrap_config {
            // The signature module/src/abi/bootstrap.rs exports it with; the config bytes are
            // leaked (the module may keep pointers into them for the process's life).
            let bnew =
                m.sym::<BootstrapNew>("envoy_dynamic_module_on_bootstrap_extension_config_new")?;
            let bytes: &'static [u8] = Box::leak(bcfg.clone().into_bytes().into_boxed_slice());
            if bnew(host, b(b"wscap"), b(bytes)).is_null() {
                return Err("the bootstrap extension config was refused".into());
            }
        }
        let fcfg = fcfg_new(
            host,
            b(b"wscap"),
            // `WSCAP_HOOKCOST_FILTER_CONFIG` measures another filter config (e.g. with the queue).
            b(filter_config),
        );
        if fcfg.is_null() {
            return Err("the filter config was refused".into());
        }
        let lcfg = lcfg_new(host, b(b"wscap"), b(b"{}"));
        if lcfg.is_null() {
            return Err("the LB config was refused".into());
        }
        let lb = lb_new(lcfg, host);
        if lb.is_null() {
            return Err("lb_new refused".into());
        }
        lb_sync(host, lb, PODS.len(), 0);
        if let Some(bcfg) = &bootstrap_config {
            wait_for_shares(bcfg)?;
        }
        let stream_once = |upgrade: bool, frames: usize| -> Result<(), String> {
            let s = Stream {
                upgrade,
                override_host: Cell::new(None),
                picked: Cell::new(0),
            };
            let sp = std::ptr::from_ref(&s).cast_mut().cast::<c_void>();
            let f = f_new(fcfg, sp);
            if f.is_null() {
                return Err("http_filter_new refused".into());
            }
            let st = req_h(sp, f, false);
            if st != 0 {
                return Err(format!("request_headers returned {st}, not Continue"));
            }
            if upgrade && s.override_host.get().is_none() {
                return Err(
                    "the filter admitted a WebSocket without setting an override host".into(),
                );
            }
            let (mut p, mut i) = (0u32, 0u32);
            if !choose(host, lb, sp, &mut p, &mut i) {
                return Err("choose_host picked no host".into());
            }
            s.picked.set(i as usize);
            resp_h(sp, f, false);
            for _ in 0..frames {
                req_b(sp, f, false);
                resp_b(sp, f, false);
            }
            complete(sp, f);
            destroy(f);
            Ok(())
        };
        match scenario {
            "handshake" => (0..n).try_for_each(|_| stream_once(true, 0))?,
            "plain" => (0..n).try_for_each(|_| stream_once(false, 0))?,
            "frame" => stream_once(true, n)?,
            "none" => {}
            _ => return Err(format!("unknown scenario {scenario:?}")),
        }
    }
    Ok(())
}

/// Instructions counted in one valgrind run of `--drive`.
fn callgrind(
    me: &Path,
    so: &Path,
    scenario: &str,
    n: usize,
    redis: Option<&RedisServer>,
) -> Result<u64, String> {
    let tag = format!(
        "{}-{}-{scenario}-{n}",
        std::process::id(),
        if redis.is_some() { "global" } else { "local" }
    );
    let out = std::env::temp_dir().join(format!("wscap-hookcost-{tag}.callgrind"));
    let mut cmd = Command::new("valgrind");
    cmd.env_remove("WSCAP_HOOKCOST_BOOTSTRAP_CONFIG");
    if let Some(r) = redis {
        // A key prefix of its own per run: no run sees another's ledger.
        cmd.env(
            "WSCAP_HOOKCOST_BOOTSTRAP_CONFIG",
            serde_json::json!({
                "redis_url": r.url(),
                "instance_id": "hookcost",
                "headroom": GLOBAL_HEADROOM,
                "key_prefix": format!("hookcost-{tag}"),
            })
            .to_string(),
        );
    }
    let run = cmd
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg("--collect-atstart=no")
        .arg("--toggle-collect=envoy_dynamic_module_on_http_filter_*")
        .arg("--toggle-collect=envoy_dynamic_module_on_lb_choose_host")
        .arg("--toggle-collect=envoy_dynamic_module_callback_*")
        .arg(me)
        .arg("--drive")
        .arg(so)
        .arg(scenario)
        .arg(n.to_string())
        .output()
        .map_err(|e| format!("valgrind: {e} (install it: scripts/setup)"))?;
    let text = std::fs::read_to_string(&out);
    let _ = std::fs::remove_file(&out);
    if !run.status.success() {
        return Err(format!(
            "valgrind --drive {scenario} {n} failed ({}): {}",
            run.status,
            String::from_utf8_lossy(&run.stderr)
        ));
    }
    let text = text.map_err(|e| format!("{}: {e}", out.display()))?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("totals: ")
                .or_else(|| l.strip_prefix("summary: "))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no totals in the callgrind output of --drive {scenario} {n}"))
}

/// Per-operation instructions of each scenario: (scenario, per op, ops differenced); in global
/// mode with `redis`.
fn measure(
    so: &Path,
    redis: Option<&RedisServer>,
) -> Result<Vec<(&'static str, f64, usize)>, String> {
    match wscap_e2e::module_profile(so)? {
        "release" => {}
        p => {
            return Err(format!(
                "{} is a {p} build: only a release module is measured (`cargo build --release -p wscap-envoy`)",
                so.display()
            ))
        }
    }
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for (scenario, n1, n2) in [
        ("handshake", 100, 1100),
        ("frame", 1000, 11000),
        ("plain", 100, 1100),
    ] {
        let a = callgrind(&me, so, scenario, n1, redis)?;
        let b = callgrind(&me, so, scenario, n2, redis)?;
        let per = (b as f64 - a as f64) / (n2 - n1) as f64;
        out.push((scenario, per, n2 - n1));
    }
    Ok(out)
}

fn usage() -> ! {
    eprintln!(
        "usage: wscap-hookcost [--so PATH] [--global] [--json]\n       wscap-hookcost --drive SO handshake|frame|plain|none N"
    );
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--drive") {
        let [_, so, scenario, n] = args.as_slice() else {
            usage()
        };
        let n: usize = n.parse().unwrap_or_else(|_| usage());
        if let Err(e) = drive(Path::new(so), scenario, n) {
            eprintln!("wscap-hookcost --drive: {e}");
            std::process::exit(1);
        }
        return;
    }
    let mut so: Option<PathBuf> = None;
    let mut json = false;
    let mut global = false;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--so" => so = Some(PathBuf::from(it.next().unwrap_or_else(|| usage()))),
            "--json" => json = true,
            "--global" => global = true,
            _ => usage(),
        }
    }
    let so = match so {
        Some(p) => p,
        None => match wscap_e2e::release_module_dir() {
            Ok(d) => d.join("libwscap.so"),
            Err(e) => {
                eprintln!("wscap-hookcost: {e}");
                std::process::exit(2);
            }
        },
    };
    let fail = |e: String| -> ! {
        eprintln!("wscap-hookcost: {e}");
        std::process::exit(1);
    };
    let rows = measure(&so, None).unwrap_or_else(|e| fail(e));
    let global_rows = if global {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            fail("--global needs redis-server (install it: scripts/setup)".into());
        }
        let redis = RedisServer::start();
        let measured = measure(&so, Some(&redis));
        drop(redis); // killed by PID, also before a failure exits
        Some(measured.unwrap_or_else(|e| fail(e)))
    } else {
        None
    };
    let per = |rows: &[(&'static str, f64, usize)], s: &str| {
        rows.iter().find(|r| r.0 == s).map_or(f64::NAN, |r| r.1)
    };
    if json {
        let obj =
            |rows: &[(&'static str, f64, usize)]| -> serde_json::Map<String, serde_json::Value> {
                rows.iter()
                    .map(|(s, per, _)| ((*s).to_string(), serde_json::json!(per)))
                    .collect()
            };
        let mut top = obj(&rows);
        if let Some(g) = &global_rows {
            let ratio: serde_json::Map<String, serde_json::Value> = rows
                .iter()
                .map(|(s, l, _)| ((*s).to_string(), serde_json::json!(per(g, s) / l)))
                .collect();
            top.insert("global".into(), serde_json::Value::Object(obj(g)));
            top.insert("ratio".into(), serde_json::Value::Object(ratio));
        }
        println!("{}", serde_json::Value::Object(top));
    } else if let Some(g) = &global_rows {
        println!("instructions per op (difference of N ops): local mode | global mode, shares suffice | global / local");
        for (s, l, n) in &rows {
            let gl = per(g, s);
            println!(
                "{s}: {l:.1} | {gl:.1} | {:.4} (difference of {n} ops)",
                gl / l
            );
        }
    } else {
        for (s, per, n) in rows {
            println!("{s}: {per:.1} instructions per op (difference of {n} ops)");
        }
    }
}
