//! `connect`: a GCB connector asks the broker who dials whom (see `gcb::connector`);
//! DPF drops the forward of a socket that turns active and asks `dpfd` whether
//! the destination is one of its public addresses (see `dpf::ops`).

use libc::{c_int, sockaddr, socklen_t};

use crate::detour;

hook! {
    /// Only watched sockets (TCP/IPv4 made in GCB mode, neither listening nor
    /// connected yet), GCB-mode UDP sockets and managed ones (a registered UDP
    /// socket may connect) can be brokered; in DPF mode every connect is looked at.
    fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
        detour_or_real!(detour::connect(fd) => connect(fd, addr, len))
    }
}
