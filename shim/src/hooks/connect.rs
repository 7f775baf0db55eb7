//! `connect`: a GCB connector asks the broker who dials whom (see `gcb::connector`);
//! DPF will drop the forwarding rule of a socket that turns active.

use libc::{c_int, sockaddr, socklen_t};

use crate::fdtable::{self, Kind};

hook! {
    /// Only watched sockets (TCP/IPv4 made in GCB mode, neither listening nor
    /// connected yet) can be brokered.
    fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
        real_unless!(fdtable::kind(fd) == Kind::Watched => connect(fd, addr, len))
    }
}
