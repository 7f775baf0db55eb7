//! Ending a standard gateway's mapping: a delete (a MAP with lifetime 0) when
//! the socket's last fd closes in the last process holding it.
//!
//! * The socket's last fd in this process closed, and no other process ever
//!   shared it (or it turned active, `connect`): the delete's first datagram
//!   goes out in the closing thread, so a process that exits right after its
//!   `close` has sent it; the responder retransmits it until the gateway
//!   confirms, at most [`super::side::WIND_RETRY`].
//! * It was shared (`fork`, `exec`): the responder asks the kernel whether
//!   the socket lives on ([`holders::alive`]), a few times in the first
//!   second since the application's real `close` follows this bookkeeping;
//!   gone means this process was the last holder, and it deletes. Otherwise
//!   the other holders renew it, and the last of them deletes it.
//! * At exit ([`at_exit`]) the same, with the fds still open: a mapping
//!   nobody else shared is deleted, a shared one only if no other process
//!   has an fd on the socket ([`holders::held_elsewhere`]); the deletes
//!   are waited for at most [`EXIT_WAIT`].
//!
//! A process killed outright deletes nothing; the lease ends its mappings.

use std::time::{Duration, Instant};

use libc::c_int;
use proto::portmap::Event;

use super::holders;
use super::side::{Check, Winding};
use crate::dpf::state::Forward;
use crate::client::sys;

/// How long an exiting process waits for its deletes to be confirmed.
pub const EXIT_WAIT: Duration = Duration::from_millis(300);
/// When a shared socket is looked for again after its close here.
const LOOKS: [Duration; 3] = [Duration::from_millis(20), Duration::from_millis(250), Duration::from_secs(1)];

/// The forward's last fd in this process is gone (closed, or the socket
/// turned active): see the module docs.
pub fn wind_up(mut f: Forward, turned_active: bool) {
    let Some(m) = f.pcp.take() else { return };
    let now = Instant::now();
    let mut w = Winding::new(f.proto, f.local, f.mgmt_fd, m.client);
    if turned_active || !f.shared {
        if !turned_active {
            crate::dpf::state::with(|st| st.released.remember((f.proto, f.local), f.public));
        }
        w.delete(now);
    } else {
        log!(Debug, "{} {} closed here; deleted once no other process holds it", f.proto, f.local);
        w.check = Some(Check { inode: m.inode, v6: m.v6, at: now + LOOKS[0], looks: 0 });
    }
    if w.finished() {
        return w.release();
    }
    crate::dpf::state::with(|st| st.pcp.winding.push(w));
    crate::dpf::state::ensure_responder();
}

/// The responder's round for the windings: looks, retransmissions, answers
/// on the sockets in `ready`; the finished ones go.
pub fn tick(list: &mut Vec<Winding>, ready: &[c_int], now: Instant) {
    for w in list.iter_mut() {
        if w.sock >= 0 && ready.contains(&w.sock) {
            if let Ok(out) = super::wire::drain(w.sock, &mut w.client, now) {
                let _ = super::wire::send(w.sock, &out);
            }
        }
        match w.check {
            Some(c) if now >= c.at => match holders::alive(c.inode, c.v6, w.proto) {
                Some(false) => {
                    w.check = None;
                    w.delete(now);
                }
                Some(true) if c.looks + 1 < LOOKS.len() => {
                    w.check = Some(Check { at: now + LOOKS[c.looks + 1], looks: c.looks + 1, ..c });
                }
                held => {
                    let why = if held.is_some() { "another process holds it" } else { "the kernel could not say who holds it" };
                    log!(Debug, "{} {}: {why}; its mapping stays", w.proto, w.local);
                    w.check = None;
                    w.left = true;
                }
            },
            None if w.deleting && w.client.next_deadline().is_some_and(|d| now >= d) => {
                let out = w.client.poll_timeout(now);
                let _ = super::wire::send(w.sock, &out);
            }
            Some(_) | None => {}
        }
    }
    let (done, keep): (Vec<Winding>, Vec<Winding>) = std::mem::take(list).into_iter().partition(Winding::finished);
    *list = keep;
    done.into_iter().for_each(Winding::release);
}

/// Before `exec` (`dpf::lifecycle::before_exec`): one delete datagram for each mapping
/// that only this image holds and that the new one will not inherit. The
/// client itself is left as it is: if the exec fails, its next renewal maps
/// the socket again.
pub fn before_exec() {
    let now = Instant::now();
    crate::dpf::state::with(|st| {
        for f in st.forwards().filter(|f| !f.shared && f.fds.iter().all(|&fd| closes_on_exec(fd))) {
            let Some(m) = &f.pcp else { continue };
            let mut w = Winding::new(f.proto, f.local, f.mgmt_fd, m.client.clone());
            w.sock = -1;
            w.delete(now);
            log!(Debug, "{} {} is not handed to the new image", f.proto, f.local);
            w.release();
        }
    });
}

fn closes_on_exec(fd: c_int) -> bool {
    // SAFETY: F_GETFD takes no argument.
    let flags = unsafe { crate::real::fcntl(fd, libc::F_GETFD, 0) };
    flags >= 0 && flags & libc::FD_CLOEXEC != 0
}

/// At exit: the deletes this process owes (module docs), waited for at most
/// [`EXIT_WAIT`].
pub fn at_exit() {
    let now = Instant::now();
    let (forwards, mut list) = crate::dpf::state::with(|st| {
        let ids: Vec<_> = st.forwards().filter(|f| f.pcp.is_some()).map(|f| f.fds[0]).filter_map(|fd| st.forward_of(fd)).collect();
        let forwards: Vec<Forward> = ids.into_iter().filter_map(|id| st.take(id)).collect();
        (forwards, std::mem::take(&mut st.pcp.winding))
    });
    for mut f in forwards {
        let Some(m) = f.pcp.take() else { continue };
        let mut w = Winding::new(f.proto, f.local, f.mgmt_fd, m.client);
        if !f.shared || holders::held_elsewhere(m.inode) == Some(false) {
            w.delete(now);
        }
        list.push(w);
    }
    for w in list.iter_mut() {
        if let Some(c) = w.check.take() {
            if holders::alive(c.inode, c.v6, w.proto) == Some(false) {
                w.delete(now);
            }
        }
    }
    let end = now + EXIT_WAIT;
    while list.iter().any(Winding::waiting) && Instant::now() < end {
        let mut fds: Vec<libc::pollfd> = list.iter().filter(|w| w.waiting()).map(|w| libc::pollfd { fd: w.sock, events: libc::POLLIN, revents: 0 }).collect();
        if sys::wait_fds(&mut fds, end).is_err() {
            break;
        }
        let ready: Vec<c_int> = fds.iter().filter(|p| p.revents != 0).map(|p| p.fd).collect();
        for w in list.iter_mut().filter(|w| w.waiting() && ready.contains(&w.sock)) {
            if let Ok(out) = super::wire::drain(w.sock, &mut w.client, Instant::now()) {
                if out.events.iter().any(|e| matches!(e, Event::Deleted)) {
                    log!(Debug, "deleted the mapping of {} {}", w.proto, w.local);
                }
            }
        }
    }
}
