//! The exported functions, one module per call family. Each hook is a thin shell
//! built with `hook!` (see [`crate::hook`] for its contract): it asks
//! [`crate::detour`] whether the call goes through the shim, then calls the
//! real function, or the shim's logic for fds it manages ([`crate::managed`])
//! or owns ([`crate::reclaim`], [`crate::internal`]).
//!
//! Programs reach these through the dynamic linker, ahead of libc's definitions.
//! Shim code never calls them; it calls [`crate::real`].

/// `managed::NAME(ARGS)` when WAY (a [`crate::detour`] answer) is a detour,
/// else `real::NAME(ARGS)`: the shape of most hook bodies.
macro_rules! detour_or_real {
    ($way:expr => $name:ident($($arg:expr),* $(,)?)) => {
        match $way {
            Ok(_) => $crate::managed::$name($($arg),*),
            Err(_) => $crate::real::$name($($arg),*),
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
