//! Result codes: what every fallible entry point returns.

use std::ffi::c_char;

use wscap_core::{ConfigError, Rejected};

/// What a call did. `WSCAP_RESULT_OK` is 0; every other value says why nothing happened.
///
/// The values are part of the ABI: they are explicit, never change meaning and are never reused.
/// New codes get new numbers at the end. `wscap_result_str` names each one.
#[allow(non_camel_case_types)]
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum wscap_result {
    /// Success.
    Ok = 0,
    /// A pointer argument that must not be NULL was NULL.
    NullArgument = 1,
    /// A string argument is not valid UTF-8.
    InvalidUtf8 = 2,
    /// The configuration JSON was refused; `wscap_config_error` (or, for global mode,
    /// `wscap_global_config_error`) says why.
    InvalidConfig = 3,
    /// A host address is not `ip:port` (IPv6 as `[::1]:80`).
    InvalidAddress = 4,
    /// The cluster is not in the registry.
    UnknownCluster = 5,
    /// The cluster has no host that takes connections (none, or all draining).
    NoHosts = 6,
    /// Every eligible host is at its connection limit.
    NoCapacity = 7,
    /// The host is not a member of the cluster.
    UnknownHost = 8,
    /// The host is draining: it takes no new connections.
    Draining = 9,
    /// The caller's buffer is too small; the size it needs was written to `*out_n`.
    BufferTooSmall = 10,
    /// A panic was caught at the boundary. Nothing was returned; the registry stays usable.
    Panic = 11,
    /// A cluster name is empty.
    InvalidClusterName = 12,
    /// A limit is above `WSCAP_MAX_LIMIT`.
    LimitTooLarge = 13,
    /// An argument is out of range (for instance an array length too large to address).
    InvalidArgument = 14,
    /// The global-mode coordinator could not start (its thread could not be spawned).
    GlobalStartFailed = 15,
}

impl wscap_result {
    /// Every code, in value order.
    pub(crate) const ALL: [wscap_result; 16] = [
        wscap_result::Ok,
        wscap_result::NullArgument,
        wscap_result::InvalidUtf8,
        wscap_result::InvalidConfig,
        wscap_result::InvalidAddress,
        wscap_result::UnknownCluster,
        wscap_result::NoHosts,
        wscap_result::NoCapacity,
        wscap_result::UnknownHost,
        wscap_result::Draining,
        wscap_result::BufferTooSmall,
        wscap_result::Panic,
        wscap_result::InvalidClusterName,
        wscap_result::LimitTooLarge,
        wscap_result::InvalidArgument,
        wscap_result::GlobalStartFailed,
    ];

    /// The code for a raw value from C, if it names one.
    pub(crate) fn from_u32(value: u32) -> Option<Self> {
        Self::ALL.iter().copied().find(|r| *r as u32 == value)
    }

    /// A static, NUL-terminated description: `"<name>: <what happened>"`.
    pub(crate) fn message(self) -> &'static std::ffi::CStr {
        match self {
            wscap_result::Ok => c"ok: success",
            wscap_result::NullArgument => c"null_argument: a required pointer argument was NULL",
            wscap_result::InvalidUtf8 => c"invalid_utf8: a string argument is not valid UTF-8",
            wscap_result::InvalidConfig => {
                c"invalid_config: the configuration JSON was refused (wscap_config_error or wscap_global_config_error says why)"
            }
            wscap_result::InvalidAddress => {
                c"invalid_address: a host address is not ip:port (IPv6 as [::1]:80)"
            }
            wscap_result::UnknownCluster => c"unknown_cluster: the cluster is not in the registry",
            wscap_result::NoHosts => c"no_hosts: the cluster has no host that takes connections",
            wscap_result::NoCapacity => c"no_capacity: every host is at its connection limit",
            wscap_result::UnknownHost => c"unknown_host: the host is not a member of the cluster",
            wscap_result::Draining => c"draining: the host takes no new connections",
            wscap_result::BufferTooSmall => {
                c"buffer_too_small: the buffer is too small; *out_n holds the size needed"
            }
            wscap_result::Panic => c"panic: an internal error was caught; nothing was done",
            wscap_result::InvalidClusterName => c"invalid_cluster_name: a cluster name is empty",
            wscap_result::LimitTooLarge => c"limit_too_large: a limit is above WSCAP_MAX_LIMIT",
            wscap_result::InvalidArgument => c"invalid_argument: an argument is out of range",
            wscap_result::GlobalStartFailed => {
                c"global_start_failed: the global-mode coordinator could not start"
            }
        }
    }
}

/// Text for a code that is not a `wscap_result`.
pub(crate) const UNKNOWN_RESULT: &std::ffi::CStr = c"unknown: not a wscap_result value";

/// Shown by the `const char *` entry points when their gate caught a panic.
pub(crate) const PANIC_TEXT: *const c_char = c"(panic)".as_ptr();

impl From<Rejected> for wscap_result {
    fn from(r: Rejected) -> Self {
        match r {
            Rejected::UnknownCluster => wscap_result::UnknownCluster,
            Rejected::NoHosts => wscap_result::NoHosts,
            Rejected::NoCapacity => wscap_result::NoCapacity,
            Rejected::UnknownHost => wscap_result::UnknownHost,
            Rejected::Draining => wscap_result::Draining,
        }
    }
}

impl From<ConfigError> for wscap_result {
    fn from(e: ConfigError) -> Self {
        match e {
            ConfigError::InvalidAddress { .. } => wscap_result::InvalidAddress,
            ConfigError::EmptyClusterName => wscap_result::InvalidClusterName,
            ConfigError::LimitTooLarge { .. } => wscap_result::LimitTooLarge,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_explicit_and_dense() {
        for (i, r) in wscap_result::ALL.iter().enumerate() {
            assert_eq!(*r as u32, i as u32, "{r:?}");
            assert_eq!(wscap_result::from_u32(i as u32), Some(*r));
        }
        assert_eq!(wscap_result::from_u32(wscap_result::ALL.len() as u32), None);
        assert_eq!(wscap_result::from_u32(u32::MAX), None);
    }

    #[test]
    fn messages_start_with_the_snake_case_name() {
        let names = [
            "ok",
            "null_argument",
            "invalid_utf8",
            "invalid_config",
            "invalid_address",
            "unknown_cluster",
            "no_hosts",
            "no_capacity",
            "unknown_host",
            "draining",
            "buffer_too_small",
            "panic",
            "invalid_cluster_name",
            "limit_too_large",
            "invalid_argument",
            "global_start_failed",
        ];
        for (r, name) in wscap_result::ALL.iter().zip(names) {
            let text = r.message().to_str().unwrap();
            assert!(text.starts_with(&format!("{name}: ")), "{text}");
        }
    }

    #[test]
    fn core_errors_map_one_to_one() {
        assert_eq!(
            wscap_result::from(Rejected::NoCapacity),
            wscap_result::NoCapacity
        );
        assert_eq!(
            wscap_result::from(Rejected::Draining),
            wscap_result::Draining
        );
        assert_eq!(
            wscap_result::from(ConfigError::EmptyClusterName),
            wscap_result::InvalidClusterName
        );
    }
}
