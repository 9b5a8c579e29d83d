//! Typed errors. Nothing in this crate panics on bad input; it returns one of these.

/// Why a membership or configuration call was refused. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A host address is not `ip:port` (IPv6 as `[::1]:80`).
    #[error("invalid host address {input:?}: expected ip:port, e.g. 10.0.0.1:8080 or [::1]:8080")]
    InvalidAddress {
        /// The text that was given.
        input: String,
    },
    /// A cluster name is empty.
    #[error("cluster name must not be empty")]
    EmptyClusterName,
    /// A limit is larger than [`crate::MAX_LIMIT`].
    #[error("limit {limit} is larger than the maximum {max}", max = crate::MAX_LIMIT)]
    LimitTooLarge {
        /// The limit that was given.
        limit: u64,
    },
}

/// Why an admission was refused. The refusal is counted; no slot is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Rejected {
    /// The cluster is not in the registry.
    #[error("unknown cluster")]
    UnknownCluster,
    /// The cluster has no member that can take connections (none known, or all draining).
    #[error("cluster has no hosts")]
    NoHosts,
    /// Every eligible host is at its limit.
    #[error("every host is at its connection limit")]
    NoCapacity,
    /// The named host is not a member of the cluster.
    #[error("unknown host")]
    UnknownHost,
    /// The named host is draining: it takes no new connections.
    #[error("host is draining")]
    Draining,
}

impl Rejected {
    /// The stable snake_case reason used in metrics labels and the `x-wscap-reason` header.
    ///
    /// ```
    /// assert_eq!(wscap_core::Rejected::NoCapacity.reason(), "no_capacity");
    /// ```
    pub const fn reason(self) -> &'static str {
        match self {
            Rejected::UnknownCluster => "unknown_cluster",
            Rejected::NoHosts => "no_hosts",
            Rejected::NoCapacity => "no_capacity",
            Rejected::UnknownHost => "unknown_host",
            Rejected::Draining => "draining",
        }
    }
}
