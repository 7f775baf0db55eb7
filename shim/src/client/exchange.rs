//! One request, one reply, over a connected non-blocking UDP socket, with the
//! proto [`Requester`]'s retransmissions: the blocking and bounded style of
//! exchange both clients use (GCB `Register` and `Connect`, DPF `Forward` and
//! `Query`). Generic over the message family, so GCB and DPF share the loop and
//! only pass their own codec.

use std::net::SocketAddrV4;
use std::time::Instant;

use libc::c_int;
use proto::rudp::{Requester, RetryPolicy, Timeout};
use proto::{DecodeError, EncodeError, Header};

use crate::client::family::Family;
use crate::client::sys::{self, Errno, Sock};
use crate::real;

/// Requests in flight per socket: a heartbeat, a register, spare.
pub const MAX_OUTSTANDING: usize = 8;
/// Room for any GCB or DPF datagram (the largest, a GCB heartbeat, stays under 1 KiB).
pub const DATAGRAM_MAX: usize = 2048;

/// A requester with a random first id, so ids of processes sharing a socket
/// (fork, exec) do not collide in the daemon's reply cache.
pub fn new_requester(policy: RetryPolicy) -> Requester<SocketAddrV4> {
    Requester::new(policy, sys::random_u64(), MAX_OUTSTANDING)
}

/// Sends one datagram on a connected socket; the error, if any.
pub fn send_datagram(fd: c_int, bytes: &[u8]) -> Result<(), Errno> {
    // SAFETY: a live buffer of the given length.
    let n = unsafe { real::send(fd, bytes.as_ptr().cast(), bytes.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(crate::guard::errno())
    } else {
        Ok(())
    }
}

/// Why a blocking [`exchange`] got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoAnswer {
    /// ICMP port unreachable: nothing listens on the peer's port.
    Refused,
    /// Something answered that does not speak the protocol.
    NotProtocol,
    /// Silence until the retry policy gave up.
    Timeout,
    /// Another socket error.
    Io(Errno),
}

impl NoAnswer {
    /// For log lines.
    pub fn describe(self) -> String {
        match self {
            NoAnswer::Refused => "connection refused".to_string(),
            NoAnswer::Timeout => "no answer".to_string(),
            NoAnswer::NotProtocol => "not the protocol".to_string(),
            NoAnswer::Io(e) => std::io::Error::from_raw_os_error(e).to_string(),
        }
    }
}

/// A message family's decoder: the header and the message.
pub type DecodeFn<M> = fn(&[u8]) -> Result<(Header, M), DecodeError>;

/// A message family's codec, as the exchange needs it.
pub struct Codec<M> {
    pub encode: fn(&M, u64) -> Result<Vec<u8>, EncodeError>,
    pub decode: DecodeFn<M>,
    pub is_response: fn(&M) -> bool,
}

/// One request in flight on a connected, non-blocking UDP socket, driven by
/// whoever waits on it: [`exchange`] in the calling thread, or the responder
/// for a non-blocking connect (`gcb::connecting`).
pub struct Exchange {
    req: Requester<SocketAddrV4>,
    peer: SocketAddrV4,
}

impl Exchange {
    /// Sends `msg` on `fd` to `peer`, retransmitted per `policy`.
    pub fn start<M>(fd: c_int, peer: SocketAddrV4, policy: RetryPolicy, codec: &Codec<M>, msg: &M) -> Result<Exchange, NoAnswer> {
        Exchange::start_as(fd, peer, policy, codec, msg, sys::random_u64())
    }

    /// [`start`](Self::start) with the request id `id` (random, and known to
    /// the caller beforehand: an early punch hello names it).
    pub fn start_as<M>(fd: c_int, peer: SocketAddrV4, policy: RetryPolicy, codec: &Codec<M>, msg: &M, id: u64) -> Result<Exchange, NoAnswer> {
        let mut req = Requester::new(policy, id, MAX_OUTSTANDING);
        let (_, bytes) = req.send(peer, Instant::now(), |id| (codec.encode)(msg, id)).map_err(|_| NoAnswer::Io(libc::EINVAL))?;
        send_or_refused(fd, bytes)?;
        Ok(Exchange { req, peer })
    }

    /// When [`on_timeout`](Self::on_timeout) next has work; `None` once given up.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.req.next_deadline()
    }

    /// Reads what `fd` holds: the reply, a failure, or `None` to wait on.
    pub fn on_readable<M>(&mut self, fd: c_int, codec: &Codec<M>) -> Option<Result<M, NoAnswer>> {
        let mut buf = [0u8; DATAGRAM_MAX];
        // A few stale or foreign datagrams may come first; bounded.
        for _ in 0..16 {
            // SAFETY: a live buffer of the given length.
            let n = unsafe { real::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n < 0 {
                return match crate::guard::errno() {
                    libc::ECONNREFUSED => Some(Err(NoAnswer::Refused)),
                    libc::EAGAIN | libc::EINTR => None,
                    e => Some(Err(NoAnswer::Io(e))),
                };
            }
            match (codec.decode)(&buf[..n as usize]) {
                Ok((h, m)) if (codec.is_response)(&m) && self.req.on_response(h.request_id, &self.peer, Instant::now()).is_some() => {
                    return Some(Ok(m))
                }
                Err(DecodeError::NotProtocol) => return Some(Err(NoAnswer::NotProtocol)),
                // A stale reply, or a message we cannot use: keep waiting.
                _ => {}
            }
        }
        None
    }

    /// Retransmits what is due on `fd`; `Some` once the policy gave up.
    pub fn on_timeout(&mut self, fd: c_int, now: Instant) -> Option<NoAnswer> {
        for t in self.req.poll_timeout(now) {
            match t {
                Timeout::Retransmit { bytes, .. } => {
                    if let Err(e) = send_or_refused(fd, &bytes) {
                        return Some(e);
                    }
                }
                Timeout::GaveUp { .. } => return Some(NoAnswer::Timeout),
            }
        }
        None
    }
}

/// Sends `msg` on the connected, non-blocking UDP socket `fd` and waits for the
/// reply, retransmitting per `policy`. Bounded by `policy.total`.
pub fn exchange<M>(fd: c_int, peer: SocketAddrV4, policy: RetryPolicy, codec: &Codec<M>, msg: &M) -> Result<M, NoAnswer> {
    exchange_as(fd, peer, policy, codec, msg, sys::random_u64())
}

/// [`exchange`] with the request id `id`.
pub fn exchange_as<M>(fd: c_int, peer: SocketAddrV4, policy: RetryPolicy, codec: &Codec<M>, msg: &M, id: u64) -> Result<M, NoAnswer> {
    let mut ex = Exchange::start_as(fd, peer, policy, codec, msg, id)?;
    loop {
        let Some(deadline) = ex.next_deadline() else { return Err(NoAnswer::Timeout) };
        match sys::wait_fd(fd, libc::POLLIN, deadline) {
            Ok(_) => {
                if let Some(answer) = ex.on_readable(fd, codec) {
                    return answer;
                }
            }
            Err(libc::ETIMEDOUT) => {
                if let Some(e) = ex.on_timeout(fd, Instant::now()) {
                    return Err(e);
                }
            }
            Err(e) => return Err(NoAnswer::Io(e)),
        }
    }
}

fn send_or_refused(fd: c_int, bytes: &[u8]) -> Result<(), NoAnswer> {
    match send_datagram(fd, bytes) {
        Err(libc::ECONNREFUSED) => Err(NoAnswer::Refused),
        // Anything else (a full buffer): the retransmission timer covers it.
        _ => Ok(()),
    }
}

/// Opens a non-blocking UDP socket connected to `to`; returns it and its own
/// address, which names the IP the kernel uses towards `to`.
pub fn open(to: SocketAddrV4) -> Result<(Sock, SocketAddrV4), Errno> {
    let s = sys::socket(libc::SOCK_DGRAM, true, true)?;
    sys::connect_as(s.raw(), Family::V4, to, Instant::now())?;
    let local = sys::local_addr(s.raw())?;
    Ok((s, local))
}
