//! Atomics behind a loom shim: `cargo test --cfg loom` model-checks the slot state machine
//! with loom's atomics; every other build uses the standard library's.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering};

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
