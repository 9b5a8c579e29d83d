//! The HTTP filter `wscap`: the stream handle ([`crate::filter::Stream`]), the per-stream
//! scheduler, and every hook Envoy requires of an HTTP filter.

use std::ffi::c_void;
use std::ptr;
use std::sync::Arc;

use super::sys::*;
use super::{config_new, guard, into_module_ptr, module_ref, refuse_config, take_module_ptr};
use crate::config::RouteSettings;
use crate::filter::{
    Filter, FilterConfig, FilterMetrics, HeaderKind, HeadersStatus, MetricId, Resume,
};
use crate::global::GlobalBorrower;
use crate::{config, log, Level, REGISTRY};

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

    fn send_upgrade_and_close(&mut self, headers: &[(&str, &str)], frame: &[u8]) {
        let hs: Vec<ModuleHeader> = headers
            .iter()
            .map(|(k, v)| ModuleHeader {
                key_ptr: k.as_ptr().cast(),
                key_length: k.len(),
                value_ptr: v.as_ptr().cast(),
                value_length: v.len(),
            })
            .collect();
        let data = ModuleBuffer {
            ptr: frame.as_ptr().cast(),
            length: frame.len(),
        };
        // SAFETY: live filter handle; the header array, the strings it points at and the frame
        // outlive the calls; Envoy copies them.
        unsafe {
            envoy_dynamic_module_callback_http_send_response_headers(
                self.0,
                hs.as_ptr(),
                hs.len(),
                false,
            );
            envoy_dynamic_module_callback_http_send_response_data(self.0, data, true);
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

    fn routed_cluster(&self) -> Option<&str> {
        let mut out = EnvoyBuffer::EMPTY;
        // SAFETY: live filter handle; valid out-pointer.
        let found =
            unsafe { envoy_dynamic_module_callback_http_get_cluster_name(self.0, &mut out) };
        if !found {
            return None;
        }
        // SAFETY: the name lives in the cluster info the stream holds for its whole life.
        std::str::from_utf8(unsafe { envoy_bytes(out) }).ok()
    }

    fn route_settings(&self) -> Option<RouteSettings> {
        // SAFETY: live filter handle.
        let ptr = unsafe { envoy_dynamic_module_callback_get_most_specific_route_config(self.0) };
        // SAFETY: a non-null pointer is one `on_http_filter_per_route_config_new` made with
        // `into_module_ptr::<RouteSettings>`; Envoy keeps the per-route config (and so the
        // pointer) alive while the stream's route is in use.
        unsafe { module_ref::<RouteSettings>(ptr) }.copied()
    }

    fn close_upgraded(&mut self) {
        // A server close frame (unmasked): FIN + opcode 8, length 2, code 1012 "service restart",
        // so that the client reconnects at once; then the reset ends the tunnel both ways.
        const CLOSE_1012: [u8; 4] = [0x88, 0x02, 0x03, 0xF4];
        // SAFETY: live filter handle in `on_scheduled` on the stream's worker; Envoy copies the
        // bytes.
        unsafe {
            envoy_dynamic_module_callback_http_send_response_data(
                self.0,
                ModuleBuffer {
                    ptr: CLOSE_1012.as_ptr().cast(),
                    length: CLOSE_1012.len(),
                },
                false,
            );
            envoy_dynamic_module_callback_http_filter_reset_stream(
                self.0,
                0,
                ModuleBuffer::of("wscap_close"),
            );
        }
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

/// Parses the filter config, defines the counters, resolves the cluster. NULL refuses.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: *mut c_void,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    config_new(
        "http_filter_config_new",
        "http filter",
        "filter_name",
        name,
        config,
        |name, bytes| {
            let settings = match config::parse_filter(bytes) {
                Ok(s) => s,
                Err(e) => return refuse_config("http filter", name, &e),
            };
            let closing = match crate::close::parse_policy(bytes) {
                Ok(p) => p,
                Err(e) => return refuse_config("http filter", name, &e),
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
                    crate::close::set_policy(settings.cluster.as_deref(), closing);
                    log(
                        Level::Info,
                        &format!(
                            "wscap: http filter for {}: {} connections per host, retry-after {}s",
                            settings.cluster.as_ref().map_or_else(
                                || "every cluster with the wscap LB policy".to_owned(),
                                |c| format!("cluster {c:?}")
                            ),
                            settings.max_connections_per_host,
                            settings.retry_after_seconds
                        ),
                    );
                    into_module_ptr(Arc::new(cfg))
                }
                Err(e) => refuse_config("http filter", name, &e),
            }
        },
    )
}

/// Parses a per-route config (`DynamicModuleFilterPerRoute`); NULL refuses it (Envoy then
/// refuses the route configuration, naming the hook).
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    config_new(
        "http_filter_per_route_config_new",
        "per-route",
        "filter_name",
        name,
        config,
        |name, bytes| match config::parse_route(bytes) {
            Ok(route) => into_module_ptr(route),
            Err(e) => refuse_config("per-route", name, &e),
        },
    )
}

/// Drops a per-route config.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_destroy(
    config: *const c_void,
) {
    guard(
        "http_filter_per_route_config_destroy",
        || {
            // SAFETY: `config` came from `into_module_ptr` in per_route_config_new; destroyed once.
            drop(unsafe { take_module_ptr::<RouteSettings>(config) });
        },
        || (),
    )
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
            let mut stream = EnvoyStream(filter_envoy);
            let mut f = f.borrow_mut();
            f.on_response_headers(&mut stream);
            f.register_for_close(&mut stream);
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
