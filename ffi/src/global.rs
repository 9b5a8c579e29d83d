//! Global mode through the C API: one limit per pod across many proxy instances, with Redis as
//! the shared ledger (`wscap-global`, described in `docs/GLOBAL.md`). The same coordinator the
//! Envoy module runs, over a C registry.
//!
//! The shape of a C proxy's admission in global mode: `wscap_acquire`; on `NO_CAPACITY`,
//! `wscap_global_request_borrow`, and when its callback says `GRANTED`, `wscap_acquire` again.

use std::ffi::{c_char, c_void};
use std::sync::Arc;

use ::wscap_global::{BorrowOutcome, Coordinator, GlobalConfig, Ledger};

use crate::cast::{self, BoxCastable, Castable};
use crate::gate::gate;
use crate::{wscap_registry, wscap_result};

/// Global mode running over one registry: a coordinator thread that holds this instance's share
/// of every pod in Redis and caps the registry's hosts to it.
///
/// Made by `wscap_global_start`, destroyed by `wscap_global_free`. Thread-safe: every function
/// that takes a `const wscap_global *` may be called from any thread at the same time.
#[allow(non_camel_case_types)]
pub struct wscap_global {
    _private: [u8; 0],
}

impl Castable for wscap_global {
    type RustType = Coordinator;
}
impl BoxCastable for wscap_global {}

/// What a borrow round learned, passed to a `wscap_borrow_done` callback.
///
/// The values are part of the ABI: explicit, never reused.
#[allow(non_camel_case_types)]
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum wscap_borrow_outcome {
    /// Some host of the cluster got more room on this instance: call `wscap_acquire` again.
    Granted = 0,
    /// Every host of the cluster is at its limit across the fleet (or the cluster has none).
    Full = 1,
    /// Redis could not be reached (or the coordinator is stopping); the fail mode decides what
    /// is admitted.
    Unavailable = 2,
}

impl From<BorrowOutcome> for wscap_borrow_outcome {
    fn from(o: BorrowOutcome) -> Self {
        match o {
            BorrowOutcome::Granted => wscap_borrow_outcome::Granted,
            BorrowOutcome::Full => wscap_borrow_outcome::Full,
            BorrowOutcome::Unavailable => wscap_borrow_outcome::Unavailable,
        }
    }
}

/// The callback of `wscap_global_request_borrow`: called exactly once, on the coordinator's
/// thread, with the caller's `user_data` and the outcome. It must return quickly and must not
/// block (every other borrow and refresh of the instance waits for it), and must not call
/// `wscap_global_free`. Signal your own thread or event loop and admit from there.
#[allow(non_camel_case_types)]
pub type wscap_borrow_done =
    Option<extern "C" fn(user_data: *mut c_void, outcome: wscap_borrow_outcome)>;

/// Parses and checks a global-mode configuration: the JSON, its values, and the Redis URL
/// (without connecting).
fn check_config(json: &str) -> Result<GlobalConfig, String> {
    let config = GlobalConfig::from_json(json).map_err(|e| e.to_string())?;
    Ledger::new(&config).map_err(|e| format!("invalid global config: {e}"))?;
    Ok(config)
}

/// Starts global mode over `registry`, configured by `config_json`, the same settings as the
/// Envoy bootstrap extension's `global` object (see `docs/GLOBAL.md`):
/// `{"redis_url":"redis://127.0.0.1:6379","instance_id":"proxy-1","lease_ttl_ms":10000,
/// "refresh_ms":1000,"fail_mode":"keep_share","headroom":2,"restart_grace_ms":10000,
/// "key_prefix":"wscap"}` (only `redis_url` is required; `fail_mode` `local_limit` needs
/// `local_limit`). Every instance of the fleet must use the same Redis, key prefix and
/// per-host limits, and its own `instance_id`.
///
/// From this call on, every host of the registry (present and future) admits nothing until
/// Redis grants this instance a share of it; the coordinator thread then raises and lowers the
/// hosts' caps. Admission stays local (`wscap_acquire` never waits on Redis): on `NO_CAPACITY`,
/// ask for more room with `wscap_global_request_borrow`. Redis is reached lazily: an unreachable
/// Redis is not an error here, the fail mode applies.
///
/// On success `*out` is a new handle, to be freed with `wscap_global_free`. It keeps the
/// registry alive: `wscap_registry_free` may come before or after `wscap_global_free`. Start at
/// most one per registry. Errors (`*out` not written): `INVALID_CONFIG` (refused settings or
/// `redis_url`; `wscap_global_config_error` says why), `INVALID_UTF8`, `NULL_ARGUMENT`,
/// `GLOBAL_START_FAILED` (no thread).
///
/// Thread safety: any thread, concurrently with everything but `wscap_registry_free` of
/// `registry`.
///
/// Safety: `registry` is a live registry; `config_json` is a NUL-terminated string; `out` is
/// writable.
#[no_mangle]
pub extern "C" fn wscap_global_start(
    registry: *const wscap_registry,
    config_json: *const c_char,
    out: *mut *mut wscap_global,
) -> wscap_result {
    gate!({
        let registry = cast::try_ref(registry)?;
        let config_json = cast::try_str(config_json)?;
        let out = cast::try_out(out)?;
        let config = check_config(config_json).map_err(|_| wscap_result::InvalidConfig)?;
        let coordinator = Coordinator::start_with(config, Arc::clone(registry))
            .map_err(|_| wscap_result::GlobalStartFailed)?;
        out.write(cast::to_boxed_ptr::<wscap_global>(coordinator));
        Ok(())
    })
}

/// Explains why `config_json` would be refused by `wscap_global_start`, e.g.
/// `invalid global config: refresh_ms must be at least 10 and at most a third of lease_ttl_ms
/// (900), got 500`.
///
/// Writes the message into `buf` (text buffer convention, see `wscap_export_prometheus`) and
/// returns `WSCAP_RESULT_OK`; the message is empty when the configuration is valid.
///
/// Thread safety: any thread; it touches no registry and does not connect to Redis.
///
/// Safety: `config_json` is a NUL-terminated string; `buf` has `len` writable bytes (or is
/// NULL with `len` 0); `out_n` is writable.
#[no_mangle]
pub extern "C" fn wscap_global_config_error(
    config_json: *const c_char,
    buf: *mut c_char,
    len: usize,
    out_n: *mut usize,
) -> wscap_result {
    gate!({
        let bytes = cast::try_c_bytes(config_json)?.to_bytes();
        let buf = cast::try_text_buf(buf, len, out_n)?;
        let message = match std::str::from_utf8(bytes) {
            Ok(json) => check_config(json).err().unwrap_or_default(),
            Err(e) => format!(
                "invalid global config: not valid UTF-8 (at byte {})",
                e.valid_up_to()
            ),
        };
        buf.write(&message)
    })
}

/// Stops global mode and frees the handle. NULL is a no-op.
///
/// Blocks until the coordinator thread has stopped (at most one Redis round trip, bounded by
/// the I/O timeout of `refresh_ms / 2`). Borrow callbacks still pending are called first, with
/// `WSCAP_BORROW_OUTCOME_UNAVAILABLE`. Shares held in Redis are not handed back: their leases
/// expire on their own within `lease_ttl_ms`, as when the process dies. The registry keeps the
/// caps last set (permits still held stay valid and must still be released) and is freed once
/// both this handle and `wscap_registry_free` are done with it.
///
/// Thread safety: no other call may use `global` during or after this one, and it must not be
/// called from a `wscap_borrow_done` callback (that runs on the thread it waits for).
///
/// Safety: `global` is NULL or a live handle, freed once.
#[no_mangle]
pub extern "C" fn wscap_global_free(global: *mut wscap_global) {
    gate!({
        cast::free_boxed(global);
        Ok(())
    })
}

/// Asks for more room on `cluster` for this instance, after `wscap_acquire` refused with
/// `NO_CAPACITY`. Returns at once; one borrow round (one Redis round trip per host tried) runs
/// on the coordinator thread, which then calls `done(user_data, outcome)`: exactly once, on
/// that thread, never from inside this call. On `GRANTED`, call `wscap_acquire` again (another
/// caller may take the room first: then borrow again); on `FULL` or `UNAVAILABLE`, refuse the
/// connection. An unknown cluster, or one with no hosts, gives `FULL`.
///
/// `done` must not block and must not call `wscap_global_free` (see `wscap_borrow_done`).
/// `user_data` is passed through untouched (NULL allowed) and used on the coordinator thread.
/// Errors (`done` never called): `NULL_ARGUMENT` (`global`, `cluster` or `done`),
/// `INVALID_UTF8`.
///
/// Thread safety: any thread, concurrently with everything but `wscap_global_free`.
///
/// Safety: `global` is a live handle; `cluster` is a NUL-terminated string; `user_data` stays
/// valid until `done` is called.
#[no_mangle]
pub extern "C" fn wscap_global_request_borrow(
    global: *const wscap_global,
    cluster: *const c_char,
    done: wscap_borrow_done,
    user_data: *mut c_void,
) -> wscap_result {
    gate!({
        let global = cast::try_ref(global)?;
        let cluster = cast::try_str(cluster)?;
        let done = done.ok_or(wscap_result::NullArgument)?;
        let user_data = cast::UserData::new(user_data);
        global.request_borrow(cluster, move |outcome| {
            done(user_data.get(), outcome.into());
        });
        Ok(())
    })
}

/// Writes the fleet as this instance last saw it (updated every `refresh_ms`) as JSON into
/// `buf`, by the text buffer convention (see `wscap_export_prometheus`):
/// `{"instance":"proxy-1","redis_ok":true,"redis_commands":n,"borrows":n,
/// "pods":[{"cluster":..,"address":"ip:port","limit":n,"live":n,"shares":n,"my_share":n,
/// "instances":[{"instance":..,"share":n,"live":n}]}]}` (`"last_error"` is present when the
/// last round failed). `live` and `shares` are summed over the live instances.
///
/// Thread safety: any thread, concurrently with everything but `wscap_global_free`.
///
/// Safety: `global` is a live handle; `buf` has `len` writable bytes (or is NULL with `len` 0);
/// `out_n` is writable.
#[no_mangle]
pub extern "C" fn wscap_global_fleet_json(
    global: *const wscap_global,
    buf: *mut c_char,
    len: usize,
    out_n: *mut usize,
) -> wscap_result {
    gate!({
        let global = cast::try_ref(global)?;
        let buf = cast::try_text_buf(buf, len, out_n)?;
        let json = serde_json::to_string(&global.fleet_view()).map_err(|_| wscap_result::Panic)?;
        buf.write(&json)
    })
}
