//! The connector's TCP legs of brokered connections and their preambles
//! (proto `stream`), for a blocking `connect`: relay connects the
//! application's own socket to the rendezvous (`StreamHello{token,
//! Connector}`, then `StreamPeer`); reversal accepts on the temporary listener
//! and checks the hello's token. Preambles are exchanged here in full, so once a
//! connection reaches the application its byte stream is the application's
//! alone. The listener's legs are the responder's (`serve`); a non-blocking
//! connect's are `connecting`'s.
//!
//! Every step is bounded by [`DIAL_TIMEOUT`] or [`PAIR_TIMEOUT`]; failures come
//! back as the errno the application's call will report.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use libc::c_int;
use proto::gcb::{Frame, Role, StreamHello, StreamPeer, Token};

use crate::client::sys::{self, Errno, Sock};
use crate::real;

/// For a TCP connect to a connector or the broker, and for sending a preamble.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// For the other side of a brokered connection to turn up: the broker sends
/// `StreamPeer` once both halves have arrived, and a reversed connection comes
/// as soon as the listener's responder dials (a round trip after the broker's
/// command; the broker says so with `ConnectFailed` when the listener does not
/// answer). A connector whose socket has `SO_SNDTIMEO` is bounded by that
/// instead, as the kernel bounds its blocking connects.
pub const PAIR_TIMEOUT: Duration = Duration::from_secs(20);

/// Reads the broker's `StreamPeer`: the original peer once paired.
fn read_peer(fd: c_int, deadline: Instant) -> Result<SocketAddrV4, Errno> {
    let mut buf = [0u8; StreamPeer::LEN];
    sys::recv_exact(fd, &mut buf, deadline)?;
    match StreamPeer::decode(&buf) {
        Ok(StreamPeer::Paired { peer }) => Ok(peer),
        Ok(StreamPeer::Rejected { code }) => {
            log!(Debug, "the broker rejected a rendezvous: {code:?}");
            Err(super::notice::refusal_errno(code))
        }
        Err(e) => {
            log!(Warn, "the broker's rendezvous answered something else ({e:?})");
            Err(libc::EPROTO)
        }
    }
}

/// Connector side of `Relay`: connects the application's socket `fd` to the
/// rendezvous `via` and waits to be paired. `fd`'s file status flags are as
/// they were afterwards, whatever the outcome.
pub fn relay(fd: c_int, via: SocketAddrV4, token: Token, deadline: Instant) -> Result<(), Errno> {
    let start = Instant::now();
    let _nb = sys::NonBlocking::new(fd)?;
    // The hello carries the handshake's last ACK, so the rendezvous wakes once;
    // the option is the application's socket's, so it is cleared again.
    sys::ack_with_first_data(fd);
    sys::connect_start(fd, crate::client::family::of(fd), via)?;
    let hello = StreamHello { token, role: Role::Connector }.to_bytes();
    let sent = sys::send_all(fd, &hello, deadline.min(start + DIAL_TIMEOUT));
    let _ = sys::set_int_opt(fd, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, 0);
    sent?;
    read_peer(fd, deadline).map(drop)
}

/// Connector side of `Reversal`: waits on the temporary listener `tmp` for the
/// listener's connection bearing `token`, non-blocking if `nonblocking`. An
/// accepted connection gets `hello_wait` to say its hello.
/// Connections with another token (a stray, or a late duplicate of an earlier
/// attempt) are closed. A `ConnectFailed` for `token` on `notices` (the socket
/// the `Connect` went out on) ends the wait with ECONNREFUSED.
pub fn accept_reversed(tmp: c_int, notices: Option<c_int>, token: Token, deadline: Instant, nonblocking: bool, hello_wait: Duration) -> Result<Sock, Errno> {
    loop {
        let mut fds = [libc::pollfd { fd: tmp, events: libc::POLLIN, revents: 0 }, libc::pollfd { fd: notices.unwrap_or(-1), events: libc::POLLIN, revents: 0 }];
        sys::wait_fds(&mut fds, deadline)?;
        if fds[1].revents != 0 {
            if let Some(code) = notices.and_then(|fd| super::notice::take(fd, token)) {
                log!(Debug, "the broker says the listener will not dial: {code:?}");
                return Err(super::notice::refusal_errno(code));
            }
        }
        if fds[0].revents == 0 {
            continue;
        }
        let flags = if nonblocking { libc::SOCK_NONBLOCK } else { 0 } | libc::SOCK_CLOEXEC;
        // SAFETY: no address wanted.
        let c = unsafe { real::accept4(tmp, std::ptr::null_mut(), std::ptr::null_mut(), flags) };
        if c < 0 {
            continue;
        }
        let c = Sock::from_raw(c);
        let mut buf = [0u8; StreamHello::LEN];
        let hello_by = deadline.min(Instant::now() + hello_wait);
        match sys::recv_exact(c.raw(), &mut buf, hello_by).map(|()| StreamHello::decode(&buf)) {
            Ok(Ok(StreamHello { token: t, role: Role::Listener })) if t == token => return Ok(c),
            other => log!(Debug, "reversed connection dropped: want token {token}, got {other:?}"),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn listening() -> (Sock, SocketAddrV4) {
        let l = sys::socket(libc::SOCK_STREAM, true, true).unwrap();
        sys::bind(l.raw(), SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).unwrap();
        assert_eq!(unsafe { real::listen(l.raw(), 8) }, 0);
        let at = sys::local_addr(l.raw()).unwrap();
        (l, at)
    }

    /// A listener's side of a reversal, as the responder dials it: connect,
    /// then the hello.
    pub(crate) fn dial_hello(to: SocketAddrV4, token: Token) -> Sock {
        let s = sys::socket(libc::SOCK_STREAM, true, true).unwrap();
        sys::connect(s.raw(), to, Instant::now() + DIAL_TIMEOUT).unwrap();
        let hello = StreamHello { token, role: Role::Listener }.to_bytes();
        sys::send_all(s.raw(), &hello, Instant::now() + DIAL_TIMEOUT).unwrap();
        s
    }

    #[test]
    fn reversal_on_loopback_checks_the_token() {
        let (tmp, at) = listening();
        // A wrong token first: dropped, then the right one is taken.
        let _stray = dial_hello(at, Token(1));
        let dialed = dial_hello(at, Token(2));
        let got = accept_reversed(tmp.raw(), None, Token(2), Instant::now() + PAIR_TIMEOUT, false, DIAL_TIMEOUT).unwrap();
        assert!(!sys::is_nonblocking(got.raw()), "blocking as asked");
        assert_eq!(sys::peer_addr(got.raw()).unwrap(), sys::local_addr(dialed.raw()).unwrap());
    }

    #[test]
    fn relay_reads_the_peer_and_rejections() {
        let (rv, at) = listening();
        let peer: SocketAddrV4 = "198.51.100.10:4000".parse().unwrap();
        let broker = std::thread::spawn(move || {
            for answer in [StreamPeer::Paired { peer }, StreamPeer::Rejected { code: proto::gcb::ErrorCode::UnknownToken }] {
                sys::wait_fd(rv.raw(), libc::POLLIN, Instant::now() + Duration::from_secs(5)).unwrap();
                let c = Sock::from_raw(unsafe { real::accept(rv.raw(), std::ptr::null_mut(), std::ptr::null_mut()) });
                let mut hello = [0u8; 16];
                sys::recv_exact(c.raw(), &mut hello, Instant::now() + Duration::from_secs(5)).unwrap();
                assert_eq!(StreamHello::decode(&hello).unwrap().token, Token(7));
                sys::send_all(c.raw(), &answer.to_bytes(), Instant::now() + Duration::from_secs(5)).unwrap();
            }
        });
        let app = sys::socket(libc::SOCK_STREAM, true, false).unwrap();
        assert_eq!(relay(app.raw(), at, Token(7), Instant::now() + PAIR_TIMEOUT), Ok(()));
        let app = sys::socket(libc::SOCK_STREAM, true, false).unwrap();
        assert_eq!(relay(app.raw(), at, Token(7), Instant::now() + PAIR_TIMEOUT), Err(libc::ECONNREFUSED));
        assert!(!sys::is_nonblocking(app.raw()), "flags restored");
        broker.join().unwrap();
    }
}
