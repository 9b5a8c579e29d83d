//! Hand-written bindings to the Envoy dynamic-module C ABI, as Envoy 1.40.0 implements it
//! (ABI string `v0.2.0`; 1.39 and 1.38 report `v0.1.0` and run the same bindings). The only
//! folder of the crate with `unsafe`, laid out by what it binds:
//!
//! - [`sys`]: C types and the callbacks wscap imports (only those it calls), plus buffer,
//!   logging and metric-definition helpers;
//! - [`filter`], [`lb`], [`bootstrap`]: per extension, the handle types that implement the
//!   crate's safe traits ([`crate::filter::Stream`], [`crate::lb::ClusterView`],
//!   [`crate::bootstrap::GaugeSink`]) and every hook Envoy resolves with `dlsym` for it;
//! - this file: what all hooks share: [`guard`] (a panic is caught, logged, and answered with a
//!   fail-closed default; it never unwinds into Envoy), module-pointer ownership, config refusal,
//!   and `envoy_dynamic_module_on_program_init`.
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

use crate::Level;
use sys::{envoy_bytes, EnvoyBuffer, HEADERS_CONTINUE};

mod bootstrap;
mod filter;
mod host;
mod lb;
#[cfg(test)]
mod stubs;
mod sys;

pub(crate) use sys::{log, log_enabled};

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

/// Did `program_init` accept this Envoy? The config hooks refuse otherwise, silently (the reason
/// went to stderr once): Envoy 1.37 still calls the bootstrap extension's `config_new` after
/// `program_init` returned NULL. Unit tests run without `program_init`.
fn host_ready() -> bool {
    cfg!(test) || host::host().is_some()
}

/// Every `*_config_new` hook, under [`guard`]: NULL (Envoy refuses the config) when the host
/// check at load failed or when Envoy names another extension than `wscap` (its `name_field`);
/// else `body(name, config bytes)`.
fn config_new(
    hook: &str,
    kind: &str,
    name_field: &str,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
    body: impl FnOnce(&str, &[u8]) -> *const c_void,
) -> *const c_void {
    guard(
        hook,
        || {
            if !host_ready() {
                return ptr::null();
            }
            let name = text(name);
            if name != "wscap" {
                return refuse_config(
                    kind,
                    &name,
                    &format!("unknown {name_field}: expected \"wscap\""),
                );
            }
            // SAFETY: Envoy's config buffer is valid during this hook.
            body(&name, unsafe { envoy_bytes(config) })
        },
        ptr::null,
    )
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

/// Looks up every callback wscap calls and detects the host ([`host`]); returns the ABI
/// version string, or NULL (Envoy refuses the module) after one line on stderr when this Envoy
/// lacks a callback.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    program_init(|name| {
        // SAFETY: `name` is NUL-terminated; RTLD_DEFAULT searches the global scope, where the
        // Envoy executable exports its callbacks.
        unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) }
    })
}

fn program_init(lookup: impl Fn(&CStr) -> *mut c_void) -> *const c_char {
    let init = catch_unwind(AssertUnwindSafe(|| match host::init(lookup) {
        Ok(host) => {
            log(
                Level::Info,
                &format!(
                    "wscap: host Envoy {host} (its ABI {}, wscap's {}); all {} callbacks found; release order: {}",
                    host.abi_string(),
                    crate::ABI_VERSION,
                    sys::CALLBACK_NAMES.len(),
                    match host.release_order() {
                        host::ReleaseOrder::AfterUpstreamClose => "after the upstream close",
                        host::ReleaseOrder::BeforeUpstreamClose => "before the upstream close",
                    }
                ),
            );
            true
        }
        Err(unsupported) => {
            // One write of one line: Envoy's log callback may be missing too.
            use std::io::Write;
            let _ = std::io::stderr().write_all(unsupported.line().as_bytes());
            false
        }
    }));
    if init.unwrap_or(false) {
        ABI_VERSION_C.as_ptr()
    } else {
        ptr::null()
    }
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

#[cfg(test)]
mod tests {
    use super::bootstrap::envoy_dynamic_module_on_bootstrap_extension_config_new;
    use super::filter::envoy_dynamic_module_on_http_filter_config_new;
    use super::lb::envoy_dynamic_module_on_lb_config_new;
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
        let v = program_init(|_| ptr::NonNull::<c_void>::dangling().as_ptr());
        // SAFETY: a pointer to a static NUL-terminated string.
        let s = unsafe { CStr::from_ptr(v) };
        assert_eq!(s.to_str().unwrap(), crate::ABI_VERSION);
    }

    #[test]
    fn program_init_refuses_when_a_callback_is_missing() {
        let v = program_init(|name| {
            if name.to_bytes().ends_with(b"_lb_get_hosts_count") {
                ptr::null_mut()
            } else {
                ptr::NonNull::<c_void>::dangling().as_ptr()
            }
        });
        assert!(v.is_null());
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
