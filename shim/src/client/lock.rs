//! The one lock of a client (the GCB registry, or the DPF state), and what `fork` does with it.
//!
//! The registry (listeners, names, caches) sits behind a plain `pthread_mutex_t`
//! rather than `std::sync::Mutex`, because `fork` needs to take it and drop it
//! outside any Rust scope: the `pthread_atfork` prepare handler locks it, the
//! parent and child handlers unlock it (the pattern POSIX gives for this), so a
//! child never starts with the lock held by a thread it does not have.
//!
//! Rules for holders, relied on by every module:
//! * never hold it across a call that can block (`poll`, `connect`, blocking
//!   reads); non-blocking sends and `fcntl` are fine;
//! * never call a hooked function while holding it (shim code calls
//!   [`crate::real`] anyway).
//!
//! A signal handler that interrupts a holder and forks would deadlock in the
//! prepare handler, so the holder is remembered per thread and the prepare
//! handler skips a lock its own thread holds; the child then resumes the
//! holder's code and releases it as usual.

use std::cell::{Cell, UnsafeCell};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

thread_local! {
    static HOLDING: Cell<bool> = const { Cell::new(false) };
}

#[cfg(test)]
thread_local! {
    // Locks this thread took: tests prove a fast path takes none.
    static TAKEN: Cell<u64> = const { Cell::new(0) };
}

/// How many times this thread has taken any [`Lock`] (test builds only).
#[cfg(test)]
pub fn taken_by_this_thread() -> u64 {
    TAKEN.with(Cell::get)
}

/// A mutex whose state `fork` handles (see the module docs).
pub struct Lock<T> {
    mutex: UnsafeCell<libc::pthread_mutex_t>,
    value: UnsafeCell<T>,
}

// SAFETY: access to `value` is serialised by the mutex.
unsafe impl<T: Send> Sync for Lock<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Send for Lock<T> {}

impl<T> Lock<T> {
    pub const fn new(value: T) -> Lock<T> {
        Lock { mutex: UnsafeCell::new(libc::PTHREAD_MUTEX_INITIALIZER), value: UnsafeCell::new(value) }
    }

    pub fn lock(&self) -> Guard<'_, T> {
        // SAFETY: a valid, initialised mutex; a normal mutex locked once per thread
        // (shim code never nests it, and a signal handler re-entering the shim
        // passes through the hook guard before reaching here).
        unsafe { libc::pthread_mutex_lock(self.mutex.get()) };
        let _ = HOLDING.try_with(|h| h.set(true));
        #[cfg(test)]
        let _ = TAKEN.try_with(|t| t.set(t.get() + 1));
        Guard { lock: self }
    }

    fn unlock(&self) {
        let _ = HOLDING.try_with(|h| h.set(false));
        // SAFETY: locked by this thread (or, after fork, by the thread the child
        // continues as).
        unsafe { libc::pthread_mutex_unlock(self.mutex.get()) };
    }
}

pub struct Guard<'a, T> {
    lock: &'a Lock<T>,
}

impl<T> Deref for Guard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the mutex is held for the guard's life.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for Guard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as above, and the guard is unique.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for Guard<'_, T> {
    fn drop(&mut self) {
        self.lock.unlock();
    }
}

/// Whether the prepare handler took the lock (and the other two must drop it).
static TAKEN_FOR_FORK: AtomicBool = AtomicBool::new(false);
/// Bumped in every forked child, so the registry notices it lives in a new process
/// the next time it is locked ([`fork_generation`]).
static FORK_GENERATION: AtomicU32 = AtomicU32::new(0);

/// The number of forks between the first process image and this process.
pub fn fork_generation() -> u32 {
    FORK_GENERATION.load(Ordering::Acquire)
}

/// Called in every forked child (from its `pthread_atfork` handler): an atomic
/// add, async-signal-safe.
pub fn note_fork_in_child() {
    FORK_GENERATION.fetch_add(1, Ordering::AcqRel);
}

/// `pthread_atfork` prepare: take the lock unless this thread holds it already,
/// and let `during` see the locked value (the registry marks its listeners shared).
/// A panic in `during` is contained with the lock still held, so the child
/// never starts with a lock another thread may hold.
pub fn prepare_fork<T>(lock: &'static Lock<T>, during: impl FnOnce(&mut T)) {
    if HOLDING.try_with(Cell::get).unwrap_or(true) {
        TAKEN_FOR_FORK.store(false, Ordering::Relaxed);
        return;
    }
    let mut guard = lock.lock();
    let _ = crate::guard::contain("the fork goes ahead, the lock held", || during(&mut guard));
    std::mem::forget(guard);
    TAKEN_FOR_FORK.store(true, Ordering::Relaxed);
}

/// `pthread_atfork` parent and child: release what prepare took. Only
/// async-signal-safe work: an unlock and an atomic.
pub fn after_fork<T>(lock: &'static Lock<T>) {
    if TAKEN_FOR_FORK.swap(false, Ordering::Relaxed) {
        lock.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_serialises_and_fork_handlers_pair_up() {
        static L: Lock<u32> = Lock::new(0);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    for _ in 0..1000 {
                        *L.lock() += 1;
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(*L.lock(), 4000);

        prepare_fork(&L, |v| *v += 1);
        after_fork(&L);
        assert_eq!(*L.lock(), 4001, "the handler released the lock");

        // A thread holding the lock when it forks (a signal handler): prepare skips.
        let g = L.lock();
        prepare_fork(&L, |_| unreachable!());
        after_fork(&L);
        drop(g);
        assert_eq!(*L.lock(), 4001);

        // A panic while preparing leaves the lock taken for the fork.
        prepare_fork(&L, |_| panic!("while marking"));
        assert!(TAKEN_FOR_FORK.load(Ordering::Relaxed), "still taken for the fork");
        after_fork(&L);
        assert_eq!(*L.lock(), 4001, "and released by the after handler");
    }
}
