//! The process's waits while it holds forwards: the real call, cut into slices of
//! at most [`SLICE`], with the management sockets' probe queues swept before each
//! (see `forward`, "Answering dpfd's probes"). A slice that ends with nothing
//! ready and time left simply waits again, so timeouts, `EINTR`, signal masks and
//! readiness are the real call's; the only difference is a wake-up every
//! [`SLICE`]. `select` and `pselect` sweep once and are not sliced, because the
//! kernel rewrites their fd sets and timeout on return; they rely on the backlog.

use std::time::{Duration, Instant};

use libc::{c_int, epoll_event, fd_set, nfds_t, pollfd, sigset_t, timespec, timeval};

use super::forward::sweep;
use crate::real;

/// The longest a wait sleeps without sweeping.
pub const SLICE: Duration = Duration::from_secs(5);

fn deadline_ms(ms: c_int) -> Option<Instant> {
    (ms >= 0).then(|| Instant::now() + Duration::from_millis(ms as u64))
}

/// `None`: for ever; `Err` for a timespec the real call must judge.
unsafe fn deadline_ts(ts: *const timespec) -> Result<Option<Instant>, ()> {
    if ts.is_null() {
        return Ok(None);
    }
    let t = *ts;
    if t.tv_sec < 0 || !(0..1_000_000_000).contains(&t.tv_nsec) {
        return Err(());
    }
    Ok(Some(Instant::now() + Duration::new(t.tv_sec as u64, t.tv_nsec as u32)))
}

/// The next slice, and whether it is the last one before `deadline`.
fn slice_of(deadline: Option<Instant>, now: Instant) -> (Duration, bool) {
    match deadline {
        None => (SLICE, false),
        Some(d) => {
            let left = d.saturating_duration_since(now);
            (left.min(SLICE), left <= SLICE)
        }
    }
}

/// Runs `call` with slice timeouts in milliseconds until it reports something,
/// fails, or `deadline` passes.
fn sliced_ms(deadline: Option<Instant>, mut call: impl FnMut(c_int) -> c_int) -> c_int {
    loop {
        sweep();
        let now = Instant::now();
        let (slice, last) = slice_of(deadline, now);
        let r = call(crate::gcb::sys::poll_ms(now + slice, now));
        if r != 0 || last {
            return r;
        }
    }
}

/// As [`sliced_ms`], with timespec slices.
fn sliced_ts(deadline: Option<Instant>, mut call: impl FnMut(&timespec) -> c_int) -> c_int {
    loop {
        sweep();
        let (slice, last) = slice_of(deadline, Instant::now());
        let ts = timespec { tv_sec: slice.as_secs() as libc::time_t, tv_nsec: slice.subsec_nanos() as libc::c_long };
        let r = call(&ts);
        if r != 0 || last {
            return r;
        }
    }
}

/// # Safety
///
/// The C contract of `poll`.
pub unsafe fn poll(fds: *mut pollfd, nfds: nfds_t, timeout: c_int) -> c_int {
    sliced_ms(deadline_ms(timeout), |ms| real::poll(fds, nfds, ms))
}

/// # Safety
///
/// The C contract of `ppoll`.
pub unsafe fn ppoll(fds: *mut pollfd, nfds: nfds_t, timeout: *const timespec, sigmask: *const sigset_t) -> c_int {
    match deadline_ts(timeout) {
        Ok(deadline) => sliced_ts(deadline, |ts| real::ppoll(fds, nfds, ts, sigmask)),
        Err(()) => real::ppoll(fds, nfds, timeout, sigmask),
    }
}

/// # Safety
///
/// The C contract of `epoll_wait`.
pub unsafe fn epoll_wait(epfd: c_int, events: *mut epoll_event, max: c_int, timeout: c_int) -> c_int {
    sliced_ms(deadline_ms(timeout), |ms| real::epoll_wait(epfd, events, max, ms))
}

/// # Safety
///
/// The C contract of `epoll_pwait`.
pub unsafe fn epoll_pwait(epfd: c_int, events: *mut epoll_event, max: c_int, timeout: c_int, sigmask: *const sigset_t) -> c_int {
    sliced_ms(deadline_ms(timeout), |ms| real::epoll_pwait(epfd, events, max, ms, sigmask))
}

/// # Safety
///
/// The C contract of `epoll_pwait2`.
pub unsafe fn epoll_pwait2(epfd: c_int, events: *mut epoll_event, max: c_int, timeout: *const timespec, sigmask: *const sigset_t) -> c_int {
    match deadline_ts(timeout) {
        Ok(deadline) => sliced_ts(deadline, |ts| real::epoll_pwait2(epfd, events, max, ts, sigmask)),
        Err(()) => real::epoll_pwait2(epfd, events, max, timeout, sigmask),
    }
}

/// # Safety
///
/// The C contract of `select`.
pub unsafe fn select(nfds: c_int, r: *mut fd_set, w: *mut fd_set, e: *mut fd_set, timeout: *mut timeval) -> c_int {
    sweep();
    real::select(nfds, r, w, e, timeout)
}

/// # Safety
///
/// The C contract of `pselect`.
pub unsafe fn pselect(nfds: c_int, r: *mut fd_set, w: *mut fd_set, e: *mut fd_set, timeout: *const timespec, sigmask: *const sigset_t) -> c_int {
    sweep();
    real::pselect(nfds, r, w, e, timeout, sigmask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_end_at_the_deadline_or_on_events() {
        let t0 = Instant::now();
        let mut calls = Vec::new();
        let r = sliced_ms(Some(t0 + Duration::from_millis(30)), |ms| {
            calls.push(ms);
            0
        });
        assert_eq!(r, 0);
        assert_eq!(calls.len(), 1, "a short timeout is one slice");
        let mut n = 0;
        let r = sliced_ms(None, |ms| {
            assert!(ms as u128 <= SLICE.as_millis());
            n += 1;
            if n == 3 {
                2
            } else {
                0
            }
        });
        assert_eq!((r, n), (2, 3), "an endless wait goes on until something is ready");
        assert_eq!(sliced_ts(Some(Instant::now()), |_| -1), -1, "failures end it");
    }
}
