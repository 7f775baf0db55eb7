//! The DPF client (paper 3.2.1, docs/design.md, "DPF tables"): with `DPF_INAGENT` set, the shim
//!
//! * asks `dpfd` on the NAT gateway to forward a public address to every AF_INET
//!   UDP socket after `bind` and every TCP socket after `listen` (not loopback),
//!   keeps the coupled management socket `dpfd` probes, and reports the public
//!   address from `getsockname`, also on connections accepted from a forwarded
//!   listener ([`forward`], [`ops`]);
//! * deletes the forward when the socket turns active (`connect`) or its last fd
//!   in this process closes, unless another process shares it ([`ops`]);
//! * asks `dpfd` before a `connect` to one of its public IPs ([`public`], known
//!   without a lock) which private address is behind it, and dials that one
//!   directly ([`query`]); a connect elsewhere takes no lock;
//! * hands forwarded sockets over `exec` in `GCB_INHERITED` ([`inherit`]);
//! * forwards a socket the application binds to one of dpfd's public addresses
//!   from exactly that address ([`reported`], `client::pinned`).
//!
//! With `DPF_INAGENT=pcp://...` the forwards come from a standard gateway
//! instead, by PCP MAP or NAT-PMP ([`pcp`]): the same records, names, dups,
//! closes and hand-overs, with a port-mapping client in place of dpfd's
//! `Forward`, its probes and its `Query`.
//!
//! GCB and DPF are exclusive modes; the hooks reach this module through
//! [`crate::managed`], which picks the client by mode. State lives in one
//! [`State`] behind one fork-safe lock (`client::lock`), taken through [`with`] for
//! short, non-blocking critical sections only.

pub mod forward;
pub mod inherit;
pub mod ops;
pub mod pcp;
pub mod public;
pub mod query;
pub mod reported;
pub mod serve;
pub mod state;

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering::Relaxed};

use crate::config::{self, Mode};
use crate::client::lock::{self, Lock};
use state::State;

const UNKNOWN: u8 = 0;
const OFF: u8 = 1;
const ON: u8 = 2;
static ENABLED: AtomicU8 = AtomicU8::new(UNKNOWN);
static STATE: Lock<Option<State>> = Lock::new(None);
/// Whether any forward exists.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Whether this process is a DPF client (`DPF_INAGENT` set to an IPv4 address,
/// or to a standard gateway).
#[inline]
pub fn enabled() -> bool {
    match ENABLED.load(Relaxed) {
        ON => true,
        OFF => false,
        _ => decide(),
    }
}

#[cold]
fn decide() -> bool {
    let on = server().is_some() || standard();
    ENABLED.store(if on { ON } else { OFF }, Relaxed);
    on
}

/// `dpfd`'s command address.
pub fn server() -> Option<SocketAddrV4> {
    match config::get().mode {
        Mode::Dpf(SocketAddr::V4(a)) => Some(a),
        _ => None,
    }
}

/// Whether the forwards come from a standard gateway (PCP, NAT-PMP) rather
/// than dpfd.
pub fn standard() -> bool {
    matches!(config::get().mode, Mode::Pcp(_))
}

/// Whether this process holds forwards.
#[inline]
pub fn active() -> bool {
    ACTIVE.load(Relaxed)
}

/// Takes over inherited forwards; once per process image, from [`crate::init`].
pub fn init() {
    if enabled() {
        inherit::adopt();
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

/// Runs `f` on the state, locked. `f` must not block and must not call `with`.
pub fn with<R>(f: impl FnOnce(&mut State) -> R) -> R {
    let mut guard = STATE.lock();
    let st = guard.get_or_insert_with(State::default);
    let generation = lock::fork_generation();
    if st.generation != generation {
        // First use in a forked child: the parent holds every socket too,
        // and the sockets that talk to a standard gateway are its own.
        st.generation = generation;
        st.mark_all_shared();
        pcp::forked(st);
    }
    let r = f(st);
    ACTIVE.store(!st.is_empty(), Relaxed);
    r
}

/// In a forked child (from the `fork` hook or its first hooked call): the
/// child's own responder answers dpfd's probes for the forwards it shares.
pub fn resume_in_child() {
    if enabled() && active() {
        serve::ensure();
    }
}

/// `pthread_atfork` prepare handler (DPF mode).
pub fn prepare_fork() {
    lock::prepare_fork(&STATE, |st| {
        if let Some(st) = st {
            st.mark_all_shared();
        }
    });
}

/// `pthread_atfork` parent and child handlers (DPF mode).
pub fn after_fork(in_child: bool) {
    if in_child {
        lock::note_fork_in_child();
    }
    lock::after_fork(&STATE);
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
