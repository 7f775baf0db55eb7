//! The listener's side of a hole-punched connection (`PunchConnect`,
//! docs/hole-punching.md), carried out by the responder like the other
//! brokered connections (`serve`): a punch [`Session`] with the broker's
//! rendezvous, and, whichever way it ends (punched, or relayed by the
//! broker), the connection is parked and its doorbell rung (`park`), so the
//! program's `accept` takes it as if the kernel had queued it.
//!
//! Punches count against the listener's backlog with its other dials and
//! parked connections (`Registry::room_for`). A standby's punch (`standby`)
//! ends held instead, until its connector claims it, or closed if the
//! broker relays it.

use std::time::Instant;

use libc::c_int;
use proto::gcb::Role;

use super::punch::{self, Progress, Session};
use super::registry::serving::{Dial, Job, Punching, PAIR_TIMEOUT};
use super::registry::Registry;

/// Starts the punch `job` asked for, through the rendezvous at `broker`.
pub fn start(reg: &mut Registry, job: Job, broker: std::net::SocketAddrV4, now: Instant) {
    let Some(family) = reg.listener(job.listener).map(|l| l.family) else { return };
    match Session::start(family, broker, job.token, Role::Listener, punch::schedule(), now + PAIR_TIMEOUT) {
        Ok(session) => reg.punching.push(Punching { job, session }),
        Err(e) => failed(&job, e),
    }
}

fn failed(job: &Job, e: crate::client::sys::Errno) {
    let e = std::io::Error::from_raw_os_error(e);
    log!(Warn, "brokered connection from {} to {} failed: {e}", job.peer, job.proxy);
}

/// The fds of every punch, with their events.
pub fn poll_fds(reg: &Registry, out: &mut Vec<(c_int, i16)>) {
    for p in &reg.punching {
        p.session.poll_fds(out);
    }
}

/// The earliest time a punch must be looked at.
pub fn next_deadline(reg: &Registry) -> Option<Instant> {
    reg.punching.iter().map(|p| p.session.next_deadline()).min()
}

/// Advances the punch owning `fd`, ready with `revents`.
pub fn progress(reg: &mut Registry, fd: c_int, revents: i16, now: Instant) {
    if let Some(i) = reg.punching.iter().position(|p| p.session.owns(fd)) {
        step(reg, i, Some((fd, revents)), now);
    }
}

/// Advances the punches whose timers fell due.
pub fn on_timers(reg: &mut Registry, now: Instant) {
    let mut i = 0;
    while i < reg.punching.len() {
        if now >= reg.punching[i].session.next_deadline() && step(reg, i, None, now) {
            continue;
        }
        i += 1;
    }
}

/// One step of punch `i`; true when it ended (and left the table).
fn step(reg: &mut Registry, i: usize, ready: Option<(c_int, i16)>, now: Instant) -> bool {
    let progress = reg.punching[i].session.advance(ready, now);
    if matches!(progress, Progress::Wait) {
        return false;
    }
    let p = reg.punching.swap_remove(i);
    let standby = matches!(p.job.dial, Dial::Punch { standby: true, .. });
    match progress {
        Progress::Direct { sock, peer } if standby => super::standby::incoming::hold(reg, p.job.listener, sock, peer, p.job.proxy, now),
        // A standby is punched or nothing: the connector closes its end too.
        Progress::Relay { peer, .. } if standby => log!(Debug, "no standby connection from {peer} to {}: the punch failed", p.job.proxy),
        Progress::Direct { sock, peer } => {
            log!(Info, "connection from {peer} to {} punched after {} attempts", p.job.proxy, p.session.attempts());
            super::park::park(reg, p.job.listener, sock.into_internal(), peer, p.job.proxy, now);
        }
        Progress::Relay { sock, peer } => {
            log!(Debug, "connection from {peer} to {} relayed by the broker", p.job.proxy);
            super::park::park(reg, p.job.listener, sock.into_internal(), peer, p.job.proxy, now);
        }
        Progress::Failed(e) => failed(&p.job, e),
        Progress::Wait => unreachable!(),
    }
    true
}
