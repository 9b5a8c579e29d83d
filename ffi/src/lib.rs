//! # wscap-ffi
//!
//! The C ABI over [`wscap_core`]: the same per-host connection limiter and the same Prometheus /
//! JSON exporter, for proxies that are not Envoy. The header is `include/wscap.h`, generated
//! from this crate by cbindgen and checked by `tests/header.rs`. See `ffi/README.md` for the
//! conventions and how to link.
//!
//! Conventions, the same for every entry point:
//! - every function body runs in one gate (`gate!`, module `gate`) that catches panics (→ `WSCAP_RESULT_PANIC`)
//!   and NULL-checks pointers (→ `WSCAP_RESULT_NULL_ARGUMENT`) before any work is done;
//! - strings are NUL-terminated UTF-8 (→ `WSCAP_RESULT_INVALID_UTF8`);
//! - out-params are written only on success; the one exception is `*out_n` on
//!   `WSCAP_RESULT_BUFFER_TOO_SMALL`, which receives the buffer size needed;
//! - handles come in `_new`/`_free` (or acquire/release) pairs; freeing NULL is a no-op;
//! - the registry is thread-safe (`Sync`); a permit may be released from any thread, once.
//!
//! Global mode (one limit per pod across many proxy instances, coordinated through Redis by
//! `wscap-global`) is in module `global`: `wscap_global_start` over a registry, borrows with a
//! callback on the coordinator thread, and the fleet view as JSON.
//!
//! These functions are the C API. They are `extern "C" fn`s that trust their pointer arguments
//! as C callers must (see each function's Safety section); Rust code should use `wscap-core`.
//! All `unsafe` lives in one module, `cast`.

use std::ffi::c_char;
use std::sync::Arc;

use wscap_core::{Cluster, HostAddr, HostSpec, Permit, Registry};

mod cast;
mod config;
mod gate;
mod global;
mod result;

use cast::{BoxCastable, Castable};
use gate::gate;
pub use global::{
    wscap_borrow_done, wscap_borrow_outcome, wscap_global, wscap_global_config_error,
    wscap_global_fleet_json, wscap_global_free, wscap_global_request_borrow, wscap_global_start,
};
pub use result::wscap_result;

/// The largest limit a host or cluster default can have (2^30). Larger ones are refused with
/// `WSCAP_RESULT_LIMIT_TOO_LARGE`.
pub const WSCAP_MAX_LIMIT: u32 = 1073741824;

/// A registry of clusters and their hosts' connection slots.
///
/// Made by `wscap_registry_new`, destroyed by `wscap_registry_free`. Thread-safe: every function
/// that takes a `const wscap_registry *` may be called from any thread at the same time. Permits
/// stay valid after their registry is freed, and a `wscap_global` started over it keeps it
/// alive until `wscap_global_free`.
#[allow(non_camel_case_types)]
pub struct wscap_registry {
    _private: [u8; 0],
}

/// Shared: a global-mode coordinator (`wscap_global_start`) holds a clone, so
/// `wscap_registry_free` and `wscap_global_free` may come in either order.
impl Castable for wscap_registry {
    type RustType = Arc<Registry>;
}
impl BoxCastable for wscap_registry {}

/// A resolved cluster: admission through it skips the lookup by name (the hot path of a proxy
/// that admits on one cluster).
///
/// Made by `wscap_cluster_get`, destroyed by `wscap_cluster_free`. Thread-safe like the registry.
/// It follows the cluster's membership and limits as they change, and stays valid after the
/// registry is freed.
#[allow(non_camel_case_types)]
pub struct wscap_cluster {
    _private: [u8; 0],
}

impl Castable for wscap_cluster {
    type RustType = Cluster;
}
impl BoxCastable for wscap_cluster {}

/// One admitted connection: it holds a slot on one host until `wscap_permit_release`.
///
/// Made by `wscap_acquire` / `wscap_acquire_host`. It may be read and released from any thread,
/// but released exactly once, and not read while or after it is released. It stays valid after
/// its host leaves the cluster (the host drains until its last permit is released) and after
/// the registry is freed.
#[allow(non_camel_case_types)]
pub struct wscap_permit {
    _private: [u8; 0],
}

impl Castable for wscap_permit {
    type RustType = Permit;
}
impl BoxCastable for wscap_permit {}

/// One member of a cluster, for `wscap_set_hosts`.
///
/// Zero-initialised limit fields mean "follow the cluster default", so
/// `wscap_host h = {.address = "10.0.0.1:8080"};` is a host with the default limit and
/// `{.address = "10.0.0.2:8080", .max_connections = 5, .has_max_connections = 1}` has its own.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct wscap_host {
    /// `ip:port` as a NUL-terminated UTF-8 string; IPv6 as `[::1]:8080`. Read during the call
    /// only.
    pub address: *const c_char,
    /// The host's own limit; read only when `has_max_connections` is non-zero. 0 is a valid
    /// limit: the host admits nothing.
    pub max_connections: u32,
    /// 0: the host follows the cluster default limit (and changes with it). Non-zero: the host
    /// has its own limit, `max_connections`.
    pub has_max_connections: u8,
}

/// What a `wscap_set_hosts` call changed.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct wscap_membership_change {
    /// Hosts new to the cluster.
    pub added: usize,
    /// Hosts that left and still hold connections: draining now.
    pub drained: usize,
    /// Draining hosts taken back into service with their counts intact.
    pub revived: usize,
    /// Hosts dropped because they left with no connection open.
    pub removed: usize,
}

/// The library version, e.g. `"0.1.0"`: a static NUL-terminated string, never freed.
///
/// Thread safety: any thread, any time.
#[no_mangle]
pub extern "C" fn wscap_version() -> *const c_char {
    gate!({
        Ok(concat!(env!("CARGO_PKG_VERSION"), "\0")
            .as_ptr()
            .cast::<c_char>())
    })
}

/// A description of a result code, `"<name>: <what happened>"`, e.g.
/// `"no_capacity: every host is at its connection limit"`.
///
/// Returns a static NUL-terminated string: never NULL, never freed, valid for the life of the
/// process. It takes a `uint32_t` rather than a `wscap_result` so that any value is safe to pass;
/// a value that is not a `wscap_result` gives `"unknown: ..."`.
///
/// Thread safety: any thread, any time.
#[no_mangle]
pub extern "C" fn wscap_result_str(result: u32) -> *const c_char {
    gate!({
        Ok(match wscap_result::from_u32(result) {
            Some(r) => r.message().as_ptr(),
            None => result::UNKNOWN_RESULT.as_ptr(),
        })
    })
}

/// Creates a registry, configured from `config_json` (may be NULL: an empty registry).
///
/// The JSON shape (every field described in `ffi/README.md`):
/// `{"clusters":[{"name":"pods","max_connections_per_host":20,
///   "hosts":[{"address":"10.0.0.1:80","max_connections":5}]}]}`.
/// On `WSCAP_RESULT_INVALID_CONFIG` (or `INVALID_UTF8`), `wscap_config_error` says what is wrong.
///
/// On success `*out` is a new registry, to be freed with `wscap_registry_free`. On failure `*out`
/// is not written.
///
/// Thread safety: any thread.
///
/// Safety: `config_json` is NULL or a NUL-terminated string; `out` is writable.
#[no_mangle]
pub extern "C" fn wscap_registry_new(
    config_json: *const c_char,
    out: *mut *mut wscap_registry,
) -> wscap_result {
    gate!({
        let out = cast::try_out(out)?;
        let registry = Registry::new();
        if !config_json.is_null() {
            parse_config(config_json)?.apply(&registry).map_err(bug)?;
        }
        out.write(cast::to_boxed_ptr::<wscap_registry>(Arc::new(registry)));
        Ok(())
    })
}

/// Applies `config_json` to a live registry (a reload): for each cluster listed, sets its default
/// limit, then its hosts (hosts not listed drain; live counts are kept). Clusters not listed
/// are left as they are. The whole document is checked first: a refused one changes nothing.
///
/// Thread safety: any thread, concurrently with admissions and exports.
///
/// Safety: `registry` is a live registry; `config_json` is a NUL-terminated string.
#[no_mangle]
pub extern "C" fn wscap_registry_apply_config(
    registry: *const wscap_registry,
    config_json: *const c_char,
) -> wscap_result {
    gate!({
        let registry = cast::try_ref(registry)?;
        parse_config(config_json)?.apply(registry).map_err(bug)?;
        Ok(())
    })
}

/// Explains why `config_json` would be refused by `wscap_registry_new` /
/// `wscap_registry_apply_config`, e.g.
/// `clusters[0].hosts[1].address: invalid host address "pod-1:80": expected ip:port, ...`.
///
/// Writes the message into `buf` (text buffer convention, see `wscap_export_prometheus`) and
/// returns `WSCAP_RESULT_OK`; the message is empty when the configuration is valid (NULL is a
/// valid configuration).
///
/// Thread safety: any thread; it touches no registry.
///
/// Safety: `config_json` is NULL or a NUL-terminated string; `buf` has `len` writable bytes
/// (or is NULL with `len` 0); `out_n` is writable.
#[no_mangle]
pub extern "C" fn wscap_config_error(
    config_json: *const c_char,
    buf: *mut c_char,
    len: usize,
    out_n: *mut usize,
) -> wscap_result {
    gate!({
        let buf = cast::try_text_buf(buf, len, out_n)?;
        let message = if config_json.is_null() {
            String::new()
        } else {
            match config::Config::parse(cast::try_c_bytes(config_json)?.to_bytes()) {
                Ok(_) => String::new(),
                Err(e) => e.to_string(),
            }
        };
        buf.write(&message)
    })
}

/// Frees a registry. NULL is a no-op. Permits taken from it stay valid and must still be
/// released.
///
/// Thread safety: no other call may use `registry` during or after this one.
///
/// Safety: `registry` is NULL or a live registry, freed once.
#[no_mangle]
pub extern "C" fn wscap_registry_free(registry: *mut wscap_registry) {
    gate!({
        cast::free_boxed(registry);
        Ok(())
    })
}

/// Sets the limit of the hosts of `cluster` that have no limit of their own (creating the
/// cluster if it is new; a new cluster's default is 0, which admits nothing). Takes effect at
/// once for current members; lowering it below a host's live count evicts nobody.
///
/// Errors: `INVALID_CLUSTER_NAME` (empty), `LIMIT_TOO_LARGE` (above `WSCAP_MAX_LIMIT`).
///
/// Thread safety: any thread, concurrently with admissions and exports.
///
/// Safety: `registry` is a live registry; `cluster` is a NUL-terminated string.
#[no_mangle]
pub extern "C" fn wscap_set_default_limit(
    registry: *const wscap_registry,
    cluster: *const c_char,
    limit: u32,
) -> wscap_result {
    gate!({
        let registry = cast::try_ref(registry)?;
        let cluster = cast::try_str(cluster)?;
        registry.set_default_limit(cluster, limit)?;
        Ok(())
    })
}

/// Makes `hosts[0..hosts_len]` the membership of `cluster` (creating the cluster if it is new).
/// Idempotent; set semantics:
/// - hosts new to the cluster are added with no connections;
/// - members not listed drain: no new admissions, still counted and reported until their last
///   permit is released, then removed;
/// - a draining member listed again is revived with its live count intact;
/// - each host's limit is its own (`has_max_connections`) or the cluster default.
///
/// A host listed twice counts once; its last entry wins. Every address is checked before
/// anything changes: on `INVALID_ADDRESS`, `INVALID_UTF8`, `NULL_ARGUMENT` or
/// `LIMIT_TOO_LARGE` the cluster is untouched. `hosts` may be NULL when `hosts_len` is 0 (every
/// member drains). `out_change` may be NULL; on success it receives what changed.
///
/// Thread safety: any thread, concurrently with admissions and exports; membership changes of
/// one cluster are serialised.
///
/// Safety: `registry` is a live registry; `cluster` is a NUL-terminated string; `hosts` points at
/// `hosts_len` `wscap_host`s whose `address` strings are NUL-terminated; `out_change` is NULL or
/// writable.
#[no_mangle]
pub extern "C" fn wscap_set_hosts(
    registry: *const wscap_registry,
    cluster: *const c_char,
    hosts: *const wscap_host,
    hosts_len: usize,
    out_change: *mut wscap_membership_change,
) -> wscap_result {
    gate!({
        let registry = cast::try_ref(registry)?;
        let cluster = cast::try_str(cluster)?;
        let hosts = cast::try_slice(hosts, hosts_len)?;
        let out_change = cast::optional_out(out_change);
        let specs = hosts
            .iter()
            .map(|h| {
                let addr: HostAddr = cast::try_str(h.address)?.parse()?;
                let spec = HostSpec::new(addr);
                Ok(if h.has_max_connections != 0 {
                    spec.with_limit(h.max_connections)
                } else {
                    spec
                })
            })
            .collect::<Result<Vec<_>, wscap_result>>()?;
        let change = registry.set_hosts(cluster, &specs)?;
        if let Some(out) = out_change {
            out.write(wscap_membership_change {
                added: change.added,
                drained: change.drained,
                revived: change.revived,
                removed: change.removed,
            });
        }
        Ok(())
    })
}

/// Admits one connection to the least-loaded host of `cluster` (the most room relative to its
/// limit; ties spread at random). Never goes over a limit, not even for a moment.
///
/// On success `*out` is a permit: keep it for the life of the connection, then pass it to
/// `wscap_permit_release` exactly once. `wscap_permit_host` says which host to connect to.
/// Errors (nothing held, `*out` not written): `UNKNOWN_CLUSTER`, `NO_HOSTS` (none, or all
/// draining), `NO_CAPACITY` (every host is full).
///
/// Lock-free; allocates the permit handle (one small heap allocation).
///
/// Thread safety: any thread, concurrently with everything but `wscap_registry_free`.
///
/// Safety: `registry` is a live registry; `cluster` is a NUL-terminated string; `out` is writable.
#[no_mangle]
pub extern "C" fn wscap_acquire(
    registry: *const wscap_registry,
    cluster: *const c_char,
    out: *mut *mut wscap_permit,
) -> wscap_result {
    gate!({
        let registry = cast::try_ref(registry)?;
        let cluster = cast::try_str(cluster)?;
        let out = cast::try_out(out)?;
        let permit = registry.acquire(cluster)?;
        out.write(cast::to_boxed_ptr::<wscap_permit>(permit));
        Ok(())
    })
}

/// Admits one connection to the host `address` (`ip:port`) of `cluster`, if it is a member,
/// live, and below its limit.
///
/// On success `*out` is a permit, as for `wscap_acquire`. Errors (`*out` not written):
/// `INVALID_ADDRESS`, `UNKNOWN_CLUSTER`, `UNKNOWN_HOST`, `DRAINING`, `NO_CAPACITY`.
///
/// Thread safety: any thread, concurrently with everything but `wscap_registry_free`.
///
/// Safety: `registry` is a live registry; `cluster` and `address` are NUL-terminated strings;
/// `out` is writable.
#[no_mangle]
pub extern "C" fn wscap_acquire_host(
    registry: *const wscap_registry,
    cluster: *const c_char,
    address: *const c_char,
    out: *mut *mut wscap_permit,
) -> wscap_result {
    gate!({
        let registry = cast::try_ref(registry)?;
        let cluster = cast::try_str(cluster)?;
        let address = cast::try_str(address)?;
        let out = cast::try_out(out)?;
        // A plain socket address: the lookup needs no canonical text, so nothing is allocated.
        let addr: std::net::SocketAddr = address
            .trim()
            .parse()
            .map_err(|_| wscap_result::InvalidAddress)?;
        let permit = registry.acquire_host(cluster, addr)?;
        out.write(cast::to_boxed_ptr::<wscap_permit>(permit));
        Ok(())
    })
}

/// Resolves `cluster` once, creating it if it is new (a new cluster's default limit is 0: set
/// it with `wscap_set_default_limit`). On success `*out` is a handle for `wscap_cluster_acquire`,
/// to be freed with `wscap_cluster_free`.
///
/// Errors (`*out` not written): `INVALID_CLUSTER_NAME` (empty), `NULL_ARGUMENT`, `INVALID_UTF8`.
///
/// Thread safety: any thread, concurrently with everything but `wscap_registry_free`.
///
/// Safety: `registry` is a live registry; `cluster` is a NUL-terminated string; `out` is writable.
#[no_mangle]
pub extern "C" fn wscap_cluster_get(
    registry: *const wscap_registry,
    cluster: *const c_char,
    out: *mut *mut wscap_cluster,
) -> wscap_result {
    gate!({
        let registry = cast::try_ref(registry)?;
        let cluster = cast::try_str(cluster)?;
        let out = cast::try_out(out)?;
        let handle = registry.cluster_or_create(cluster)?;
        out.write(cast::to_boxed_ptr::<wscap_cluster>(handle));
        Ok(())
    })
}

/// Frees a cluster handle (the cluster itself stays in its registry). NULL is a no-op.
///
/// Thread safety: no other call may use `cluster` during or after this one.
///
/// Safety: `cluster` is NULL or a live cluster handle, freed once.
#[no_mangle]
pub extern "C" fn wscap_cluster_free(cluster: *mut wscap_cluster) {
    gate!({
        cast::free_boxed(cluster);
        Ok(())
    })
}

/// `wscap_acquire` on a resolved cluster: the same least-loaded admission, without the lookup by
/// name. Errors (`*out` not written): `NO_HOSTS`, `NO_CAPACITY`, `NULL_ARGUMENT`.
///
/// Thread safety: any thread, concurrently with everything but `wscap_cluster_free` of this
/// handle.
///
/// Safety: `cluster` is a live cluster handle; `out` is writable.
#[no_mangle]
pub extern "C" fn wscap_cluster_acquire(
    cluster: *const wscap_cluster,
    out: *mut *mut wscap_permit,
) -> wscap_result {
    gate!({
        let cluster = cast::try_ref(cluster)?;
        let out = cast::try_out(out)?;
        let permit = cluster.acquire()?;
        out.write(cast::to_boxed_ptr::<wscap_permit>(permit));
        Ok(())
    })
}

/// Writes the permit's host, canonical `ip:port` (IPv6 as `[::1]:80`), into `buf`, by the text
/// buffer convention (see `wscap_export_prometheus`). 64 bytes always suffice
/// (`WSCAP_ADDRESS_BUF_LEN`).
///
/// Thread safety: any thread, but not concurrently with the permit's release.
///
/// Safety: `permit` is a live permit; `buf` has `len` writable bytes (or is NULL with `len` 0);
/// `out_n` is writable.
#[no_mangle]
pub extern "C" fn wscap_permit_host(
    permit: *const wscap_permit,
    buf: *mut c_char,
    len: usize,
    out_n: *mut usize,
) -> wscap_result {
    gate!({
        let permit = cast::try_ref(permit)?;
        cast::try_text_buf(buf, len, out_n)?.write(permit.host().as_str())
    })
}

/// Writes the name of the permit's cluster into `buf`, by the text buffer convention (see
/// `wscap_export_prometheus`).
///
/// Thread safety: any thread, but not concurrently with the permit's release.
///
/// Safety: `permit` is a live permit; `buf` has `len` writable bytes (or is NULL with `len` 0);
/// `out_n` is writable.
#[no_mangle]
pub extern "C" fn wscap_permit_cluster(
    permit: *const wscap_permit,
    buf: *mut c_char,
    len: usize,
    out_n: *mut usize,
) -> wscap_result {
    gate!({
        let permit = cast::try_ref(permit)?;
        cast::try_text_buf(buf, len, out_n)?.write(permit.cluster())
    })
}

/// Releases a permit: its host's slot is free again, at once. NULL is a no-op.
///
/// Call it exactly once per permit (set your pointer to NULL after), once the connection to the
/// backend is closed: released while that socket is still open, the slot can admit a new
/// connection that reaches the backend first (limit + 1 there for a moment). Lock-free, except when it is the last connection of a draining host (which is
/// then dropped from its cluster).
///
/// Thread safety: any thread (not necessarily the one that acquired it).
///
/// Safety: `permit` is NULL or a live permit, released once and not used afterwards.
#[no_mangle]
pub extern "C" fn wscap_permit_release(permit: *mut wscap_permit) {
    gate!({
        cast::free_boxed(permit);
        Ok(())
    })
}

/// Writes the Prometheus text exposition (format 0.0.4) of every cluster and host into `buf`:
/// `wscap_active_connections`, `wscap_connection_limit`, `wscap_admitted`,
/// `wscap_peak_connections`, `wscap_host_draining` (labels `cluster`, `host`) and
/// `wscap_rejected` (labels `cluster`, `reason`).
///
/// The text buffer convention, shared by every function that writes text:
/// - if the text and its terminating NUL fit in `len` bytes, they are written, `*out_n` is the
///   text's length (the NUL not counted) and the result is `WSCAP_RESULT_OK`;
/// - otherwise nothing is written to `buf`, `*out_n` is the buffer size needed (NUL included)
///   and the result is `WSCAP_RESULT_BUFFER_TOO_SMALL`. The text can grow between two calls
///   (counts change), so retry in a loop;
/// - `buf` may be NULL with `len` 0 to ask for the size; `out_n` must not be NULL.
///
/// Thread safety: any thread, concurrently with admissions and membership changes (each host is
/// read atomically; the text is a consistent-enough point-in-time copy).
///
/// Safety: `registry` is a live registry; `buf` has `len` writable bytes (or is NULL with `len`
/// 0); `out_n` is writable.
#[no_mangle]
pub extern "C" fn wscap_export_prometheus(
    registry: *const wscap_registry,
    buf: *mut c_char,
    len: usize,
    out_n: *mut usize,
) -> wscap_result {
    gate!({
        let registry = cast::try_ref(registry)?;
        let buf = cast::try_text_buf(buf, len, out_n)?;
        buf.write(&registry.snapshot().to_prometheus())
    })
}

/// Writes the admin JSON of every cluster and host into `buf`, by the text buffer convention
/// (see `wscap_export_prometheus`):
/// `{"clusters":[{"name":..,"default_limit":n,"rejected":{"no_capacity":n,"no_hosts":n},
/// "hosts":[{"address":"ip:port","active":n,"limit":n,"state":"active|draining",
/// "admitted":n,"rejected":n,"peak":n}]}]}`.
///
/// Thread safety: as `wscap_export_prometheus`.
///
/// Safety: as `wscap_export_prometheus`.
#[no_mangle]
pub extern "C" fn wscap_export_json(
    registry: *const wscap_registry,
    buf: *mut c_char,
    len: usize,
    out_n: *mut usize,
) -> wscap_result {
    gate!({
        let registry = cast::try_ref(registry)?;
        let buf = cast::try_text_buf(buf, len, out_n)?;
        buf.write(&registry.snapshot().to_json())
    })
}

/// A buffer of this many bytes holds any host address `wscap_permit_host` writes (the longest,
/// a scoped IPv6 address with port, is well under it).
pub const WSCAP_ADDRESS_BUF_LEN: usize = 64;

fn parse_config(config_json: *const c_char) -> Result<config::Config, wscap_result> {
    let bytes = cast::try_c_bytes(config_json)?.to_bytes();
    if std::str::from_utf8(bytes).is_err() {
        return Err(wscap_result::InvalidUtf8);
    }
    config::Config::parse(bytes).map_err(|_| wscap_result::InvalidConfig)
}

/// A core refusal of a configuration that `config::Config::parse` accepted: a bug, reported as
/// one rather than as bad input.
fn bug(_: wscap_core::ConfigError) -> wscap_result {
    wscap_result::Panic
}
