//! # wscap-global
//!
//! Exact per-pod connection limits across many proxy instances, with Redis as the shared
//! ledger. Each instance holds a *share* of each pod's limit in Redis and admits locally, with
//! no round trip, up to its share ([`wscap_core`]'s per-host caps enforce it); it borrows more
//! with one round trip only when its share runs out, and gives unused share back.
//!
//! - **Leases** expire on the Redis server's clock: an instance that dies (kill -9; Envoy runs no
//!   teardown hook) loses its shares by itself within `lease_ttl_ms`.
//! - **Reconciliation**: every `refresh_ms` each instance writes its absolute live count and the
//!   share it wants, so a lost message heals itself.
//! - **Restarts of Redis**: when the ledger shows a possible loss (an instance that saw an
//!   earlier ledger epoch finds it gone), every pod is in *grace* for `restart_grace_ms`
//!   (default: the lease ttl), during which instances may only reclaim what they hold, so
//!   capacity held before the restart is never handed out twice. A fresh ledger gets only a
//!   short window (one refresh plus one claim timeout), a pod new to an existing ledger none.
//! - **Fail modes** while Redis is unreachable: see [`FailMode`].
//!
//! The invariant: for every pod, the connections admitted by all instances together never
//! exceed its limit, because at every moment live ≤ local cap ≤ ledger share on each instance,
//! and the live instances' shares sum to at most the limit. The exceptions are written down
//! where they are made: [`FailMode::LocalLimit`], an instance cut off from a Redis that others
//! still reach for longer than the lease ttl (its live connections cannot be recalled), and a
//! limit lowered below what is live.
//!
//! Each claim touches the pod's key, `wscap:{<cluster>/<ip:port>}`, and the fleet record
//! `wscap:fleet`: one Redis (with replicas) runs it atomically; Redis Cluster is not supported.
#![forbid(unsafe_code)]

mod config;
mod coordinator;
mod ledger;

pub use config::{ConfigError, FailMode, GlobalConfig};
pub use coordinator::{
    BorrowOutcome, BorrowSample, Coordinator, FleetPod, FleetView, MAX_BORROW_SAMPLES,
};
pub use ledger::{Claim, InstancePart, Ledger, LedgerError};
