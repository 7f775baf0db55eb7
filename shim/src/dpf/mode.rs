//! Whether this process is a DPF client, where its forwards come from (dpfd
//! or a standard gateway), and whether it holds any: decided from the
//! configuration alone, so every module (and the hooks' decision, `detour`)
//! can ask with one relaxed load.

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

/// Kept by [`super::state::with`] after every use of the state.
pub(crate) fn set_active(active: bool) {
    ACTIVE.store(active, Relaxed)
}
