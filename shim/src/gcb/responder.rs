//! What the responder thread (`crate::responder`) does for the GCB client:
//! every round it waits on
//!
//! * the management sockets: the broker's replies and commands, read and
//!   handled at once ([`mgmt_events::on_datagram`]); a connection command starts a
//!   dial ([`serve`]);
//! * the dials under way, the doorbells being rung ([`doorbell`]) and the park
//!   socket ([`park`]);
//! * the program's non-blocking brokered connects ([`connecting`]);
//! * standby connections being made, kept and held ([`standby`]);
//!
//! and runs the timers: heartbeats, registrations and joins, retransmissions,
//! failover, UDP holes and channels, and the deadlines of all the above.
//!
//! Sockets are read outside the registry lock; each event is then handled in
//! one short critical section that only makes non-blocking calls.

use std::time::Instant;

use libc::c_int;

use super::{connecting, doorbell, mgmt, mgmt_events, park, serve, serve_punch, standby};
use crate::real;
use crate::responder::{Duties, PollSet};

/// Datagrams read from one management socket per round, so a flood cannot
/// starve the other work.
const DATAGRAMS_PER_ROUND: usize = 64;

const MGMT: u64 = 1;
const BELL: u64 = 2;
const SERVING: u64 = 3;
const PARK: u64 = 4;
const CONNECT: u64 = 5;
const PUNCH: u64 = 6;
const STANDBY: u64 = 7;

fn tag(kind: u64, fd: c_int) -> u64 {
    (kind << 32) | u64::from(fd as u32)
}

fn untag(tag: u64) -> (u64, c_int) {
    (tag >> 32, tag as u32 as c_int)
}

impl Duties for super::state::Duty {
    fn gather(set: &mut PollSet, _now: Instant) -> Option<Instant> {
        super::state::with(|reg| {
            connecting::take_incoming(reg);
            for fd in reg.mgmt_fds() {
                set.add(fd, libc::POLLIN, tag(MGMT, fd));
            }
            for b in &reg.bells {
                set.add(b.fd, b.events(), tag(BELL, b.fd));
            }
            for s in &reg.serving {
                set.add(s.fd, s.events(), tag(SERVING, s.fd));
            }
            for fd in reg.parked.poll_fds() {
                set.add(fd, libc::POLLIN, tag(PARK, fd));
            }
            for (fd, events) in connecting::poll_fds(reg) {
                set.add(fd, events, tag(CONNECT, fd));
            }
            let mut punches = Vec::new();
            serve_punch::poll_fds(reg, &mut punches);
            for (fd, events) in punches {
                set.add(fd, events, tag(PUNCH, fd));
            }
            let mut standbys = Vec::new();
            standby::poll_fds(reg, &mut standbys);
            for (fd, events) in standbys {
                set.add(fd, events, tag(STANDBY, fd));
            }
            [
                mgmt_events::next_deadline(reg),
                doorbell::next_deadline(reg),
                serve::next_deadline(reg),
                serve_punch::next_deadline(reg),
                reg.parked.next_deadline(),
                connecting::next_deadline(reg),
                standby::next_deadline(reg),
            ]
            .into_iter()
            .flatten()
            .min()
        })
    }

    fn run(ready: &[(u64, i16)], now: Instant) {
        for &(t, revents) in ready {
            let (kind, fd) = untag(t);
            match kind {
                MGMT => management(fd, revents, now),
                BELL => super::state::with(|reg| doorbell::progress(reg, fd, revents)),
                SERVING => super::state::with(|reg| serve::progress(reg, fd, revents, now)),
                PUNCH => super::state::with(|reg| serve_punch::progress(reg, fd, revents, now)),
                STANDBY => super::state::with(|reg| standby::progress(reg, fd, revents, now)),
                PARK => super::state::with(|reg| park::on_ready(reg, fd, now)),
                CONNECT => connecting::progress(fd, revents, now),
                _ => {}
            }
        }
        let interval = crate::config::get().heartbeat;
        super::state::with(|reg| {
            mgmt_events::on_timers(reg, now, interval);
            doorbell::on_timers(reg, now);
            serve::on_timers(reg, now);
            serve_punch::on_timers(reg, now);
            park::on_timers(reg, now);
            standby::on_timers(reg, now);
        });
        connecting::on_timers(now);
    }
}

/// The datagrams waiting on management socket `fd`.
fn management(fd: c_int, revents: i16, now: Instant) {
    if revents & libc::POLLNVAL != 0 {
        // Closed under the shim (a raw system call): the next round opens
        // another and registers again.
        super::state::with(|reg| {
            if let Some(id) = reg.by_mgmt_fd(fd) {
                log!(Warn, "management fd {fd} is no longer open; opening another");
                if let Some(l) = reg.listener_mut(id) {
                    crate::fdtable::set(fd, crate::fdtable::Kind::Plain);
                    l.mgmt.fd = -1;
                }
            }
        });
        return;
    }
    let mut buf = [0u8; mgmt::DATAGRAM_MAX];
    for _ in 0..DATAGRAMS_PER_ROUND {
        // SAFETY: a live buffer of the given length.
        let n = unsafe { real::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n < 0 {
            match crate::guard::errno() {
                // A queued ICMP error (the broker is down): reading reports and clears it.
                libc::ECONNREFUSED | libc::EINTR => continue,
                _ => break,
            }
        }
        let datagram = &buf[..n as usize];
        super::state::with(|reg| {
            let Some(id) = reg.by_mgmt_fd(fd) else { return };
            if let Some(job) = mgmt_events::on_datagram(reg, id, datagram, now) {
                serve::start(reg, job, now);
            }
            // Acknowledged once the dial is under way.
            mgmt_events::send_acks_due(reg);
        });
    }
}
