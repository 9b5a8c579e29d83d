//! The per-host state machine: one atomic word holds the live count and the host's state, so
//! admission, draining and removal can never race each other into an overshoot or a lost slot.
//!
//! ```text
//! bit 33: REMOVED   set once, only from DRAINING with a count of 0; the slot is then dead
//! bit 32: DRAINING  no new admissions; live connections still counted
//! bits 0..32: active
//! ```
//!
//! This module sees atomics only through [`crate::sync`], so loom can model-check it.

use crate::sync::{AtomicU32, AtomicU64, Ordering};

const ACTIVE_MASK: u64 = (1 << 32) - 1;
const DRAINING: u64 = 1 << 32;
const REMOVED: u64 = 1 << 33;

/// Why [`SlotState::try_acquire`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The count is at the limit.
    Full,
    /// The host is draining.
    Draining,
    /// The host was removed from its cluster.
    Removed,
}

/// Count, state and limit of one host.
#[derive(Debug)]
pub struct SlotState {
    word: AtomicU64,
    limit: AtomicU32,
}

impl SlotState {
    /// A live, empty slot with the given limit.
    pub fn new(limit: u32) -> Self {
        SlotState {
            word: AtomicU64::new(0),
            limit: AtomicU32::new(limit),
        }
    }

    /// Takes one slot if the host is live and below its limit. Read, then CAS: the count never
    /// goes above the limit, not even for a moment, and a refusal costs two loads.
    /// Returns the new count.
    #[inline]
    pub fn try_acquire(&self) -> Result<u32, Refusal> {
        let mut cur = self.word.load(Ordering::Acquire);
        loop {
            check_live(cur)?;
            let active = cur & ACTIVE_MASK;
            if active >= u64::from(self.limit.load(Ordering::Acquire)) {
                return Err(Refusal::Full);
            }
            match self.word.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok((active + 1) as u32),
                Err(now) => cur = now,
            }
        }
    }

    /// Counts a connection that already exists, whatever the limit and even while draining;
    /// refused only once the slot is removed (or at the counter's capacity).
    pub fn force_acquire(&self) -> Result<u32, Refusal> {
        let mut cur = self.word.load(Ordering::Acquire);
        loop {
            if cur & REMOVED != 0 {
                return Err(Refusal::Removed);
            }
            let active = cur & ACTIVE_MASK;
            if active == ACTIVE_MASK {
                return Err(Refusal::Full);
            }
            match self.word.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok((active + 1) as u32),
                Err(now) => cur = now,
            }
        }
    }

    /// Gives one slot back. Returns true when this was the last connection of a draining host,
    /// i.e. the host may now be removed.
    #[inline]
    pub fn release(&self) -> bool {
        let prev = self.word.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(prev & ACTIVE_MASK != 0, "slot released more often than acquired");
        prev == DRAINING | 1
    }

    /// Stops new admissions. Live connections stay counted.
    pub fn drain(&self) {
        self.word.fetch_or(DRAINING, Ordering::AcqRel);
    }

    /// Takes a draining host back into service with its count intact. False if it was removed.
    pub fn revive(&self) -> bool {
        let mut cur = self.word.load(Ordering::Acquire);
        loop {
            if cur & REMOVED != 0 {
                return false;
            }
            if cur & DRAINING == 0 {
                return true;
            }
            match self.word.compare_exchange_weak(
                cur,
                cur & !DRAINING,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// Marks a draining, empty slot removed, atomically with respect to every admission.
    /// True if it is (now or already) removed.
    pub fn try_remove(&self) -> bool {
        match self.word.compare_exchange(
            DRAINING,
            DRAINING | REMOVED,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => true,
            Err(now) => now & REMOVED != 0,
        }
    }

    /// Live connections.
    #[inline]
    pub fn active(&self) -> u32 {
        (self.word.load(Ordering::Acquire) & ACTIVE_MASK) as u32
    }

    /// True once draining (or removed).
    pub fn is_draining(&self) -> bool {
        self.word.load(Ordering::Acquire) & DRAINING != 0
    }

    /// True once removed.
    #[cfg(any(test, loom))]
    pub fn is_removed(&self) -> bool {
        self.word.load(Ordering::Acquire) & REMOVED != 0
    }

    /// `(active, draining)` read together from one load.
    #[inline]
    pub fn load(&self) -> (u32, bool) {
        let w = self.word.load(Ordering::Acquire);
        ((w & ACTIVE_MASK) as u32, w & (DRAINING | REMOVED) != 0)
    }

    /// The current limit.
    #[inline]
    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Acquire)
    }

    /// Sets the limit. Lowering it below the live count evicts nobody; it only blocks admissions.
    pub fn set_limit(&self, limit: u32) {
        self.limit.store(limit, Ordering::Release);
    }
}

#[inline]
fn check_live(word: u64) -> Result<(), Refusal> {
    if word & (DRAINING | REMOVED) == 0 {
        Ok(())
    } else if word & REMOVED != 0 {
        Err(Refusal::Removed)
    } else {
        Err(Refusal::Draining)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn never_above_limit_and_back_to_zero() {
        let s = SlotState::new(2);
        assert_eq!(s.try_acquire(), Ok(1));
        assert_eq!(s.try_acquire(), Ok(2));
        assert_eq!(s.try_acquire(), Err(Refusal::Full));
        assert!(!s.release());
        assert!(!s.release());
        assert_eq!(s.active(), 0);
    }

    #[test]
    fn draining_blocks_admission_and_last_release_reports_empty() {
        let s = SlotState::new(5);
        s.try_acquire().unwrap();
        s.drain();
        assert_eq!(s.try_acquire(), Err(Refusal::Draining));
        assert!(!s.try_remove(), "a host with live connections is never removed");
        assert!(s.release(), "the last release of a draining host says so");
        assert!(s.try_remove());
        assert!(!s.revive(), "a removed slot stays dead");
        assert_eq!(s.try_acquire(), Err(Refusal::Removed));
        assert_eq!(s.force_acquire(), Err(Refusal::Removed));
    }

    #[test]
    fn revive_keeps_count() {
        let s = SlotState::new(5);
        s.try_acquire().unwrap();
        s.try_acquire().unwrap();
        s.drain();
        assert!(s.revive());
        assert_eq!(s.active(), 2);
        assert_eq!(s.try_acquire(), Ok(3));
    }

    #[test]
    fn force_acquire_ignores_limit_and_draining() {
        let s = SlotState::new(0);
        s.drain();
        assert_eq!(s.force_acquire(), Ok(1));
        assert!(s.release());
    }
}
