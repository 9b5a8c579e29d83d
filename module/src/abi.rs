//! Hand-written bindings to the Envoy dynamic-module C ABI, as Envoy 1.40.0 implements it
//! (ABI string `v0.2.0`). The only file of the crate with `unsafe`.
//!
//! Three parts:
//! 1. C types and the callbacks wscap imports (only those it calls), each checked against the
//!    symbols the binary exports (`tests/symbols.rs`) and exercised by `tests/smoke.rs`;
//! 2. safe wrappers: handle types that implement the crate's traits
//!    ([`crate::filter::Stream`], [`crate::lb::ClusterView`], [`crate::bootstrap::GaugeSink`]);
//! 3. the hooks Envoy resolves with `dlsym` (every required one of the HTTP filter, the LB
//!    policy and the bootstrap extension). Each hook body runs under [`guard`]: a panic is
//!    caught here, logged, and answered with a fail-closed default; it never unwinds into Envoy.
//!
//! Signatures that differ from the ABI v0.1.0 header found in public indexes:
//! `http_filter_get_attribute_string` writes an envoy buffer (not `char**`, `size_t*`);
//! `on_lb_choose_host` returns `bool` with `(priority, index)` out-params;
//! `http_send_response` takes `(status, headers, n, body buffer, details buffer)` (v0.1.0:
//! `body_ptr, body_length`, register-compatible for the body; the details reach Envoy on 1.40:
//! its log says `local reply with details wscap_no_capacity`);
//! `lb_get_host_metadata_number` indexes *all* hosts of a priority (not the healthy ones).

use std::ffi::{c_char, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::Arc;

use crate::bootstrap::{self, Bootstrap, GaugeSink, Gauges};
use crate::filter::{
    Filter, FilterConfig, FilterMetrics, HeaderKind, HeadersStatus, MetricId, Resume,
};
use crate::global::GlobalBorrower;
use crate::lb::{ClusterView, Lb, RequestView};
use crate::{config, Level, REGISTRY};

// =============================================================================================
// 1. C types and imported callbacks
// =============================================================================================

/// `{const char* ptr; size_t length;}` owned by Envoy, passed by value or written through a
/// pointer.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyBuffer {
    ptr: *const c_char,
    length: usize,
}

impl EnvoyBuffer {
    const EMPTY: EnvoyBuffer = EnvoyBuffer {
        ptr: ptr::null(),
        length: 0,
    };
}

/// `{const char* ptr; size_t length;}` owned by the module; Envoy reads it during the call.
#[repr(C)]
#[derive(Clone, Copy)]
struct ModuleBuffer {
    ptr: *const c_char,
    length: usize,
}

impl ModuleBuffer {
    const EMPTY: ModuleBuffer = ModuleBuffer {
        ptr: ptr::null(),
        length: 0,
    };

    fn of(s: &str) -> Self {
        ModuleBuffer {
            ptr: s.as_ptr().cast(),
            length: s.len(),
        }
    }
}

/// A header the module hands Envoy: key and value, each pointer + length.
#[repr(C)]
struct ModuleHeader {
    key_ptr: *const c_char,
    key_length: usize,
    value_ptr: *const c_char,
    value_length: usize,
}

/// `envoy_dynamic_module_type_http_header_type`.
const HEADER_REQUEST: i32 = 0;
const HEADER_RESPONSE: i32 = 2;
/// `envoy_dynamic_module_type_attribute_id_UpstreamAddress` (`upstream.address`).
const ATTRIBUTE_UPSTREAM_ADDRESS: i32 = 41;
/// `envoy_dynamic_module_type_metrics_result_Success`.
const METRICS_SUCCESS: i32 = 0;
/// HTTP header hook results.
const HEADERS_CONTINUE: i32 = 0;
const HEADERS_STOP_ITERATION: i32 = 1;
/// `StopAllIterationAndWatermark`: nothing (headers nor body) goes on until `continue_decoding`.
const HEADERS_STOP_ALL_ITERATION_AND_WATERMARK: i32 = 4;
/// Body and trailer hook results.
const BODY_CONTINUE: i32 = 0;
const TRAILERS_CONTINUE: i32 = 0;

// The callbacks, with the names Envoy exports. Parameter names are ours.
extern "C" {
    // Unit tests log to stderr instead.
    #[cfg_attr(test, allow(dead_code))]
    fn envoy_dynamic_module_callback_log(level: i32, message: ModuleBuffer);
    #[cfg_attr(test, allow(dead_code))]
    fn envoy_dynamic_module_callback_log_enabled(level: i32) -> bool;

    fn envoy_dynamic_module_callback_http_get_header(
        filter_envoy: *mut c_void,
        header_type: i32,
        name: ModuleBuffer,
        value_out: *mut EnvoyBuffer,
        index: usize,
        count_out: *mut usize,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_upstream_override_host(
        filter_envoy: *mut c_void,
        host: ModuleBuffer,
        strict: bool,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter_envoy: *mut c_void,
        attribute: i32,
        value_out: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_send_response(
        filter_envoy: *mut c_void,
        status: u32,
        headers: *const ModuleHeader,
        header_count: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );
    // Global mode: resume a paused stream on its own worker. Signatures proved on 1.40.0 by
    // `tests/global.rs` of wscap-e2e (a paused stream resumes, is steered and upgraded):
    // `scheduler_new(filter_envoy) -> scheduler`, `scheduler_commit(scheduler, u64 event_id)`
    // (thread-safe: posts to the stream's dispatcher, holding only a weak reference to the
    // filter, so a commit for a finished stream is dropped by Envoy), `scheduler_delete(scheduler)`,
    // `continue_decoding(filter_envoy)`.
    fn envoy_dynamic_module_callback_http_filter_scheduler_new(
        filter_envoy: *mut c_void,
    ) -> *mut c_void;
    fn envoy_dynamic_module_callback_http_filter_scheduler_commit(
        scheduler: *mut c_void,
        event_id: u64,
    );
    fn envoy_dynamic_module_callback_http_filter_scheduler_delete(scheduler: *mut c_void);
    fn envoy_dynamic_module_callback_http_filter_continue_decoding(filter_envoy: *mut c_void);
    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config_envoy: *mut c_void,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_count: usize,
        id_out: *mut usize,
    ) -> i32;
    fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter_envoy: *mut c_void,
        id: usize,
        label_values: *const ModuleBuffer,
        label_count: usize,
        value: u64,
    ) -> i32;

    fn envoy_dynamic_module_callback_bootstrap_extension_config_define_gauge(
        config_envoy: *mut c_void,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_count: usize,
        id_out: *mut usize,
    ) -> i32;
    fn envoy_dynamic_module_callback_bootstrap_extension_config_set_gauge(
        config_envoy: *mut c_void,
        id: usize,
        label_values: *const ModuleBuffer,
        label_count: usize,
        value: u64,
    ) -> i32;
    fn envoy_dynamic_module_callback_bootstrap_extension_register_admin_handler(
        config_envoy: *mut c_void,
        path_prefix: ModuleBuffer,
        help: ModuleBuffer,
        removable: bool,
        mutates_server_state: bool,
    ) -> bool;
    fn envoy_dynamic_module_callback_bootstrap_extension_admin_set_response(
        config_envoy: *mut c_void,
        body: ModuleBuffer,
    );
    fn envoy_dynamic_module_callback_bootstrap_extension_config_signal_init_complete(
        config_envoy: *mut c_void,
    );
    fn envoy_dynamic_module_callback_bootstrap_extension_timer_new(
        config_envoy: *mut c_void,
    ) -> *mut c_void;
    fn envoy_dynamic_module_callback_bootstrap_extension_timer_enable(
        timer: *mut c_void,
        delay_ms: u64,
    );
    fn envoy_dynamic_module_callback_bootstrap_extension_timer_delete(timer: *mut c_void);

    fn envoy_dynamic_module_callback_lb_get_cluster_name(
        lb_envoy: *mut c_void,
        name_out: *mut EnvoyBuffer,
    );
    fn envoy_dynamic_module_callback_lb_get_priority_set_size(lb_envoy: *mut c_void) -> usize;
    fn envoy_dynamic_module_callback_lb_get_hosts_count(
        lb_envoy: *mut c_void,
        priority: u32,
    ) -> usize;
    fn envoy_dynamic_module_callback_lb_get_healthy_hosts_count(
        lb_envoy: *mut c_void,
        priority: u32,
    ) -> usize;
    fn envoy_dynamic_module_callback_lb_get_host_address(
        lb_envoy: *mut c_void,
        priority: u32,
        index: usize,
        address_out: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_lb_get_healthy_host_address(
        lb_envoy: *mut c_void,
        priority: u32,
        index: usize,
        address_out: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_lb_get_host_metadata_number(
        lb_envoy: *mut c_void,
        priority: u32,
        index: usize,
        filter_name: ModuleBuffer,
        key: ModuleBuffer,
        value_out: *mut f64,
    ) -> bool;
    fn envoy_dynamic_module_callback_lb_context_get_override_host(
        context_envoy: *mut c_void,
        address_out: *mut EnvoyBuffer,
        strict_out: *mut bool,
    ) -> bool;
}

// =============================================================================================
// 2. Safe wrappers
// =============================================================================================

/// Bytes of an Envoy buffer, for as long as Envoy keeps it (the caller ties the lifetime to
/// the handle it came from).
///
/// # Safety
/// `b.ptr` is NULL or points at `b.length` readable bytes that stay valid for `'a`.
unsafe fn envoy_bytes<'a>(b: EnvoyBuffer) -> &'a [u8] {
    if b.ptr.is_null() || b.length == 0 {
        &[]
    } else {
        // SAFETY: non-null, `length` readable bytes valid for 'a (the caller's contract).
        unsafe { std::slice::from_raw_parts(b.ptr.cast::<u8>(), b.length) }
    }
}

/// Writes to Envoy's log (Envoy copies the message).
#[cfg(not(test))]
pub(crate) fn log(level: Level, message: &str) {
    // SAFETY: the message buffer is valid for the call; Envoy copies it. The callback may be
    // called from any thread.
    unsafe { envoy_dynamic_module_callback_log(level as i32, ModuleBuffer::of(message)) }
}

/// Is `level` enabled for Envoy's `dynamic_modules` logger? (Cheap: lets callers skip formatting.)
#[cfg(not(test))]
pub(crate) fn log_enabled(level: Level) -> bool {
    // SAFETY: a pure query of Envoy's logger level, callable from any thread.
    unsafe { envoy_dynamic_module_callback_log_enabled(level as i32) }
}

/// Unit tests: every level is enabled.
#[cfg(test)]
pub(crate) fn log_enabled(_level: Level) -> bool {
    true
}

/// Unit tests run without Envoy: the log goes to stderr.
#[cfg(test)]
pub(crate) fn log(level: Level, message: &str) {
    eprintln!("[{level:?}] {message}");
}

/// Up to 4 label buffers on the stack (wscap's metrics have 1 or 2 labels).
fn label_buffers(labels: &[&str]) -> ([ModuleBuffer; 4], usize) {
    let mut bufs = [ModuleBuffer::EMPTY; 4];
    let n = labels.len().min(bufs.len());
    for (b, l) in bufs.iter_mut().zip(labels) {
        *b = ModuleBuffer::of(l);
    }
    (bufs, n)
}

/// The HTTP filter's Envoy handle, valid during one hook call.
struct EnvoyStream(*mut c_void);

impl crate::filter::Stream for EnvoyStream {
    fn header(&self, kind: HeaderKind, name: &str, index: usize) -> (Option<&[u8]>, usize) {
        let kind = match kind {
            HeaderKind::Request => HEADER_REQUEST,
            HeaderKind::Response => HEADER_RESPONSE,
        };
        let mut out = EnvoyBuffer::EMPTY;
        let mut count = 0usize;
        // SAFETY: `self.0` is the live filter handle of the current hook; the out-pointers are
        // valid locals. Envoy points `out` into its header map, which the filter does not
        // mutate while the returned borrow of `self` lives.
        let found = unsafe {
            envoy_dynamic_module_callback_http_get_header(
                self.0,
                kind,
                ModuleBuffer::of(name),
                &mut out,
                index,
                &mut count,
            )
        };
        // SAFETY: see above; the bytes live as long as this hook's header map.
        let value = found.then(|| unsafe { envoy_bytes(out) });
        (value, count)
    }

    fn set_upstream_override_host(&mut self, host: &str, strict: bool) -> bool {
        // SAFETY: live filter handle; Envoy copies the host string.
        unsafe {
            envoy_dynamic_module_callback_http_set_upstream_override_host(
                self.0,
                ModuleBuffer::of(host),
                strict,
            )
        }
    }

    fn upstream_address(&self) -> Option<String> {
        let mut out = EnvoyBuffer::EMPTY;
        // SAFETY: live filter handle; valid out-pointer.
        let ok = unsafe {
            envoy_dynamic_module_callback_http_filter_get_attribute_string(
                self.0,
                ATTRIBUTE_UPSTREAM_ADDRESS,
                &mut out,
            )
        };
        if !ok {
            return None;
        }
        // SAFETY: Envoy's buffer is valid until the next callback; it is copied at once.
        let bytes = unsafe { envoy_bytes(out) };
        std::str::from_utf8(bytes).ok().map(str::to_owned)
    }

    fn send_local_reply(
        &mut self,
        status: u32,
        headers: &[(&str, &str)],
        body: &str,
        details: &str,
    ) {
        let hs: Vec<ModuleHeader> = headers
            .iter()
            .map(|(k, v)| ModuleHeader {
                key_ptr: k.as_ptr().cast(),
                key_length: k.len(),
                value_ptr: v.as_ptr().cast(),
                value_length: v.len(),
            })
            .collect();
        // SAFETY: live filter handle; the header array and the strings it points at, the body
        // and the details outlive the call; Envoy copies them.
        unsafe {
            envoy_dynamic_module_callback_http_send_response(
                self.0,
                status,
                hs.as_ptr(),
                hs.len(),
                ModuleBuffer::of(body),
                ModuleBuffer::of(details),
            )
        }
    }

    fn increment_counter(&mut self, id: MetricId, labels: &[&str], value: u64) {
        let (bufs, n) = label_buffers(labels);
        // SAFETY: live filter handle; `n` label buffers valid for the call.
        let rc = unsafe {
            envoy_dynamic_module_callback_http_filter_increment_counter(
                self.0,
                id.0,
                bufs.as_ptr(),
                n,
                value,
            )
        };
        if rc != METRICS_SUCCESS {
            log(
                Level::Debug,
                &format!("wscap: increment_counter({}) = {rc}", id.0),
            );
        }
    }

    fn new_resume(&mut self) -> Option<Box<dyn Resume>> {
        // SAFETY: live filter handle inside a hook on the stream's worker (Envoy reads the
        // stream's dispatcher from it); the returned scheduler is owned by the module until
        // `scheduler_delete`.
        let ptr = unsafe { envoy_dynamic_module_callback_http_filter_scheduler_new(self.0) };
        (!ptr.is_null()).then(|| Box::new(EnvoyScheduler(ptr)) as Box<dyn Resume>)
    }

    fn continue_decoding(&mut self) {
        // SAFETY: live filter handle, called from `on_scheduled` on the stream's worker while
        // the stream is paused by `request_headers`.
        unsafe { envoy_dynamic_module_callback_http_filter_continue_decoding(self.0) }
    }
}

/// Envoy's per-stream scheduler, owned by the module: created in a hook, committed from the
/// coordinator thread, deleted exactly once by `Drop`.
struct EnvoyScheduler(*mut c_void);

// SAFETY: Envoy's scheduler object may be committed from any thread (it posts to the worker's
// dispatcher) and deleted from any thread; the module never uses it after `Drop` (the filter
// keeps it in a `ResumeSlot` and both commit and delete run under that slot's mutex).
unsafe impl Send for EnvoyScheduler {}

impl Resume for EnvoyScheduler {
    fn commit(&self, event_id: u64) {
        // SAFETY: `self.0` is a live scheduler (not yet deleted: deletion is `Drop`, which cannot
        // run while `&self` is borrowed). Envoy holds a weak reference to the filter, so a commit
        // for a stream that already ended is ignored by Envoy.
        unsafe { envoy_dynamic_module_callback_http_filter_scheduler_commit(self.0, event_id) }
    }
}

impl Drop for EnvoyScheduler {
    fn drop(&mut self) {
        // SAFETY: created by `scheduler_new`, deleted once (here), never used afterwards.
        unsafe { envoy_dynamic_module_callback_http_filter_scheduler_delete(self.0) }
    }
}

/// The LB's Envoy handle, valid during one hook call.
struct EnvoyLb(*mut c_void);

impl EnvoyLb {
    fn str_out(&self, f: impl FnOnce(*mut EnvoyBuffer) -> bool) -> Option<&str> {
        let mut out = EnvoyBuffer::EMPTY;
        if !f(&mut out) {
            return None;
        }
        // SAFETY: addresses and names live in Envoy's host set / cluster info, which do not
        // change during the hook that holds this handle.
        std::str::from_utf8(unsafe { envoy_bytes(out) }).ok()
    }
}

impl ClusterView for EnvoyLb {
    fn cluster_name(&self) -> String {
        let mut out = EnvoyBuffer::EMPTY;
        // SAFETY: live LB handle; valid out-pointer; the name is copied at once.
        unsafe { envoy_dynamic_module_callback_lb_get_cluster_name(self.0, &mut out) };
        // SAFETY: the cluster name outlives the hook.
        String::from_utf8_lossy(unsafe { envoy_bytes(out) }).into_owned()
    }

    fn priorities(&self) -> usize {
        // SAFETY: live LB handle.
        unsafe { envoy_dynamic_module_callback_lb_get_priority_set_size(self.0) }
    }

    fn hosts_count(&self, priority: u32) -> usize {
        // SAFETY: live LB handle; out-of-range priorities return 0.
        unsafe { envoy_dynamic_module_callback_lb_get_hosts_count(self.0, priority) }
    }

    fn host_address(&self, priority: u32, index: usize) -> Option<&str> {
        self.str_out(|out| {
            // SAFETY: live LB handle; valid out-pointer; out-of-range returns false.
            unsafe {
                envoy_dynamic_module_callback_lb_get_host_address(self.0, priority, index, out)
            }
        })
    }

    fn healthy_count(&self, priority: u32) -> usize {
        // SAFETY: live LB handle.
        unsafe { envoy_dynamic_module_callback_lb_get_healthy_hosts_count(self.0, priority) }
    }

    fn healthy_address(&self, priority: u32, index: usize) -> Option<&str> {
        self.str_out(|out| {
            // SAFETY: live LB handle; valid out-pointer; out-of-range returns false.
            unsafe {
                envoy_dynamic_module_callback_lb_get_healthy_host_address(
                    self.0, priority, index, out,
                )
            }
        })
    }

    fn host_metadata_number(
        &self,
        priority: u32,
        index: usize,
        ns: &str,
        key: &str,
    ) -> Option<f64> {
        let mut v = 0f64;
        // SAFETY: live LB handle; namespace and key buffers valid for the call; valid out-ptr.
        let ok = unsafe {
            envoy_dynamic_module_callback_lb_get_host_metadata_number(
                self.0,
                priority,
                index,
                ModuleBuffer::of(ns),
                ModuleBuffer::of(key),
                &mut v,
            )
        };
        ok.then_some(v)
    }
}

/// One host-selection request, valid during `choose_host`.
struct EnvoyLbContext(*mut c_void);

impl RequestView for EnvoyLbContext {
    fn override_host(&self) -> Option<(&str, bool)> {
        if self.0.is_null() {
            return None;
        }
        let mut out = EnvoyBuffer::EMPTY;
        let mut strict = false;
        // SAFETY: live, non-null context handle; valid out-pointers.
        let ok = unsafe {
            envoy_dynamic_module_callback_lb_context_get_override_host(
                self.0,
                &mut out,
                &mut strict,
            )
        };
        if !ok {
            return None;
        }
        // SAFETY: the override host string lives in the request's stream state for the call.
        let host = std::str::from_utf8(unsafe { envoy_bytes(out) }).ok()?;
        (!host.is_empty()).then_some((host, strict))
    }
}

/// The bootstrap extension config's Envoy handle (main thread).
struct EnvoyBootstrapConfig(*mut c_void);

impl GaugeSink for EnvoyBootstrapConfig {
    fn set_gauge(&self, id: MetricId, labels: &[&str], value: u64) {
        let (bufs, n) = label_buffers(labels);
        // SAFETY: live config handle (main thread); `n` label buffers valid for the call.
        let rc = unsafe {
            envoy_dynamic_module_callback_bootstrap_extension_config_set_gauge(
                self.0,
                id.0,
                bufs.as_ptr(),
                n,
                value,
            )
        };
        if rc != METRICS_SUCCESS {
            log(Level::Debug, &format!("wscap: set_gauge({}) = {rc}", id.0));
        }
    }
}

type DefineFn =
    unsafe extern "C" fn(*mut c_void, ModuleBuffer, *const ModuleBuffer, usize, *mut usize) -> i32;

/// Defines a labelled metric; `None` (logged) when Envoy refuses.
fn define(
    define: DefineFn,
    config_envoy: *mut c_void,
    name: &str,
    labels: &[&str],
) -> Option<MetricId> {
    let (bufs, n) = label_buffers(labels);
    let mut id = 0usize;
    // SAFETY: `define` is one of Envoy's define callbacks, called inside the matching
    // `*_config_new` with its live config handle; buffers valid for the call.
    let rc = unsafe {
        define(
            config_envoy,
            ModuleBuffer::of(name),
            bufs.as_ptr(),
            n,
            &mut id,
        )
    };
    if rc == METRICS_SUCCESS {
        Some(MetricId(id))
    } else {
        log(
            Level::Warn,
            &format!("wscap: Envoy refused to define metric {name} (result {rc})"),
        );
        None
    }
}

/// What a hook answers when even its fallback panicked: never an unwind into Envoy, never an
/// abort of the proxy.
trait LastResort {
    fn last_resort() -> Self;
}

impl LastResort for () {
    fn last_resort() -> Self {}
}

/// Header hooks: Continue (the stream goes on, holding no permit).
impl LastResort for i32 {
    fn last_resort() -> Self {
        HEADERS_CONTINUE
    }
}

/// Config and instance constructors: NULL (Envoy refuses the config).
impl LastResort for *const c_void {
    fn last_resort() -> Self {
        ptr::null()
    }
}

impl<T> LastResort for Option<T> {
    fn last_resort() -> Self {
        None
    }
}

/// Admin requests: 500 with an empty body.
impl LastResort for (u32, String) {
    fn last_resort() -> Self {
        (500, String::new())
    }
}

/// Runs a hook body; a panic is logged and answered with `fallback` (and, should the fallback
/// panic too, with [`LastResort`]).
fn guard<R: LastResort>(hook: &str, body: impl FnOnce() -> R, fallback: impl FnOnce() -> R) -> R {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(r) => r,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            // Logging itself must not unwind.
            let _ = catch_unwind(|| log(Level::Error, &format!("wscap: panic in {hook}: {what}")));
            catch_unwind(AssertUnwindSafe(fallback)).unwrap_or_else(|_| R::last_resort())
        }
    }
}

/// Config bytes and name as UTF-8 text.
fn text(b: EnvoyBuffer) -> String {
    // SAFETY: Envoy passes name/config buffers valid for the duration of the hook.
    String::from_utf8_lossy(unsafe { envoy_bytes(b) }).into_owned()
}

fn refuse_config(kind: &str, name: &str, why: &str) -> *const c_void {
    log(
        Level::Error,
        &format!("wscap: {kind} config {name:?} refused: {why}"),
    );
    ptr::null()
}

// =============================================================================================
// 3. Hooks
// =============================================================================================

static ABI_VERSION_C: &CStr = c"v0.2.0";

const _: () = assert!(ABI_VERSION_C.to_bytes().len() == crate::ABI_VERSION.len());

/// Returns the ABI version string; Envoy refuses the module on NULL.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    ABI_VERSION_C.as_ptr()
}

// ---------------------------------------- HTTP filter ----------------------------------------

/// Parses the filter config, defines the counters, resolves the cluster. NULL refuses.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: *mut c_void,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    guard(
        "http_filter_config_new",
        || {
            let name = text(name);
            if name != "wscap" {
                return refuse_config(
                    "http filter",
                    &name,
                    "unknown filter_name: expected \"wscap\"",
                );
            }
            // SAFETY: Envoy's config buffer is valid during this hook.
            let bytes = unsafe { envoy_bytes(config) };
            let settings = match config::parse_filter(bytes) {
                Ok(s) => s,
                Err(e) => return refuse_config("http filter", &name, &e),
            };
            let counter =
                envoy_dynamic_module_callback_http_filter_config_define_counter as DefineFn;
            let metrics = FilterMetrics {
                admitted: define(
                    counter,
                    config_envoy,
                    "wscap_admitted",
                    &["cluster", "host"],
                ),
                rejected: define(
                    counter,
                    config_envoy,
                    "wscap_rejected",
                    &["cluster", "reason"],
                ),
                steering_mismatch: define(
                    counter,
                    config_envoy,
                    "wscap_steering_mismatch",
                    &["cluster"],
                ),
            };
            match FilterConfig::new(&REGISTRY, &settings, metrics) {
                Ok(cfg) => {
                    let cfg = cfg.with_borrower(Arc::new(GlobalBorrower));
                    log(
                        Level::Info,
                        &format!(
                            "wscap: http filter for cluster {:?}: {} connections per host, retry-after {}s",
                            settings.cluster, settings.max_connections_per_host, settings.retry_after_seconds
                        ),
                    );
                    into_module_ptr(Arc::new(cfg))
                }
                Err(e) => refuse_config("http filter", &name, &e),
            }
        },
        ptr::null,
    )
}

/// Hands `value` to Envoy as an opaque module pointer; [`take_module_ptr`] takes it back.
fn into_module_ptr<T>(value: T) -> *const c_void {
    Box::into_raw(Box::new(value)).cast_const().cast()
}

/// Takes back a value given to Envoy by [`into_module_ptr`]; `None` for NULL.
///
/// # Safety
/// `ptr` is NULL or came from `into_module_ptr::<T>` and is taken back once (Envoy calls each
/// destroy hook once, after the object's last hook).
unsafe fn take_module_ptr<T>(ptr: *const c_void) -> Option<Box<T>> {
    // SAFETY: the caller's contract: a live `Box<T>` leaked by `into_module_ptr`, or NULL.
    (!ptr.is_null()).then(|| unsafe { Box::from_raw(ptr.cast_mut().cast::<T>()) })
}

/// Borrows a value given to Envoy by [`into_module_ptr`]; `None` for NULL.
///
/// # Safety
/// `ptr` is NULL or came from `into_module_ptr::<T>` and is not yet taken back, and no exclusive
/// borrow of it is alive.
unsafe fn module_ref<'a, T>(ptr: *const c_void) -> Option<&'a T> {
    // SAFETY: the caller's contract.
    unsafe { ptr.cast::<T>().as_ref() }
}

/// Drops the filter config.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: *const c_void) {
    guard(
        "http_filter_config_destroy",
        || {
            // SAFETY: `config` came from `into_module_ptr` in config_new; destroyed once.
            drop(unsafe { take_module_ptr::<Arc<FilterConfig>>(config) });
        },
        || (),
    )
}

/// A per-stream filter.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: *const c_void,
    _filter_envoy: *mut c_void,
) -> *const c_void {
    guard(
        "http_filter_new",
        || {
            // SAFETY: `config` is the live `Arc<FilterConfig>` from config_new; Envoy keeps the
            // config alive while it creates filters.
            match unsafe { module_ref::<Arc<FilterConfig>>(config) } {
                Some(cfg) => into_module_ptr(Filter::new(Arc::clone(cfg))),
                None => ptr::null(),
            }
        },
        ptr::null,
    )
}

/// The filter behind a hook's module pointer.
///
/// # Safety
/// `filter` is a pointer from `http_filter_new` not yet destroyed; Envoy calls the hooks of
/// one stream on one thread, one at a time, so the exclusive borrow is unique.
unsafe fn filter_mut<'a>(filter: *const c_void) -> Option<&'a mut Filter> {
    // SAFETY: the caller's contract.
    unsafe { filter.cast_mut().cast::<Filter>().as_mut() }
}

/// Admission, steering or refusal.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter_envoy: *mut c_void,
    filter: *const c_void,
    _end_of_stream: bool,
) -> i32 {
    // SAFETY: hook contract (see `filter_mut`).
    let Some(f) = (unsafe { filter_mut(filter) }) else {
        return HEADERS_CONTINUE;
    };
    let f = std::cell::RefCell::new(f);
    guard(
        "http_filter_request_headers",
        || match f
            .borrow_mut()
            .on_request_headers(&mut EnvoyStream(filter_envoy))
        {
            HeadersStatus::Continue => HEADERS_CONTINUE,
            HeadersStatus::StopIteration => HEADERS_STOP_ITERATION,
            HeadersStatus::Pause => HEADERS_STOP_ALL_ITERATION_AND_WATERMARK,
        },
        || {
            // Fail closed: give back anything held, refuse the stream.
            let mut f = f.borrow_mut();
            f.release();
            f.refuse(&mut EnvoyStream(filter_envoy), "internal_error");
            HEADERS_STOP_ITERATION
        },
    )
}

/// Non-101 releases; 101 confirms (and re-homes the accounting on a mismatch).
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    filter_envoy: *mut c_void,
    filter: *const c_void,
    _end_of_stream: bool,
) -> i32 {
    // SAFETY: hook contract (see `filter_mut`).
    let Some(f) = (unsafe { filter_mut(filter) }) else {
        return HEADERS_CONTINUE;
    };
    let f = std::cell::RefCell::new(f);
    guard(
        "http_filter_response_headers",
        || {
            f.borrow_mut()
                .on_response_headers(&mut EnvoyStream(filter_envoy));
            HEADERS_CONTINUE
        },
        || {
            f.borrow_mut().release();
            HEADERS_CONTINUE
        },
    )
}

/// Releases.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    _filter_envoy: *mut c_void,
    filter: *const c_void,
) {
    // SAFETY: hook contract (see `filter_mut`).
    if let Some(f) = unsafe { filter_mut(filter) } {
        guard(
            "http_filter_stream_complete",
            || f.on_stream_complete(),
            || (),
        );
    }
}

/// Drops the filter (releasing anything still held).
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(filter: *const c_void) {
    guard(
        "http_filter_destroy",
        || {
            // SAFETY: `filter` came from `into_module_ptr` in http_filter_new; Envoy destroys it
            // exactly once, after its last hook.
            drop(unsafe { take_module_ptr::<Filter>(filter) });
        },
        || (),
    )
}

/// WebSocket frames: nothing to do.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    _filter_envoy: *mut c_void,
    _filter: *const c_void,
    _end_of_stream: bool,
) -> i32 {
    BODY_CONTINUE
}

/// WebSocket frames: nothing to do.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    _filter_envoy: *mut c_void,
    _filter: *const c_void,
    _end_of_stream: bool,
) -> i32 {
    BODY_CONTINUE
}

/// Nothing to do.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    _filter_envoy: *mut c_void,
    _filter: *const c_void,
) -> i32 {
    TRAILERS_CONTINUE
}

/// Nothing to do.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _filter_envoy: *mut c_void,
    _filter: *const c_void,
) -> i32 {
    TRAILERS_CONTINUE
}

/// Unused (wscap makes no callouts).
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _filter_envoy: *mut c_void,
    _filter: *const c_void,
    _callout_id: u64,
    _result: i32,
    _headers: *const c_void,
    _header_count: usize,
    _body: *const c_void,
    _body_count: usize,
) {
}

/// Unused (wscap opens no streams).
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _filter_envoy: *mut c_void,
    _filter: *const c_void,
    _stream_id: u64,
    _headers: *const c_void,
    _header_count: usize,
    _end_stream: bool,
) {
}

/// Unused.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _filter_envoy: *mut c_void,
    _filter: *const c_void,
    _stream_id: u64,
    _data: *const c_void,
    _data_count: usize,
    _end_stream: bool,
) {
}

/// Unused.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _filter_envoy: *mut c_void,
    _filter: *const c_void,
    _stream_id: u64,
    _trailers: *const c_void,
    _trailer_count: usize,
) {
}

/// Unused.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _filter_envoy: *mut c_void,
    _filter: *const c_void,
    _stream_id: u64,
) {
}

/// Unused.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _filter_envoy: *mut c_void,
    _filter: *const c_void,
    _stream_id: u64,
    _reason: i32,
) {
}

/// Global mode: a borrow round for this paused stream ended (event id = outcome); acquire again,
/// then continue or refuse. Runs on the stream's worker.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    filter_envoy: *mut c_void,
    filter: *const c_void,
    event_id: u64,
) {
    // SAFETY: hook contract (see `filter_mut`); Envoy calls it only while the stream lives.
    let Some(f) = (unsafe { filter_mut(filter) }) else {
        return;
    };
    let f = std::cell::RefCell::new(f);
    guard(
        "http_filter_scheduled",
        || {
            f.borrow_mut()
                .on_scheduled(&mut EnvoyStream(filter_envoy), event_id)
        },
        || {
            // Fail closed: give back anything held, refuse the paused stream.
            let mut f = f.borrow_mut();
            f.release();
            f.refuse(&mut EnvoyStream(filter_envoy), "internal_error");
        },
    )
}

/// Unused.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _filter_envoy: *mut c_void,
    _filter: *const c_void,
) {
}

/// Unused.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _filter_envoy: *mut c_void,
    _filter: *const c_void,
) {
}

// ----------------------------------------- LB policy -----------------------------------------

/// Marker returned as the LB config (the LB policy has no state beyond the registry).
static LB_CONFIG_MARKER: u8 = 0;

/// Parses the LB config (`{}`). NULL refuses.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_lb_config_new(
    _config_envoy: *mut c_void,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    guard(
        "lb_config_new",
        || {
            let name = text(name);
            if name != "wscap" {
                return refuse_config(
                    "lb policy",
                    &name,
                    "unknown lb_policy_name: expected \"wscap\"",
                );
            }
            // SAFETY: Envoy's config buffer is valid during this hook.
            match config::parse_lb(unsafe { envoy_bytes(config) }) {
                Ok(_) => ptr::from_ref(&LB_CONFIG_MARKER).cast(),
                Err(e) => refuse_config("lb policy", &name, &e),
            }
        },
        ptr::null,
    )
}

/// Nothing to free.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_lb_config_destroy(_config: *const c_void) {}

/// One LB instance per thread; reads the membership at once.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_lb_new(
    _config: *const c_void,
    lb_envoy: *mut c_void,
) -> *const c_void {
    guard(
        "lb_new",
        || into_module_ptr(Lb::new(&REGISTRY, &EnvoyLb(lb_envoy))),
        ptr::null,
    )
}

/// Picks a host: the override host when set, else round robin.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_lb_choose_host(
    lb_envoy: *mut c_void,
    lb: *const c_void,
    context_envoy: *mut c_void,
    priority_out: *mut u32,
    index_out: *mut u32,
) -> bool {
    // SAFETY: `lb` is from lb_new and not yet destroyed; `Lb` is `Sync`, a shared borrow suffices.
    let Some(lb) = (unsafe { module_ref::<Lb>(lb) }) else {
        return false;
    };
    if priority_out.is_null() || index_out.is_null() {
        return false;
    }
    let pick = guard(
        "lb_choose_host",
        || lb.choose(&EnvoyLb(lb_envoy), &EnvoyLbContext(context_envoy)),
        || None,
    );
    match pick {
        Some((p, i)) => {
            // SAFETY: non-null out-pointers Envoy passes for this call.
            unsafe {
                *priority_out = p;
                *index_out = i;
            }
            true
        }
        None => false,
    }
}

/// Membership changed (main thread and every worker): hand core the whole healthy set.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_lb_on_host_membership_update(
    lb_envoy: *mut c_void,
    lb: *const c_void,
    _added: usize,
    _removed: usize,
) {
    // SAFETY: `lb` is from lb_new and not yet destroyed; `Lb` is `Sync`, a shared borrow suffices.
    if let Some(lb) = unsafe { module_ref::<Lb>(lb) } {
        guard(
            "lb_on_host_membership_update",
            || lb.sync(&EnvoyLb(lb_envoy)),
            || (),
        );
    }
}

/// Drops the LB instance.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_lb_destroy(lb: *const c_void) {
    guard(
        "lb_destroy",
        || {
            // SAFETY: `lb` came from `into_module_ptr` in lb_new; Envoy destroys it once.
            drop(unsafe { take_module_ptr::<Lb>(lb) });
        },
        || (),
    )
}

// ------------------------------------ Bootstrap extension ------------------------------------

/// The bootstrap config: state plus the refresh timer.
struct BootstrapConfig {
    state: Bootstrap,
    timer: *mut c_void,
}

/// Marker returned as the per-server extension (the config holds the state).
static BOOTSTRAP_MARKER: u8 = 0;

/// Parses the config, defines the gauges, registers `/wscap`, starts the timer, and signals
/// init complete (without which Envoy never starts its listeners). NULL refuses.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_config_new(
    config_envoy: *mut c_void,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    guard(
        "bootstrap_extension_config_new",
        || {
            let name = text(name);
            if name != "wscap" {
                return refuse_config(
                    "bootstrap extension",
                    &name,
                    "unknown extension_name: expected \"wscap\"",
                );
            }
            // SAFETY: Envoy's config buffer is valid during this hook.
            let settings = match config::parse_bootstrap(unsafe { envoy_bytes(config) }) {
                Ok(s) => s,
                Err(e) => return refuse_config("bootstrap extension", &name, &e),
            };
            if let Some(global) = &settings.global {
                if let Err(e) = crate::global::start(global) {
                    return refuse_config("bootstrap extension", &name, &e);
                }
            }
            let gauge =
                envoy_dynamic_module_callback_bootstrap_extension_config_define_gauge as DefineFn;
            let gauges = Gauges {
                active: define(
                    gauge,
                    config_envoy,
                    "wscap_active_connections",
                    &["cluster", "host"],
                ),
                limit: define(
                    gauge,
                    config_envoy,
                    "wscap_connection_limit",
                    &["cluster", "host"],
                ),
            };
            // SAFETY: live config handle inside config_new; Envoy copies path and help.
            let registered = unsafe {
                envoy_dynamic_module_callback_bootstrap_extension_register_admin_handler(
                    config_envoy,
                    ModuleBuffer::of(bootstrap::ADMIN_PATH),
                    ModuleBuffer::of(
                        "wscap: live WebSocket counts per host (JSON; ?format=prometheus; ?scope=global)",
                    ),
                    false,
                    false,
                )
            };
            if !registered {
                log(
                    Level::Warn,
                    "wscap: could not register the admin handler /wscap",
                );
            }
            let state = Bootstrap::new(settings, gauges);
            // SAFETY: live config handle; the timer fires on the main thread into timer_fired.
            let timer = unsafe {
                envoy_dynamic_module_callback_bootstrap_extension_timer_new(config_envoy)
            };
            if !timer.is_null() {
                // SAFETY: the timer was just created and is owned by this config.
                unsafe {
                    envoy_dynamic_module_callback_bootstrap_extension_timer_enable(
                        timer,
                        state.interval_ms(),
                    )
                };
            }
            // SAFETY: live config handle; Envoy registered the init target before this hook.
            unsafe {
                envoy_dynamic_module_callback_bootstrap_extension_config_signal_init_complete(
                    config_envoy,
                )
            };
            into_module_ptr(BootstrapConfig { state, timer })
        },
        ptr::null,
    )
}

/// Stops the timer and drops the state.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_config_destroy(
    config: *const c_void,
) {
    guard(
        "bootstrap_extension_config_destroy",
        || {
            // SAFETY: `config` came from `into_module_ptr` in config_new; Envoy destroys it once.
            let Some(cfg) = (unsafe { take_module_ptr::<BootstrapConfig>(config) }) else {
                return;
            };
            if !cfg.timer.is_null() {
                // SAFETY: the timer was created by this config and is deleted once, here.
                unsafe {
                    envoy_dynamic_module_callback_bootstrap_extension_timer_delete(cfg.timer)
                };
            }
        },
        || (),
    )
}

/// Refreshes the gauges and re-arms the timer.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_timer_fired(
    config_envoy: *mut c_void,
    config: *const c_void,
    timer: *mut c_void,
) {
    // SAFETY: `config` is from bootstrap config_new and not yet destroyed (main thread only).
    let Some(cfg) = (unsafe { module_ref::<BootstrapConfig>(config) }) else {
        return;
    };
    guard(
        "bootstrap_extension_timer_fired",
        || {
            cfg.state
                .refresh(&REGISTRY.snapshot(), &EnvoyBootstrapConfig(config_envoy));
            if let Some(c) = crate::global::coordinator() {
                cfg.state.watch_redis(&c.fleet_view());
            }
        },
        || (),
    );
    if !timer.is_null() {
        // SAFETY: the timer Envoy just fired, owned by this config.
        unsafe {
            envoy_dynamic_module_callback_bootstrap_extension_timer_enable(
                timer,
                cfg.state.interval_ms(),
            )
        };
    }
}

/// `GET /wscap[?format=prometheus]`.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_admin_request(
    config_envoy: *mut c_void,
    _config: *const c_void,
    method: EnvoyBuffer,
    path: EnvoyBuffer,
    _body: EnvoyBuffer,
) -> u32 {
    let (status, body) = guard(
        "bootstrap_extension_admin_request",
        || {
            bootstrap::admin(
                &text(method),
                &text(path),
                || REGISTRY.snapshot(),
                || crate::global::coordinator().map(|c| c.fleet_view()),
            )
        },
        || (500, "{\"error\":\"internal error\"}\n".to_owned()),
    );
    // SAFETY: live config handle (main thread); Envoy copies the body.
    unsafe {
        envoy_dynamic_module_callback_bootstrap_extension_admin_set_response(
            config_envoy,
            ModuleBuffer::of(&body),
        )
    };
    status
}

/// A non-null per-server extension.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_new(
    _config: *const c_void,
    _extension_envoy: *mut c_void,
) -> *const c_void {
    ptr::from_ref(&BOOTSTRAP_MARKER).cast()
}

/// Nothing to do.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_server_initialized(
    _extension_envoy: *mut c_void,
    _extension: *const c_void,
) {
}

/// Nothing to do.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_worker_thread_initialized(
    _extension_envoy: *mut c_void,
    _extension: *const c_void,
) {
}

/// Nothing to do (never relied upon: it does not fire on SIGTERM).
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_drain_started(
    _extension_envoy: *mut c_void,
    _extension: *const c_void,
) {
}

/// Acknowledges at once.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_shutdown(
    _extension_envoy: *mut c_void,
    _extension: *const c_void,
    done: Option<unsafe extern "C" fn(*mut c_void)>,
    context: *mut c_void,
) {
    if let Some(done) = done {
        // SAFETY: Envoy's completion callback with its own context, called once.
        unsafe { done(context) };
    }
}

/// Nothing to free (the extension is a static marker).
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_destroy(_extension: *const c_void) {}

/// Unused.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_config_scheduled(
    _config_envoy: *mut c_void,
    _config: *const c_void,
    _event_id: u64,
) {
}

/// Unused.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_http_callout_done(
    _config_envoy: *mut c_void,
    _config: *const c_void,
    _callout_id: u64,
    _result: i32,
    _headers: *const c_void,
    _header_count: usize,
    _body: *const c_void,
    _body_count: usize,
) {
}

/// Unused.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_file_changed(
    _config_envoy: *mut c_void,
    _config: *const c_void,
    _path: EnvoyBuffer,
    _events: u32,
) {
}

/// Unused (cluster lifecycle is not enabled).
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_cluster_add_or_update(
    _config_envoy: *mut c_void,
    _config: *const c_void,
    _name: EnvoyBuffer,
) {
}

/// Unused.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_cluster_removal(
    _config_envoy: *mut c_void,
    _config: *const c_void,
    _name: EnvoyBuffer,
) {
}

/// Unused (listener lifecycle is not enabled).
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_listener_add_or_update(
    _config_envoy: *mut c_void,
    _config: *const c_void,
    _name: EnvoyBuffer,
) {
}

/// Unused.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_listener_removal(
    _config_envoy: *mut c_void,
    _config: *const c_void,
    _name: EnvoyBuffer,
) {
}

/// Unit tests link without Envoy: inert definitions of every imported callback, so hooks can be
/// called directly (they must not reach a callback in a way that matters to the test).
#[cfg(test)]
mod stubs {
    use super::{EnvoyBuffer, ModuleBuffer, ModuleHeader};
    use std::ffi::c_void;

    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_http_get_header(
        _: *mut c_void,
        _: i32,
        _: ModuleBuffer,
        _: *mut EnvoyBuffer,
        _: usize,
        _: *mut usize,
    ) -> bool {
        false
    }
    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_http_set_upstream_override_host(
        _: *mut c_void,
        _: ModuleBuffer,
        _: bool,
    ) -> bool {
        false
    }
    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        _: *mut c_void,
        _: i32,
        _: *mut EnvoyBuffer,
    ) -> bool {
        false
    }
    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_http_send_response(
        _: *mut c_void,
        _: u32,
        _: *const ModuleHeader,
        _: usize,
        _: ModuleBuffer,
        _: ModuleBuffer,
    ) {
    }
    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        _: *mut c_void,
        _: ModuleBuffer,
        _: *const ModuleBuffer,
        _: usize,
        _: *mut usize,
    ) -> i32 {
        1
    }
    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_http_filter_increment_counter(
        _: *mut c_void,
        _: usize,
        _: *const ModuleBuffer,
        _: usize,
        _: u64,
    ) -> i32 {
        1
    }
    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_bootstrap_extension_config_define_gauge(
        _: *mut c_void,
        _: ModuleBuffer,
        _: *const ModuleBuffer,
        _: usize,
        _: *mut usize,
    ) -> i32 {
        1
    }
    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_bootstrap_extension_config_set_gauge(
        _: *mut c_void,
        _: usize,
        _: *const ModuleBuffer,
        _: usize,
        _: u64,
    ) -> i32 {
        1
    }
    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_bootstrap_extension_register_admin_handler(
        _: *mut c_void,
        _: ModuleBuffer,
        _: ModuleBuffer,
        _: bool,
        _: bool,
    ) -> bool {
        false
    }
    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_bootstrap_extension_admin_set_response(
        _: *mut c_void,
        _: ModuleBuffer,
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
    extern "C" fn envoy_dynamic_module_callback_lb_get_cluster_name(
        _: *mut c_void,
        _: *mut EnvoyBuffer,
    ) {
    }
    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_lb_get_priority_set_size(_: *mut c_void) -> usize {
        0
    }
    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_lb_get_hosts_count(
        _: *mut c_void,
        _: u32,
    ) -> usize {
        0
    }
    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_lb_get_healthy_hosts_count(
        _: *mut c_void,
        _: u32,
    ) -> usize {
        0
    }
    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_lb_get_host_address(
        _: *mut c_void,
        _: u32,
        _: usize,
        _: *mut EnvoyBuffer,
    ) -> bool {
        false
    }
    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_lb_get_healthy_host_address(
        _: *mut c_void,
        _: u32,
        _: usize,
        _: *mut EnvoyBuffer,
    ) -> bool {
        false
    }
    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_lb_get_host_metadata_number(
        _: *mut c_void,
        _: u32,
        _: usize,
        _: ModuleBuffer,
        _: ModuleBuffer,
        _: *mut f64,
    ) -> bool {
        false
    }
    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_lb_context_get_override_host(
        _: *mut c_void,
        _: *mut EnvoyBuffer,
        _: *mut bool,
    ) -> bool {
        false
    }
    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_http_filter_scheduler_new(
        _: *mut c_void,
    ) -> *mut c_void {
        std::ptr::null_mut()
    }
    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_http_filter_scheduler_commit(
        _: *mut c_void,
        _: u64,
    ) {
    }
    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_http_filter_scheduler_delete(_: *mut c_void) {}
    #[no_mangle]
    extern "C" fn envoy_dynamic_module_callback_http_filter_continue_decoding(_: *mut c_void) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_catches_panics_and_answers_with_the_fallback() {
        assert_eq!(guard("t", || 1, || 2), 1);
        assert_eq!(guard("t", || -> i32 { panic!("boom") }, || 2), 2);
        let mut released = false;
        guard(
            "t",
            || panic!("{}", String::from("owned message")),
            || released = true,
        );
        assert!(released);
        let r: i32 = guard("t", || panic!("body"), || panic!("fallback"));
        assert_eq!(r, HEADERS_CONTINUE);
        let p: *const c_void = guard("t", || panic!("body"), || panic!("fallback"));
        assert!(p.is_null());
    }

    #[test]
    fn program_init_reports_the_abi_version() {
        let v = envoy_dynamic_module_on_program_init();
        // SAFETY: a pointer to a static NUL-terminated string.
        let s = unsafe { CStr::from_ptr(v) };
        assert_eq!(s.to_str().unwrap(), crate::ABI_VERSION);
    }

    #[test]
    fn bad_configs_return_null() {
        let buf = |s: &'static str| EnvoyBuffer {
            ptr: s.as_ptr().cast(),
            length: s.len(),
        };
        // Refused before any Envoy callback is made (name or JSON checks).
        let p =
            envoy_dynamic_module_on_lb_config_new(ptr::null_mut(), buf("wscap"), buf("{\"x\":1}"));
        assert!(p.is_null());
        let p = envoy_dynamic_module_on_lb_config_new(ptr::null_mut(), buf("other"), buf("{}"));
        assert!(p.is_null());
        let p = envoy_dynamic_module_on_lb_config_new(ptr::null_mut(), buf("wscap"), buf(""));
        assert!(!p.is_null());
        let p = envoy_dynamic_module_on_http_filter_config_new(
            ptr::null_mut(),
            buf("wscap"),
            buf("{\"cluster\":\"a\",\"max_connections_per_host\":-5}"),
        );
        assert!(p.is_null());
        let p = envoy_dynamic_module_on_bootstrap_extension_config_new(
            ptr::null_mut(),
            buf("wscap"),
            buf("[]"),
        );
        assert!(p.is_null());
    }
}
