//! The machinery every interposed function is built from: the `hook!` macro, the
//! per-thread re-entrancy guard, `errno` access and the `ErrnoGuard`, and panic
//! containment ([`contain`], [`bookkeep`]).
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
//! 3. If BODY panics, the panic is caught (it must never unwind into C), one line
//!    is logged, and the call fails: it returns the type's failure value ([`Failure`],
//!    `-1`) with `errno = EIO`. It is **not** handed to the real `NAME`: on a fd the
//!    shim manages, the raw call would hand the application what the shim keeps from
//!    it (a relay header, a doorbell) or do twice what BODY already did (a `dup`, a
//!    `send`, an `accept`).
//! 4. Hence the rule for BODY: whatever may panic *after* BODY has performed the real
//!    operation (closed, duplicated, accepted, listened, connected, bound) runs under
//!    [`bookkeep`], which contains the panic there, logs one line, and lets BODY
//!    return the real call's result, so nothing runs twice and the application sees
//!    what the kernel did. Where the fd table must not be left wrong, BODY puts it
//!    right regardless (a closed fd is always left `Plain`, see `managed::forget`).
//!    A read whose data the shim must strip (a UDP relay header) cannot return the
//!    raw result: a panic there fails the read with EIO, as if the datagram were
//!    lost.
//!
//! Every other function C calls into (the `pthread_atfork` and `atexit` handlers in
//! [`crate::init`], the responder thread's rounds) runs its work under [`contain`]
//! too. A build with `panic = "abort"` is refused (`lib.rs`): every one of these
//! guarantees would turn into killing the application.
//!
//! `real::NAME` must exist with the same signature; a hook for a function libc does
//! not have fails with `ENOSYS` (see [`crate::real`]).
//!
//! Calls that do not return on success (the exec family, `hooks/lifetime.rs`) are
//! not built with `hook!`: their shim work runs guarded by [`prepare_value`]
//! (without lazy init, and with `errno` preserved), then the guard is released and
//! the real function is called, and [`prepare`] undoes the work if it returns.
//! They are the one exception to rule 3: a panic in that work leaves the new image
//! without the shim's hand-over, and the exec itself goes ahead: what failed is the
//! shim's extra, and the raw exec hands the application nothing of the shim's.
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
/// its call ([`aftermath::FAILS`], see [`dispatch`]).
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

/// Runs `logic` as a hook body per the `hook!` contract; `real` is the pass-through
/// for a thread already inside the shim.
#[inline(always)]
pub fn dispatch<R: Failure>(logic: impl FnOnce() -> R, real: impl FnOnce() -> R) -> R {
    let Some(_inside) = Inside::enter() else {
        return real();
    };
    // Init contains its own panics (`init`): a fault there must not fail
    // calls on fds the shim has no business with.
    crate::init::ensure();
    // Not `contain`: every hooked call passes here, and a hook body's
    // aftermath is the default one for a panic inside the shim (`FAILS`), so
    // the thread-local need not be touched (two `__tls_get_addr` calls fewer
    // on the fast path of a shared library).
    match catch_unwind(AssertUnwindSafe(logic)) {
        Ok(value) => value,
        Err(_) => {
            set_errno(libc::EIO);
            R::FAILED
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
        $crate::hook::fault::point($name);
    };
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
    fn a_panic_fails_the_call_with_eio_and_never_calls_real() {
        let real_ran = Cell::new(false);
        set_errno(0);
        let got = dispatch(|| -> c_int { panic!("logic bug") }, || {
            real_ran.set(true);
            7
        });
        assert_eq!((got, errno()), (-1, libc::EIO));
        assert!(!real_ran.get(), "the raw call is not made after a panic");
        assert!(!in_shim(), "the guard is released after a panic");
        assert_eq!(current_aftermath(), None, "and so is the aftermath");
        let got: libc::ssize_t = dispatch(|| panic!("in a read"), || 5);
        assert_eq!((got, errno()), (-1, libc::EIO));
        // Nested: the inner dispatch must not run its logic.
        let got = dispatch(|| dispatch(|| 1, || 2), || 3);
        assert_eq!(got, 2);
    }

    #[test]
    fn bookkeep_keeps_the_result_and_errno() {
        let got = dispatch(
            || -> c_int {
                set_errno(libc::EAGAIN);
                let r = 4; // the real call's result
                assert_eq!(bookkeep(|| -> u8 { panic!("bookkeeping bug") }), None);
                assert_eq!(current_aftermath(), None, "the outer aftermath (a hook body's) is back");
                assert_eq!(bookkeep(|| 9), Some(9));
                r
            },
            || 0,
        );
        assert_eq!((got, errno()), (4, libc::EAGAIN));
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
