//! The entries of `GCB_INHERITED` and its text (format in the parent module's docs):
//! rendered at exec into a fixed buffer, without allocating (a `vfork` child
//! may be the one exec-ing), and parsed by the new image.

use std::fmt::Write as _;
use std::net::SocketAddrV4;

use libc::c_int;

/// The variable the hand-over travels in.
pub const VAR: &str = "GCB_INHERITED";
/// One managed listener fd as handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub fd: c_int,
    pub mgmt: c_int,
    pub proxy: Option<SocketAddrV4>,
    pub local: SocketAddrV4,
    pub backlog: u64,
    /// A registered UDP socket's data-path token; `None` for TCP (and DPF).
    pub udp_token: Option<u64>,
    /// The broker channel a UDP socket is connected through.
    pub channel: Option<ChannelEntry>,
    /// The PCP mapping nonce of a forward a standard gateway made (`dpf::pcp`).
    pub nonce: Option<[u8; 12]>,
}

/// A UDP socket's broker channel as handed over (`udp::table::Channel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelEntry {
    pub peer: SocketAddrV4,
    pub addr: SocketAddrV4,
    /// 0: the channel is being asked for again (no live port to keep).
    pub token: u64,
}

/// A fixed buffer to format into without allocating; overflow is remembered.
pub(super) struct Buf<const N: usize> {
    pub(super) bytes: [u8; N],
    pub(super) len: usize,
    pub(super) overflow: bool,
}

impl<const N: usize> std::fmt::Write for Buf<N> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        if end > N {
            self.overflow = true;
            return Err(std::fmt::Error);
        }
        self.bytes[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Writes `VAR=entries` and a NUL into `buf`; false if it does not fit.
pub(super) fn render<const N: usize>(entries: &[Entry], buf: &mut Buf<N>) -> bool {
    let _ = write!(buf, "{VAR}=");
    for (i, e) in entries.iter().enumerate() {
        let sep = if i == 0 { "" } else { ";" };
        let _ = write!(buf, "{sep}{},{},", e.fd, e.mgmt);
        let _ = match e.proxy {
            Some(p) => write!(buf, "{p}"),
            None => write!(buf, "-"),
        };
        let _ = write!(buf, ",{},{:x}", e.local, e.backlog);
        if let Some(t) = e.udp_token {
            let _ = write!(buf, ",u{t:x}");
            if let Some(c) = e.channel {
                let _ = write!(buf, ",c{}/{}/{:x}", c.peer, c.addr, c.token);
            }
        }
        if let Some(n) = e.nonce {
            let _ = buf.write_str(",n");
            for b in n {
                let _ = write!(buf, "{b:02x}");
            }
        }
    }
    let _ = buf.write_str("\0");
    !buf.overflow
}

/// Parses the variable's value; malformed entries are skipped.
pub fn parse(value: &str) -> Vec<Entry> {
    let entry = |s: &str| -> Option<Entry> {
        let mut f = s.split(',');
        let (fd, mgmt, proxy, local, backlog) = (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
        let mut rest = f.peekable();
        let udp_token = match rest.next_if(|t| t.starts_with('u')) {
            None => None,
            Some(t) => Some(u64::from_str_radix(&t[1..], 16).ok()?),
        };
        let channel = match rest.next_if(|c| c.starts_with('c')) {
            None => None,
            Some(c) => {
                udp_token?;
                let mut parts = c[1..].split('/');
                let (peer, addr, token) = (parts.next()?, parts.next()?, parts.next()?);
                (parts.next().is_none()).then_some(())?;
                Some(ChannelEntry { peer: peer.parse().ok()?, addr: addr.parse().ok()?, token: u64::from_str_radix(token, 16).ok()? })
            }
        };
        let nonce = match rest.next() {
            None => None,
            Some(n) => {
                let hex = n.strip_prefix('n').filter(|h| h.len() == 24 && h.is_ascii())?;
                let mut nonce = [0u8; 12];
                for (i, b) in nonce.iter_mut().enumerate() {
                    *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
                }
                Some(nonce)
            }
        };
        if rest.next().is_some() {
            return None;
        }
        let proxy = if proxy == "-" { None } else { Some(proxy.parse().ok()?) };
        let fd: c_int = fd.parse().ok()?;
        let mgmt: c_int = mgmt.parse().ok()?;
        // A GCB entry names no management socket (-1): the new image opens its own.
        (fd >= 0 && mgmt >= -1).then_some(())?;
        Some(Entry { fd, mgmt, proxy, local: local.parse().ok()?, backlog: u64::from_str_radix(backlog, 16).ok()?, udp_token, channel, nonce })
    };
    value.split(';').filter_map(entry).collect()
}

#[cfg(test)]
mod tests {
    use super::super::tests::entries;
    use super::*;

    #[test]
    fn render_parse_round_trip() {
        let mut buf = Buf::<512> { bytes: [0; 512], len: 0, overflow: false };
        assert!(render(&entries(), &mut buf));
        let text = std::str::from_utf8(&buf.bytes[..buf.len]).unwrap();
        assert_eq!(
            text,
            "GCB_INHERITED=3,1000,203.0.113.10:20001,0.0.0.0:7300,abc;4,1000,-,192.0.2.10:7301,ffffffffffffffff,n006e6f6e63652d6e6f6e6365;5,1001,203.0.113.10:20002,0.0.0.0:7302,1,u5eed;6,1001,203.0.113.10:20002,0.0.0.0:7302,1,u5eed,c203.0.113.20:5000/203.0.113.10:20003/c4\0"
        );
        let value = text.trim_end_matches('\0').strip_prefix("GCB_INHERITED=").unwrap();
        assert_eq!(parse(value), entries());
        let mut small = Buf::<20> { bytes: [0; 20], len: 0, overflow: false };
        assert!(!render(&entries(), &mut small), "overflow is reported");
    }

    #[test]
    fn parse_skips_malformed_entries() {
        let v = "x,1,-,0.0.0.0:1,0;3,1000,-,0.0.0.0:7,1f;;5,6,-,0.0.0.0:1;7,8,-,0.0.0.0:1,0,9;-1,2,-,0.0.0.0:1,0;9,8,-,0.0.0.0:1,0,ux;10,8,-,0.0.0.0:1,0,u1,2;11,8,-,0.0.0.0:1,0,u1,c1.2.3.4:5/1.2.3.4:6;12,8,-,0.0.0.0:1,0,u1,c1.2.3.4:5/1.2.3.4:6/1/2;13,8,-,0.0.0.0:1,0,u1,c1.2.3.4:5/1.2.3.4:6/1,x";
        let got = parse(v);
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].fd, got[0].backlog, got[0].udp_token), (3, 0x1f, None));
        let udp = parse("9,8,-,0.0.0.0:1,0,uff");
        assert_eq!(udp[0].udp_token, Some(0xff), "a UDP entry");
        let bad_nonces = "1,-1,-,0.0.0.0:1,0,n00;2,-1,-,0.0.0.0:1,0,n0000000000000000000000zz;3,-1,-,0.0.0.0:1,0,n000000000000000000000000,x";
        assert!(parse(bad_nonces).is_empty());
        let dpf = parse("7,-1,100.0.0.1:40000,0.0.0.0:7000,0,n0102030405060708090a0b0c");
        assert_eq!(dpf[0].nonce, Some([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]), "a standard gateway's forward");
    }
}
