//! The one switch for what differs between the Envoy versions wscap supports: [`HostAbi`],
//! detected once in `envoy_dynamic_module_on_program_init` from the callbacks the running Envoy
//! exports, before any other hook runs.
//!
//! Rule: code outside this file never asks which Envoy it runs in. A difference between Envoy
//! versions is a method of [`HostAbi`] (documented here, with the versions it was seen on), and
//! the CI matrix (`scripts/test-matrix`) checks the detection on each supported Envoy
//! (`module/tests/host.rs`).
//!
//! Detection:
//! - every callback wscap calls must be exported (1.37 and older lack 17 of them, among them
//!   the whole load-balancing policy extension point): otherwise the module refuses to load,
//!   with one line on stderr ([`Unsupported::line`]);
//! - then a marker callback wscap never calls tells the feature level apart:
//!   `get_log_level` appeared in 1.39, `bootstrap_extension_get_active_resource_names` in 1.40.

use std::ffi::{c_void, CStr};
use std::fmt;
use std::sync::OnceLock;
use std::thread::ThreadId;

use super::sys::resolve_callbacks;

/// The Envoy versions wscap supports (and the CI matrix runs).
pub(crate) const SUPPORTED: &str = "1.38, 1.39 and 1.40";

const MARKER_1_39: &CStr = c"envoy_dynamic_module_callback_get_log_level";
const MARKER_1_40: &CStr =
    c"envoy_dynamic_module_callback_bootstrap_extension_get_active_resource_names";

/// The Envoy wscap runs in, by feature level (a newer Envoy reports as the newest level known).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HostAbi {
    /// Envoy 1.38 (ABI string `v0.1.0`).
    Envoy1_38,
    /// Envoy 1.39 (ABI string `v0.1.0`).
    Envoy1_39,
    /// Envoy 1.40 or newer (ABI string `v0.2.0`).
    Envoy1_40,
}

/// What `bootstrap_extension_timer_delete` does, read from the binaries' machine code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TimerDelete {
    /// 1.38: a plain `delete`, no thread check: called off the main thread it races the main
    /// dispatcher that owns the timer.
    Unchecked,
    /// 1.39 and 1.40: checks the thread first; off the main thread it reports an `ENVOY_BUG`
    /// ("must be called on the main thread") and deletes nothing.
    MainThreadChecked,
}

/// When the filter's `destroy` (where wscap releases a slot) runs relative to Envoy closing the
/// upstream socket, after a client resets an upgraded WebSocket (seen in Envoy's debug log by
/// `tests/tests/release_order.rs` of wscap-e2e on each Envoy of the matrix).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReleaseOrder {
    /// 1.40: the upstream socket is closed first; the pod never sees the freed slot's next
    /// connection while the old socket is open.
    AfterUpstreamClose,
    /// 1.38 and 1.39: `destroy` runs first, in the same event-loop turn as the close, so a
    /// connection admitted on another worker in that moment can reach the pod while the old
    /// socket is still closing (the pod may briefly hold limit + 1 sockets, one of them closing).
    BeforeUpstreamClose,
}

impl HostAbi {
    /// The ABI string this Envoy itself reports (Envoy only warns when the module's differs).
    pub(crate) fn abi_string(self) -> &'static str {
        match self {
            HostAbi::Envoy1_38 | HostAbi::Envoy1_39 => "v0.1.0",
            HostAbi::Envoy1_40 => "v0.2.0",
        }
    }

    /// Where a slot's release falls relative to the upstream close (no hook lets the module
    /// wait for that close, so this is reported, not changed).
    pub(crate) fn release_order(self) -> ReleaseOrder {
        match self {
            HostAbi::Envoy1_38 | HostAbi::Envoy1_39 => ReleaseOrder::BeforeUpstreamClose,
            HostAbi::Envoy1_40 => ReleaseOrder::AfterUpstreamClose,
        }
    }

    /// Whether a counter the bootstrap extension defines and one the HTTP filter defines with
    /// the same name and labels are one series. On 1.39 and 1.40 they are, so the bootstrap
    /// extension creates the filter's `wscap_admitted` / `wscap_rejected` series at 0 (Prometheus'
    /// `rate()` then sees the first increment). On 1.38 they are two series and
    /// `/stats/prometheus` shows the bootstrap's 0 instead of the filter's count
    /// (`module/tests/smoke.rs` on 1.38.3), so there the bootstrap extension leaves them alone.
    pub(crate) fn shares_counters_with_filter(self) -> bool {
        match self {
            HostAbi::Envoy1_38 => false,
            HostAbi::Envoy1_39 | HostAbi::Envoy1_40 => true,
        }
    }

    /// How this Envoy deletes a bootstrap timer. Either way wscap's rule is the same: delete
    /// only on the main thread (where Envoy runs the bootstrap config's hooks), else leave it.
    pub(crate) fn timer_delete(self) -> TimerDelete {
        match self {
            HostAbi::Envoy1_38 => TimerDelete::Unchecked,
            HostAbi::Envoy1_39 | HostAbi::Envoy1_40 => TimerDelete::MainThreadChecked,
        }
    }
}

impl fmt::Display for HostAbi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HostAbi::Envoy1_38 => "1.38",
            HostAbi::Envoy1_39 => "1.39",
            HostAbi::Envoy1_40 => "1.40 or newer",
        })
    }
}

/// An Envoy that lacks callbacks wscap calls.
#[derive(Debug)]
pub(crate) struct Unsupported {
    /// The missing callbacks, full names.
    pub(crate) missing: Vec<&'static CStr>,
}

impl Unsupported {
    /// The one line written to stderr: which extension points and callbacks are missing, and
    /// the supported versions.
    pub(crate) fn line(&self) -> String {
        const PREFIX: &str = "envoy_dynamic_module_callback_";
        let short: Vec<String> = self
            .missing
            .iter()
            .map(|n| n.to_string_lossy().trim_start_matches(PREFIX).to_owned())
            .collect();
        let mut points = Vec::new();
        for (prefix, point) in [
            ("lb_", "load-balancing policy"),
            ("bootstrap_extension_", "bootstrap extension"),
            ("http_", "HTTP filter"),
        ] {
            if short.iter().any(|s| s.starts_with(prefix)) {
                points.push(point);
            }
        }
        if short.iter().any(|s| s.starts_with("log")) {
            points.push("logging");
        }
        format!(
            "wscap: libwscap.so cannot run in this Envoy: it lacks {} of the {} callbacks wscap calls \
             (extension points: {}; missing: {}); wscap supports Envoy {SUPPORTED}, see \"Supported \
             Envoy versions\" in wscap's README\n",
            self.missing.len(),
            super::sys::CALLBACK_NAMES.len(),
            points.join(", "),
            short.join(", "),
        )
    }
}

/// Resolves every callback with `lookup` and detects the host. Pure: [`init`] records the result.
pub(crate) fn detect(lookup: impl Fn(&CStr) -> *mut c_void) -> Result<HostAbi, Unsupported> {
    resolve_callbacks(&lookup).map_err(|missing| Unsupported { missing })?;
    Ok(if !lookup(MARKER_1_40).is_null() {
        HostAbi::Envoy1_40
    } else if !lookup(MARKER_1_39).is_null() {
        HostAbi::Envoy1_39
    } else {
        HostAbi::Envoy1_38
    })
}

static HOST: OnceLock<(HostAbi, ThreadId)> = OnceLock::new();

/// [`detect`], then remembers the host and the calling thread (Envoy loads modules on its main
/// thread). Envoy calls `program_init` once per process.
pub(crate) fn init(lookup: impl Fn(&CStr) -> *mut c_void) -> Result<HostAbi, Unsupported> {
    let host = detect(lookup)?;
    let _ = HOST.set((host, std::thread::current().id()));
    Ok(host)
}

/// The detected host (`None` before `program_init`).
pub(crate) fn host() -> Option<HostAbi> {
    HOST.get().map(|(h, _)| *h)
}

/// Is this Envoy's main thread (the thread that ran `program_init`)?
pub(crate) fn on_main_thread() -> bool {
    HOST.get()
        .is_some_and(|(_, main)| *main == std::thread::current().id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ptr::NonNull;

    fn lookup_all_but<'a>(absent: &'a [&'a str]) -> impl Fn(&CStr) -> *mut c_void + 'a {
        move |name: &CStr| {
            let name = name.to_str().unwrap();
            if absent.contains(&name) {
                std::ptr::null_mut()
            } else {
                NonNull::<c_void>::dangling().as_ptr()
            }
        }
    }

    #[test]
    fn feature_level_from_markers() {
        let m39 = MARKER_1_39.to_str().unwrap();
        let m40 = MARKER_1_40.to_str().unwrap();
        assert_eq!(detect(lookup_all_but(&[])).unwrap(), HostAbi::Envoy1_40);
        assert_eq!(detect(lookup_all_but(&[m40])).unwrap(), HostAbi::Envoy1_39);
        assert_eq!(
            detect(lookup_all_but(&[m39, m40])).unwrap(),
            HostAbi::Envoy1_38
        );
        assert_eq!(HostAbi::Envoy1_38.timer_delete(), TimerDelete::Unchecked);
        assert_eq!(
            HostAbi::Envoy1_39.timer_delete(),
            TimerDelete::MainThreadChecked
        );
        assert_eq!(HostAbi::Envoy1_40.abi_string(), crate::ABI_VERSION);
        assert_eq!(
            HostAbi::Envoy1_39.release_order(),
            ReleaseOrder::BeforeUpstreamClose
        );
        assert_eq!(
            HostAbi::Envoy1_40.release_order(),
            ReleaseOrder::AfterUpstreamClose
        );
    }

    #[test]
    fn a_missing_callback_refuses_with_one_line() {
        let absent = [
            "envoy_dynamic_module_callback_lb_get_cluster_name",
            "envoy_dynamic_module_callback_bootstrap_extension_timer_new",
        ];
        let err = detect(lookup_all_but(&absent)).unwrap_err();
        assert_eq!(err.missing.len(), 2);
        let line = err.line();
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        assert!(line.ends_with('\n'));
        assert!(line.contains("lacks 2 of the"), "{line}");
        assert!(
            line.contains("extension points: load-balancing policy, bootstrap extension;"),
            "{line}"
        );
        assert!(
            line.contains("missing: bootstrap_extension_timer_new, lb_get_cluster_name"),
            "{line}"
        );
        assert!(
            line.contains("supports Envoy 1.38, 1.39 and 1.40"),
            "{line}"
        );
    }
}
