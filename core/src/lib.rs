//! # wscap-core
//!
//! A lock-free registry of per-host connection slots: it caps and counts concurrent WebSocket
//! connections per backend host, picks the host with the most room, and hands out RAII
//! [`Permit`]s that release their slot exactly once.
//!
//! - [`Registry`] → [`Cluster`] → hosts keyed by [`HostAddr`] (`ip:port`).
//! - Membership is set-based and idempotent ([`Cluster::set_hosts`]): hosts that leave drain
//!   (counted until their last connection closes), hosts that return keep their live count.
//! - Admission ([`Cluster::acquire`], [`Host::try_acquire`]) and release take no lock and
//!   allocate nothing; the count never goes above a limit, not even for a moment.
//! - [`Snapshot`] exports Prometheus text and the admin JSON.
//!
//! ```
//! use wscap_core::{Registry, HostSpec, Rejected};
//!
//! let registry = Registry::new();
//! let pods = registry.set_default_limit("pods", 2).unwrap();
//! pods.set_hosts(&[
//!     HostSpec::parse("10.0.0.1:8080").unwrap(),
//!     HostSpec::parse("10.0.0.2:8080").unwrap().with_limit(1),
//! ]);
//! let held: Vec<_> = (0..3).map(|_| pods.acquire().unwrap()).collect();
//! assert_eq!(pods.acquire().unwrap_err(), Rejected::NoCapacity);
//! drop(held);
//! assert_eq!(pods.active(), 0);
//! ```
#![forbid(unsafe_code)]

mod sync;

#[cfg(not(loom))]
mod addr;
#[cfg(not(loom))]
mod error;
#[cfg(not(loom))]
mod permit;
#[cfg(not(loom))]
mod registry;
/// The per-host slot state machine (public only for loom model checks).
#[cfg(loom)]
pub mod slot;
#[cfg(not(loom))]
mod slot;
#[cfg(not(loom))]
mod snapshot;

#[cfg(not(loom))]
pub use addr::HostAddr;
#[cfg(not(loom))]
pub use error::{ConfigError, Rejected};
#[cfg(not(loom))]
pub use permit::Permit;
#[cfg(not(loom))]
pub use registry::{
    Cluster, Host, HostSpec, MembershipChange, Registry, FULL_SCAN_MAX_HOSTS, SAMPLED_CHOICES,
    STANDBY,
};
#[cfg(not(loom))]
pub use snapshot::{ClusterSnapshot, HostSnapshot, HostState, RejectedCounts, Snapshot};

/// The largest limit a host can have.
pub const MAX_LIMIT: u32 = 1 << 30;
