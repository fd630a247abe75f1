//! Locking shared state that stays consistent through a panic.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, recovering it if a thread panicked while holding it.
///
/// Only for state whose every critical section is a single insert, remove
/// or a few assignments: a panic cannot leave such state half-updated, so
/// a poisoned lock still guards consistent data, and refusing to go on
/// would turn one panicked thread into a runner that can no longer run
/// anything.
pub fn lock_unpoisoned<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_poisoned_by_a_panic_is_still_usable() {
        // Why it matters: the reaper, the cleaner state and the dirty
        // action cgroups must keep working after a panicked thread.
        let mutex = std::sync::Arc::new(Mutex::new(1));
        let poisoner = mutex.clone();
        let _ = std::thread::spawn(move || {
            let _guard = poisoner.lock().unwrap();
            panic!("poisoning the lock on purpose");
        })
        .join();
        assert!(mutex.is_poisoned());
        *lock_unpoisoned(&mutex) += 1;
        assert_eq!(*lock_unpoisoned(&mutex), 2);
    }
}
