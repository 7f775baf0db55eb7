//! `connect`: where a GCB connector will ask the broker who dials whom, and where
//! DPF drops the forwarding rule of a socket that turns active.

use libc::{c_int, sockaddr, socklen_t};

use crate::fdtable;

hook! {
    fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
        real_unless!(fdtable::is_managed(fd) => connect(fd, addr, len))
    }
}
