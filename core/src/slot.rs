//! The per-host state machine: one atomic word holds the live count and the host's state, so
//! admission, draining and removal can never race each other into an overshoot or a lost slot.
//!
//! ```text
//! bits 34..64: admitted (low 30 bits; each wrap carries 2^30 into a separate counter)
//! bit 33: REMOVED   set once, only from DRAINING with a count of 0; the slot is then dead
//! bit 32: DRAINING  no new admissions; live connections still counted
//! bits 0..32: active
//! ```
//!
//! Counting admissions in the same word costs the admission nothing: the CAS that takes the slot
//! bumps the counter too.
//!
//! This module sees atomics only through [`crate::sync`], so loom can model-check it.

use crate::sync::{AtomicU32, AtomicU64, Ordering};

const ACTIVE_MASK: u64 = (1 << 32) - 1;
const DRAINING: u64 = 1 << 32;
const REMOVED: u64 = 1 << 33;
const ADMITTED_SHIFT: u32 = 34;
const ADMITTED_ONE: u64 = 1 << ADMITTED_SHIFT;
/// One full wrap of the in-word admitted counter.
const ADMITTED_WRAP: u64 = 1 << (64 - ADMITTED_SHIFT);
const FLAGS: u64 = DRAINING | REMOVED;

/// Why [`SlotState::try_acquire`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The count is at the limit.
    Full,
    /// The host is draining.
    Draining,
    /// The host was removed from its cluster.
    Removed,
    /// Full: an admission lost to a concurrent limit change was taken back, and that left a
    /// draining host empty (the caller prunes it, as after the last release).
    Vacated,
}

/// "No value" in the halves of [`SlotState`]'s basis word (limits never exceed 2^30).
const NONE: u32 = u32::MAX;

/// Count, state and limit of one host.
#[derive(Debug)]
pub struct SlotState {
    word: AtomicU64,
    limit: AtomicU32,
    /// What `limit` is made of, for admissions that bring their own default limit
    /// ([`SlotState::try_acquire_for`]): the host's own limit in the high half ([`NONE`]: it
    /// follows the default) and its cap in the low half ([`NONE`]: no cap).
    basis: AtomicU64,
    /// Admissions carried out of the word's admitted field (multiples of 2^30).
    admitted_carry: AtomicU64,
}

impl SlotState {
    /// A live, empty slot with the given limit.
    pub fn new(limit: u32) -> Self {
        SlotState {
            word: AtomicU64::new(0),
            limit: AtomicU32::new(limit),
            basis: AtomicU64::new(pack(Some(limit), None)),
            admitted_carry: AtomicU64::new(0),
        }
    }

    /// Takes one slot if the host is live and below its limit. Read, then CAS: the count never
    /// goes above the limit, not even for a moment, and a refusal costs two loads.
    /// Returns the new count.
    #[inline]
    pub fn try_acquire(&self) -> Result<u32, Refusal> {
        self.try_acquire_for(None)
    }

    /// The limit an admission obeys: the host's limit, or with `Some(default)` the limit the
    /// host would have if its cluster's default were `default` (its own limit if it has one,
    /// else `default`; under its cap either way).
    #[inline]
    pub fn limit_for(&self, default: Option<u32>) -> u32 {
        match default {
            None => self.limit.load(Ordering::Acquire),
            Some(default) => {
                let basis = self.basis.load(Ordering::Acquire);
                let own = (basis >> 32) as u32;
                let cap = basis as u32;
                if own == NONE { default } else { own }.min(cap)
            }
        }
    }

    /// [`SlotState::try_acquire`] under [`SlotState::limit_for`]`(default)`: the same read,
    /// CAS and re-check, so a concurrent [`SlotState::set_limits`] is honoured the same way.
    #[inline]
    pub fn try_acquire_for(&self, default: Option<u32>) -> Result<u32, Refusal> {
        let mut cur = self.word.load(Ordering::Acquire);
        loop {
            check_live(cur)?;
            let active = cur & ACTIVE_MASK;
            if active >= u64::from(self.limit_for(default)) {
                return Err(Refusal::Full);
            }
            let next = admit(cur);
            match self
                .word
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    self.carry(next);
                    // A limit lowered concurrently is seen here, or its writer sees this
                    // admission. The writer stores the limit, then does a release RMW on the
                    // word ([`SlotState::set_limits`]). Both RMWs are ordered on the word: if
                    // ours came first, the writer's RMW reads our count; if the writer's came
                    // first, our CAS acquired it and this load sees the new limit.
                    if active + 1 > u64::from(self.limit_for(default)) {
                        return Err(if self.undo(next) {
                            Refusal::Vacated
                        } else {
                            Refusal::Full
                        });
                    }
                    return Ok((active + 1) as u32);
                }
                Err(now) => cur = now,
            }
        }
    }

    /// Takes back an admission that lost to a concurrent limit change, counter included.
    /// True when that emptied a draining host (as [`SlotState::release`]).
    #[cold]
    fn undo(&self, admitted_word: u64) -> bool {
        if admitted_word >> ADMITTED_SHIFT == 0 {
            self.admitted_carry
                .fetch_sub(ADMITTED_WRAP, Ordering::Relaxed);
        }
        let prev = self.word.fetch_sub(1 + ADMITTED_ONE, Ordering::AcqRel);
        prev & (ACTIVE_MASK | FLAGS) == DRAINING | 1
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
            let next = admit(cur);
            match self
                .word
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    self.carry(next);
                    return Ok((active + 1) as u32);
                }
                Err(now) => cur = now,
            }
        }
    }

    #[inline]
    fn carry(&self, next: u64) {
        if next >> ADMITTED_SHIFT == 0 {
            // The in-word counter wrapped with this admission.
            self.admitted_carry
                .fetch_add(ADMITTED_WRAP, Ordering::Relaxed);
        }
    }

    /// Admissions since the slot was made (a reading; exact once admissions pause).
    pub fn admitted(&self) -> u64 {
        let carry = self.admitted_carry.load(Ordering::Acquire);
        let word = self.word.load(Ordering::Acquire);
        carry + (word >> ADMITTED_SHIFT)
    }

    /// Gives one slot back. Returns true when this was the last connection of a draining host,
    /// i.e. the host may now be removed.
    #[inline]
    pub fn release(&self) -> bool {
        let prev = self.word.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(
            prev & ACTIVE_MASK != 0,
            "slot released more often than acquired"
        );
        prev & (ACTIVE_MASK | FLAGS) == DRAINING | 1
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
        let mut cur = self.word.load(Ordering::Acquire);
        loop {
            if cur & REMOVED != 0 {
                return true;
            }
            if cur & (ACTIVE_MASK | FLAGS) != DRAINING {
                return false;
            }
            match self.word.compare_exchange_weak(
                cur,
                cur | REMOVED,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
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
        ((w & ACTIVE_MASK) as u32, w & FLAGS != 0)
    }

    /// The current limit.
    #[inline]
    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Acquire)
    }

    /// [`SlotState::set_limits`] with `limit` as the host's own limit and no cap (the loom
    /// models' shorthand).
    #[cfg(loom)]
    pub fn lower_limit(&self, limit: u32) -> u32 {
        self.set_limits(limit, Some(limit), None)
    }

    /// Sets the limit together with what it is made of: the host's own limit (`None`: it
    /// follows its cluster's default) and its cap. Returns the live count read after it took
    /// effect: from then on no admission succeeds unless it fits under the new limit (or, under
    /// [`SlotState::try_acquire_for`], under the limit made from the new basis), so the number of
    /// connections admitted stays at or below `max(returned, limit)` until it is raised again.
    /// Lowering it below the live count evicts nobody; it only blocks admissions.
    pub fn set_limits(&self, limit: u32, own: Option<u32>, cap: Option<u32>) -> u32 {
        self.basis.store(pack(own, cap), Ordering::Release);
        self.limit.store(limit, Ordering::Release);
        // A read-modify-write that changes nothing, so that it is ordered with every admission's
        // CAS on the word (see `try_acquire`). The count it reads may include an admission that
        // is about to be taken back: an over-estimate, never an under-estimate.
        (self.word.fetch_add(0, Ordering::AcqRel) & ACTIVE_MASK) as u32
    }
}

/// The basis word: own limit high, cap low, [`NONE`] for absent.
#[inline]
fn pack(own: Option<u32>, cap: Option<u32>) -> u64 {
    (u64::from(own.unwrap_or(NONE)) << 32) | u64::from(cap.unwrap_or(NONE))
}

/// The word after one more admission: active + 1, admitted + 1 (wrapping within its field).
#[inline]
fn admit(word: u64) -> u64 {
    word.wrapping_add(1).wrapping_add(ADMITTED_ONE)
}

#[inline]
fn check_live(word: u64) -> Result<(), Refusal> {
    if word & FLAGS == 0 {
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
        assert!(
            !s.try_remove(),
            "a host with live connections is never removed"
        );
        assert!(s.release(), "the last release of a draining host says so");
        assert!(s.try_remove());
        assert!(s.is_removed());
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
    fn admitted_counts_every_admission_across_wraps() {
        let s = SlotState::new(5);
        // Start just below a wrap of the in-word field.
        s.word
            .store((ADMITTED_WRAP - 2) << ADMITTED_SHIFT, Ordering::Relaxed);
        for _ in 0..4 {
            s.try_acquire().unwrap();
            s.release();
        }
        assert_eq!(s.admitted(), ADMITTED_WRAP + 2);
        assert_eq!(s.active(), 0);
        s.drain();
        assert!(s.try_remove(), "admitted bits do not block removal");
    }

    #[test]
    fn force_acquire_ignores_limit_and_draining() {
        let s = SlotState::new(0);
        s.drain();
        assert_eq!(s.force_acquire(), Ok(1));
        assert!(s.release());
    }
}
