//! The machinery every interposed function is built from: the `hook!` macro, the
//! per-thread re-entrancy guard, `errno` access and the `ErrnoGuard`.
//!
//! # Why our own macro and not `redhook`
//!
//! `redhook` generates the `dlsym(RTLD_NEXT)` plumbing, but a shim that sits under
//! arbitrary programs needs three things it does not give:
//!
//! * `errno` handling: the caller must see exactly the `errno` of the real call, and
//!   shim-internal work must not disturb it ([`ErrnoGuard`]).
//! * A re-entrancy guard: Rust's std and our own helpers call `write`, `close`,
//!   `read`... which bind to our hooks again. Without a guard the shim would recurse
//!   into its own logic.
//! * Variadics: `fcntl` cannot be written with it (see `hooks/lifetime.rs`).
//!
//! It also resolves the real function under a `std::sync::Once`, which blocks: a
//! child forked while another thread was inside it would wait forever. And a missing
//! symbol is a panic, where a C caller expects `-1` and an `errno`. The macro below is
//! small enough to own.
//!
//! # The contract of `hook!`
//!
//! `hook! { fn NAME(ARGS) -> RET { BODY } }` exports `NAME` with the C ABI. On each call:
//!
//! 1. If this thread is already inside the shim (the shim's own libc calls, or a
//!    signal handler that interrupted shim code), the real `NAME` is called with the
//!    same arguments and nothing else happens.
//! 2. Otherwise the thread is marked as inside the shim, lazy init runs if it has not
//!    ([`crate::init::ensure`]), and BODY runs. BODY's value is the return value, and
//!    BODY is expected to end in a real call so `errno` is the real call's.
//! 3. If BODY panics, the panic is caught (it must never unwind into C), logged, and
//!    the real `NAME` is called with the original arguments. So BODY must not panic
//!    after it has performed the real operation.
//!
//! `real::NAME` must exist with the same signature; a hook for a function libc does
//! not have fails with `ENOSYS` (see [`crate::real`]).
//!
//! Calls that do not return on success (the exec family, `hooks/lifetime.rs`) are
//! not built with `hook!`: their shim work runs guarded by [`prepare_value`]
//! (without lazy init, and with `errno` preserved), then the guard is released and
//! the real function is called, and [`prepare`] undoes the work if it returns.
//! Releasing first matters under `vfork`: the child shares the parent's memory,
//! thread-local guard included, so a guard still set when `execve` replaces the
//! child would leave the parent thread marked "inside the shim" forever.
//!
//! Shim logic only ever runs inside the guard, so any lock it takes is held inside
//! it. A signal handler that interrupts shim code and calls a hooked function passes
//! straight through, and cannot deadlock on a lock its own thread holds.

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

/// Runs `logic` as a hook body per the `hook!` contract; `real` is the pass-through.
#[inline(always)]
pub fn dispatch<R>(logic: impl FnOnce() -> R, real: impl FnOnce() -> R) -> R {
    let Some(inside) = Inside::enter() else {
        return real();
    };
    let run = || {
        crate::init::ensure();
        logic()
    };
    match catch_unwind(AssertUnwindSafe(run)) {
        Ok(value) => value,
        Err(_) => {
            // The panic hook (init.rs) has logged it. Leave before the real call so
            // it runs exactly as it would without the shim.
            drop(inside);
            real()
        }
    }
}

/// Runs shim work outside `hook!` (the exec hooks): guarded, panic-contained,
/// `errno` untouched.
#[inline(always)]
pub fn prepare(body: impl FnOnce()) {
    let Some(_inside) = Inside::enter() else {
        return;
    };
    let _errno = ErrnoGuard::new();
    let _ = catch_unwind(AssertUnwindSafe(body));
}

/// Like [`prepare`], for a body that computes something for the real call (the
/// exec hooks' new environment). `None` when re-entered or on a panic.
#[inline(always)]
pub fn prepare_value<T>(body: impl FnOnce() -> Option<T>) -> Option<T> {
    let _inside = Inside::enter()?;
    let _errno = ErrnoGuard::new();
    catch_unwind(AssertUnwindSafe(body)).ok().flatten()
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

/// The value a hooked function returns on failure, when its real definition is
/// missing (with `errno = ENOSYS`).
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

/// Defines an exported hook; see the module documentation for the contract.
macro_rules! hook {
    (
        $(#[$meta:meta])*
        fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty $body:block
    ) => {
        $(#[$meta])*
        ///
        /// # Safety
        ///
        /// The C contract of the libc function of the same name.
        #[no_mangle]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> $ret {
            $crate::hook::dispatch(|| $body, || $crate::real::$name($($arg),*))
        }
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
    fn dispatch_falls_back_to_real_on_panic() {
        let got = dispatch(|| -> c_int { panic!("logic bug") }, || 7);
        assert_eq!(got, 7);
        assert!(!in_shim(), "the guard is released after a panic");
        // Nested: the inner dispatch must not run its logic.
        let got = dispatch(|| dispatch(|| 1, || 2), || 3);
        assert_eq!(got, 2);
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
