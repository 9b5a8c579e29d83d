//! Loom model checks of the slot state machine. Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p wscap-core --release --test loom`.
#![cfg(loom)]

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;
use wscap_core::slot::{Refusal, SlotState};

/// N+1 threads race acquire/release on a host of limit N: never more than N held, back to 0.
#[test]
fn n_plus_one_threads_never_exceed_n() {
    loom::model(|| {
        const N: u32 = 2;
        let slot = Arc::new(SlotState::new(N));
        let inflight = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..=N)
            .map(|_| {
                let slot = slot.clone();
                let inflight = inflight.clone();
                thread::spawn(move || {
                    if slot.try_acquire().is_ok() {
                        let now = inflight.fetch_add(1, Ordering::SeqCst) + 1;
                        assert!(now <= N as usize, "{now} held on a limit of {N}");
                        assert!(slot.active() <= N);
                        inflight.fetch_sub(1, Ordering::SeqCst);
                        assert!(!slot.release(), "a live host never reports drained-empty");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(slot.active(), 0);
    });
}

/// Admission racing a removal: a host is never removed while a permit on it is held, and once
/// removed it admits nobody.
#[test]
fn acquire_racing_removal() {
    loom::model(|| {
        let slot = Arc::new(SlotState::new(1));
        let admit = {
            let slot = slot.clone();
            thread::spawn(move || match slot.try_acquire() {
                Ok(_) => {
                    assert!(!slot.is_removed(), "removed while a permit is held");
                    // The last release of a draining host reports it; a live one does not.
                    slot.release()
                }
                Err(r) => {
                    assert_ne!(r, Refusal::Full);
                    false
                }
            })
        };
        let remove = {
            let slot = slot.clone();
            thread::spawn(move || {
                slot.drain();
                slot.try_remove()
            })
        };
        let release_said_empty = admit.join().unwrap();
        let removed = remove.join().unwrap();
        assert_eq!(slot.active(), 0);
        // Someone always learns it is empty and draining: the remover, or the last release
        // (which then prunes it; pruning is idempotent). It is never left behind unnoticed.
        assert!(
            removed || release_said_empty,
            "an empty draining host nobody will remove"
        );
        if removed {
            assert_eq!(slot.try_acquire(), Err(Refusal::Removed));
        } else {
            assert!(slot.try_remove());
        }
    });
}

/// A revival racing a release keeps the count exact.
#[test]
fn revive_racing_release() {
    loom::model(|| {
        let slot = Arc::new(SlotState::new(2));
        slot.try_acquire().unwrap();
        slot.drain();
        let rel = {
            let slot = slot.clone();
            thread::spawn(move || slot.release())
        };
        let rev = {
            let slot = slot.clone();
            thread::spawn(move || slot.revive())
        };
        rel.join().unwrap();
        assert!(rev.join().unwrap(), "nobody removed it");
        assert_eq!(slot.active(), 0);
        assert!(!slot.is_draining());
        assert_eq!(slot.try_acquire(), Ok(1));
    });
}

/// An admission racing a lower limit: once `lower_limit` returns `n`, no admission succeeds
/// unless it fits under the new limit: the held count never exceeds `max(n, limit)`.
#[test]
fn admission_racing_a_lower_limit() {
    loom::model(|| {
        let slot = Arc::new(SlotState::new(2));
        slot.try_acquire().unwrap();
        let admit = {
            let slot = slot.clone();
            thread::spawn(move || slot.try_acquire().is_ok())
        };
        let seen = slot.lower_limit(1);
        let admitted = admit.join().unwrap();
        let held = 1 + u32::from(admitted);
        assert!(
            held <= seen.max(1),
            "held {held} after lowering to 1 with {seen} seen"
        );
    });
}

/// The same race for an admission under a per-route default ([`SlotState::try_acquire_for`]):
/// a cap lowered to 1 by `set_limits` is honoured by the admission's re-check, so the held
/// count never exceeds `max(n, 1)` although the route's default (5) is above the old limit.
#[test]
fn route_admission_racing_a_lower_cap() {
    loom::model(|| {
        let slot = Arc::new(SlotState::new(2));
        slot.set_limits(2, None, Some(2));
        slot.try_acquire_for(Some(5)).unwrap();
        let admit = {
            let slot = slot.clone();
            thread::spawn(move || slot.try_acquire_for(Some(5)).is_ok())
        };
        let seen = slot.set_limits(1, None, Some(1));
        let admitted = admit.join().unwrap();
        let held = 1 + u32::from(admitted);
        assert!(
            held <= seen.max(1),
            "held {held} after capping at 1 with {seen} seen"
        );
    });
}
