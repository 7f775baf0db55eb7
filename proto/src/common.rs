//! Small value types both protocol families share: the transport protocol of
//! a socket and an (protocol, address) endpoint.
//!
//! A TCP port and a UDP port with the same number are different resources, on
//! the broker's proxy sockets as in the kernel's NAT tables, so wherever a
//! message names a registration or a mapping it names the protocol with it.

use crate::wire::{DecodeError, Reader, Sink, Writer, ADDR_LEN};
use std::fmt;
use std::net::SocketAddrV4;

/// Transport protocol of a socket. On the wire it is the IP protocol number
/// (6 for TCP, 17 for UDP), so a hex dump reads naturally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub const fn wire(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }

    pub fn from_wire(b: u8) -> Result<Self, DecodeError> {
        match b {
            6 => Ok(Proto::Tcp),
            17 => Ok(Proto::Udp),
            _ => Err(DecodeError::BadValue("proto")),
        }
    }

    pub(crate) fn write<S: Sink>(self, w: &mut Writer<S>) {
        w.u8(self.wire());
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Proto::from_wire(r.u8()?)
    }
}

/// Lower-case name, as in the fixed log line `gcb: registered tcp|udp ...`.
impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// A socket address qualified by its protocol: 1 byte proto + 6 bytes address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub proto: Proto,
    pub addr: SocketAddrV4,
}

impl Endpoint {
    /// Encoded length, used to bound list counts before allocating.
    pub const WIRE_LEN: usize = 1 + ADDR_LEN;

    pub const fn new(proto: Proto, addr: SocketAddrV4) -> Self {
        Self { proto, addr }
    }

    pub(crate) fn write<S: Sink>(&self, w: &mut Writer<S>) {
        self.proto.write(w);
        w.addr(&self.addr);
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            proto: Proto::read(r)?,
            addr: r.addr()?,
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.proto, self.addr)
    }
}

/// Writes a u8-counted list of endpoints of at most `max` entries.
pub(crate) fn write_endpoints<S: Sink>(
    w: &mut Writer<S>,
    list: &[Endpoint],
    max: usize,
    what: &'static str,
) {
    if w.count8(list.len(), max, what) {
        for e in list {
            e.write(w);
        }
    }
}

/// Reads a u8-counted list of endpoints; the count is checked against `max`
/// and against the remaining input before the vector is allocated.
pub(crate) fn read_endpoints(
    r: &mut Reader<'_>,
    max: usize,
    what: &'static str,
) -> Result<Vec<Endpoint>, DecodeError> {
    let n = r.count8(max, Endpoint::WIRE_LEN, what)?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(Endpoint::read(r)?);
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proto_numbers_and_names() {
        assert_eq!(Proto::Tcp.wire(), 6);
        assert_eq!(Proto::Udp.wire(), 17);
        assert_eq!(Proto::from_wire(17), Ok(Proto::Udp));
        assert_eq!(Proto::from_wire(0), Err(DecodeError::BadValue("proto")));
        assert_eq!(Proto::Tcp.to_string(), "tcp");
        let e = Endpoint::new(Proto::Udp, "198.51.100.7:4000".parse().unwrap());
        assert_eq!(e.to_string(), "udp 198.51.100.7:4000");
    }

    #[test]
    fn endpoint_list_round_trip_and_golden() {
        let list = [Endpoint::new(Proto::Tcp, "203.0.113.9:80".parse().unwrap())];
        let mut w = Writer::new(Vec::new());
        write_endpoints(&mut w, &list, 4, "list");
        let v = w.finish().unwrap();
        assert_eq!(v, [1, 6, 203, 0, 113, 9, 0, 80]);
        let mut r = Reader::new(&v);
        assert_eq!(read_endpoints(&mut r, 4, "list").unwrap(), list);
        assert_eq!(r.finish(), Ok(()));
    }
}
