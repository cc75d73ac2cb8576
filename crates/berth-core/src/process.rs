//! The two helpers every process of the platform shares. Planning code takes `now` as an
//! argument and never calls `now_ms` itself, so that it stays free of the clock.

use std::sync::{Mutex, MutexGuard};

use crate::Millis;

/// Milliseconds since the Unix epoch, the unit of every time the platform records.
pub fn now_ms() -> Millis {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as Millis)
}

/// Locks a mutex whose data stays consistent even if a holder panicked.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
