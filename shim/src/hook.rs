//! The machinery every interposed function is built from: the `hook!` macro
//! and [`dispatch`], which puts together the pieces of [`crate::guard`] (the
//! per-thread re-entrancy guard, `errno` handling and panic containment) with
//! lazy init ([`crate::init::ensure`]). It sits at the top of the shim with the
//! hooks themselves: nothing below may use it, and what they need of the rules
//! below is in `guard`.
//!
//! # Why our own macro and not `redhook`
//!
//! `redhook` generates the `dlsym(RTLD_NEXT)` plumbing, but a shim that sits under
//! arbitrary programs needs three things it does not give:
//!
//! * `errno` handling: the caller must see exactly the `errno` of the real call, and
//!   shim-internal work must not disturb it ([`ErrnoGuard`](crate::guard::ErrnoGuard)).
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
//!    [`bookkeep`](crate::guard::bookkeep), which contains the panic there, logs one line, and lets BODY
//!    return the real call's result, so nothing runs twice and the application sees
//!    what the kernel did. Where the fd table must not be left wrong, BODY puts it
//!    right regardless (a closed fd is always left `Plain`, see `managed::forget`).
//!    A read whose data the shim must strip (a UDP relay header) cannot return the
//!    raw result: a panic there fails the read with EIO, as if the datagram were
//!    lost.
//!
//! Every other function C calls into (the `pthread_atfork` and `atexit` handlers in
//! [`crate::init`], the responder thread's rounds) runs its work under [`contain`](crate::guard::contain)
//! too. A build with `panic = "abort"` is refused (`lib.rs`): every one of these
//! guarantees would turn into killing the application.
//!
//! `real::NAME` must exist with the same signature; a hook for a function libc does
//! not have fails with `ENOSYS` (see [`crate::real`]).
//!
//! Calls that do not return on success (the exec family, `hooks/lifetime.rs`) are
//! not built with `hook!`: their shim work runs guarded by [`prepare_value`](crate::guard::prepare_value)
//! (without lazy init, and with `errno` preserved), then the guard is released and
//! the real function is called, and [`prepare`](crate::guard::prepare) undoes the work if it returns.
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

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::guard::{set_errno, Inside, Failure};

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
    use std::cell::Cell;

    use libc::c_int;

    use super::*;
    use crate::guard::{bookkeep, current_aftermath, errno, in_shim};

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

}
