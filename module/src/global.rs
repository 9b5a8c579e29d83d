//! Global mode inside Envoy: one [`Coordinator`] per process over [`crate::REGISTRY`], started
//! by the bootstrap extension on the main thread, and the [`Borrower`] the HTTP filter asks for
//! more room when core refuses with `no_capacity`.
//!
//! The coordinator caps every host at 0 in core until the ledger in Redis grants this instance a
//! share, then raises and lowers the caps from its own thread; Envoy's workers never wait on
//! Redis. A stream that finds its instance's share used up is paused, one borrow round runs on
//! the coordinator thread, and the stream resumes on its own worker (see [`crate::filter`]).

use std::sync::OnceLock;

use wscap_global::{BorrowOutcome, Coordinator, GlobalConfig};

use crate::{Level, REGISTRY};

/// The process's coordinator, once global mode started.
static COORDINATOR: OnceLock<(GlobalConfig, Coordinator)> = OnceLock::new();

/// Starts global mode with `config`, once per process. A second call with the same settings
/// is a no-op (Envoy may build the bootstrap config again); with other settings it is refused,
/// because the running coordinator cannot change its Redis, instance id or timings.
pub fn start(config: &GlobalConfig) -> Result<(), String> {
    if let Some((running, _)) = COORDINATOR.get() {
        return if running == config {
            Ok(())
        } else {
            Err(
                "global mode is already running with other settings; restart Envoy to change them"
                    .to_owned(),
            )
        };
    }
    let c = Coordinator::start(config.clone(), &REGISTRY)
        .map_err(|e| format!("cannot start global mode: {e}"))?;
    let instance = c.fleet_view().instance;
    if COORDINATOR.set((config.clone(), c)).is_err() {
        // Only the main thread starts global mode; a lost race would leave the first one running.
        return Err("global mode was started concurrently".to_owned());
    }
    crate::log(
        Level::Info,
        &format!(
            "wscap: global mode: instance {instance:?}, lease {} ms, refresh {} ms, fail mode {:?}",
            config.lease_ttl_ms, config.refresh_ms, config.fail_mode
        ),
    );
    Ok(())
}

/// The running coordinator, in global mode.
pub fn coordinator() -> Option<&'static Coordinator> {
    COORDINATOR.get().map(|(_, c)| c)
}

/// The running coordinator's lease ttl in milliseconds (0 in local mode).
pub fn lease_ttl_ms() -> u64 {
    COORDINATOR.get().map_or(0, |(c, _)| c.lease_ttl_ms)
}

/// The running coordinator's refresh period in milliseconds (0 in local mode).
pub fn refresh_ms() -> u64 {
    COORDINATOR.get().map_or(0, |(c, _)| c.refresh_ms)
}

/// What a borrow calls back with its outcome (once, on any thread).
pub type BorrowDone = Box<dyn FnOnce(BorrowOutcome) + Send>;

/// Where the filter asks for more room. The module's own implementation is [`GlobalBorrower`];
/// unit tests use fakes.
pub trait Borrower: Send + Sync + std::fmt::Debug {
    /// Whether global mode runs (otherwise a `no_capacity` refusal is final at once).
    fn active(&self) -> bool;
    /// Asks for more room on `cluster`; `done` runs once, on any thread, with the outcome.
    fn request_borrow(&self, cluster: &str, done: BorrowDone);
    /// How often streams waiting in a queue ask the fleet for room again
    /// ([`crate::queue`]), in milliseconds.
    fn retry_period_ms(&self) -> u64 {
        100
    }
}

/// The process's coordinator as a [`Borrower`], looked up at each call (the bootstrap extension
/// may start it after the filter config was built).
#[derive(Debug, Clone, Copy, Default)]
pub struct GlobalBorrower;

impl Borrower for GlobalBorrower {
    fn active(&self) -> bool {
        coordinator().is_some()
    }

    fn request_borrow(&self, cluster: &str, done: BorrowDone) {
        match coordinator() {
            Some(c) => c.request_borrow(cluster, done),
            None => done(BorrowOutcome::Unavailable),
        }
    }

    /// Half the refresh period (10 ms at least): a slot freed through another instance
    /// returns to the ledger at that instance's next refresh round.
    fn retry_period_ms(&self) -> u64 {
        (refresh_ms() / 2).max(10)
    }
}
