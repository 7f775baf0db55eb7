//! Standby connections (`GCB_STANDBY=1`, docs/hole-punching.md, "Standby
//! connections"): a punched connection made ahead of the program's next
//! connect to a listener, so that connect costs no brokering at all.
//!
//! A punched connect costs nine messages in a row through the broker, about
//! half a millisecond on the test bed against 40 µs for a plain connect.
//! Programs that connect to the same peer again and again (a scheduler and
//! its workers, a client without keep-alive) pay it every time. So once a
//! connect to a listener was punched, the connector's responder punches one
//! more connection to it in the background, a *standby*, asking the broker
//! for "a punch or nothing" (`Features::STANDBY`); the listener's responder,
//! told so in its `PunchConnect`, holds its end hidden instead of queueing
//! it for `accept`. The program's next connect to that listener takes the
//! standby, sends the claim (`STANDBY_CLAIM`) as its first bytes, and
//! returns at once; the listener's responder reads the claim and only then
//! parks the connection and rings its doorbell, so the listening program
//! accepts exactly the connections that were made, as with the kernel.
//! Taking a standby asks for the next one.
//!
//! * [`outgoing`]: the connector's side: the standbys being made and those
//!   kept, two per destination, for at most [`KEEP_FOR`].
//! * [`incoming`]: the listener's side: standbys held until claimed, for at
//!   most [`HOLD_FOR`], a few per listener.
//!
//! # Invariants
//!
//! 1. Every fd here is internal (hidden from the program) and in exactly one
//!    entry; dropping the entry closes it.
//! 2. A standby is never seen by either program before its claim: the
//!    connector's is only put on a program's fd by the connect that claims
//!    it, the listener's only parked once the claim has arrived.
//! 3. The connector lets a standby go well before the listener would
//!    ([`KEEP_FOR`] < [`HOLD_FOR`]), so a claim does not meet a standby the
//!    listener is closing for age; a standby the listener closed (its program
//!    closed the listening socket, or the process exited) shows as the end of
//!    stream on the connector's end, which drops it.
//! 4. A forked child drops its copies without a word on them: the parent's
//!    standbys stay the parent's (`forget_in_child`).

pub mod incoming;
pub mod outgoing;
mod conn;

pub use super::registry::standby::any_kept;
pub use conn::{HOLD_FOR, KEEP_FOR, LOST_AFTER};

#[cfg(test)]
mod tests;

use libc::c_int;

/// The fds of every standby, both sides, with their events.
pub fn poll_fds(reg: &super::registry::Registry, out: &mut Vec<(c_int, i16)>) {
    outgoing::poll_fds(reg, out);
    incoming::poll_fds(reg, out);
}

/// The earliest time a standby must be looked at.
pub fn next_deadline(reg: &super::registry::Registry) -> Option<std::time::Instant> {
    [outgoing::next_deadline(reg), incoming::next_deadline(reg)].into_iter().flatten().min()
}

/// The event on standby fd `fd`, ready with `revents`.
pub fn progress(reg: &mut super::registry::Registry, fd: c_int, revents: i16, now: std::time::Instant) {
    if !outgoing::progress(reg, fd, revents, now) {
        incoming::progress(reg, fd, now);
    }
}

/// The standbys' timers.
pub fn on_timers(reg: &mut super::registry::Registry, now: std::time::Instant) {
    outgoing::on_timers(reg, now);
    incoming::on_timers(reg, now);
}

/// After a connect to `dest` that ended punched or took a standby: a
/// standby for the next one, if standbys are on (`GCB_STANDBY`). Takes the
/// registry lock; the responder makes it.
pub fn replenish(dest: std::net::SocketAddrV4, family: crate::client::family::Family) {
    if !crate::config::get().standby {
        return;
    }
    let started = super::state::with(|reg| outgoing::want(reg, dest, family, std::time::Instant::now()));
    if started {
        super::state::ensure_responder();
    }
}
