//! C types, constants and the callbacks wscap imports from Envoy (only those it calls), each
//! checked against the symbols the binary exports (`tests/symbols.rs`) and exercised end to end.
//! Plus the small safe helpers every extension's bindings use: buffers, logging, metric
//! definition.

use std::ffi::{c_char, c_void, CStr};
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

use crate::filter::MetricId;
use crate::Level;

/// `{const char* ptr; size_t length;}` owned by Envoy, passed by value or written through a
/// pointer.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct EnvoyBuffer {
    pub(crate) ptr: *const c_char,
    pub(crate) length: usize,
}

impl EnvoyBuffer {
    pub(crate) const EMPTY: EnvoyBuffer = EnvoyBuffer {
        ptr: ptr::null(),
        length: 0,
    };
}

/// `{const char* ptr; size_t length;}` owned by the module; Envoy reads it during the call.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct ModuleBuffer {
    pub(crate) ptr: *const c_char,
    pub(crate) length: usize,
}

impl ModuleBuffer {
    pub(crate) const EMPTY: ModuleBuffer = ModuleBuffer {
        ptr: ptr::null(),
        length: 0,
    };

    pub(crate) fn of(s: &str) -> Self {
        ModuleBuffer {
            ptr: s.as_ptr().cast(),
            length: s.len(),
        }
    }
}

/// A header the module hands Envoy: key and value, each pointer + length.
#[repr(C)]
pub(crate) struct ModuleHeader {
    pub(crate) key_ptr: *const c_char,
    pub(crate) key_length: usize,
    pub(crate) value_ptr: *const c_char,
    pub(crate) value_length: usize,
}

/// `envoy_dynamic_module_type_http_header_type`.
pub(crate) const HEADER_REQUEST: i32 = 0;
pub(crate) const HEADER_RESPONSE: i32 = 2;
/// `envoy_dynamic_module_type_attribute_id_UpstreamAddress` (`upstream.address`).
pub(crate) const ATTRIBUTE_UPSTREAM_ADDRESS: i32 = 41;
/// `envoy_dynamic_module_type_host_health`.
pub(crate) const HOST_HEALTH_DEGRADED: i32 = 1;
pub(crate) const HOST_HEALTH_HEALTHY: i32 = 2;
/// `envoy_dynamic_module_type_metrics_result_Success`.
pub(crate) const METRICS_SUCCESS: i32 = 0;
/// HTTP header hook results.
pub(crate) const HEADERS_CONTINUE: i32 = 0;
pub(crate) const HEADERS_STOP_ITERATION: i32 = 1;
/// `StopAllIterationAndWatermark`: nothing (headers nor body) goes on until `continue_decoding`.
pub(crate) const HEADERS_STOP_ALL_ITERATION_AND_WATERMARK: i32 = 4;
/// Body and trailer hook results.
pub(crate) const BODY_CONTINUE: i32 = 0;
pub(crate) const TRAILERS_CONTINUE: i32 = 0;

/// Declares the callbacks wscap calls: the table of their names ([`CALLBACK_NAMES`]), one slot
/// per callback for the address `dlsym` found, and per callback an `unsafe fn` with the C
/// signature and the exported name, calling through its slot.
macro_rules! callbacks {
    ($(
        $(#[$meta:meta])*
        fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?;
    )*) => {
        /// One variant per callback: its index in [`CALLBACK_NAMES`] and in the slots.
        #[allow(non_camel_case_types, clippy::enum_variant_names, dead_code)]
        #[derive(Clone, Copy)]
        enum Callback { $($name,)* }

        /// The name of every callback wscap calls, as Envoy exports it.
        pub(crate) const CALLBACK_NAMES: &[&CStr] = &[$(
            match CStr::from_bytes_with_nul(concat!(stringify!($name), "\0").as_bytes()) {
                Ok(name) => name,
                Err(_) => panic!("callback name"),
            },
        )*];

        /// The addresses `dlsym` found, in [`CALLBACK_NAMES`] order; NULL until
        /// [`resolve_callbacks`] succeeded.
        #[cfg_attr(test, allow(dead_code))]
        static SLOTS: [AtomicPtr<c_void>; CALLBACK_NAMES.len()] =
            [const { AtomicPtr::new(ptr::null_mut()) }; CALLBACK_NAMES.len()];

        $(
            $(#[$meta])*
            #[inline]
            pub(crate) unsafe fn $name($($arg: $ty),*) $(-> $ret)? {
                #[cfg(not(test))]
                {
                    let address = slot(Callback::$name as usize);
                    // SAFETY: `address` is what `dlsym` returned for this exact name in Envoy's
                    // global scope, a function with this C signature (`tests/symbols.rs` checks
                    // the names; the end-to-end suites on each supported Envoy call each one).
                    let f = unsafe {
                        std::mem::transmute::<*mut c_void, unsafe extern "C" fn($($ty),*) $(-> $ret)?>(address)
                    };
                    // SAFETY: the caller's contract, as for the C function.
                    unsafe { f($($arg),*) }
                }
                #[cfg(test)]
                // SAFETY: the inert definition of `stubs.rs`, with the same signature.
                unsafe { linked::$name($($arg),*) }
            }
        )*

        /// Unit tests: the definitions in `stubs.rs`, linked statically.
        #[cfg(test)]
        mod linked {
            #[allow(unused_imports)]
            use super::*;
            extern "C" {
                $(pub(super) fn $name($($arg: $ty),*) $(-> $ret)?;)*
            }
        }
    };
}

/// The address in `index`'s slot; a panic (caught by the hook's guard) if it was never
/// resolved, which `program_init` rules out in Envoy.
#[cfg(not(test))]
#[inline]
fn slot(index: usize) -> *mut c_void {
    let address = SLOTS[index].load(Ordering::Acquire);
    if address.is_null() {
        unresolved(index)
    }
    address
}

#[cfg(not(test))]
#[cold]
#[inline(never)]
fn unresolved(index: usize) -> ! {
    panic!(
        "Envoy callback {:?} called before program_init resolved it",
        CALLBACK_NAMES[index]
    )
}

/// Looks up every callback with `lookup` (in Envoy: `dlsym` in the global scope) and fills the
/// slots. On any miss, fills nothing and returns the names not found.
pub(crate) fn resolve_callbacks(
    lookup: impl Fn(&CStr) -> *mut c_void,
) -> Result<(), Vec<&'static CStr>> {
    let found: Vec<*mut c_void> = CALLBACK_NAMES.iter().map(|n| lookup(n)).collect();
    let missing: Vec<&'static CStr> = CALLBACK_NAMES
        .iter()
        .zip(&found)
        .filter(|(_, a)| a.is_null())
        .map(|(n, _)| *n)
        .collect();
    if !missing.is_empty() {
        return Err(missing);
    }
    for (slot, address) in SLOTS.iter().zip(found) {
        slot.store(address, Ordering::Release);
    }
    Ok(())
}

// The callbacks wscap calls, with the names Envoy exports (parameter names are ours). They are
// not linked: `libwscap.so` has no undefined `envoy_dynamic_module_callback_*` symbol, so it
// loads into any Envoy; `envoy_dynamic_module_on_program_init` looks each one up by name with
// `dlsym` ([`resolve_callbacks`]) and refuses the module, naming what is missing, unless all are
// there. The macro makes, per callback, an `unsafe fn` of the same name that calls through the
// resolved address (unit tests: through the inert definitions of `stubs.rs`, linked statically).
callbacks! {
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
// `http_get_cluster_name(filter_envoy, out) -> bool`: the name of the cluster the route
// selected (Envoy's `clusterInfo()` for the stream), false when the route has none. Proved
// on 1.40.0 by `tests/tests/gateway.rs` (plain, weighted_clusters and cluster_header routes,
// and a direct-response route); exported by 1.38.3 and 1.39.3 too.
fn envoy_dynamic_module_callback_http_get_cluster_name(
    filter_envoy: *mut c_void,
    name_out: *mut EnvoyBuffer,
) -> bool;
// The module pointer that `on_http_filter_per_route_config_new` returned for the most
// specific `typed_per_filter_config` of the stream's route (route, then virtual host), or
// NULL when there is none.
fn envoy_dynamic_module_callback_get_most_specific_route_config(
    filter_envoy: *mut c_void,
) -> *const c_void;
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
// `"refuse_with": "close_1013"`: the response headers (`:status 101`, ...) and then data (the
// close frame, `end_stream`), sent from `request_headers` without an upstream. Exported by
// 1.38.3, 1.39.3 and 1.40.0; proved on 1.40.0 by `tests/tests/refuse_close.rs`.
fn envoy_dynamic_module_callback_http_send_response_headers(
    filter_envoy: *mut c_void,
    headers: *const ModuleHeader,
    header_count: usize,
    end_stream: bool,
);
fn envoy_dynamic_module_callback_http_send_response_data(
    filter_envoy: *mut c_void,
    data: ModuleBuffer,
    end_stream: bool,
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
fn envoy_dynamic_module_callback_http_filter_scheduler_delete(
    scheduler: *mut c_void,
);
fn envoy_dynamic_module_callback_http_filter_continue_decoding(
    filter_envoy: *mut c_void,
);
// Chosen closes (rebalance, drain: `crate::close`), from `on_scheduled` on the stream's worker:
// `send_response_data` (above; the filter's `encodeData`) writes a WebSocket close frame into
// the response, then `reset_stream(filter_envoy, reason, details)` (`reason` 0 = LocalReset)
// resets the stream. Proved on 1.40.0 by `tests/tests/rebalance.rs`.
fn envoy_dynamic_module_callback_http_filter_reset_stream(
    filter_envoy: *mut c_void,
    reason: i32,
    details: ModuleBuffer,
);
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
fn envoy_dynamic_module_callback_bootstrap_extension_config_define_counter(
    config_envoy: *mut c_void,
    name: ModuleBuffer,
    label_names: *const ModuleBuffer,
    label_count: usize,
    id_out: *mut usize,
) -> i32;
fn envoy_dynamic_module_callback_bootstrap_extension_config_increment_counter(
    config_envoy: *mut c_void,
    id: usize,
    label_values: *const ModuleBuffer,
    label_count: usize,
    value: u64,
) -> i32;
fn envoy_dynamic_module_callback_bootstrap_extension_config_define_histogram(
    config_envoy: *mut c_void,
    name: ModuleBuffer,
    label_names: *const ModuleBuffer,
    label_count: usize,
    id_out: *mut usize,
) -> i32;
fn envoy_dynamic_module_callback_bootstrap_extension_config_record_histogram_value(
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
// `enable_cluster_lifecycle(config_envoy) -> bool`: from then on Envoy calls the
// `cluster_add_or_update` / `cluster_removal` hooks. Only once the server is initialized
// (the cluster manager exists); false before that or when already enabled.
fn envoy_dynamic_module_callback_bootstrap_extension_enable_cluster_lifecycle(
    config_envoy: *mut c_void,
) -> bool;
fn envoy_dynamic_module_callback_bootstrap_extension_timer_new(
    config_envoy: *mut c_void,
) -> *mut c_void;
fn envoy_dynamic_module_callback_bootstrap_extension_timer_enable(
    timer: *mut c_void,
    delay_ms: u64,
);
fn envoy_dynamic_module_callback_bootstrap_extension_timer_delete(
    timer: *mut c_void,
);

fn envoy_dynamic_module_callback_lb_get_cluster_name(
    lb_envoy: *mut c_void,
    name_out: *mut EnvoyBuffer,
);
fn envoy_dynamic_module_callback_lb_get_priority_set_size(
    lb_envoy: *mut c_void,
) -> usize;
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
// `lb_get_host_health(lb, priority, index) -> health` over *all* hosts of a priority:
// 0 unhealthy, 1 degraded, 2 healthy (Envoy's `Host::Health` order). Proved on 1.40.0 by
// `tests/tests/priorities.rs` (EDS `health_status: DEGRADED` reads 1).
fn envoy_dynamic_module_callback_lb_get_host_health(
    lb_envoy: *mut c_void,
    priority: u32,
    index: usize,
) -> i32;
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
) -> bool;}

/// Bytes of an Envoy buffer, for as long as Envoy keeps it (the caller ties the lifetime to
/// the handle it came from).
///
/// # Safety
/// `b.ptr` is NULL or points at `b.length` readable bytes that stay valid for `'a`.
pub(crate) unsafe fn envoy_bytes<'a>(b: EnvoyBuffer) -> &'a [u8] {
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
pub(crate) fn label_buffers(labels: &[&str]) -> ([ModuleBuffer; 4], usize) {
    let mut bufs = [ModuleBuffer::EMPTY; 4];
    let n = labels.len().min(bufs.len());
    for (b, l) in bufs.iter_mut().zip(labels) {
        *b = ModuleBuffer::of(l);
    }
    (bufs, n)
}

pub(crate) type DefineFn =
    unsafe fn(*mut c_void, ModuleBuffer, *const ModuleBuffer, usize, *mut usize) -> i32;

/// Defines a labelled metric; `None` (logged) when Envoy refuses.
pub(crate) fn define(
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
