//! One-time setup of the shim in a process: done by the first hooked call, never at
//! load time, and never by waiting for another thread.
//!
//! # Why lazily, and why no constructor
//!
//! An `.init_array` constructor runs under the dynamic loader's lock, in an order
//! relative to other libraries' constructors that we do not control, and possibly
//! before the program has set up what its own hooks might meet. The only work
//! there that would be trivially safe is work there is no need for, so the shim has
//! no constructor. Everything is lazy: configuration on first use ([`config::get`]),
//! and the side effects below on the first hooked call. After `execve` the new image
//! starts over from its own environment.
//!
//! # Why init never waits
//!
//! A thread that finds init running elsewhere does not wait for it; it carries on
//! (passing through) without the log file for that moment. Waiting would mean a
//! lock or a spin, and a child forked while another thread held it would wait
//! forever, since that thread does not exist in the child. The pieces that must
//! exist once are published with a compare-and-swap instead ([`config::get`]).
//!
//! # fork
//!
//! The shim's state is atomics, values published once, and one lock: the GCB
//! client's registry ([`crate::client::lock`]). The `pthread_atfork` prepare handler
//! takes that lock (and marks every listener shared with the coming child); the
//! parent and child handlers release it, so that no child starts with a lock held
//! by a thread it does not have. The child handler also resets an init that
//! another thread had left half done at the moment of the fork, so the child runs
//! it again. Any lock added later must be taken by the prepare handler too, in one
//! fixed order. The child handler runs in the child of a possibly
//! multi-threaded parent, so it only does async-signal-safe work. No handler
//! (nor the `atexit` one) lets a panic unwind into libc.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use crate::config;
use crate::guard::ErrnoGuard;
use crate::log;

const NEW: u8 = 0;
const RUNNING: u8 = 1;
const DONE: u8 = 2;
/// Done, in a forked child whose own responder has not been started yet.
const FORKED: u8 = 3;

static STATE: AtomicU8 = AtomicU8::new(NEW);

/// Makes sure init has run or is running; one atomic load once it is done.
#[inline]
pub fn ensure() {
    if STATE.load(Ordering::Acquire) != DONE {
        start();
    }
}

/// Whether init has finished in this process.
pub fn done() -> bool {
    STATE.load(Ordering::Acquire) == DONE
}

#[cold]
fn start() {
    if STATE.compare_exchange(FORKED, RUNNING, Ordering::Acquire, Ordering::Relaxed).is_ok() {
        let _errno = ErrnoGuard::new();
        let _ = crate::guard::contain(aftermath::INIT, resume_in_child);
        STATE.store(DONE, Ordering::Release);
        return;
    }
    if STATE.compare_exchange(NEW, RUNNING, Ordering::Acquire, Ordering::Relaxed).is_err() {
        return;
    }
    let _errno = ErrnoGuard::new();
    // The panic hook first, so that even a fault in the rest is one line.
    install_panic_hook();
    // A panic here leaves init done as far as it got: the call that ran it
    // goes on, and no later call tries again.
    let _ = crate::guard::contain(aftermath::INIT, first_time);
    STATE.store(DONE, Ordering::Release);
}

fn first_time() {
    crate::process::claim();
    register_fork_handlers();
    register_exit_handler();

    let cfg = config::get();
    log::set_level(cfg.log_level);
    if let Some(path) = &cfg.log_file {
        if let Err(e) = crate::internal::open_log(path) {
            let e = std::io::Error::from_raw_os_error(e);
            log!(Warn, "GCB_LOG_FILE={path:?}: cannot open it ({e}); logging to stderr");
        }
    }
    for problem in &cfg.problems {
        log!(Warn, "{problem}");
    }
    crate::gcb::lifecycle::init();
    crate::dpf::lifecycle::init();
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    log!(Debug, "loaded in process {pid}: {}", cfg.summary());
}

/// What a caught panic in the C-called functions of this module leads to.
mod aftermath {
    pub const INIT: &str = "the shim's init stops there";
    pub const EXIT: &str = "the exit goes ahead";
    pub const FORK: &str = "the fork goes ahead";
}

/// Registered once per process image; forked children inherit the registration.
fn register_fork_handlers() {
    static REGISTERED: AtomicBool = AtomicBool::new(false);
    if REGISTERED.swap(true, Ordering::Relaxed) {
        return;
    }
    // SAFETY: a handler with no preconditions. glibc's pthread_atfork (linked from
    // libc_nonshared) passes our __dso_handle, so a dlclose unregisters it.
    let rc = unsafe { libc::pthread_atfork(Some(before_fork), Some(after_fork_in_parent), Some(after_fork_in_child)) };
    if rc != 0 {
        log!(Warn, "pthread_atfork failed ({rc}); a child forked during init will log to stderr");
    }
}

/// Registered once per process image; a forked child inherits it.
fn register_exit_handler() {
    static REGISTERED: AtomicBool = AtomicBool::new(false);
    if REGISTERED.swap(true, Ordering::Relaxed) {
        return;
    }
    // SAFETY: a handler with no preconditions; glibc's atexit (from
    // libc_nonshared) ties it to this object's __dso_handle.
    if unsafe { libc::atexit(at_exit) } != 0 {
        log!(Warn, "atexit failed; registrations are dropped at their expiry when this process exits");
    }
}

extern "C" fn at_exit() {
    // The guard keeps the shim's own calls out of the hooks; `prepare` would
    // name the wrong aftermath.
    let Some(_inside) = crate::guard::Inside::enter() else { return };
    let _errno = ErrnoGuard::new();
    let _ = crate::guard::contain(aftermath::EXIT, || {
        if crate::dpf::mode::enabled() {
            crate::dpf::lifecycle::at_exit();
        } else {
            crate::gcb::lifecycle::at_exit();
        }
    });
}

// The three fork handlers are called by libc, in whatever thread forks, inside
// a hook or not (a libc-internal fork, as in `daemon`): none may unwind into
// it, so each runs its work under `contain`.

extern "C" fn before_fork() {
    let _ = crate::guard::contain(aftermath::FORK, || {
        // One client per mode: the lock helpers track one lock taken for fork.
        if crate::dpf::mode::enabled() {
            crate::dpf::state::prepare_fork();
        } else {
            crate::gcb::state::prepare_fork();
        }
    });
}

extern "C" fn after_fork_in_parent() {
    let _ = crate::guard::contain(aftermath::FORK, || {
        if crate::dpf::mode::enabled() {
            crate::dpf::state::after_fork(false);
        } else {
            crate::gcb::state::after_fork(false);
        }
    });
}

extern "C" fn after_fork_in_child() {
    // Async-signal-safe work only: atomics, getpid, an unlock. `contain` adds a
    // thread-local swap and `catch_unwind`, which costs nothing unless a panic
    // comes (and then the child logs it rather than abort in libc).
    let _ = crate::guard::contain(aftermath::FORK, in_child);
}

fn in_child() {
    crate::process::claim();
    crate::responder::forget_in_child();
    // An init another thread had under way will never finish in this process;
    // a finished one still owes the child its responder.
    let _ = STATE.compare_exchange(RUNNING, NEW, Ordering::Relaxed, Ordering::Relaxed);
    let _ = STATE.compare_exchange(DONE, FORKED, Ordering::Relaxed, Ordering::Relaxed);
    if crate::dpf::mode::enabled() {
        crate::dpf::state::after_fork(true);
    } else {
        crate::gcb::state::after_fork(true);
    }
}

/// The first hooked call of a forked child (or its `fork` hook): the child's
/// own responder, for what it holds.
fn resume_in_child() {
    if crate::dpf::mode::enabled() {
        crate::dpf::lifecycle::resume_in_child();
    } else {
        crate::gcb::lifecycle::resume_in_child();
    }
}

/// A panic inside shim code is logged as one line, saying where and what the
/// shim does next (`guard::contain`'s aftermath). Panics elsewhere, possible
/// only when the rlib is linked into a Rust program such as our unit tests, go
/// to the hook that was there before.
fn install_panic_hook() {
    static INSTALLED: AtomicBool = AtomicBool::new(false);
    if INSTALLED.swap(true, Ordering::Relaxed) {
        return;
    }
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let aftermath = crate::guard::current_aftermath();
        if crate::guard::in_shim() || aftermath.is_some() {
            let payload = info.payload();
            let what = payload.downcast_ref::<&str>().copied();
            let what = what.or_else(|| payload.downcast_ref::<String>().map(String::as_str));
            let at = info.location().map(|l| (l.file(), l.line())).unwrap_or(("?", 0));
            let next = aftermath.unwrap_or(crate::guard::aftermath::FAILS);
            log!(Error, "internal error at {}:{}: {}; {next}", at.0, at.1, what.unwrap_or("panic"));
        } else {
            previous(info);
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ensure_completes() {
        // Another test thread may be the one running init; it finishes without us.
        for _ in 0..5000 {
            ensure();
            if STATE.load(Ordering::Acquire) == DONE {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        panic!("init did not complete");
    }
}
