//! The GCB client for TCP and UDP (paper section 4, docs/design.md, docs/gcb-client-design.md).
//!
//! With `GCB_INAGENT` set, the shim:
//!
//! * registers every non-loopback AF_INET TCP listener with the broker and
//!   reports the proxy address it gets ([`listener`], [`identity`]);
//! * answers the broker from a thread of its own, whatever the program is
//!   doing ([`responder`], [`mgmt`]): heartbeats, commands, and the brokered
//!   connections it dials at once and parks for `accept` ([`serve`], [`park`]);
//! * hands those connections to the program's `accept`, in kernel order,
//!   through doorbells ([`doorbell`], [`accept`]);
//! * brokers the application's own connects ([`connector`], [`dial`]), the
//!   non-blocking ones in the background ([`connecting`]);
//! * spreads over several brokers and fails over when one goes silent ([`brokers`]);
//! * registers a socket the application binds to a proxy address on exactly
//!   that address ([`reported`], `client::pinned`);
//! * carries UDP: registration at `bind`, relay header, receiver list, holes
//!   and the UDP buffer ([`udp`]);
//! * keeps its records right across dup, close, fork and exec ([`fdops`],
//!   [`inherit`], [`lock`]).
//!
//! Without `GCB_INAGENT` nothing here runs: [`enabled`] is false, no socket is
//! watched, and every hook stays on its fast path.
//!
//! State lives in one [`Registry`] behind one fork-safe [`crate::client::lock::Lock`], taken
//! through [`with`] for short, non-blocking critical sections only.

pub mod accept;
pub mod brokers;
pub mod connecting;
pub mod connector;
pub mod dial;
pub mod doorbell;
pub mod fdops;
pub mod gate;
pub mod identity;
pub mod inherit;
pub mod interest;
pub mod listener;
pub mod mgmt;
pub mod negcache;
pub mod notice;
pub mod park;
pub mod punch;
pub mod received;
pub mod registration;
pub mod registry;
pub mod reported;
pub mod responder;
pub mod reversal_listener;
pub mod serve;
pub mod serve_punch;
pub mod swap;
pub mod udp;

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU8, Ordering};

use crate::config::{self, Mode};
use crate::client::lock::Lock;
use registry::Registry;

const UNKNOWN: u8 = 0;
const OFF: u8 = 1;
const ON: u8 = 2;
static ENABLED: AtomicU8 = AtomicU8::new(UNKNOWN);
static REGISTRY: Lock<Option<Registry>> = Lock::new(None);

/// Whether this process is a GCB client (`GCB_INAGENT` set and usable).
///
/// Decided from the configuration itself, not by init: lazy init never makes a
/// thread wait, so threads whose first calls race with it run before it is done,
/// and a socket one of them makes must still be brokered. The configuration is
/// published once without waiting either ([`config::get`]).
#[inline]
pub fn enabled() -> bool {
    match ENABLED.load(Ordering::Relaxed) {
        ON => true,
        OFF => false,
        _ => decide(),
    }
}

#[cold]
fn decide() -> bool {
    let on = matches!(config::get().mode, Mode::Gcb(_)) && broker().is_some();
    ENABLED.store(if on { ON } else { OFF }, Ordering::Relaxed);
    on
}

/// Whether `GCB_INAGENT` names a usable broker: its first IPv4 address (the
/// protocol speaks IPv4 only). Which broker a listener uses is `brokers`' choice.
pub fn broker() -> Option<SocketAddrV4> {
    match &config::get().mode {
        Mode::Gcb(brokers) => brokers.iter().find_map(|b| match b {
            SocketAddr::V4(v4) => Some(*v4),
            SocketAddr::V6(_) => None,
        }),
        _ => None,
    }
}

/// Turns the client on if configured, and takes over inherited listeners. Called
/// once per process image by [`crate::init`].
pub fn init() {
    if enabled() {
        inherit::adopt();
        received::adopt_activated();
    } else if matches!(config::get().mode, Mode::Gcb(_)) {
        log!(Warn, "GCB_INAGENT names no IPv4 broker; GCB is off");
    }
}

/// Runs `f` on the registry, locked. `f` must not block and must not call `with`.
pub fn with<R>(f: impl FnOnce(&mut Registry) -> R) -> R {
    let mut guard = REGISTRY.lock();
    let reg = guard.get_or_insert_with(Registry::new);
    let generation = crate::client::lock::fork_generation();
    if reg.generation != generation {
        reg.generation = generation;
        after_fork_in_child(reg);
    }
    f(reg)
}

/// First use in a forked child: the parent's work in progress is the
/// parent's, and so are its management sockets. The child closes its copies
/// and becomes a holder of each registration with a socket of its own
/// (`mgmt::on_timers`, run by the child's responder), so the parent's replies
/// and commands never reach it; request ids start afresh (the broker caches
/// replies by source address and id).
fn after_fork_in_child(reg: &mut Registry) {
    doorbell::forget_in_child(reg);
    serve::forget_in_child(reg);
    serve_punch::forget_in_child(reg);
    park::forget_in_child(reg);
    connecting::forget_in_child(reg);
    reversal_listener::forget_in_child(&mut reg.spare_listener);
    reg.acks_due.clear();
    let now = std::time::Instant::now();
    for (_, l) in reg.listeners_mut() {
        l.shared = true;
        if l.mgmt.fd >= 0 {
            crate::internal::release(l.mgmt.fd);
        }
        l.mgmt.fd = -1;
        l.joined = false;
        l.mgmt.requester = mgmt::new_requester(proto::rudp::RetryPolicy::default());
        l.mgmt.pending.clear();
        l.mgmt.next_heartbeat = now;
        l.mgmt.heard = now;
    }
}

/// In a forked child, from the `fork` hook or the child's first hooked call:
/// starts the child's own responder if it holds anything to answer for.
pub fn resume_in_child() {
    if enabled() && with(|reg| reg.listeners().next().is_some()) {
        responder::ensure();
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

/// `pthread_atfork` prepare handler.
pub fn prepare_fork() {
    crate::client::options::note_all();
    crate::client::lock::prepare_fork(&REGISTRY, |reg| {
        fault_point!("prepare_fork");
        if let Some(reg) = reg {
            reg.mark_all_shared();
        }
    });
}

/// `pthread_atfork` parent and child handlers.
pub fn after_fork(in_child: bool) {
    if in_child {
        crate::client::lock::note_fork_in_child();
    }
    crate::client::lock::after_fork(&REGISTRY);
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
