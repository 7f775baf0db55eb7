//! Ending a standard gateway's mapping: a delete (a MAP with lifetime 0) when
//! the socket's last fd closes in the last process holding it.
//!
//! * The socket's last fd in this process closed, and no other process ever
//!   shared it (or it turned active, `connect`): the delete's first datagram
//!   goes out in the closing thread, so a process that exits right after its
//!   `close` has sent it; the responder retransmits it until the gateway
//!   confirms, at most [`WIND_RETRY`].
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

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use libc::c_int;
use proto::portmap::{Event, MapClient, Retry};
use proto::Proto;

use super::holders;
use crate::dpf::state::Forward;
use crate::client::sys;
use crate::gcb::mgmt;

/// A delete's retransmissions: at about 0, 0.5, 1.5 and 3.5 s.
pub const WIND_RETRY: Retry = Retry {
    initial: Duration::from_millis(500),
    max_interval: Duration::from_secs(2),
    max_attempts: 4,
    max_duration: Duration::from_secs(5),
};
/// How long an exiting process waits for its deletes to be confirmed.
pub const EXIT_WAIT: Duration = Duration::from_millis(300);
/// When a shared socket is looked for again after its close here.
const LOOKS: [Duration; 3] = [Duration::from_millis(20), Duration::from_millis(250), Duration::from_secs(1)];

/// A mapping whose socket this process no longer holds.
#[derive(Debug)]
pub struct Winding {
    pub client: MapClient,
    pub proto: Proto,
    pub local: SocketAddrV4,
    /// The UDP socket to the gateway (internal), or -1.
    pub sock: c_int,
    /// Look whether another process holds the socket before deleting.
    pub check: Option<Check>,
    /// The delete was sent.
    pub deleting: bool,
    /// Another process holds the socket (or nobody could say): no delete.
    pub left: bool,
}

/// The socket to look for, and when.
#[derive(Debug, Clone, Copy)]
pub struct Check {
    pub inode: u64,
    pub v6: bool,
    pub at: Instant,
    /// Looks made so far.
    pub looks: usize,
}

impl Winding {
    /// When the responder next has work for it.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.check {
            Some(c) => Some(c.at),
            None => self.client.next_deadline(),
        }
    }

    fn new(f: &Forward, client: MapClient) -> Winding {
        Winding { client, proto: f.proto, local: f.local, sock: f.mgmt_fd, check: None, deleting: false, left: false }
    }

    fn finished(&self) -> bool {
        self.check.is_none() && (self.left || self.client.is_done())
    }

    /// A delete is under way.
    fn waiting(&self) -> bool {
        self.deleting && !self.client.is_done() && self.sock >= 0
    }

    /// Sends the delete's first datagram.
    fn delete(&mut self, now: Instant) {
        self.deleting = true;
        self.client.set_retry(WIND_RETRY, WIND_RETRY);
        let out = self.client.delete(now);
        if self.sock < 0 {
            if let Some(fd) = super::gateway().and_then(|g| mgmt::open(g).ok()).map(|(s, _)| crate::internal::adopt(s.into_raw())) {
                self.sock = fd;
            }
        }
        if self.sock >= 0 {
            let _ = super::send(self.sock, &out);
        }
        log!(Debug, "deleting the mapping of {} {}", self.proto, self.local);
    }

    fn release(self) {
        if self.sock >= 0 {
            crate::internal::release(self.sock);
        }
    }
}

/// The forward's last fd in this process is gone (closed, or the socket
/// turned active): see the module docs.
pub fn wind_up(mut f: Forward, turned_active: bool) {
    let Some(m) = f.pcp.take() else { return };
    let now = Instant::now();
    let mut w = Winding::new(&f, m.client);
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
    crate::dpf::ensure_responder();
}

/// The responder's round for the windings: looks, retransmissions, answers
/// on the sockets in `ready`; the finished ones go.
pub fn tick(list: &mut Vec<Winding>, ready: &[c_int], now: Instant) {
    for w in list.iter_mut() {
        if w.sock >= 0 && ready.contains(&w.sock) {
            if let Ok(out) = super::drain(w.sock, &mut w.client, now) {
                let _ = super::send(w.sock, &out);
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
                let _ = super::send(w.sock, &out);
            }
            Some(_) | None => {}
        }
    }
    let (done, keep): (Vec<Winding>, Vec<Winding>) = std::mem::take(list).into_iter().partition(Winding::finished);
    *list = keep;
    done.into_iter().for_each(Winding::release);
}

/// Before `exec` (`dpf::before_exec`): one delete datagram for each mapping
/// that only this image holds and that the new one will not inherit. The
/// client itself is left as it is: if the exec fails, its next renewal maps
/// the socket again.
pub fn before_exec() {
    let now = Instant::now();
    crate::dpf::state::with(|st| {
        for f in st.forwards().filter(|f| !f.shared && f.fds.iter().all(|&fd| closes_on_exec(fd))) {
            let Some(m) = &f.pcp else { continue };
            let mut w = Winding::new(f, m.client.clone());
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
        let mut w = Winding::new(&f, m.client);
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
            if let Ok(out) = super::drain(w.sock, &mut w.client, Instant::now()) {
                if out.events.iter().any(|e| matches!(e, Event::Deleted)) {
                    log!(Debug, "deleted the mapping of {} {}", w.proto, w.local);
                }
            }
        }
    }
}
