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
//! [`state::State`] behind one fork-safe lock (`client::lock`), taken through
//! [`state::with`] for short, non-blocking critical sections only.
//!
//! This file holds only the mode ([`enabled`] and what configures it), which
//! every module below uses; the process's lifetime events (init, fork, exec,
//! exit) reach the client through [`lifecycle`], above the rest.

pub mod adopt;
pub mod ask;
pub mod cache;
pub mod forward;
pub mod inherit;
pub mod lifecycle;
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

const UNKNOWN: u8 = 0;
const OFF: u8 = 1;
const ON: u8 = 2;
static ENABLED: AtomicU8 = AtomicU8::new(UNKNOWN);
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

/// Kept by [`state::with`] after every use of the state.
pub(crate) fn set_active(active: bool) {
    ACTIVE.store(active, Relaxed)
}

/// The DPF client's work on the responder thread. Its `Duties` are
/// implemented in [`serve`], at the top of the client, so the modules below
/// start the thread through [`ensure_responder`] without importing the code
/// it runs there.
pub struct Duty;

/// Starts this process's responder if needed, and wakes it for new work.
pub fn ensure_responder() {
    crate::responder::ensure::<Duty>();
    crate::responder::wake();
}
