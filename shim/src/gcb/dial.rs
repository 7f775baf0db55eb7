//! The TCP legs of brokered connections and their preambles (proto `stream`).
//!
//! Listener side, for a [`Record`](super::doorbell::Record): reversal dials the
//! connector and sends `StreamHello{token, Listener}`; relay dials the broker's
//! rendezvous, sends the same, and waits for `StreamPeer`. Connector side: relay
//! connects the application's own socket to the rendezvous (`StreamHello{token,
//! Connector}`, then `StreamPeer`); reversal accepts on the temporary listener and
//! checks the hello's token. Preambles are exchanged here in full, so once a
//! connection reaches the application its byte stream is the application's alone.
//!
//! Every step is bounded by [`DIAL_TIMEOUT`] or [`PAIR_TIMEOUT`]; failures come
//! back as the errno the application's call will report.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use libc::c_int;
use proto::gcb::{Frame, Role, StreamHello, StreamPeer, Token};

use super::doorbell::{Dial, Record};
use super::family::Family;
use super::sys::{self, Errno, Sock};
use crate::real;

/// For a TCP connect to a connector or the broker, and for sending a preamble.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// For the other side of a brokered connection to turn up: the broker sends
/// `StreamPeer` once both halves have arrived, and a reversed connection comes
/// once the listening application accepts it (at once when idle; a busy server
/// with a full accept queue takes the kernel's SYN retries, 1, 3, 7, 15 s).
/// A connector whose socket has `SO_SNDTIMEO` is bounded by that instead, as
/// the kernel bounds its blocking connects.
pub const PAIR_TIMEOUT: Duration = Duration::from_secs(20);

/// Dials for `record` (listener side). Returns the connected socket, of the
/// listener's `family`, non-blocking if `nonblocking` and close-on-exec if
/// `cloexec`, with the peer to report.
pub fn for_listener(record: &Record, family: Family, cloexec: bool, nonblocking: bool) -> Result<(Sock, SocketAddrV4), Errno> {
    let start = Instant::now();
    let s = sys::socket_of(family, libc::SOCK_STREAM, cloexec, true)?;
    let to = match record.dial {
        Dial::Reverse { connector } => connector,
        Dial::Relay { broker } => broker,
    };
    sys::ack_with_first_data(s.raw());
    sys::connect_start(s.raw(), family, to)?;
    // The hello goes as soon as the handshake is over (its send waits for
    // that), carrying the handshake's last ACK.
    send_hello(s.raw(), record, start)?;
    preamble_rest(s, record, start, nonblocking)
}

/// [`for_listener`] for a doorbell's record: the connection the AEH dialed
/// ahead for it (`predial`) if there is one and its handshake succeeded, else a
/// fresh one. Close-on-exec, at whatever number: the caller puts it on the
/// doorbell's fd.
pub fn for_doorbell(record: &Record, family: Family, nonblocking: bool) -> Result<(Sock, SocketAddrV4), Errno> {
    if let Some(s) = super::predial::take(record.token) {
        let start = Instant::now();
        // A failed handshake shows here, before anything was said on it.
        match send_hello(s.raw(), record, start) {
            Ok(()) => return preamble_rest(s, record, start, nonblocking),
            Err(e) => log!(Debug, "the connection dialed ahead for token {} failed ({}); dialing again", record.token, std::io::Error::from_raw_os_error(e)),
        }
    }
    for_listener(record, family, true, nonblocking)
}

/// The listener's `StreamHello` on `fd`, connected or still connecting.
fn send_hello(fd: c_int, record: &Record, start: Instant) -> Result<(), Errno> {
    let hello = StreamHello { token: record.token, role: Role::Listener }.to_bytes();
    sys::send_all(fd, &hello, start + DIAL_TIMEOUT)
}

/// The rest of the listener's preamble on `s` after its hello: for a relay the
/// broker's `StreamPeer`. `s`, a non-blocking socket the shim made, is then
/// blocking unless `nonblocking`.
fn preamble_rest(s: Sock, record: &Record, start: Instant, nonblocking: bool) -> Result<(Sock, SocketAddrV4), Errno> {
    let peer = match record.dial {
        Dial::Reverse { .. } => record.peer,
        Dial::Relay { .. } => read_peer(s.raw(), start + PAIR_TIMEOUT)?,
    };
    if !nonblocking {
        // Made with SOCK_NONBLOCK and no other status flag: no F_GETFL needed.
        sys::set_fl(s.raw(), 0)?;
    }
    Ok((s, peer))
}

/// Reads the broker's `StreamPeer`: the original peer once paired.
fn read_peer(fd: c_int, deadline: Instant) -> Result<SocketAddrV4, Errno> {
    let mut buf = [0u8; StreamPeer::LEN];
    sys::recv_exact(fd, &mut buf, deadline)?;
    match StreamPeer::decode(&buf) {
        Ok(StreamPeer::Paired { peer }) => Ok(peer),
        Ok(StreamPeer::Rejected { code }) => {
            log!(Debug, "the broker rejected a rendezvous: {code:?}");
            Err(libc::ECONNREFUSED)
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
    sys::connect_start(fd, super::family::of(fd), via)?;
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
                return Err(libc::ECONNREFUSED);
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
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn listening() -> (Sock, SocketAddrV4) {
        let l = sys::socket(libc::SOCK_STREAM, true, true).unwrap();
        sys::bind(l.raw(), SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).unwrap();
        assert_eq!(unsafe { real::listen(l.raw(), 8) }, 0);
        let at = sys::local_addr(l.raw()).unwrap();
        (l, at)
    }

    #[test]
    fn reversal_on_loopback_checks_the_token() {
        let (tmp, at) = listening();
        let peer: SocketAddrV4 = "198.51.100.10:4000".parse().unwrap();
        let record = |token| Record { secret: 1, token: Token(token), dial: Dial::Reverse { connector: at }, peer, proxy: peer };
        // A wrong token first: dropped, then the right one is taken.
        let (_stray, _) = for_listener(&record(1), Family::V4, true, true).unwrap();
        let (dialed, reported) = for_listener(&record(2), Family::Mapped, true, false).unwrap();
        assert_eq!(reported, peer);
        let got = accept_reversed(tmp.raw(), None, Token(2), Instant::now() + PAIR_TIMEOUT, false, DIAL_TIMEOUT).unwrap();
        assert!(!sys::is_nonblocking(got.raw()), "blocking as asked");
        assert_eq!(sys::peer_addr(got.raw()).unwrap(), sys::local_addr(dialed.raw()).unwrap());
        assert!(!sys::is_nonblocking(dialed.raw()), "handed over blocking");
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
        let record = Record { secret: 1, token: Token(7), dial: Dial::Relay { broker: at }, peer, proxy: peer };
        let (_s, reported) = for_listener(&record, Family::V4, true, true).unwrap();
        assert!(sys::is_nonblocking(_s.raw()), "non-blocking as asked");
        assert_eq!(reported, peer);
        let app = sys::socket(libc::SOCK_STREAM, true, false).unwrap();
        assert_eq!(relay(app.raw(), at, Token(7), Instant::now() + PAIR_TIMEOUT), Err(libc::ECONNREFUSED));
        assert!(!sys::is_nonblocking(app.raw()), "flags restored");
        broker.join().unwrap();
    }
}
