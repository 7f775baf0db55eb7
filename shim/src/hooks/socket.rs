//! Socket creation, naming and options: `socket`, `bind`, `listen`, `getsockname`,
//! `getpeername`, `setsockopt`, `getsockopt`, `shutdown`.
//!
//! GCB registers listening sockets at `listen`, DPF forwards UDP sockets at
//! `bind` and TCP sockets at `listen`; both report the public names from
//! `getsockname` and `getpeername` (docs/design.md, "Identities"). A socket bound to
//! the reported address itself is registered or forwarded at `bind`
//! (`client::pinned`).

use libc::{c_int, c_void, sockaddr, socklen_t};

use crate::detour::{self, Bypass, Detour};
use crate::fdtable::{self, Kind};
use crate::{gcb, real};

/// Whether `socket(domain, ty, protocol)` makes a socket of type `want`
/// (`SOCK_STREAM` with TCP, `SOCK_DGRAM` with UDP) that may reach IPv4: AF_INET,
/// or AF_INET6 (dual-stack, or v4-mapped peers; whether it does is known only at
/// `bind`, `listen` or `connect`, which let pure IPv6 go).
fn is_ip(domain: c_int, ty: c_int, protocol: c_int, want: c_int, ipproto: c_int) -> bool {
    let base = ty & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC);
    (domain == libc::AF_INET || domain == libc::AF_INET6) && base == want && (protocol == 0 || protocol == ipproto)
}

fn is_tcp_ip(domain: c_int, ty: c_int, protocol: c_int) -> bool {
    is_ip(domain, ty, protocol, libc::SOCK_STREAM, libc::IPPROTO_TCP)
}

fn is_udp_ip(domain: c_int, ty: c_int, protocol: c_int) -> bool {
    is_ip(domain, ty, protocol, libc::SOCK_DGRAM, libc::IPPROTO_UDP)
}

hook! {
    /// In GCB mode a new TCP socket of an IP family is watched: it may listen
    /// (and register) or connect (and be brokered); a new UDP socket too:
    /// it may bind (and register) or send to a GCB address (`gcb::udp`).
    /// Nothing else is marked.
    fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int {
        let fd = real::socket(domain, ty, protocol);
        if fd >= 0 && gcb::mode::enabled() {
            if is_tcp_ip(domain, ty, protocol) {
                fdtable::set(fd, Kind::Watched);
            } else if is_udp_ip(domain, ty, protocol) {
                fdtable::set(fd, Kind::WatchedUdp);
            }
        }
        fd
    }
}

hook! {
    /// GCB-mode sockets that may register, and every socket in DPF mode: UDP
    /// registers or is forwarded at `bind`, and a bind to the address the
    /// process reports is made good (`client::pinned`).
    fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
        detour_or_real!(detour::bind(fd) => bind(fd, addr, len))
    }
}

hook! {
    fn listen(fd: c_int, backlog: c_int) -> c_int {
        detour_or_real!(detour::listen(fd) => listen(fd, backlog))
    }
}

hook! {
    fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
        detour_or_real!(detour::names(fd) => getsockname(fd, addr, len))
    }
}

hook! {
    fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
        detour_or_real!(detour::names(fd) => getpeername(fd, addr, len))
    }
}

hook! {
    /// Options set on a socket the shim may replace are noted, so a brokered
    /// connection reads only those back (`client::options`).
    fn setsockopt(fd: c_int, level: c_int, name: c_int, value: *const c_void, len: socklen_t) -> c_int {
        let way = detour::managed_only(fd);
        if matches!(way, Ok(_) | Err(Bypass::NotForThisCall(Kind::Watched))) {
            crate::client::options::note(level, name);
        }
        detour_or_real!(way => setsockopt(fd, level, name, value, len))
    }
}

hook! {
    /// `SO_ERROR` of a connection the shim named may be a brokered connect's
    /// failure that the kernel's socket cannot say (`gcb::connecting`).
    fn getsockopt(fd: c_int, level: c_int, name: c_int, value: *mut c_void, len: *mut socklen_t) -> c_int {
        match detour::getsockopt(fd, level, name) {
            Ok(Detour::Tracked(Kind::Managed)) => crate::managed::getsockopt(fd, level, name, value, len),
            Ok(_) => crate::managed::connect_error(fd, value, len),
            Err(_) => real::getsockopt(fd, level, name, value, len),
        }
    }
}

hook! {
    fn shutdown(fd: c_int, how: c_int) -> c_int {
        detour_or_real!(detour::managed_only(fd) => shutdown(fd, how))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tcp_and_udp_sockets_of_ip_families_are_watched() {
        assert!(is_tcp_ip(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0));
        assert!(is_tcp_ip(libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_TCP));
        assert!(is_tcp_ip(libc::AF_INET6, libc::SOCK_STREAM, 0));
        assert!(!is_tcp_ip(libc::AF_INET6, libc::SOCK_DGRAM, 0));
        assert!(!is_tcp_ip(libc::AF_INET, libc::SOCK_DGRAM, 0));
        assert!(!is_tcp_ip(libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_SCTP));
        assert!(!is_tcp_ip(libc::AF_UNIX, libc::SOCK_STREAM, 0));
        assert!(is_udp_ip(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_NONBLOCK, libc::IPPROTO_UDP));
        assert!(is_udp_ip(libc::AF_INET6, libc::SOCK_DGRAM, 0));
        assert!(!is_udp_ip(libc::AF_INET, libc::SOCK_STREAM, 0));
        assert!(!is_udp_ip(libc::AF_UNIX, libc::SOCK_DGRAM, 0));
    }
}
