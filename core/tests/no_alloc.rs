//! The hot path (admission and release on a resolved cluster or host) allocates nothing.
//! A counting global allocator counts every allocation made by the measuring thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use wscap_core::{HostSpec, Registry, Rejected};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Set on the measuring thread only: the test harness's own threads may allocate meanwhile.
    static MEASURING: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: delegates to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if MEASURING.with(Cell::get) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn admission_and_release_do_not_allocate() {
    let reg = Registry::new();
    let small = reg.set_default_limit("small", 2).unwrap();
    small.set_hosts(&[
        HostSpec::parse("10.0.0.1:80").unwrap(),
        HostSpec::parse("10.0.0.2:80").unwrap(),
    ]);
    let big = reg.set_default_limit("big", 1).unwrap();
    let hosts: Vec<_> = (0..200)
        .map(|i| HostSpec::parse(&format!("10.1.0.{}:80", i % 250 + 1)).unwrap())
        .collect();
    big.set_hosts(&hosts);
    let host = small.host(&"10.0.0.1:80".parse().unwrap()).unwrap();
    let addr = "10.0.0.2:80".parse().unwrap();
    // Warm up thread-locals (the RNG) outside the measured window.
    drop(small.acquire().unwrap());

    MEASURING.with(|m| m.set(true));
    let before = ALLOCS.load(Ordering::SeqCst);
    for _ in 0..1000 {
        let a = small.acquire().unwrap();
        let b = host.try_acquire().unwrap();
        assert_eq!(small.acquire_host(&addr).map(drop), Ok(()));
        drop((a, b));
        let held: [_; 4] = std::array::from_fn(|_| big.acquire().unwrap());
        drop(held);
        let full: [_; 4] = std::array::from_fn(|_| small.acquire().unwrap());
        assert_eq!(small.acquire().unwrap_err(), Rejected::NoCapacity);
        drop(full);
        let r = reg.acquire("small").unwrap();
        drop(r);
    }
    let after = ALLOCS.load(Ordering::SeqCst);
    MEASURING.with(|m| m.set(false));
    assert_eq!(
        after - before,
        0,
        "the hot path allocated {} times",
        after - before
    );
}
