//! Binding to an IPv4 address this host does not hold yet (IP_FREEBIND),
//! for a daemon that must start before its address arrives: a standby
//! broker behind a floating IP that keepalived moves to it on failover
//! (see `deploy/keepalived/`). The sockets are bound and listening from
//! the start and receive traffic as soon as the address is added to an
//! interface; nothing has to be restarted at failover.
//!
//! Only the sockets made at startup need this: everything else a broker
//! binds (proxy sockets, channels) is made in answer to traffic that
//! reached it at that address, so the address is there by then.

use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::OwnedFd;

use nix::sys::socket::{
    bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
    SockaddrIn,
};

fn v4(addr: SocketAddr) -> io::Result<SocketAddrV4> {
    match addr {
        SocketAddr::V4(a) => Ok(a),
        SocketAddr::V6(_) => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "IP_FREEBIND is for IPv4 addresses here",
        )),
    }
}

fn freebind_socket(addr: SocketAddrV4, ty: SockType) -> io::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Inet,
        ty,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    setsockopt(&fd, sockopt::IpFreebind, &true)?;
    if ty == SockType::Stream {
        // As std and mio do for listeners: a restart can bind at once
        // while old connections are in TIME_WAIT.
        setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    }
    use std::os::fd::AsRawFd;
    bind(fd.as_raw_fd(), &SockaddrIn::from(addr))?;
    Ok(fd)
}

/// A non-blocking UDP socket bound to `addr`, held by this host or not.
pub fn udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let fd = freebind_socket(v4(addr)?, SockType::Datagram)?;
    Ok(std::net::UdpSocket::from(fd))
}

/// A non-blocking TCP listener on `addr`, held by this host or not.
pub fn tcp_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let fd = freebind_socket(v4(addr)?, SockType::Stream)?;
    listen(&fd, Backlog::MAXCONN)?;
    Ok(std::net::TcpListener::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_an_address_the_host_does_not_have() {
        // A documentation address no test host of this machine's root
        // namespace holds: a plain bind fails, a free bind does not.
        let addr: SocketAddr = "203.0.113.251:0".parse().unwrap();
        assert!(std::net::UdpSocket::bind(addr).is_err());
        let u = udp(addr).unwrap();
        assert_eq!(u.local_addr().unwrap().ip(), addr.ip());
        let t = tcp_listener(addr).unwrap();
        assert_eq!(t.local_addr().unwrap().ip(), addr.ip());
        assert!(udp("[::1]:0".parse().unwrap()).is_err());
    }
}
