//! ICMP errors on the command socket: how the broker learns at once that a
//! client's UDP socket is gone.
//!
//! When the process behind a management socket dies, the socket closes,
//! and the broker's next datagram to its address draws an ICMP port
//! unreachable from the process's host (through its NAT, which relates the
//! error to the UDP mapping and forwards it). Linux reports such errors on
//! an unconnected UDP socket only with `IP_RECVERR`, queued on the socket's
//! error queue (`errqueue` reads it) with the address the datagram went to.
//! Without this the broker only sees silence: a command to a dead holder
//! waits out its retransmissions (~3 s), and the holder lingers until its
//! heartbeat deadline.
//!
//! What one error means is decided here, without I/O ([`judge`]): the
//! socket at address A is gone only for a port unreachable (type 3 code 3)
//! that came from A's own IP (the host, or its NAT, answers for its ports;
//! a router in between would be another address), for an A that a command
//! of the broker's is in flight to. Anyone can send the broker an ICMP
//! error naming any address, so a datagram the broker did not send is not
//! believed to have bounced: a spoofed error for a random address does
//! nothing, and one for a holder's address does something only while a
//! command to it is being retransmitted (an attacker who knows that, being
//! on the path, could as well drop the command). What the broker does
//! about a gone socket is the core's (`engine::icmp`).

use std::net::{Ipv4Addr, SocketAddrV4};

pub mod errqueue;

/// `ee_origin` of an error carried by an ICMP message.
pub const ORIGIN_ICMP: u8 = nix::libc::SO_EE_ORIGIN_ICMP;
/// ICMP destination unreachable, code port unreachable (RFC 792).
const DEST_UNREACHABLE: u8 = 3;
const PORT_UNREACHABLE: u8 = 3;

/// One entry of the command socket's error queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Where the datagram that drew the error was going, if IPv4.
    pub dest: Option<SocketAddrV4>,
    /// `sock_extended_err`: where the error comes from (ICMP, local), and
    /// the ICMP type and code; all 0 when the kernel gave no details.
    pub origin: u8,
    pub icmp_type: u8,
    pub code: u8,
    /// The sender of the ICMP message.
    pub offender: Option<Ipv4Addr>,
}

/// What an error means to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No socket is at this address any more.
    Gone(SocketAddrV4),
    /// A port unreachable the broker does not believe.
    Untrusted(Distrust),
    /// Some other error (host or network unreachable, a local error): it
    /// says nothing about a socket, and retransmission goes on.
    Other,
}

/// Why a port unreachable is not believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distrust {
    /// It came from another address than the one the datagram went to.
    Offender,
    /// No command of the broker's is in flight to that address.
    NotSent,
}

impl std::fmt::Display for Distrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Distrust::Offender => "it comes from another host",
            Distrust::NotSent => "no command is in flight to that address",
        })
    }
}

/// Judges one error report; `in_flight` says whether a command is in
/// flight to the address it names.
pub fn judge(r: &Report, in_flight: impl FnOnce(SocketAddrV4) -> bool) -> Verdict {
    let Some(dest) = r.dest else {
        return Verdict::Other;
    };
    if (r.origin, r.icmp_type, r.code) != (ORIGIN_ICMP, DEST_UNREACHABLE, PORT_UNREACHABLE) {
        return Verdict::Other;
    }
    if r.offender != Some(*dest.ip()) {
        return Verdict::Untrusted(Distrust::Offender);
    }
    if !in_flight(dest) {
        return Verdict::Untrusted(Distrust::NotSent);
    }
    Verdict::Gone(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    fn port_unreachable(dest: &str) -> Report {
        let dest = a(dest);
        Report {
            dest: Some(dest),
            origin: ORIGIN_ICMP,
            icmp_type: 3,
            code: 3,
            offender: Some(*dest.ip()),
        }
    }

    #[test]
    fn a_port_unreachable_for_an_address_commanded_means_its_socket_is_gone() {
        let r = port_unreachable("198.51.100.7:40000");
        let asked = std::cell::Cell::new(None);
        let got = judge(&r, |to| {
            asked.set(Some(to));
            true
        });
        assert_eq!(got, Verdict::Gone(a("198.51.100.7:40000")));
        assert_eq!(asked.get(), r.dest, "the question is about that address");
    }

    #[test]
    fn a_port_unreachable_for_an_address_not_commanded_is_not_believed() {
        let r = port_unreachable("198.51.100.7:40000");
        assert_eq!(judge(&r, |_| false), Verdict::Untrusted(Distrust::NotSent));
    }

    #[test]
    fn only_the_destination_itself_may_say_its_port_is_closed() {
        let mut r = port_unreachable("198.51.100.7:40000");
        // A router on the way (a firewall's REJECT), or a forgery from
        // elsewhere, even for an address commanded.
        r.offender = Some("192.0.2.1".parse().unwrap());
        assert_eq!(judge(&r, |_| true), Verdict::Untrusted(Distrust::Offender));
        r.offender = None;
        assert_eq!(judge(&r, |_| true), Verdict::Untrusted(Distrust::Offender));
    }

    #[test]
    fn other_errors_say_nothing_about_a_socket() {
        let base = port_unreachable("198.51.100.7:40000");
        let cases = [
            // Host, network unreachable; administratively prohibited.
            Report { code: 1, ..base },
            Report { code: 0, ..base },
            Report { code: 13, ..base },
            // Time exceeded, code 3.
            Report {
                icmp_type: 11,
                ..base
            },
            // A local error (SO_EE_ORIGIN_LOCAL), and no details at all.
            Report { origin: 1, ..base },
            Report {
                origin: 0,
                icmp_type: 0,
                code: 0,
                ..base
            },
            // Not IPv4.
            Report { dest: None, ..base },
        ];
        for r in cases {
            assert_eq!(judge(&r, |_| true), Verdict::Other, "{r:?}");
        }
    }
}
