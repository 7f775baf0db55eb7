//! The application's waits, while the process holds a registration: `poll`,
//! `ppoll`, `select`, `pselect` and the `epoll_wait` family, each rebuilt on
//! [`aeh::wait`] so the management sockets are waited on too.
//!
//! Semantics kept from the real calls:
//! * timeouts: -1 / null waits for ever, 0 does not wait, and a timeout is
//!   measured from the call, however many AEH passes run inside it;
//! * `EINTR` when a signal handler runs, and signal masks applied atomically
//!   for the `p` variants (each inner `ppoll` gets the mask);
//! * `select` reports readiness with the kernel's mapping (readable: in, hang-up
//!   or error; writable: out or error; exceptional: priority), fails with `EBADF`
//!   on a closed fd, and writes the time left back into the `timeval`, as Linux
//!   does; fds beyond `FD_SETSIZE` are the caller's business, as in the kernel.
//!   One difference: where the kernel's `select` sleeps on through a hang-up on
//!   an fd watched for writing, or an error or hang-up on one watched only for
//!   exceptions, the shim reports the fd in the set it is watched in: `poll`
//!   reports both whatever was asked, so waiting on would spin;
//! * `epoll`: the epoll fd itself is polled, then the real `epoll_wait` with a
//!   zero timeout collects the events, so level and edge triggering, one-shot
//!   and event data are exactly the kernel's.
//!
//! Invalid arguments (a negative `nfds`, a malformed timeout, a bad epoll fd) are
//! handed to the real call, which reports them as it always does.

use std::time::{Duration, Instant};

use libc::{c_int, epoll_event, fd_set, nfds_t, pollfd, sigset_t, timespec, timeval};

use super::aeh::{self, Waited};
use crate::hook::set_errno;
use crate::real;

fn failed(e: c_int) -> c_int {
    set_errno(e);
    -1
}

fn deadline_ms(ms: c_int) -> Option<Instant> {
    (ms >= 0).then(|| Instant::now() + Duration::from_millis(ms as u64))
}

/// `Err(())` for a timespec the kernel would refuse with `EINVAL`.
unsafe fn deadline_ts(ts: *const timespec) -> Result<Option<Instant>, ()> {
    if ts.is_null() {
        return Ok(None);
    }
    let t = &*ts;
    if t.tv_sec < 0 || !(0..1_000_000_000).contains(&t.tv_nsec) {
        return Err(());
    }
    Ok(Some(Instant::now() + Duration::new(t.tv_sec as u64, t.tv_nsec as u32)))
}

unsafe fn deadline_tv(tv: *const timeval) -> Result<Option<Instant>, ()> {
    if tv.is_null() {
        return Ok(None);
    }
    let t = &*tv;
    if t.tv_sec < 0 || !(0..1_000_000).contains(&t.tv_usec) {
        return Err(());
    }
    Ok(Some(Instant::now() + Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000)))
}

/// Above this many pollfds the real call decides (it fails with `EINVAL` past the
/// fd limit); the shim would only add a copy of a huge array.
const MAX_NFDS: nfds_t = 1 << 20;

unsafe fn ppoll_at(fds: *mut pollfd, nfds: nfds_t, deadline: Option<Instant>, sigmask: *const sigset_t) -> c_int {
    let app: &mut [pollfd] = if nfds == 0 { &mut [] } else { std::slice::from_raw_parts_mut(fds, nfds as usize) };
    match aeh::wait(app, deadline, sigmask, None) {
        Waited::Ready(n) => n,
        Waited::Failed(e) => failed(e),
        Waited::Job(_) => 0, // not asked for: `accepting` is None
    }
}

/// # Safety
///
/// The C contract of `poll`.
pub unsafe fn poll(fds: *mut pollfd, nfds: nfds_t, timeout: c_int) -> c_int {
    if (fds.is_null() && nfds > 0) || nfds > MAX_NFDS {
        return real::poll(fds, nfds, timeout);
    }
    ppoll_at(fds, nfds, deadline_ms(timeout), std::ptr::null())
}

/// # Safety
///
/// The C contract of `ppoll`.
pub unsafe fn ppoll(fds: *mut pollfd, nfds: nfds_t, timeout: *const timespec, sigmask: *const sigset_t) -> c_int {
    match deadline_ts(timeout) {
        Ok(deadline) if !(fds.is_null() && nfds > 0) && nfds <= MAX_NFDS => ppoll_at(fds, nfds, deadline, sigmask),
        _ => real::ppoll(fds, nfds, timeout, sigmask),
    }
}

/// Bit `fd` of an fd_set seen as the kernel sees it: an array of longs.
unsafe fn bit(set: *mut fd_set, fd: usize) -> (*mut u64, u64) {
    (set.cast::<u64>().add(fd / 64), 1u64 << (fd % 64))
}

unsafe fn is_set(set: *mut fd_set, fd: usize) -> bool {
    !set.is_null() && {
        let (w, m) = bit(set, fd);
        *w & m != 0
    }
}

unsafe fn clear_all(set: *mut fd_set, nfds: usize) {
    if !set.is_null() {
        for fd in 0..nfds {
            let (w, m) = bit(set, fd);
            *w &= !m;
        }
    }
}

unsafe fn select_at(
    nfds: c_int,
    sets: [*mut fd_set; 3],
    deadline: Option<Instant>,
    sigmask: *const sigset_t,
) -> c_int {
    let nfds = nfds as usize;
    let mut pfds = Vec::new();
    for fd in 0..nfds {
        let events = [libc::POLLIN, libc::POLLOUT, libc::POLLPRI]
            .iter()
            .zip(sets)
            .filter(|(_, s)| is_set(*s, fd))
            .fold(0, |acc, (e, _)| acc | e);
        if events != 0 {
            pfds.push(pollfd { fd: fd as c_int, events, revents: 0 });
        }
    }
    match aeh::wait(&mut pfds, deadline, sigmask, None) {
        Waited::Failed(e) => return failed(e),
        Waited::Ready(0) | Waited::Job(_) => {
            sets.iter().for_each(|&s| clear_all(s, nfds));
            return 0;
        }
        Waited::Ready(_) => {}
    }
    if pfds.iter().any(|p| p.revents & libc::POLLNVAL != 0) {
        return failed(libc::EBADF);
    }
    sets.iter().for_each(|&s| clear_all(s, nfds));
    let mut count = 0;
    for p in pfds.iter().filter(|p| p.revents != 0) {
        let r = p.revents;
        let map = [
            r & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0,
            r & (libc::POLLOUT | libc::POLLERR | libc::POLLHUP) != 0,
            r & libc::POLLPRI != 0,
        ];
        // An error on an fd watched only for exceptions: report it there, so the
        // event is not dropped (the next wait would wake for it again at once).
        let none = !map.iter().zip([libc::POLLIN, libc::POLLOUT, libc::POLLPRI]).any(|(m, e)| *m && p.events & e != 0);
        for (i, (&set, e)) in sets.iter().zip([libc::POLLIN, libc::POLLOUT, libc::POLLPRI]).enumerate() {
            if p.events & e != 0 && (map[i] || none) {
                let (w, m) = bit(set, p.fd as usize);
                *w |= m;
                count += 1;
            }
        }
    }
    count
}

/// # Safety
///
/// The C contract of `select`.
pub unsafe fn select(nfds: c_int, r: *mut fd_set, w: *mut fd_set, e: *mut fd_set, timeout: *mut timeval) -> c_int {
    let Ok(deadline) = deadline_tv(timeout) else { return real::select(nfds, r, w, e, timeout) };
    if nfds < 0 {
        return real::select(nfds, r, w, e, timeout);
    }
    let n = select_at(nfds, [r, w, e], deadline, std::ptr::null());
    if let (Some(d), false) = (deadline, timeout.is_null()) {
        let left = d.saturating_duration_since(Instant::now());
        (*timeout).tv_sec = left.as_secs() as libc::time_t;
        (*timeout).tv_usec = left.subsec_micros() as libc::suseconds_t;
    }
    n
}

/// # Safety
///
/// The C contract of `pselect`.
pub unsafe fn pselect(
    nfds: c_int,
    r: *mut fd_set,
    w: *mut fd_set,
    e: *mut fd_set,
    timeout: *const timespec,
    sigmask: *const sigset_t,
) -> c_int {
    match deadline_ts(timeout) {
        Ok(deadline) if nfds >= 0 => select_at(nfds, [r, w, e], deadline, sigmask),
        _ => real::pselect(nfds, r, w, e, timeout, sigmask),
    }
}

unsafe fn epoll_at(epfd: c_int, events: *mut epoll_event, max: c_int, deadline: Option<Instant>, sigmask: *const sigset_t) -> c_int {
    // Ready already, or an invalid call: the real answer, at once.
    let r = real::epoll_wait(epfd, events, max, 0);
    if r != 0 {
        return r;
    }
    let mut empty_wakes = 0u32;
    loop {
        let mut p = [pollfd { fd: epfd, events: libc::POLLIN, revents: 0 }];
        match aeh::wait(&mut p, deadline, sigmask, None) {
            Waited::Failed(e) => return failed(e),
            Waited::Ready(0) | Waited::Job(_) => return 0,
            Waited::Ready(_) => {}
        }
        let r = real::epoll_wait(epfd, events, max, 0);
        if r != 0 {
            return r;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return 0;
        }
        // Readable but nothing to collect: another thread took the events. Should
        // the epoll fd keep saying readable regardless, back off rather than spin.
        empty_wakes += 1;
        if empty_wakes > 3 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// # Safety
///
/// The C contract of `epoll_wait`.
pub unsafe fn epoll_wait(epfd: c_int, events: *mut epoll_event, max: c_int, timeout: c_int) -> c_int {
    epoll_at(epfd, events, max, deadline_ms(timeout), std::ptr::null())
}

/// # Safety
///
/// The C contract of `epoll_pwait`.
pub unsafe fn epoll_pwait(epfd: c_int, events: *mut epoll_event, max: c_int, timeout: c_int, sigmask: *const sigset_t) -> c_int {
    epoll_at(epfd, events, max, deadline_ms(timeout), sigmask)
}

/// # Safety
///
/// The C contract of `epoll_pwait2`.
pub unsafe fn epoll_pwait2(
    epfd: c_int,
    events: *mut epoll_event,
    max: c_int,
    timeout: *const timespec,
    sigmask: *const sigset_t,
) -> c_int {
    match deadline_ts(timeout) {
        Ok(deadline) => epoll_at(epfd, events, max, deadline, sigmask),
        Err(()) => real::epoll_pwait2(epfd, events, max, timeout, sigmask),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipe() -> [c_int; 2] {
        let mut p = [0; 2];
        assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
        p
    }

    #[test]
    fn select_maps_readiness_and_updates_the_timeout() {
        let p = pipe();
        unsafe {
            let mut r: fd_set = std::mem::zeroed();
            let mut w: fd_set = std::mem::zeroed();
            libc::FD_SET(p[0], &mut r);
            libc::FD_SET(p[1], &mut w);
            let mut tv = timeval { tv_sec: 5, tv_usec: 0 };
            assert_eq!(select(p[1] + 1, &mut r, &mut w, std::ptr::null_mut(), &mut tv), 1);
            assert!(!libc::FD_ISSET(p[0], &r) && libc::FD_ISSET(p[1], &w));
            assert!(tv.tv_sec >= 4, "time left written back");
            libc::FD_ZERO(&mut w);
            libc::FD_SET(p[0], &mut r);
            let mut tv = timeval { tv_sec: 0, tv_usec: 20_000 };
            assert_eq!(select(p[1] + 1, &mut r, &mut w, std::ptr::null_mut(), &mut tv), 0);
            assert!(!libc::FD_ISSET(p[0], &r) && (tv.tv_sec, tv.tv_usec) == (0, 0));
            libc::close(p[1]);
            libc::FD_SET(p[0], &mut r);
            assert_eq!(pselect(p[0] + 1, &mut r, std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null(), std::ptr::null()), 1);
            assert!(libc::FD_ISSET(p[0], &r), "hang-up is readable");
            libc::close(p[0]);
            libc::FD_SET(p[0], &mut r);
            crate::hook::set_errno(0);
            assert_eq!(select(p[0] + 1, &mut r, std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut()), -1);
            assert_eq!(crate::hook::errno(), libc::EBADF);
        }
    }

    #[test]
    fn epoll_waits_and_collects_like_the_kernel() {
        let p = pipe();
        unsafe {
            let ep = libc::epoll_create1(libc::EPOLL_CLOEXEC);
            let mut ev = epoll_event { events: (libc::EPOLLIN | libc::EPOLLET) as u32, u64: 77 };
            assert_eq!(libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, p[0], &mut ev), 0);
            let mut out = [epoll_event { events: 0, u64: 0 }; 4];
            let t0 = Instant::now();
            assert_eq!(epoll_wait(ep, out.as_mut_ptr(), 4, 25), 0);
            assert!(t0.elapsed() >= Duration::from_millis(25));
            assert_eq!(libc::write(p[1], b"x".as_ptr().cast(), 1), 1);
            assert_eq!(epoll_pwait(ep, out.as_mut_ptr(), 4, -1, std::ptr::null()), 1);
            assert_eq!({ out[0].u64 }, 77);
            let zero = timespec { tv_sec: 0, tv_nsec: 0 };
            assert_eq!(epoll_pwait2(ep, out.as_mut_ptr(), 4, &zero, std::ptr::null()), 0, "edge already taken");
            crate::hook::set_errno(0);
            assert_eq!(epoll_wait(ep, out.as_mut_ptr(), 0, 0), -1);
            assert_eq!(crate::hook::errno(), libc::EINVAL);
            let bad = timespec { tv_sec: 0, tv_nsec: 2_000_000_000 };
            assert_eq!(ppoll(std::ptr::null_mut(), 0, &bad, std::ptr::null()), -1);
            assert_eq!(crate::hook::errno(), libc::EINVAL);
            libc::close(ep);
            libc::close(p[0]);
            libc::close(p[1]);
        }
    }
}
