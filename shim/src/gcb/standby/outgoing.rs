//! The connector's standbys (`standby`): made by the responder after a
//! connect to a destination was punched ([`want`]), kept two per destination,
//! and taken by the program's next connect there ([`claim`]).
//!
//! Making one is a non-blocking connect's brokering without a program's fd:
//! a `Connect` that offers `Features::STANDBY`, then, if the broker decides
//! a punch, the connector's side of a punch [`Session`]. Anything else ends
//! it quietly: a broker that refuses a standby (the pair is relayed, the
//! listener cannot punch, ...) answers `Unsupported`, and a punch that the
//! broker turns into a relay is closed, which closes the listener's end too.
//! Everything here runs in the responder under the registry lock, on
//! non-blocking sockets, except [`claim`], which the connecting thread calls.

use std::net::SocketAddrV4;
use std::time::Instant;

use libc::c_int;
use proto::gcb::punch::{STANDBY_CLAIM, STANDBY_TAKEN};
use proto::gcb::{Decision, Role};

use super::super::ask::{self, Asked};
use super::super::punch::{self, Held, Progress, Session};
use super::super::registry::standby::{Kept, Making, MakingStage as Stage, Outgoing};
use super::super::registry::Registry;
use super::conn::{expect, quiet, unacked, unwatch_path, watch_path, Said, KEEP_FOR, LOST_AFTER};
use crate::client::exchange::Exchange;
use crate::client::family::Family;
use crate::real;

/// Standbys kept or being made, at most: a bound on the connections and
/// broker work a process spends ahead of its connects.
pub const MAX_STANDBYS: usize = 16;
/// Standbys kept or being made per destination, at most: two, so a program
/// that connects again before the standby its last connect asked for is
/// ready still finds one.
pub const PER_DESTINATION: usize = 2;
/// How long no standby is asked for a destination after one ended unclaimed.
pub const REST_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// The listener's answer to a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Taken: the connection waits in the listener's accept queue.
    Taken,
    /// Closed, or something else said: the listener did not take it (its
    /// program closed the listening socket), so nothing was queued and the
    /// connect may be brokered instead.
    Refused,
    /// The claim was never acknowledged by the listener's host
    /// ([`LOST_AFTER`]): the path died, the listener never read it, and the
    /// connect may be brokered instead.
    Lost,
    /// Nothing yet.
    Pending,
}

/// What a step of [`Making`] came to.
enum Made {
    Wait,
    Ready(Held),
    Gone,
}

/// Asks for standbys for `dest` until it has [`PER_DESTINATION`] kept or
/// being made, within the process's [`MAX_STANDBYS`], unless `dest` rests
/// ([`REST_FOR`] after one of its standbys ended unclaimed); true if one is
/// now wanted. Only bookkeeping: the responder, which the caller wakes, starts
/// them.
pub fn want(reg: &mut Registry, dest: SocketAddrV4, family: Family, now: Instant) -> bool {
    let out = &mut reg.standby.outgoing;
    if out.resting(dest, now) {
        return false;
    }
    let mut wanted = false;
    while out.count_for(dest, family) < PER_DESTINATION && out.len() < MAX_STANDBYS {
        let deadline = now + super::super::dial::PAIR_TIMEOUT;
        out.making.push(Making { dest, family, stage: Stage::Wanted, deadline });
        wanted = true;
    }
    wanted
}

/// Sends the `Connect` for a wanted standby.
fn ask_for(m: &mut Making) -> Made {
    let asking = match ask::prepare_standby_ask(m.dest, m.family) {
        Ok(a) => a,
        Err(_) => return Made::Gone,
    };
    match Exchange::start(asking.probe.raw(), asking.cmd, asking.policy, &super::super::mgmt::CODEC, &asking.msg) {
        Ok(ex) => {
            log!(Debug, "making a standby connection to {}", m.dest);
            m.stage = Stage::Asking(Box::new(asking), ex);
            Made::Wait
        }
        Err(why) => {
            log!(Debug, "no standby connection to {}: {why:?}", m.dest);
            Made::Gone
        }
    }
}

/// A standby kept for `dest` and a socket of `family`, claimed: the listener
/// is told (the claim is its first bytes) and the connection is the caller's,
/// non-blocking, to put on the program's fd once the listener's answer is
/// read ([`answer`]). `None` if there is none, or it has died since (it is
/// dropped then). The family must match: `put_on` `dup3`s the standby onto
/// the program's fd, which then has the standby's domain.
pub fn claim(reg: &mut Registry, dest: SocketAddrV4, family: Family) -> Option<Held> {
    let out = &mut reg.standby.outgoing;
    let i = out.kept.iter().position(|k| k.dest == dest && k.family == family)?;
    let k = out.kept.swap_remove(i);
    out.note();
    if !quiet(k.conn.raw()) {
        log!(Debug, "the standby connection to {dest} was closed by its listener");
        out.rest(dest, Instant::now() + REST_FOR);
        return None;
    }
    unwatch_path(k.conn.raw(), k.keepalive);
    // SAFETY: a live buffer; an idle connection's send buffer takes 8 bytes whole.
    let n = unsafe { real::send(k.conn.raw(), STANDBY_CLAIM.as_ptr().cast(), STANDBY_CLAIM.len(), libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
    if n != STANDBY_CLAIM.len() as isize {
        log!(Debug, "the standby connection to {dest} could not be claimed: {}", std::io::Error::last_os_error());
        return None;
    }
    Some(k.conn)
}

/// The listener's answer to a claim on `fd`, if it has come.
pub fn answer(fd: c_int) -> Answer {
    match expect(fd, &STANDBY_TAKEN) {
        Said::Frame => Answer::Taken,
        Said::NotYet => Answer::Pending,
        Said::Other => Answer::Refused,
    }
}

/// The answer to a claim on `fd` made at `claimed`, or `Lost` once the
/// claim has waited [`LOST_AFTER`] without the peer's acknowledgement.
pub fn answer_or_lost(fd: c_int, claimed: Instant, now: Instant) -> Answer {
    match answer(fd) {
        Answer::Pending if now >= claimed + LOST_AFTER && unacked(fd) => Answer::Lost,
        said => said,
    }
}

/// Waits (a blocking connect) for the listener's answer to a claim on `fd`
/// made at `claimed`, until `deadline`: `Pending` if none came by then. The
/// connect must not be brokered after that (the listener may still take the
/// claim late, and its program would accept both), so it fails as a kernel
/// connect to a server that does not answer does. A claim the listener's
/// host never acknowledged is `Lost` instead, after [`LOST_AFTER`].
pub fn await_answer(fd: c_int, claimed: Instant, deadline: Instant) -> Answer {
    loop {
        match answer_or_lost(fd, claimed, Instant::now()) {
            Answer::Pending => {}
            said => return said,
        }
        let now = Instant::now();
        let lost_check = claimed + LOST_AFTER;
        let wake = if now < lost_check { lost_check.min(deadline) } else { deadline };
        if crate::client::sys::wait_fd(fd, libc::POLLIN, wake).is_err() && Instant::now() >= deadline {
            // An answer that came with the deadline is an answer.
            return answer(fd);
        }
    }
}

/// The fds to wait on: the exchanges and punches, and the kept standbys
/// (readable only when they die).
pub(super) fn poll_fds(reg: &Registry, out: &mut Vec<(c_int, i16)>) {
    let o = &reg.standby.outgoing;
    out.extend(o.kept.iter().map(|k| (k.conn.raw(), libc::POLLIN)));
    for m in &o.making {
        match &m.stage {
            Stage::Asking(a, _) => out.push((a.probe.raw(), libc::POLLIN)),
            Stage::Punching(s) => s.poll_fds(out),
            Stage::Wanted | Stage::Taken => {}
        }
    }
}

/// When the standbys must be looked at without an event.
pub(super) fn next_deadline(reg: &Registry) -> Option<Instant> {
    let o = &reg.standby.outgoing;
    let kept = o.kept.iter().map(|k| k.since + KEEP_FOR);
    let making = o.making.iter().map(|m| {
        let own = match &m.stage {
            Stage::Asking(_, ex) => ex.next_deadline().unwrap_or(m.deadline),
            Stage::Punching(s) => s.next_deadline(),
            Stage::Wanted | Stage::Taken => Instant::now(),
        };
        own.min(m.deadline)
    });
    kept.chain(making).min()
}

/// The event on `fd`, if it is one of the connector's standbys; false if not.
pub(super) fn progress(reg: &mut Registry, fd: c_int, revents: i16, now: Instant) -> bool {
    let o = &mut reg.standby.outgoing;
    if let Some(i) = o.kept.iter().position(|k| k.conn.raw() == fd) {
        if !quiet(fd) {
            let k = o.kept.swap_remove(i);
            o.note();
            log!(Debug, "the standby connection to {} was closed by its listener", k.dest);
            o.rest(k.dest, now + REST_FOR);
        }
        return true;
    }
    let Some(i) = o.making.iter().position(|m| owns(m, fd)) else { return false };
    let made = step(&mut o.making[i], Some((fd, revents)), now);
    settle(o, i, made, now);
    true
}

/// Standbys kept too long, and those being made whose timers fell due.
pub(super) fn on_timers(reg: &mut Registry, now: Instant) {
    let o = &mut reg.standby.outgoing;
    o.kept.retain(|k| now < k.since + KEEP_FOR);
    o.note();
    let mut i = 0;
    while i < o.making.len() {
        let m = &o.making[i];
        let due = now >= m.deadline
            || match &m.stage {
                Stage::Asking(_, ex) => ex.next_deadline().is_some_and(|d| now >= d),
                Stage::Punching(s) => now >= s.next_deadline(),
                Stage::Wanted | Stage::Taken => true,
            };
        if due {
            let made = step(&mut o.making[i], None, now);
            if settle(o, i, made, now) {
                continue;
            }
        }
        i += 1;
    }
}

/// Ends a step of `o.making[i]`; true when it left the list.
fn settle(o: &mut Outgoing, i: usize, made: Made, now: Instant) -> bool {
    match made {
        Made::Wait => false,
        Made::Ready(conn) => {
            let m = o.making.swap_remove(i);
            log!(Debug, "a standby connection to {} is ready", m.dest);
            let keepalive = watch_path(conn.raw());
            o.kept.push(Kept { dest: m.dest, family: m.family, conn, keepalive, since: now });
            o.note();
            true
        }
        Made::Gone => {
            let m = o.making.swap_remove(i);
            o.rest(m.dest, now + REST_FOR);
            true
        }
    }
}

fn owns(m: &Making, fd: c_int) -> bool {
    match &m.stage {
        Stage::Asking(a, _) => a.probe.raw() == fd,
        Stage::Punching(s) => s.owns(fd),
        Stage::Wanted | Stage::Taken => false,
    }
}

fn step(m: &mut Making, ready: Option<(c_int, i16)>, now: Instant) -> Made {
    if now >= m.deadline {
        log!(Debug, "no standby connection to {}: timed out", m.dest);
        return Made::Gone;
    }
    match std::mem::replace(&mut m.stage, Stage::Taken) {
        Stage::Wanted => ask_for(m),
        Stage::Asking(asking, ex) => match ask::step(asking, ex, ready.is_some(), now, m.dest) {
            Ok(asked) => punch_if_decided(m, asked),
            Err((asking, ex)) => {
                m.stage = Stage::Asking(asking, ex);
                Made::Wait
            }
        },
        Stage::Punching(mut session) => match session.advance(ready, now) {
            Progress::Wait => {
                m.stage = Stage::Punching(session);
                Made::Wait
            }
            Progress::Direct { sock, .. } => Made::Ready(sock),
            Progress::Relay { .. } => {
                log!(Debug, "no standby connection to {}: the punch failed", m.dest);
                Made::Gone
            }
            Progress::Failed(e) => {
                log!(Debug, "no standby connection to {}: {}", m.dest, std::io::Error::from_raw_os_error(e));
                Made::Gone
            }
        },
        Stage::Taken => Made::Gone,
    }
}

/// The broker's answer: a punch starts, anything else ends the standby.
fn punch_if_decided(m: &mut Making, asked: Asked) -> Made {
    match asked {
        // A standby's `Connect` opens no early rendezvous (`ask::prepare`).
        Asked::Decision(Decision::PunchTcp { via, token, early: false }, _, _, _) => match Session::start(m.family, via, token, Role::Connector, punch::schedule(), m.deadline) {
            Ok(s) => {
                m.stage = Stage::Punching(Box::new(s));
                Made::Wait
            }
            Err(e) => {
                log!(Debug, "no standby connection to {}: {}", m.dest, std::io::Error::from_raw_os_error(e));
                Made::Gone
            }
        },
        Asked::Refused(code) => {
            log!(Debug, "no standby connection to {}: the broker says {code:?}", m.dest);
            Made::Gone
        }
        // Only a broker that does not know standbys decides anything else
        // for one: nothing is dialed, so its command to the listener times
        // out there. (Such a broker would also punch a standby as a plain
        // connect, and the listener's program accept it: standbys need the
        // brokers of this release, docs/hole-punching.md.)
        Asked::Decision(d, _, _, _) => {
            log!(Debug, "no standby connection to {}: the broker decided {d:?}", m.dest);
            Made::Gone
        }
        Asked::NotGcb | Asked::Silent | Asked::NoResources(_) => {
            log!(Debug, "no standby connection to {}: no answer from its broker", m.dest);
            Made::Gone
        }
    }
}

/// Keeps `conn` as the standby for `dest`, as a punch that ended would; its fd.
#[cfg(test)]
pub(super) fn keep_for_tests(reg: &mut Registry, dest: SocketAddrV4, conn: Held, since: Instant) -> c_int {
    let fd = conn.raw();
    let keepalive = watch_path(conn.raw());
    reg.standby.outgoing.kept.push(Kept { dest, family: Family::V4, conn, keepalive, since });
    reg.standby.outgoing.note();
    fd
}
