//! `accept` and `accept4`: a managed listener hands out reversed and relayed
//! connections in order with the kernel's (paper 4.2.1), and runs the AEH while it
//! waits (see `gcb::listener`).

use libc::{c_int, sockaddr, socklen_t};

use crate::detour;

hook! {
    fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
        detour_or_real!(detour::managed_only(fd) => accept(fd, addr, len))
    }
}

hook! {
    fn accept4(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int {
        detour_or_real!(detour::managed_only(fd) => accept4(fd, addr, len, flags))
    }
}
