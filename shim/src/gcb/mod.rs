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
//!   [`inherit`], [`crate::client::lock`]).
//!
//! Without `GCB_INAGENT` nothing here runs: [`enabled`] is false, no socket is
//! watched, and every hook stays on its fast path.
//!
//! State lives in one [`registry::Registry`] behind one fork-safe
//! [`crate::client::lock::Lock`], taken through [`state::with`] for short,
//! non-blocking critical sections only.
//!
//! This file holds only the mode ([`enabled`] and the broker it names), which
//! every module below uses; the process's lifetime events (init, fork, exec,
//! exit) reach the client through [`lifecycle`], above the rest.

pub mod accept;
pub mod adopt;
pub mod ask;
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
pub mod lifecycle;
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
pub mod spare;
pub mod state;
pub mod swap;
pub mod udp;

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU8, Ordering};

use crate::config::{self, Mode};

const UNKNOWN: u8 = 0;
const OFF: u8 = 1;
const ON: u8 = 2;
static ENABLED: AtomicU8 = AtomicU8::new(UNKNOWN);

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

/// The GCB client's work on the responder thread. Its `Duties` are
/// implemented in [`responder`], at the top of the client, so the modules below
/// start the thread through [`ensure_responder`] without importing the code
/// it runs there.
pub struct Duty;

/// Starts this process's responder if needed, and wakes it for new work.
pub fn ensure_responder() {
    crate::responder::ensure::<Duty>();
    crate::responder::wake();
}
