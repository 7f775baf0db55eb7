//! Socket creation, naming and options: `socket`, `bind`, `listen`, `getsockname`,
//! `getpeername`, `setsockopt`, `getsockopt`, `shutdown`.
//!
//! These are where GCB and DPF will register listening and UDP sockets and report
//! proxy or public addresses (DESIGN.md, "Identities").

use libc::{c_int, c_void, sockaddr, socklen_t};

use crate::{fdtable, real};

hook! {
    /// A new socket is never managed; GCB and DPF take over at `bind` and `listen`.
    fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int {
        real::socket(domain, ty, protocol)
    }
}

hook! {
    fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
        real_unless!(fdtable::is_managed(fd) => bind(fd, addr, len))
    }
}

hook! {
    fn listen(fd: c_int, backlog: c_int) -> c_int {
        real_unless!(fdtable::is_managed(fd) => listen(fd, backlog))
    }
}

hook! {
    fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
        real_unless!(fdtable::is_managed(fd) => getsockname(fd, addr, len))
    }
}

hook! {
    fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
        real_unless!(fdtable::is_managed(fd) => getpeername(fd, addr, len))
    }
}

hook! {
    fn setsockopt(fd: c_int, level: c_int, name: c_int, value: *const c_void, len: socklen_t) -> c_int {
        real_unless!(fdtable::is_managed(fd) => setsockopt(fd, level, name, value, len))
    }
}

hook! {
    fn getsockopt(fd: c_int, level: c_int, name: c_int, value: *mut c_void, len: *mut socklen_t) -> c_int {
        real_unless!(fdtable::is_managed(fd) => getsockopt(fd, level, name, value, len))
    }
}

hook! {
    fn shutdown(fd: c_int, how: c_int) -> c_int {
        real_unless!(fdtable::is_managed(fd) => shutdown(fd, how))
    }
}
