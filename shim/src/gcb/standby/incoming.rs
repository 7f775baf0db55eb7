//! The listener's standbys (`standby`): punched for a `PunchConnect` that
//! said `standby` (`serve_punch`), held hidden, and parked for the program's
//! `accept` (`park`) only when the connector's claim arrives on them. Not
//! part of the listener's backlog: the program has not been connected to
//! yet. A few per listener at most; one whose listener is gone, that ends,
//! or that says anything but the claim is closed, which the connector sees
//! and drops its end.

use std::net::SocketAddrV4;
use std::time::Instant;

use libc::c_int;
use proto::gcb::punch::{STANDBY_CLAIM, STANDBY_TAKEN};

use super::super::punch::Held;
use super::super::registry::standby::Waiting;
use super::super::registry::{ListenerId, Registry};
use super::conn::{ended, expect, unwatch_path, watch_path, Said, HOLD_FOR};
use crate::real;

/// Standbys held for one listener, at most (each connector process keeps
/// up to two per listener).
pub const MAX_PER_LISTENER: usize = 16;

/// Holds a standby punched for `listener` (closed at once if it has
/// [`MAX_PER_LISTENER`] already).
pub fn hold(reg: &mut Registry, listener: ListenerId, conn: Held, peer: SocketAddrV4, proxy: SocketAddrV4, now: Instant) {
    let held = &mut reg.standby.incoming.held;
    if held.iter().filter(|w| w.listener == listener).count() >= MAX_PER_LISTENER {
        log!(Debug, "a standby connection from {peer} to {proxy} closed: {MAX_PER_LISTENER} are held already");
        return;
    }
    log!(Debug, "a standby connection from {peer} to {proxy} is held until claimed");
    let keepalive = watch_path(conn.raw());
    held.push(Waiting { listener, conn, keepalive, peer, proxy, since: now });
}

pub(super) fn poll_fds(reg: &Registry, out: &mut Vec<(c_int, i16)>) {
    out.extend(reg.standby.incoming.held.iter().map(|w| (w.conn.raw(), libc::POLLIN)));
}

pub(super) fn next_deadline(reg: &Registry) -> Option<Instant> {
    reg.standby.incoming.held.iter().map(|w| w.since + HOLD_FOR).min()
}

/// The event on `fd`, if it is a held standby; false if not.
pub(super) fn progress(reg: &mut Registry, fd: c_int, now: Instant) -> bool {
    let held = &mut reg.standby.incoming.held;
    let Some(i) = held.iter().position(|w| w.conn.raw() == fd) else { return false };
    match expect(fd, &STANDBY_CLAIM) {
        Said::NotYet => {}
        Said::Other => {
            let w = held.swap_remove(i);
            log!(Debug, "the standby connection from {} to {} ended unclaimed", w.peer, w.proxy);
        }
        Said::Frame => {
            let w = held.swap_remove(i);
            // Closed without the answer when it could not be queued: the
            // connector brokers its connect (and is refused as the kernel
            // refuses a connection to a closed port or a full queue).
            if reg.listener(w.listener).is_none() || !reg.room_for(w.listener) || !super::super::park::ready(reg) {
                log!(Debug, "the standby connection from {} to {} was claimed but cannot be queued", w.peer, w.proxy);
                return true;
            }
            // The connector closes its end only if it stopped waiting for the
            // answer (`outgoing::ANSWER_WAIT`, a cancelled connect) and brokers
            // or fails the connect instead: parked, this would be an accept
            // nobody connected. A connector that waits never closes before it
            // reads the answer, so a live claim never ends here.
            if ended(fd) {
                log!(Debug, "the standby connection from {} to {} was claimed and closed before its answer", w.peer, w.proxy);
                return true;
            }
            // SAFETY: a live buffer; an idle connection's send buffer takes 8 bytes whole.
            let n = unsafe { real::send(fd, STANDBY_TAKEN.as_ptr().cast(), STANDBY_TAKEN.len(), libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
            if n != STANDBY_TAKEN.len() as isize {
                log!(Debug, "the standby connection from {} to {} was claimed but could not be answered", w.peer, w.proxy);
                return true;
            }
            log!(Debug, "the standby connection from {} to {} was claimed", w.peer, w.proxy);
            unwatch_path(fd, w.keepalive);
            // The answer goes first: once the doorbell rings, the program may
            // accept and write, and its bytes must come after it.
            if !super::super::park::park(reg, w.listener, w.conn.into_internal(), w.peer, w.proxy, now) {
                log!(Warn, "a claimed standby connection from {} to {} was lost after its answer", w.peer, w.proxy);
            }
        }
    }
    true
}

/// Drops standbys held too long, and those whose listener is gone.
pub(super) fn on_timers(reg: &mut Registry, now: Instant) {
    let mut held = std::mem::take(&mut reg.standby.incoming.held);
    held.retain(|w| now < w.since + HOLD_FOR && reg.listener(w.listener).is_some());
    reg.standby.incoming.held = held;
}
