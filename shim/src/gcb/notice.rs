//! The connector's end of `ConnectFailed`: while a TCP connect waits for a
//! reversed connection, the socket its `Connect` went out on stays open, and
//! the broker says there when the listener will not dial (it did not answer
//! `ReverseConnect`: killed with its registration still standing). The
//! connector acknowledges, so the broker stops retransmitting, and fails the
//! `connect` at once instead of at its own timeout.

use libc::c_int;
use proto::gcb::{ErrorCode, Message, Token};

use crate::client::exchange::{send_datagram, DATAGRAM_MAX};
use crate::client::sys::Errno;
use crate::client::seal;
use crate::real;

/// The errno of a `ConnectFailed`: a listener that never answered the broker
/// is a connect that timed out; any other refusal is a refused connect.
pub fn refusal_errno(code: ErrorCode) -> Errno {
    match code {
        ErrorCode::Timeout => libc::ETIMEDOUT,
        _ => libc::ECONNREFUSED,
    }
}

/// Reads every datagram waiting on the non-blocking `fd`; the error code of a
/// `ConnectFailed` for `token`, acknowledged, if one was among them. Anything
/// else (a late duplicate of the decision, a forged or foreign datagram) is
/// dropped.
pub fn take(fd: c_int, token: Token) -> Option<ErrorCode> {
    let mut buf = [0u8; DATAGRAM_MAX];
    let mut found = None;
    // Bounded: a flood cannot keep the connector here.
    for _ in 0..16 {
        // SAFETY: a buffer of the length given.
        let n = unsafe { real::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        let Ok(n) = usize::try_from(n) else { break };
        if let Some((id, code)) = failed(&buf[..n], token) {
            if let Ok(ack) = seal::gcb_encode(&Message::Ack, id) {
                let _ = send_datagram(fd, &ack);
            }
            found = Some(code);
        }
    }
    found
}

/// The request id and code of `datagram` if it is an authentic
/// `ConnectFailed` for `token`.
fn failed(datagram: &[u8], token: Token) -> Option<(u64, ErrorCode)> {
    match seal::gcb_decode(datagram) {
        Ok((h, Message::ConnectFailed { token: t, code })) if t == token => Some((h.request_id, code)),
        other => {
            log!(Debug, "datagram on the Connect socket dropped: {other:?}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::sys;
    use std::net::{Ipv4Addr, SocketAddrV4};
    use std::time::{Duration, Instant};

    /// A pair of connected UDP sockets on loopback: the broker's and the
    /// connector's.
    fn pair() -> (sys::Sock, sys::Sock) {
        let broker = sys::socket(libc::SOCK_DGRAM, true, true).unwrap();
        sys::bind(broker.raw(), SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).unwrap();
        let (conn, at) = crate::client::exchange::open(sys::local_addr(broker.raw()).unwrap()).unwrap();
        sys::connect(broker.raw(), at, Instant::now()).unwrap();
        (broker, conn)
    }

    #[test]
    fn only_this_tokens_notice_counts_and_it_is_acknowledged() {
        let (broker, conn) = pair();
        assert_eq!(take(conn.raw(), Token(5)), None, "nothing waiting");
        let send = |m: &Message, id| send_datagram(broker.raw(), &seal::gcb_encode(m, id).unwrap()).unwrap();
        send(&Message::ConnectFailed { token: Token(4), code: ErrorCode::NotRegistered }, 1);
        send(&Message::Ack, 2);
        let _ = send_datagram(broker.raw(), b"not gcb");
        assert_eq!(take(conn.raw(), Token(5)), None, "another token, a reply, noise");
        send(&Message::ConnectFailed { token: Token(5), code: ErrorCode::NotRegistered }, 3);
        assert_eq!(take(conn.raw(), Token(5)), Some(ErrorCode::NotRegistered));
        sys::wait_fd(broker.raw(), libc::POLLIN, Instant::now() + Duration::from_secs(5)).unwrap();
        let mut buf = [0u8; DATAGRAM_MAX];
        let n = unsafe { real::recv(broker.raw(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let (h, m) = seal::gcb_decode(&buf[..n as usize]).unwrap();
        assert_eq!((h.request_id, m), (3, Message::Ack), "acknowledged with the notice's id");
    }
}
