//! The LB policy `wscap`: the cluster handle ([`crate::lb::ClusterView`]), the host-selection
//! context, and every hook Envoy requires of a load-balancing policy.

use std::ffi::c_void;
use std::ptr;

use super::sys::*;
use super::{config_new, guard, into_module_ptr, module_ref, refuse_config, take_module_ptr};
use crate::lb::{ClusterView, Health, Lb, RequestView};
use crate::{config, REGISTRY};

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

    fn host_health(&self, priority: u32, index: usize) -> Health {
        // SAFETY: live LB handle; out-of-range indexes answer "unhealthy".
        match unsafe { envoy_dynamic_module_callback_lb_get_host_health(self.0, priority, index) } {
            HOST_HEALTH_HEALTHY => Health::Healthy,
            HOST_HEALTH_DEGRADED => Health::Degraded,
            _ => Health::Unhealthy,
        }
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

/// Marker returned as the LB config (the LB policy has no state beyond the registry).
static LB_CONFIG_MARKER: u8 = 0;

/// Parses the LB config (`{}`). NULL refuses.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_lb_config_new(
    _config_envoy: *mut c_void,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    config_new(
        "lb_config_new",
        "lb policy",
        "lb_policy_name",
        name,
        config,
        |name, bytes| match config::parse_lb(bytes) {
            Ok(_) => ptr::from_ref(&LB_CONFIG_MARKER).cast(),
            Err(e) => refuse_config("lb policy", name, &e),
        },
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
