//! The GCB client's part in the process's lifetime events, called by
//! [`crate::init`] and the exec and `dup2` paths: taking over inherited
//! listeners, the child's responder after `fork`, leaving registrations
//! before `exec` and at exit, and an internal fd moved to another number.
//! The top of the client: it calls into the rest, and nothing in the client
//! calls it.

use super::state::with;
use super::mode::enabled;
use super::{fdops, inherit, received};
use crate::config::{self, Mode};

/// Turns the client on if configured, and takes over inherited listeners. Called
/// once per process image by [`crate::init`].
pub fn init() {
    if enabled() {
        super::adopt::adopt();
        received::adopt_activated();
    } else if matches!(config::get().mode, Mode::Gcb(_)) {
        log!(Warn, "GCB_INAGENT names no IPv4 broker; GCB is off");
    }
}

/// In a forked child, from the `fork` hook or the child's first hooked call:
/// starts the child's own responder if it holds anything to answer for.
pub fn resume_in_child() {
    if enabled() && with(|reg| reg.listeners().next().is_some()) {
        super::state::ensure_responder();
    }
}

/// The process is about to replace its image (not in a borrowing child,
/// which holds nothing of its own): it leaves the registrations of the
/// listeners the new image does not inherit (all their fds close on exec);
/// the new image joins the others again from its own management sockets.
pub fn before_exec() {
    if enabled() && !crate::process::borrowed() {
        fdops::leave_all(fdops::Leaving::ClosedOnExec);
    }
}

/// The process exits (`atexit`): it leaves its registrations, so a listener
/// it alone held is unregistered at once rather than at its expiry.
pub fn at_exit() {
    if enabled() && !crate::process::borrowed() {
        fdops::leave_all(fdops::Leaving::All);
    }
}

/// An internal fd moved (the application `dup2`ed onto its number); true if it was
/// one of the client's (a management socket or a doorbell).
pub fn internal_fd_moved(old: libc::c_int, new: libc::c_int) -> bool {
    with(|reg| {
        let moved = reg.replace_internal_fd(old, new);
        if moved {
            inherit::publish(reg);
        }
        moved
    })
}
