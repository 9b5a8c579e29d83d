//! The bootstrap extension `wscap`: the gauge sink ([`crate::bootstrap::GaugeSink`]), the
//! admin endpoint, the refresh timer, and every hook Envoy requires of a bootstrap extension.

use std::ffi::c_void;

use super::sys::*;
use super::{
    config_new, guard, host, into_module_ptr, module_ref, refuse_config, take_module_ptr, text,
};
use crate::bootstrap::{
    self, Bootstrap, GaugeSink, Gauges, GlobalMetrics, GlobalReport, QueueMetrics,
};
use crate::filter::MetricId;
use crate::{config, log, Level, REGISTRY};

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

    fn add_counter(&self, id: MetricId, labels: &[&str], value: u64) {
        let (bufs, n) = label_buffers(labels);
        // SAFETY: live config handle (main thread); `n` label buffers valid for the call.
        let rc = unsafe {
            envoy_dynamic_module_callback_bootstrap_extension_config_increment_counter(
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
                &format!("wscap: add_counter({}) = {rc}", id.0),
            );
        }
    }

    fn record_histogram(&self, id: MetricId, labels: &[&str], value: u64) {
        let (bufs, n) = label_buffers(labels);
        // SAFETY: live config handle (main thread); `n` label buffers valid for the call.
        let rc = unsafe {
            envoy_dynamic_module_callback_bootstrap_extension_config_record_histogram_value(
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
                &format!("wscap: record_histogram({}) = {rc}", id.0),
            );
        }
    }
}

/// Defines the global-mode metrics (inside `config_new`).
fn define_global_metrics(config_envoy: *mut c_void) -> GlobalMetrics {
    let gauge = envoy_dynamic_module_callback_bootstrap_extension_config_define_gauge as DefineFn;
    let counter =
        envoy_dynamic_module_callback_bootstrap_extension_config_define_counter as DefineFn;
    let histogram =
        envoy_dynamic_module_callback_bootstrap_extension_config_define_histogram as DefineFn;
    let pod = &["cluster", "host"];
    GlobalMetrics {
        mode: define(gauge, config_envoy, "wscap_global_mode", &[]),
        share: define(gauge, config_envoy, "wscap_global_share", pod),
        fleet_active: define(
            gauge,
            config_envoy,
            "wscap_global_fleet_active_connections",
            pod,
        ),
        fail_mode_active: define(gauge, config_envoy, "wscap_global_fail_mode_active", &[]),
        lease_age_ms: define(gauge, config_envoy, "wscap_global_lease_age_ms", &[]),
        lease_ttl_ms: define(gauge, config_envoy, "wscap_global_lease_ttl_ms", &[]),
        claim_errors: define(counter, config_envoy, "wscap_global_claim_errors", &[]),
        borrows: define(
            counter,
            config_envoy,
            "wscap_global_borrows",
            &["cluster", "outcome"],
        ),
        borrow_latency_us: define(
            histogram,
            config_envoy,
            "wscap_global_borrow_latency_us",
            &["cluster"],
        ),
    }
}

/// The admin path of drains (`POST`).
const DRAIN_PATH: &str = "/wscap/drain";

/// The bootstrap config: state plus the refresh timer, and Envoy's handle of the config
/// (for the hooks that get only the extension: `server_initialized`).
struct BootstrapConfig {
    state: Bootstrap,
    closing: crate::close::CloseMetrics,
    timer: *mut c_void,
    config_envoy: *mut c_void,
}

/// Parses the config, defines the gauges, registers `/wscap`, starts the timer, and signals
/// init complete (without which Envoy never starts its listeners). NULL refuses.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_config_new(
    config_envoy: *mut c_void,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    config_new(
        "bootstrap_extension_config_new",
        "bootstrap extension",
        "extension_name",
        name,
        config,
        |name, bytes| {
            let settings = match config::parse_bootstrap(bytes) {
                Ok(s) => s,
                Err(e) => return refuse_config("bootstrap extension", name, &e),
            };
            if let Some(global) = &settings.global {
                if let Err(e) = crate::global::start(global) {
                    return refuse_config("bootstrap extension", name, &e);
                }
            }
            let gauge =
                envoy_dynamic_module_callback_bootstrap_extension_config_define_gauge as DefineFn;
            let counter =
                envoy_dynamic_module_callback_bootstrap_extension_config_define_counter as DefineFn;
            // The filter's counters, created at 0 here where that is the same series (see
            // `HostAbi::shares_counters_with_filter`).
            let zero_counters = host::host().is_none_or(|h| h.shares_counters_with_filter());
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
                admitted: zero_counters
                    .then(|| {
                        define(
                            counter,
                            config_envoy,
                            "wscap_admitted",
                            &["cluster", "host"],
                        )
                    })
                    .flatten(),
                rejected: zero_counters
                    .then(|| {
                        define(
                            counter,
                            config_envoy,
                            "wscap_rejected",
                            &["cluster", "reason"],
                        )
                    })
                    .flatten(),
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
            let closing = crate::close::CloseMetrics {
                closed: define(
                    counter,
                    config_envoy,
                    "wscap_closed",
                    &["cluster", "reason"],
                ),
                drains: define(gauge, config_envoy, "wscap_drains_in_progress", &[]),
            };
            // SAFETY: as above; `mutates_state` makes Envoy accept only POST on it.
            let drain_registered = unsafe {
                envoy_dynamic_module_callback_bootstrap_extension_register_admin_handler(
                    config_envoy,
                    ModuleBuffer::of(DRAIN_PATH),
                    ModuleBuffer::of(
                        "wscap: drain one pod gently (POST ?cluster=C&host=ip:port&seconds=S)",
                    ),
                    false,
                    true,
                )
            };
            if !drain_registered {
                log(
                    Level::Warn,
                    "wscap: could not register the admin handler /wscap/drain",
                );
            }
            let global = settings.global.is_some();
            let histogram =
                envoy_dynamic_module_callback_bootstrap_extension_config_define_histogram
                    as DefineFn;
            let mut state = Bootstrap::new(settings, gauges).with_queue_metrics(QueueMetrics {
                waiting: define(gauge, config_envoy, "wscap_waiting", &["cluster"]),
                wait_ms: define(histogram, config_envoy, "wscap_queue_wait_ms", &["cluster"]),
            });
            if global {
                state = state.with_global_metrics(define_global_metrics(config_envoy));
            }
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
            into_module_ptr(BootstrapConfig {
                state,
                closing,
                timer,
                config_envoy,
            })
        },
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
            if cfg.timer.is_null() {
                return;
            }
            // The rule for every host (`host::TimerDelete`): delete on the main thread only.
            if host::on_main_thread() {
                // SAFETY: the timer was created by this config and is deleted once, here, on
                // the main thread that owns it.
                unsafe {
                    envoy_dynamic_module_callback_bootstrap_extension_timer_delete(cfg.timer)
                };
            } else {
                let what = match host::host().map(|h| h.timer_delete()) {
                    Some(host::TimerDelete::Unchecked) => "this Envoy deletes it unchecked",
                    _ => "this Envoy refuses that",
                };
                log(
                    Level::Warn,
                    &format!(
                        "wscap: bootstrap config destroyed off the main thread; its timer is left to Envoy ({what})"
                    ),
                );
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
            cfg.state.sweep(&REGISTRY);
            crate::hot_restart::reap();
            let sink = EnvoyBootstrapConfig(config_envoy);
            let snapshot = REGISTRY.snapshot();
            cfg.state.refresh(&snapshot, &sink);
            cfg.state.refresh_queue(
                &crate::queue::views(),
                &crate::queue::take_wait_samples(),
                &sink,
            );
            let fleet = crate::global::coordinator().and_then(|c| {
                crate::close::FleetCounts::from_view(
                    &c.fleet_view(),
                    std::time::Duration::from_millis(crate::global::refresh_ms()),
                )
            });
            crate::close::tick(
                &snapshot,
                fleet.as_ref(),
                std::time::Instant::now(),
                &cfg.closing,
                &sink,
            );
            if let Some(c) = crate::global::coordinator() {
                let report = GlobalReport {
                    view: c.fleet_view(),
                    samples: c.take_borrow_samples(),
                    lease_age_ms: u64::try_from(c.lease_age().as_millis()).unwrap_or(u64::MAX),
                    lease_ttl_ms: crate::global::lease_ttl_ms(),
                };
                cfg.state.watch_redis(&report.view);
                cfg.state.refresh_global(&report, &sink);
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
            let path = text(path);
            if path.split('?').next() == Some(DRAIN_PATH) {
                return crate::close::admin_drain(&REGISTRY, &text(method), &path);
            }
            bootstrap::admin(
                &text(method),
                &path,
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

/// The per-server extension is the config itself (borrowed: the config outlives it, and
/// `bootstrap_extension_destroy` frees nothing), so `server_initialized` can reach it.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_new(
    config: *const c_void,
    _extension_envoy: *mut c_void,
) -> *const c_void {
    config
}

/// The cluster manager exists now: subscribe to cluster removals (CDS), so that a removed
/// cluster stops being counted and its state is freed.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_server_initialized(
    _extension_envoy: *mut c_void,
    extension: *const c_void,
) {
    // SAFETY: `extension` is the config pointer `bootstrap_extension_new` returned; the config
    // lives until `config_destroy`, after the extension (main thread only).
    let Some(cfg) = (unsafe { module_ref::<BootstrapConfig>(extension) }) else {
        return;
    };
    guard(
        "bootstrap_extension_server_initialized",
        || {
            // SAFETY: live config handle, main thread, server initialized.
            let on = unsafe {
                envoy_dynamic_module_callback_bootstrap_extension_enable_cluster_lifecycle(
                    cfg.config_envoy,
                )
            };
            if !on {
                log(
                    Level::Warn,
                    "wscap: Envoy refused cluster lifecycle events: clusters removed by CDS stay listed in /wscap",
                );
            }
        },
        || (),
    )
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

/// Nothing to free (the extension borrows the config).
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

/// A cluster came (back): stop retiring it.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_cluster_add_or_update(
    _config_envoy: *mut c_void,
    config: *const c_void,
    name: EnvoyBuffer,
) {
    // SAFETY: `config` is from bootstrap config_new and not yet destroyed (main thread only).
    if let Some(cfg) = unsafe { module_ref::<BootstrapConfig>(config) } {
        guard(
            "bootstrap_extension_cluster_add_or_update",
            || cfg.state.cluster_added(&text(name)),
            || (),
        );
    }
}

/// CDS removed a cluster: its hosts drain, and its state is freed once they are empty.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_cluster_removal(
    _config_envoy: *mut c_void,
    config: *const c_void,
    name: EnvoyBuffer,
) {
    // SAFETY: `config` is from bootstrap config_new and not yet destroyed (main thread only).
    if let Some(cfg) = unsafe { module_ref::<BootstrapConfig>(config) } {
        guard(
            "bootstrap_extension_cluster_removal",
            || cfg.state.cluster_removed(&REGISTRY, &text(name)),
            || (),
        );
    }
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
