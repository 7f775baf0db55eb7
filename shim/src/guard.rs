//! What shim code at every layer needs to run safely inside someone else's
//! call: the per-thread re-entrancy guard ([`Inside`]), `errno` access and
//! the [`ErrnoGuard`], panic containment ([`contain`], [`bookkeep`]) and the
//! failure values of C calls ([`Failure`]).
//!
//! This is the bottom of the shim: it uses nothing of it, so `real`, `log` and
//! the clients can use it without reaching up to the hook machinery. How a hook
//! puts these together, and the rules they serve, is in [`crate::hook`].

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};

use libc::c_int;

thread_local! {
    // Const-initialised and `Copy`: no lazy init, no allocation and no destructor
    // registration on first use in a thread, so the guard is safe to touch anywhere.
    static IN_SHIM: Cell<bool> = const { Cell::new(false) };
}

/// Proof that this thread has entered the shim; dropping it leaves.
pub struct Inside(());

impl Inside {
    /// `None` if this thread is already inside, or has no thread-local storage left
    /// (a thread being torn down); either way the caller must pass through.
    #[inline(always)]
    pub fn enter() -> Option<Inside> {
        match IN_SHIM.try_with(|c| c.replace(true)) {
            Ok(false) => Some(Inside(())),
            _ => None,
        }
    }
}

impl Drop for Inside {
    #[inline(always)]
    fn drop(&mut self) {
        let _ = IN_SHIM.try_with(|c| c.set(false));
    }
}

/// Whether this thread is running shim logic right now.
pub fn in_shim() -> bool {
    IN_SHIM.try_with(Cell::get).unwrap_or(true)
}

/// What a caught panic leads to, for the one line the panic hook logs.
pub mod aftermath {
    pub const FAILS: &str = "the call fails with EIO";
    pub const STANDS: &str = "the shim's bookkeeping stops there; the call returns what the kernel did";
    pub const EXEC: &str = "the exec goes ahead without the shim's hand-over";
}

thread_local! {
    // What the innermost `contain` on this thread makes of a panic; "" outside any.
    static AFTERMATH: Cell<&'static str> = const { Cell::new("") };
}

/// What a panic on this thread now leads to, if it is inside [`contain`]; a
/// panic inside the shim but outside any `contain` is a hook body's, and fails
/// its call ([`aftermath::FAILS`], see `hook::dispatch`).
pub fn current_aftermath() -> Option<&'static str> {
    AFTERMATH.try_with(Cell::get).ok().filter(|a| !a.is_empty())
}

/// Runs `f`; a panic in it is caught and logged as one line ending in
/// `aftermath` (what the caller does next), and gives `None`. Nests.
#[inline]
pub fn contain<T>(aftermath: &'static str, f: impl FnOnce() -> T) -> Option<T> {
    let outer = AFTERMATH.try_with(|a| a.replace(aftermath)).unwrap_or("");
    let r = catch_unwind(AssertUnwindSafe(f)).ok();
    let _ = AFTERMATH.try_with(|a| a.set(outer));
    r
}

/// Bookkeeping around a real operation that has been performed, or must be
/// whatever happens (a close; rule 4 of the contract): a panic in `f` stops
/// there, and the body goes on to return the real result. `errno` is the real
/// call's either way.
#[inline]
pub fn bookkeep<T>(f: impl FnOnce() -> T) -> Option<T> {
    let _errno = ErrnoGuard::new();
    contain(aftermath::STANDS, f)
}

/// Runs shim work outside `hook!` (the exec hooks): guarded, panic-contained,
/// `errno` untouched.
#[inline(always)]
pub fn prepare(body: impl FnOnce()) {
    let Some(_inside) = Inside::enter() else {
        return;
    };
    let _errno = ErrnoGuard::new();
    let _ = contain(aftermath::EXEC, body);
}

/// Like [`prepare`], for a body that computes something for the real call (the
/// exec hooks' new environment). `None` when re-entered or on a panic.
#[inline(always)]
pub fn prepare_value<T>(body: impl FnOnce() -> Option<T>) -> Option<T> {
    let _inside = Inside::enter()?;
    let _errno = ErrnoGuard::new();
    contain(aftermath::EXEC, body).flatten()
}

/// The calling thread's `errno`.
#[inline]
pub fn errno() -> c_int {
    // SAFETY: __errno_location always returns this thread's errno slot.
    unsafe { *libc::__errno_location() }
}

#[inline]
pub fn set_errno(value: c_int) {
    // SAFETY: as in `errno`.
    unsafe { *libc::__errno_location() = value }
}

/// Saves `errno` on creation and restores it on drop, for shim work (logging,
/// bookkeeping calls) between the application's call and the result it sees.
pub struct ErrnoGuard(c_int);

impl ErrnoGuard {
    #[inline]
    #[must_use = "errno is restored when the guard is dropped"]
    pub fn new() -> ErrnoGuard {
        ErrnoGuard(errno())
    }
}

impl Default for ErrnoGuard {
    fn default() -> Self {
        ErrnoGuard::new()
    }
}

impl Drop for ErrnoGuard {
    #[inline]
    fn drop(&mut self) {
        set_errno(self.0)
    }
}

/// The value a hooked function returns on failure: when its real definition is
/// missing (with `errno = ENOSYS`), or when the shim's work for it panicked
/// (`EIO`).
pub trait Failure {
    const FAILED: Self;
}

impl Failure for c_int {
    const FAILED: Self = -1;
}

impl Failure for libc::ssize_t {
    const FAILED: Self = -1;
}

impl Failure for () {
    const FAILED: Self = ();
}

/// Test builds: a panic injected once at a named point of shim code, on the
/// thread that armed it, so containment can be tested where real bugs would be.
#[cfg(test)]
pub mod fault {
    use std::cell::Cell;

    thread_local! {
        static ARMED: Cell<&'static str> = const { Cell::new("") };
    }

    /// The next time this thread passes `point`, it panics there.
    pub fn arm(point: &'static str) {
        ARMED.with(|a| a.set(point));
    }

    /// Whether a fault is armed and has not fired yet.
    pub fn armed() -> bool {
        ARMED.with(|a| !a.get().is_empty())
    }

    #[track_caller]
    pub fn point(name: &'static str) {
        if ARMED.with(|a| a.get()) == name {
            ARMED.with(|a| a.set(""));
            panic!("fault injected at {name}");
        }
    }
}

/// A point where a test may inject a panic ([`fault`]); nothing in other builds.
macro_rules! fault_point {
    ($name:literal) => {
        #[cfg(test)]
        $crate::guard::fault::point($name);
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_is_not_reentrant_and_releases() {
        let outer = Inside::enter().expect("first entry");
        assert!(in_shim());
        assert!(Inside::enter().is_none(), "a nested entry must pass through");
        drop(outer);
        assert!(!in_shim());
        assert!(Inside::enter().is_some());
    }

    #[test]
    fn errno_guard_restores() {
        set_errno(libc::EAGAIN);
        {
            let _g = ErrnoGuard::new();
            set_errno(libc::EBADF);
        }
        assert_eq!(errno(), libc::EAGAIN);
    }
}
