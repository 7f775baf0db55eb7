//! The DPF client's part in the process's lifetime events, called by
//! [`crate::init`] and the exec and `dup2` paths: taking over inherited
//! forwards, the child's responder after `fork`, winding up a standard
//! gateway's mappings before `exec` and at exit, and a management socket
//! moved to another number. The top of the client: it calls into the rest,
//! and nothing in the client calls it.

use super::mode::{active, enabled, standard};
use super::{inherit, pcp};
use super::state::with;
use crate::config::{self, Mode};

/// Takes over inherited forwards; once per process image, from [`crate::init`].
pub fn init() {
    if enabled() {
        super::adopt::adopt();
    } else if matches!(config::get().mode, Mode::Dpf(_)) {
        log!(Warn, "DPF_INAGENT is not an IPv4 address; DPF is off");
    }
}

/// The process exits (`atexit`): it deletes the mappings a standard gateway
/// holds for sockets no other process holds (`pcp::wind`). dpfd's forwards
/// need nothing: its probe finds the management sockets gone.
pub fn at_exit() {
    if enabled() && standard() && active_or_winding() && !crate::process::borrowed() {
        pcp::wind::at_exit();
    }
}

/// Before `exec`: a standard gateway's mapping whose socket the new image
/// will not have (every fd close-on-exec) and no other process holds is
/// deleted now, since nothing would renew or delete it afterwards
/// (`pcp::wind`). Not in a `vfork` child, which must not touch the state.
pub fn before_exec() {
    if enabled() && standard() && active() && !crate::process::borrowed() {
        pcp::wind::before_exec();
    }
}

fn active_or_winding() -> bool {
    active() || with(|st| !st.pcp.winding.is_empty())
}

/// In a forked child (from the `fork` hook or its first hooked call): the
/// child's own responder answers dpfd's probes for the forwards it shares.
pub fn resume_in_child() {
    if enabled() && active() {
        super::state::ensure_responder();
    }
}

/// An internal fd moved (the application `dup2`ed onto its number); true if it was
/// a management socket.
pub fn internal_fd_moved(old: libc::c_int, new: libc::c_int) -> bool {
    with(|st| {
        let moved = st.replace_mgmt_fd(old, new) || st.pcp.replace_fd(old, new);
        if moved {
            inherit::publish(st);
        }
        moved
    })
}
