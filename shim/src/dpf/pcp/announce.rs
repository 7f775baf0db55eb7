//! Hearing a gateway's restart: PCP servers send ANNOUNCE, and NAT-PMP ones
//! an unsolicited public-address answer, to 224.0.0.1:5350 when they start
//! with their state lost (RFC 6887 §14.1.3, RFC 6886 §3.2.1). A process with
//! mappings listens there, so a restarted gateway gets them back within a
//! few seconds rather than at the next renewal.
//!
//! Several processes of a host may listen at once: the socket is bound with
//! `SO_REUSEADDR` (and `SO_REUSEPORT`), and the kernel gives each such
//! socket its own copy of a multicast datagram. Where the port cannot be had
//! (a program holds 5350 without those options) the process does without,
//! and the next renewal's answer shows the restart by its epoch. Datagrams
//! from anywhere but the gateway's address are dropped.

use std::net::{Ipv4Addr, SocketAddrV4};

use libc::c_int;

use crate::client::sys::{self, Errno};
use crate::real;

/// The all-hosts group, where announcements go.
pub const GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 1);

/// A socket on 224.0.0.1:5350 (an internal fd), joined on the interface of
/// `towards`.
pub fn open(towards: Ipv4Addr) -> Result<c_int, Errno> {
    let s = sys::socket(libc::SOCK_DGRAM, true, true)?;
    sys::set_int_opt(s.raw(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    let _ = sys::set_int_opt(s.raw(), libc::SOL_SOCKET, libc::SO_REUSEPORT, 1);
    sys::bind(s.raw(), SocketAddrV4::new(GROUP, proto::natpmp::ANNOUNCE_PORT))?;
    // Every multicast interface is in the all-hosts group already; joining
    // on the gateway's side as well costs nothing and may be refused.
    let mreq = libc::ip_mreq {
        imr_multiaddr: libc::in_addr { s_addr: u32::from(GROUP).to_be() },
        imr_interface: libc::in_addr { s_addr: u32::from(towards).to_be() },
    };
    // SAFETY: an ip_mreq of the stated size.
    unsafe {
        real::setsockopt(s.raw(), libc::IPPROTO_IP, libc::IP_ADD_MEMBERSHIP, (&mreq as *const libc::ip_mreq).cast(), std::mem::size_of::<libc::ip_mreq>() as libc::socklen_t)
    };
    Ok(crate::internal::adopt(s.into_raw()))
}

/// The datagrams `fd` holds that came from `gateway`'s IP.
pub fn read(fd: c_int, gateway: Ipv4Addr) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1100];
    for _ in 0..16 {
        // SAFETY: a zeroed sockaddr_in is a valid out-parameter.
        let mut from: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: live buffers of the given lengths.
        let n = unsafe { real::recvfrom(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT, (&mut from as *mut libc::sockaddr_in).cast(), &mut len) };
        if n < 0 {
            if crate::guard::errno() == libc::EINTR {
                continue;
            }
            break;
        }
        if Ipv4Addr::from(u32::from_be(from.sin_addr.s_addr)) == gateway {
            got.push(buf[..n as usize].to_vec());
        }
    }
    got
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two listeners in one host both hear one announcement, and only the
    /// gateway's address is heard. Needs a loopback that carries multicast,
    /// which network namespaces and most hosts have; the send says if not.
    #[test]
    fn two_listeners_both_hear_the_gateway_only() {
        let (a, b) = (open(Ipv4Addr::LOCALHOST).unwrap(), open(Ipv4Addr::LOCALHOST).unwrap());
        let tx = sys::socket(libc::SOCK_DGRAM, true, false).unwrap();
        let lo = libc::in_addr { s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be() };
        // SAFETY: an in_addr of the stated size.
        unsafe { real::setsockopt(tx.raw(), libc::IPPROTO_IP, libc::IP_MULTICAST_IF, (&lo as *const libc::in_addr).cast(), 4) };
        sys::bind(tx.raw(), "127.0.0.1:0".parse().unwrap()).unwrap();
        let to = sys::to_sockaddr(SocketAddrV4::new(GROUP, proto::natpmp::ANNOUNCE_PORT));
        let sent = unsafe { real::sendto(tx.raw(), b"hello".as_ptr().cast(), 5, 0, (&to as *const libc::sockaddr_in).cast(), 16) };
        assert_eq!(sent, 5, "multicast on loopback: {}", std::io::Error::last_os_error());
        for fd in [a, b] {
            assert!(sys::wait_fd(fd, libc::POLLIN, std::time::Instant::now() + std::time::Duration::from_secs(2)).is_ok());
            assert_eq!(read(fd, Ipv4Addr::LOCALHOST), vec![b"hello".to_vec()]);
        }
        let _ = unsafe { real::sendto(tx.raw(), b"again".as_ptr().cast(), 5, 0, (&to as *const libc::sockaddr_in).cast(), 16) };
        assert!(sys::wait_fd(a, libc::POLLIN, std::time::Instant::now() + std::time::Duration::from_secs(2)).is_ok());
        assert!(read(a, Ipv4Addr::new(192, 0, 2, 1)).is_empty(), "not from the gateway");
        crate::internal::release(a);
        crate::internal::release(b);
    }
}
