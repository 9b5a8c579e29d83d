//! wscap-hookcost: how many instructions wscap's hooks execute per WebSocket handshake, per
//! WebSocket frame and per plain HTTP request. Deterministic (valgrind's callgrind counts
//! instructions; no clock is read), so a test can hold it to a budget.
//!
//! ```text
//! wscap-hookcost [--so target/release/libwscap.so] [--json]     # measure (runs valgrind)
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

#![allow(unsafe_code)]

use std::cell::Cell;
use std::ffi::{c_char, c_void, CString};
use std::path::{Path, PathBuf};
use std::process::Command;

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
    let host = std::ptr::dangling_mut::<c_void>(); // config and LB handles: never dereferenced
    let b = |s: &'static [u8]| Buf::of(s);
    // SAFETY: the hooks are called in Envoy's order with the handles they returned; every
    // stream handle is a live `Stream` for the duration of its hooks.
    unsafe {
        if init().is_null() {
            return Err("envoy_dynamic_module_on_program_init refused".into());
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
fn callgrind(me: &Path, so: &Path, scenario: &str, n: usize) -> Result<u64, String> {
    let out = std::env::temp_dir().join(format!(
        "wscap-hookcost-{}-{scenario}-{n}.callgrind",
        std::process::id()
    ));
    let run = Command::new("valgrind")
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

/// Per-operation instructions of each scenario: (scenario, per op, ops differenced).
fn measure(so: &Path) -> Result<Vec<(&'static str, f64, usize)>, String> {
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
        let a = callgrind(&me, so, scenario, n1)?;
        let b = callgrind(&me, so, scenario, n2)?;
        let per = (b as f64 - a as f64) / (n2 - n1) as f64;
        out.push((scenario, per, n2 - n1));
    }
    Ok(out)
}

fn usage() -> ! {
    eprintln!(
        "usage: wscap-hookcost [--so PATH] [--json]\n       wscap-hookcost --drive SO handshake|frame|plain|none N"
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
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--so" => so = Some(PathBuf::from(it.next().unwrap_or_else(|| usage()))),
            "--json" => json = true,
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
    match measure(&so) {
        Ok(rows) => {
            if json {
                let obj: serde_json::Map<String, serde_json::Value> = rows
                    .iter()
                    .map(|(s, per, _)| ((*s).to_string(), serde_json::json!(per)))
                    .collect();
                println!("{}", serde_json::Value::Object(obj));
            } else {
                for (s, per, n) in rows {
                    println!("{s}: {per:.1} instructions per op (difference of {n} ops)");
                }
            }
        }
        Err(e) => {
            eprintln!("wscap-hookcost: {e}");
            std::process::exit(1);
        }
    }
}
