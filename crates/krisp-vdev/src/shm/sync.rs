//! Atomics used by the ring: std's normally, loom's under `--cfg loom` so the model checker
//! can explore the orderings of the ring's index protocol.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
