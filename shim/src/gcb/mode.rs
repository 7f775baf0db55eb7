//! Whether this process is a GCB client, and the broker `GCB_INAGENT` names:
//! decided from the configuration alone, so every module (and the hooks'
//! decision, `detour`) can ask with one relaxed load.

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
