//! The command socket's error queue: `IP_RECVERR` turned on, and entries
//! read with `recvmsg(MSG_ERRQUEUE)` into [`Report`]s. No decisions here.
//!
//! With `IP_RECVERR`, every ICMP error for a datagram the socket sent is
//! queued (up to the socket's receive buffer), epoll reports the socket
//! (EPOLLERR, whatever the interest), and the next plain receive fails
//! once with the error's errno (ECONNREFUSED) while the queue keeps the
//! details: the `sock_extended_err` control message (origin, ICMP type and
//! code, and after it the ICMP sender), and in `msg_name` the address the
//! failed datagram went to. Reading an entry never blocks: an empty queue
//! answers EAGAIN.

use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;

use mio::net::UdpSocket;
use nix::errno::Errno;
use nix::libc;
use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, SockaddrIn};

use super::Report;

/// Asks the kernel to queue ICMP errors on `sock`.
pub fn enable(sock: &UdpSocket) -> io::Result<()> {
    setsockopt(sock, sockopt::Ipv4RecvErr, &true).map_err(io::Error::from)
}

/// Reads up to `budget` entries into `out`. Returns whether it stopped at
/// the budget with entries possibly left (the caller reads again next
/// turn: epoll does not report errors already queued a second time).
pub fn read(sock: &UdpSocket, budget: usize, out: &mut Vec<Report>) -> io::Result<bool> {
    // The failed datagram's payload is queued too; only its headers matter.
    let mut payload = [0u8; 64];
    let mut cmsg = nix::cmsg_space!(libc::sock_extended_err, libc::sockaddr_in);
    for _ in 0..budget {
        let mut iov = [IoSliceMut::new(&mut payload)];
        let msg = match recvmsg::<SockaddrIn>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(msg) => msg,
            Err(Errno::EAGAIN) => return Ok(false),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        let mut report = Report {
            dest: msg.address.map(|a| SocketAddrV4::new(a.ip(), a.port())),
            origin: 0,
            icmp_type: 0,
            code: 0,
            offender: None,
        };
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::Ipv4RecvErr(ee, from) = c {
                    report.origin = ee.ee_origin;
                    report.icmp_type = ee.ee_type;
                    report.code = ee.ee_code;
                    report.offender = from
                        .filter(|s| i32::from(s.sin_family) == libc::AF_INET)
                        .map(|s| Ipv4Addr::from(u32::from_be(s.sin_addr.s_addr)));
                }
            }
        }
        out.push(report);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// A datagram to a closed port on loopback draws a port unreachable,
    /// which the queue reports with the port it went to and its sender.
    #[test]
    fn a_closed_loopback_port_is_reported_with_its_address() {
        let sock = UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        enable(&sock).unwrap();
        let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = closed.local_addr().unwrap();
        drop(closed);
        sock.send_to(b"hello", to).unwrap();
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while out.is_empty() {
            assert!(Instant::now() < deadline, "no error queued");
            assert!(!read(&sock, 4, &mut out).unwrap());
            std::thread::sleep(Duration::from_millis(5));
        }
        let to = match to {
            std::net::SocketAddr::V4(a) => a,
            other => panic!("{other}"),
        };
        assert_eq!(
            out,
            [Report {
                dest: Some(to),
                origin: super::super::ORIGIN_ICMP,
                icmp_type: 3,
                code: 3,
                offender: Some(Ipv4Addr::LOCALHOST),
            }]
        );
        // The queue is empty now, and the plain receive has nothing either.
        assert!(!read(&sock, 4, &mut out).unwrap());
        assert_eq!(out.len(), 1);
        let mut buf = [0u8; 16];
        let e = sock.recv_from(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "{e}");
    }
}
