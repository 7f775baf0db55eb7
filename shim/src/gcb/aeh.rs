//! The asynchronous event handler (paper 4.2.1): every interposed blocking call of
//! a process that holds a registration waits on the application's fds *and* the
//! management sockets, and handles the broker's datagrams and the heartbeat timers
//! as they come due (DESIGN.md, "The asynchronous event handler").
//!
//! [`wait`] is that wait. It is one `ppoll` over the application's pollfds plus one
//! pollfd per management socket, with the timeout cut to the next AEH deadline;
//! it loops until an application fd is ready, the application's deadline passes,
//! or the poll fails (`EINTR` included, so signal semantics are the real call's).
//! It sleeps in the kernel between events and never busy-waits: every AEH pass
//! moves its own deadline into the future.
//!
//! A command asking for a connection becomes a [`Job`]. If the caller is `accept`
//! on that very listener (and the kernel has nothing queued on it), the job is
//! returned to be dialed at once; otherwise its doorbell is rung
//! ([`doorbell::ring`], which dials ahead first, see `predial`). The broker's
//! command is acknowledged at the end of the pass, once the dial is under way.

use std::time::Instant;

use libc::{c_int, pollfd, sigset_t};

use super::doorbell::{self, Job};
use super::mgmt;
use super::registry::ListenerId;
use super::sys::Errno;
use crate::{config, real};

/// Datagrams read from one management socket per pass, so a flood cannot keep the
/// application's call from returning.
const DATAGRAMS_PER_PASS: usize = 64;

/// How a [`wait`] ended.
#[derive(Debug)]
pub enum Waited {
    /// The number of application pollfds with events (0: the deadline passed).
    Ready(c_int),
    /// A connection for the listener being accepted on.
    Job(Job),
    /// `ppoll` failed with this errno (`EINTR` when a signal handler ran).
    Failed(Errno),
}

fn timespec_until(deadline: Instant, now: Instant) -> libc::timespec {
    let left = deadline.saturating_duration_since(now);
    libc::timespec { tv_sec: left.as_secs() as libc::time_t, tv_nsec: left.subsec_nanos() as libc::c_long }
}

/// Waits for events on `app` (their `revents` are filled in as `ppoll` would) until
/// `deadline` (`None`: for ever), running the AEH meanwhile. `sigmask` is passed to
/// every `ppoll`, as the application's `ppoll`, `pselect` or `epoll_pwait` would.
/// `accepting` names the listener an `accept` is waiting on.
///
/// # Safety
///
/// `sigmask` is null or points to a valid signal set.
pub unsafe fn wait(app: &mut [pollfd], deadline: Option<Instant>, sigmask: *const sigset_t, accepting: Option<ListenerId>) -> Waited {
    let mut all: Vec<pollfd> = Vec::with_capacity(app.len() + 4);
    // Management fds found closed under the shim (the application closed them with
    // a raw system call, say): left out for the rest of this call, or the poll
    // would report them at once, for ever.
    let mut invalid: Vec<c_int> = Vec::new();
    loop {
        let (mut mgmt_fds, bell_fds, aeh_deadline, buffered) = super::with(|reg| {
            let bells = reg.bells.iter().map(|b| (b.fd, b.events())).collect::<Vec<_>>();
            let deadline = mgmt::next_deadline(reg).into_iter().chain(reg.bells.iter().map(|b| b.deadline)).min();
            (reg.mgmt_fds(), bells, deadline, buffered_udp(reg, app))
        });
        if buffered > 0 {
            return Waited::Ready(buffered);
        }
        mgmt_fds.retain(|fd| !invalid.contains(fd));
        all.clear();
        all.extend(app.iter().map(|p| pollfd { revents: 0, ..*p }));
        all.extend(mgmt_fds.iter().map(|&fd| pollfd { fd, events: libc::POLLIN, revents: 0 }));
        all.extend(bell_fds.iter().map(|&(fd, events)| pollfd { fd, events, revents: 0 }));
        let shim_fds = app.len()..app.len() + mgmt_fds.len();
        let now = Instant::now();
        let wake = match (deadline, aeh_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let ts = wake.map(|w| timespec_until(w, now));
        let ts_ptr = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: `all` is a live array of `all.len()` pollfds; `ts_ptr` is null or
        // valid for the call, and so is `sigmask` (the caller's contract).
        let r = real::ppoll(all.as_mut_ptr(), all.len() as libc::nfds_t, ts_ptr, sigmask);
        if r < 0 {
            return Waited::Failed(crate::hook::errno());
        }
        let mut ready = 0;
        for (a, p) in app.iter_mut().zip(&all) {
            a.revents = p.revents;
            ready += c_int::from(p.revents != 0);
        }
        for p in all[shim_fds.clone()].iter().filter(|p| p.revents & libc::POLLNVAL != 0) {
            log!(Warn, "management fd {} is no longer open; its listener gets no more broker commands", p.fd);
            invalid.push(p.fd);
        }
        let readable: Vec<c_int> =
            all[shim_fds.clone()].iter().filter(|p| p.revents != 0 && p.revents & libc::POLLNVAL == 0).map(|p| p.fd).collect();
        let rung: Vec<c_int> = all[shim_fds.end..].iter().filter(|p| p.revents != 0).map(|p| p.fd).collect();
        let now = Instant::now();
        if !rung.is_empty() || (!bell_fds.is_empty() && aeh_deadline.is_some_and(|d| now >= d)) {
            doorbell::progress(&rung, now);
        }
        if !readable.is_empty() || aeh_deadline.is_some_and(|d| now >= d) {
            // Dial inside accept only when the kernel has nothing queued first:
            // connections are handed out in the order they were established.
            let job = run(&readable, now, if ready == 0 { accepting } else { None });
            if let Some(job) = job {
                return Waited::Job(job);
            }
        }
        if ready > 0 {
            return Waited::Ready(ready);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Waited::Ready(0);
        }
    }
}

/// Marks readable the application's pollfds on UDP sockets whose buffer holds
/// data the kernel no longer has (see `udp::recv`); how many.
fn buffered_udp(reg: &super::registry::Registry, app: &mut [pollfd]) -> c_int {
    if reg.udp.is_empty() {
        return 0;
    }
    let buffered = |p: &pollfd| p.events & libc::POLLIN != 0 && reg.udp.get(p.fd).is_some_and(|s| s.has_stashed());
    let n = app.iter().filter(|p| buffered(p)).count() as c_int;
    if n > 0 {
        for p in app.iter_mut() {
            p.revents = if buffered(p) { libc::POLLIN } else { 0 };
        }
    }
    n
}

/// One AEH pass: the datagrams waiting on `readable` management sockets, then the
/// timers. Returns a job for listener `accepting`, if one came; rings the
/// doorbells of the others.
fn run(readable: &[c_int], now: Instant, accepting: Option<ListenerId>) -> Option<Job> {
    let mut found = None;
    let mut buf = [0u8; mgmt::DATAGRAM_MAX];
    for &fd in readable {
        for _ in 0..DATAGRAMS_PER_PASS {
            // SAFETY: a live buffer of the given length.
            let n = unsafe { real::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n < 0 {
                match crate::hook::errno() {
                    // A queued ICMP error (the broker is down): reading reports and clears it.
                    libc::ECONNREFUSED | libc::EINTR => continue,
                    _ => break,
                }
            }
            let datagram = &buf[..n as usize];
            let job = super::with(|reg| {
                let id = reg.by_mgmt_fd(fd)?;
                mgmt::on_datagram(reg, id, datagram, now)
            });
            match job {
                Some(job) if found.is_none() && Some(job.listener) == accepting => found = Some(job),
                Some(job) => doorbell::ring(&job),
                None => {}
            }
        }
    }
    let interval = config::get().heartbeat;
    super::with(|reg| {
        mgmt::send_acks_due(reg);
        mgmt::on_timers(reg, now, interval)
    });
    found
}

/// Whether the real call would have been restarted after the signal that just
/// interrupted the shim's wait: only if every caught signal has `SA_RESTART`.
/// Which signal it was is unknown, so one handler without the flag is enough to
/// report `EINTR`, as the kernel would for that handler.
pub fn signal_restarts() -> bool {
    for sig in 1..=libc::SIGRTMAX() {
        let mut old = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
        // SAFETY: query only.
        if unsafe { libc::sigaction(sig, std::ptr::null(), old.as_mut_ptr()) } != 0 {
            continue;
        }
        // SAFETY: filled in by sigaction.
        let old = unsafe { old.assume_init() };
        let caught = old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN;
        if caught && old.sa_flags & libc::SA_RESTART == 0 {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn wait_without_registrations_is_a_plain_poll() {
        let mut p = [0; 2];
        assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
        let mut fds = [pollfd { fd: p[0], events: libc::POLLIN, revents: 0 }, pollfd { fd: -1, events: 0, revents: 7 }];
        let t0 = Instant::now();
        match unsafe { wait(&mut fds, Some(t0 + Duration::from_millis(30)), std::ptr::null(), None) } {
            Waited::Ready(0) => {}
            other => panic!("{other:?}"),
        }
        assert!(t0.elapsed() >= Duration::from_millis(30));
        assert_eq!(fds[1].revents, 0, "revents are the kernel's");
        assert_eq!(unsafe { libc::write(p[1], b"x".as_ptr().cast(), 1) }, 1);
        match unsafe { wait(&mut fds, None, std::ptr::null(), None) } {
            Waited::Ready(1) => assert_eq!(fds[0].revents, libc::POLLIN),
            other => panic!("{other:?}"),
        }
        unsafe {
            libc::close(p[0]);
            libc::close(p[1]);
        }
    }

    #[test]
    fn timespec_of_a_deadline() {
        let now = Instant::now();
        let t = timespec_until(now + Duration::from_millis(1500), now);
        assert_eq!((t.tv_sec, t.tv_nsec), (1, 500_000_000));
        let t = timespec_until(now, now + Duration::from_secs(1));
        assert_eq!((t.tv_sec, t.tv_nsec), (0, 0));
    }
}
