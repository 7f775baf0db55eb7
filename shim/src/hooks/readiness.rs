//! Readiness: `epoll_ctl`.
//!
//! The waits themselves (`select`, `poll`, the `epoll_wait` family) are not
//! hooked: the responder thread answers the broker (`crate::responder`), so the
//! program's waits are the kernel's own, at no cost, and brokered connections
//! reach them as kernel readiness (doorbells in a listener's queue, a swapped
//! socket becoming writable). `epoll_ctl` is recorded for sockets the shim may
//! swap under the program (`gcb::interest`): a connector candidate, or one
//! whose non-blocking connect is being brokered.

use libc::{c_int, epoll_event};

use crate::detour;

hook! {
    fn epoll_ctl(epfd: c_int, op: c_int, fd: c_int, event: *mut epoll_event) -> c_int {
        detour_or_real!(detour::epoll_ctl(fd) => epoll_ctl(epfd, op, fd, event))
    }
}
