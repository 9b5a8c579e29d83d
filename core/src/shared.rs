//! Counts shared with other processes: one 64-bit word per host that several processes update
//! with one CAS, so that a per-host limit holds across them (Envoy's hot restart, where the old
//! and the new process both hold connections for a while; multi-process proxies embedding the C
//! ABI).
//!
//! The word holds one 16-bit field per process ([`SHARED_COLUMNS`] of them); a process only ever
//! adds to and subtracts from its own field, and an admission succeeds only if the CAS that
//! bumps its field saw the sum of all fields below the limit. Fields are per process so that
//! the connections of a process that died (and ran no teardown) can be taken back by clearing
//! its field: see `wscap-shm`, which maps the words into shared memory and reaps dead
//! processes. Core only sees `&'static AtomicU64`s: no `unsafe` here.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::HostAddr;

/// Processes that can share one word.
pub const SHARED_COLUMNS: u32 = 4;
/// Bits of one process's field.
const FIELD_BITS: u32 = 16;
/// The most connections one process can hold on one host in shared mode.
pub const SHARED_MAX_PER_PROCESS: u32 = (1 << FIELD_BITS) - 1;

/// This process's view of one host's shared word.
#[derive(Clone, Copy)]
pub struct SharedCounter {
    word: &'static AtomicU64,
    column: u32,
}

impl std::fmt::Debug for SharedCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedCounter")
            .field("column", &self.column)
            .field("total", &self.total())
            .finish()
    }
}

impl SharedCounter {
    /// The counter of field `column` of `word`; `None` when `column` is out of range.
    ///
    /// ```
    /// use std::sync::atomic::AtomicU64;
    /// use wscap_core::SharedCounter;
    /// let word: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));
    /// let (a, b) = (SharedCounter::new(word, 0).unwrap(), SharedCounter::new(word, 1).unwrap());
    /// assert!(SharedCounter::new(word, 4).is_none());
    /// assert!(a.try_add(2) && b.try_add(2));
    /// assert!(!a.try_add(2), "two held across both processes");
    /// b.sub();
    /// assert_eq!((a.mine(), b.mine(), a.total()), (1, 0, 1));
    /// ```
    pub fn new(word: &'static AtomicU64, column: u32) -> Option<Self> {
        (column < SHARED_COLUMNS).then_some(SharedCounter { word, column })
    }

    /// Connections of every process on this host.
    pub fn total(&self) -> u32 {
        total(self.word.load(Ordering::Acquire))
    }

    /// This process's connections on this host.
    pub fn mine(&self) -> u32 {
        field(self.word.load(Ordering::Acquire), self.column)
    }

    /// Takes one slot if the sum over all processes is below `limit` (and this process's field
    /// has room). The CAS orders it with every other process's admission on the same host.
    #[inline]
    pub fn try_add(&self, limit: u32) -> bool {
        let one = 1u64 << (self.column * FIELD_BITS);
        let mut cur = self.word.load(Ordering::Acquire);
        loop {
            if total(cur) >= limit || field(cur, self.column) >= SHARED_MAX_PER_PROCESS {
                return false;
            }
            match self.word.compare_exchange_weak(
                cur,
                cur + one,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// Counts a connection that already exists, whatever the limit (only the field's width
    /// stops it).
    pub fn force_add(&self) -> bool {
        self.try_add(u32::MAX)
    }

    /// Gives one slot back (never below zero: a field cleared by a reaper stays at zero).
    #[inline]
    pub fn sub(&self) {
        let shift = self.column * FIELD_BITS;
        let _ = self
            .word
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                (field(w, self.column) > 0).then(|| w - (1u64 << shift))
            });
    }
}

#[inline]
fn field(word: u64, column: u32) -> u32 {
    ((word >> (column * FIELD_BITS)) & u64::from(SHARED_MAX_PER_PROCESS)) as u32
}

#[inline]
fn total(word: u64) -> u32 {
    (0..SHARED_COLUMNS).map(|c| field(word, c)).sum()
}

/// Clears field `column` of `word` (the process that owned it is gone). Idempotent.
///
/// ```
/// use std::sync::atomic::AtomicU64;
/// use wscap_core::{clear_shared_column, SharedCounter};
/// let word: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));
/// let dead = SharedCounter::new(word, 2).unwrap();
/// assert!(dead.try_add(5) && dead.try_add(5));
/// clear_shared_column(word, 2);
/// assert_eq!(dead.total(), 0);
/// ```
pub fn clear_shared_column(word: &AtomicU64, column: u32) {
    if column >= SHARED_COLUMNS {
        return;
    }
    let mask = u64::from(SHARED_MAX_PER_PROCESS) << (column * FIELD_BITS);
    word.fetch_and(!mask, Ordering::AcqRel);
}

/// Where a [`crate::Registry`] finds the shared counter of a host: `None` keeps that host's
/// count local to this process.
pub trait SharedCounts: Send + Sync + 'static {
    /// The counter for `host` of `cluster`.
    fn counter(&self, cluster: &str, host: &HostAddr) -> Option<SharedCounter>;
}
