//! The exported functions, one module per call family. Each hook is a thin shell
//! built with `hook!` (see [`crate::hook`] for its contract): a fast-path test on
//! the fd table, then the real function, or the shim's logic for fds it manages
//! ([`crate::managed`]) or owns ([`crate::internal`]).
//!
//! Programs reach these through the dynamic linker, ahead of libc's definitions.
//! Shim code never calls them; it calls [`crate::real`].

/// `real::NAME(ARGS)`, or `managed::NAME(ARGS)` when TEST says the call involves a
/// managed fd: the shape of most hook bodies.
macro_rules! real_unless {
    ($test:expr => $name:ident($($arg:expr),* $(,)?)) => {
        if $test {
            $crate::managed::$name($($arg),*)
        } else {
            $crate::real::$name($($arg),*)
        }
    };
}

mod accept;
mod connect;
mod data;
mod lifetime;
mod readiness;
mod socket;

#[cfg(test)]
mod containment_tests;
#[cfg(test)]
mod fast_path_tests;

/// The bounds check of glibc's `_FORTIFY_SOURCE` entry points (`__recv_chk`, ...),
/// for the calls the shim handles itself instead of passing to libc's checked one.
#[inline]
fn fortify(fits: bool) {
    if !fits {
        crate::real::chk_fail();
    }
}
