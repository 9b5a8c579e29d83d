//! A counting global allocator, and the per-connection memory of wscap-core measured with it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use wscap_core::{HostSpec, Permit, Registry};

/// The system allocator, counting bytes and calls while [`COUNTING`] is set.
pub struct Counting;

/// Whether [`Counting`] counts (only during the core measurement: off otherwise, so the load
/// generator pays one relaxed load per allocation).
pub static COUNTING: AtomicBool = AtomicBool::new(false);
static BYTES: AtomicU64 = AtomicU64::new(0);
static CALLS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// GlobalAlloc contract is `System`'s; the counters have no effect on the memory returned.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            BYTES.fetch_add(l.size() as u64, Ordering::Relaxed);
            CALLS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: forwarded unchanged (see the impl's comment).
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            BYTES.fetch_add(n as u64, Ordering::Relaxed);
            CALLS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(p, l, n) }
    }
}

fn counted<T>(f: impl FnOnce() -> T) -> (T, u64, u64) {
    let (b0, c0) = (BYTES.load(Ordering::SeqCst), CALLS.load(Ordering::SeqCst));
    COUNTING.store(true, Ordering::SeqCst);
    let v = f();
    COUNTING.store(false, Ordering::SeqCst);
    (
        v,
        BYTES.load(Ordering::SeqCst) - b0,
        CALLS.load(Ordering::SeqCst) - c0,
    )
}

/// Memory of wscap-core per tracked connection.
#[derive(Debug)]
pub struct CoreMemory {
    /// Connections tracked.
    pub n: usize,
    /// Heap bytes the registry, cluster and 3 hosts took to set up.
    pub setup_bytes: u64,
    /// Heap bytes allocated while admitting `n` connections (permits held in a pre-sized Vec).
    pub acquire_bytes: u64,
    /// Allocator calls while admitting them.
    pub acquire_calls: u64,
    /// `size_of::<Permit>()`: what the filter keeps per connection.
    pub permit_size: usize,
    /// Active count the registry snapshot reports with all `n` held.
    pub snapshot_active: u64,
    /// Active count after dropping them.
    pub after_release: u64,
}

/// Admit `n` connections to a 3-host cluster, counting every allocation on the way.
pub fn core_memory(n: usize) -> CoreMemory {
    let per_host = (n as u32).div_ceil(3) + 1;
    let (reg, setup_bytes, _) = counted(|| {
        let reg = Registry::new();
        let c = reg.set_default_limit("pods", per_host).expect("limit");
        c.set_hosts(&[
            HostSpec::parse("10.0.0.1:8080").expect("addr"),
            HostSpec::parse("10.0.0.2:8080").expect("addr"),
            HostSpec::parse("10.0.0.3:8080").expect("addr"),
        ]);
        reg
    });
    let cluster = reg.cluster("pods").expect("cluster");
    let mut held: Vec<Permit> = Vec::with_capacity(n);
    let ((), acquire_bytes, acquire_calls) = counted(|| {
        for _ in 0..n {
            held.push(cluster.acquire().expect("room"));
        }
    });
    let snap = reg.snapshot();
    let snapshot_active = snap
        .clusters
        .iter()
        .flat_map(|c| c.hosts.iter())
        .map(|h| u64::from(h.active))
        .sum();
    drop(held);
    CoreMemory {
        n,
        setup_bytes,
        acquire_bytes,
        acquire_calls,
        permit_size: std::mem::size_of::<Permit>(),
        snapshot_active,
        after_release: cluster.active(),
    }
}
