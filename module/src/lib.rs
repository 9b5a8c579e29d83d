//! # wscap-envoy (`libwscap.so`)
//!
//! An Envoy 1.40 dynamic module (ABI `v0.2.0`) with three extensions over one process-wide
//! [`REGISTRY`] (the `.so` is loaded once per process, so the statics are shared):
//!
//! - HTTP filter `wscap` ([`filter`]): admits WebSocket upgrades against per-host caps, steers
//!   them with a strict upstream override host, refuses with `503` when every host is full.
//! - LB policy `wscap` ([`lb`]): feeds the cluster's healthy membership (and per-host
//!   `filter_metadata.wscap.max_connections`) into core and balances other traffic.
//! - Bootstrap extension `wscap` ([`bootstrap`]): `GET /wscap` on the admin listener and the
//!   `wscap_active_connections` / `wscap_connection_limit` gauges; with `redis_url` in its config
//!   it starts global mode ([`global`]): exact per-pod limits across Envoy instances.
//!
//! The C ABI is bound by hand in one private module folder (`src/abi/`: C types and imports in `sys.rs`, one file of hooks per extension), the only place with `unsafe`;
//! every exported hook catches panics there. Everything else is safe Rust, unit-tested with
//! fakes of the small traits it needs ([`filter::Stream`], [`lb::ClusterView`],
//! [`bootstrap::GaugeSink`]).
#![deny(unsafe_code)]

use std::sync::LazyLock;

use wscap_core::Registry;

#[allow(unsafe_code)]
mod abi;
pub mod admission;
pub mod bootstrap;
pub mod close;
pub mod config;
pub mod filter;
pub mod global;
pub mod hot_restart;
pub mod lb;
pub mod queue;
pub mod refuse;

/// The process-wide registry shared by the filter (workers), the LB policy (main + workers)
/// and the bootstrap extension (main); with Envoy's hot restart on, its counts are shared with
/// the other process of a restart ([`hot_restart`]).
pub static REGISTRY: LazyLock<Registry> = LazyLock::new(hot_restart::registry);

/// How this `.so` was built, in its read-only data (and as an exported symbol), so that tools can
/// tell a release build from a debug one without loading it: the Envoy benchmark and the
/// instruction-count bench refuse a debug module (`wscap_e2e::module_profile` reads it).
#[cfg(debug_assertions)]
#[allow(unsafe_code)] // `no_mangle`: exported, so the linker keeps it
#[no_mangle]
#[used]
pub static WSCAP_BUILD_PROFILE: [u8; 28] = *b"wscap-build-profile:debug\0\0\0";
/// How this `.so` was built (see the debug variant of this item).
#[cfg(not(debug_assertions))]
#[allow(unsafe_code)] // `no_mangle`: exported, so the linker keeps it
#[no_mangle]
#[used]
pub static WSCAP_BUILD_PROFILE: [u8; 28] = *b"wscap-build-profile:release\0";

/// The ABI version this module is written against (Envoy 1.40.0 reports `v0.2.0`).
pub const ABI_VERSION: &str = "v0.2.0";

/// Envoy log levels, as the ABI numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Level {
    /// trace
    Trace = 0,
    /// debug
    Debug = 1,
    /// info
    Info = 2,
    /// warning
    Warn = 3,
    /// error
    Error = 4,
    /// critical
    Critical = 5,
}

/// Writes to Envoy's log (component `dynamic_modules`). In unit tests (no Envoy), to stderr.
pub fn log(level: Level, message: &str) {
    abi::log(level, message);
}

/// Whether Envoy would print a message at `level` (lets hot paths skip formatting one).
pub fn log_enabled(level: Level) -> bool {
    abi::log_enabled(level)
}
