//! TCP hole punching in the shim (docs/hole-punching.md): whether this
//! process offers it, and the [`Session`] that carries out one side of a
//! punch for the connector (`connecting`, `connector`) and the listener
//! (`serve_punch`).

mod early;
mod session;
mod sock;

pub use early::{Early, NotEarly};
pub use session::{Progress, Session};
pub use sock::Held;

use proto::gcb::punch::Schedule;
use proto::gcb::Features;

/// The features this process offers the broker: TCP and UDP hole punching
/// (`udp::control`) unless `GCB_PUNCH=0`.
pub fn offered() -> Features {
    if crate::config::get().punch {
        Features::PUNCH_TCP.union(Features::PUNCH_UDP)
    } else {
        Features::NONE
    }
}

/// The features this process's registrations offer: the punching ones,
/// and with TCP punching the early punch's part for the listener (a go's
/// `commit`: use the connection at the connector's proof).
pub fn offered_to_register() -> Features {
    let offered = offered();
    if offered.contains(Features::PUNCH_TCP) {
        offered.union(Features::PUNCH_EARLY)
    } else {
        offered
    }
}

/// How this side spaces its attempts (proto's defaults, measured on the test
/// bed's gateways: docs/nat-punching-notes.md).
pub fn schedule() -> Schedule {
    Schedule::default()
}

#[cfg(test)]
mod tests;
