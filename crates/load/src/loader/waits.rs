//! Waiting on the state the loader's threads share: locks that outlive a holder's panic, and
//! waits on a condition variable until a condition holds or a timeout passes (the gather threads'
//! turns and the sweep's progress, the caller's wait for its next batch).

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Locks `m`, whether or not a thread panicked while holding it (every state behind the loader's
/// locks is valid between steps).
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The slice a wait without a deadline sleeps between looks (it wakes when signalled anyway).
const NO_DEADLINE_SLICE: Duration = Duration::from_secs(3600);

/// Waits on `cv`, signalled when the state behind `guard` changes, until `ready` holds of that
/// state: the guard, and true, or false once `timeout` has passed first. Any timeout: one past
/// what an `Instant` can hold waits as long as it takes.
pub(super) fn wait_until<'a, T>(
    cv: &Condvar,
    mut guard: MutexGuard<'a, T>,
    timeout: Duration,
    ready: impl Fn(&T) -> bool,
) -> (MutexGuard<'a, T>, bool) {
    let deadline = Instant::now().checked_add(timeout);
    loop {
        if ready(&guard) {
            return (guard, true);
        }
        let left = deadline.map_or(NO_DEADLINE_SLICE, |d| {
            d.saturating_duration_since(Instant::now())
        });
        if left.is_zero() {
            return (guard, false);
        }
        guard = cv
            .wait_timeout(guard, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_wait_ends_when_the_condition_holds_or_the_time_is_up() {
        let state = Arc::new((Mutex::new(0u32), Condvar::new()));
        let (m, cv) = (&state.0, &state.1);
        let ready = wait_until(cv, lock(m), Duration::ZERO, |n| *n == 0).1;
        assert!(ready, "holds already: no wait");
        let ready = wait_until(cv, lock(m), Duration::from_millis(5), |n| *n == 1).1;
        assert!(!ready, "never holds: the time runs out");
        let s = Arc::clone(&state);
        let setter = std::thread::spawn(move || {
            *lock(&s.0) = 1;
            s.1.notify_all();
        });
        // No deadline (Duration::MAX overflows an Instant): waits until signalled.
        let (n, ready) = wait_until(cv, lock(m), Duration::MAX, |n| *n == 1);
        assert!(ready && *n == 1);
        drop(n);
        setter.join().unwrap();
    }
}
