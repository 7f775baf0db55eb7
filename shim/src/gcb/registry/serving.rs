//! The brokered connections the responder is making for the listeners
//! (`serve`, `serve_punch`), as the registry holds them: the broker's
//! request ([`Job`]), each dial's stage on its internal socket, and each
//! punch's session. Plain data and its bookkeeping; `serve` and
//! `serve_punch` drive them.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use libc::c_int;
use proto::gcb::{Frame, StreamPeer, Token};

use crate::gcb::punch::Session;
use crate::gcb::registration::ListenerId;

/// For the TCP handshake to the connector or the broker, and the hello.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// For the broker's `StreamPeer` once both halves of a relay have arrived; the
/// broker itself gives a token 10 s.
pub const PAIR_TIMEOUT: Duration = Duration::from_secs(12);

/// Whom the listener dials for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dial {
    /// `ReverseConnect`: the connector's hidden listener.
    Reverse { connector: SocketAddrV4 },
    /// `RelayConnect`: the broker's rendezvous port.
    Relay { broker: SocketAddrV4 },
    /// `PunchConnect`: a hole punch met at the broker's rendezvous port
    /// (`serve_punch`); for a standby connection (`standby`), held until
    /// the connector claims it.
    Punch { broker: SocketAddrV4, standby: bool },
}

/// One connection the broker asked listener `listener` for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    pub listener: ListenerId,
    pub token: Token,
    pub dial: Dial,
    /// The original peer, for the accepted socket's `getpeername`.
    pub peer: SocketAddrV4,
    pub proxy: SocketAddrV4,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// The handshake is under way; the hello goes once it is over.
    Connecting,
    /// Relay: hello sent, `StreamPeer` being read.
    Pairing { buf: [u8; StreamPeer::LEN], have: usize },
}

/// A dial in progress (module docs).
#[derive(Debug)]
pub struct Serving {
    pub job: Job,
    /// Internal, non-blocking, close-on-exec.
    pub fd: c_int,
    pub(crate) stage: Stage,
    pub deadline: Instant,
}

impl Serving {
    /// The events the responder waits for on it.
    pub fn events(&self) -> i16 {
        match self.stage {
            Stage::Connecting => libc::POLLOUT,
            Stage::Pairing { .. } => libc::POLLIN,
        }
    }
}

/// One punch under way for listener `job.listener`.
#[derive(Debug)]
pub struct Punching {
    pub job: Job,
    pub(crate) session: Session,
}

/// A forked child's copies of its parent's dials and punches are the
/// parent's to finish.
pub fn forget_in_child(serving: &mut Vec<Serving>, punching: &mut Vec<Punching>) {
    for s in serving.drain(..) {
        crate::internal::release(s.fd);
    }
    punching.clear();
}
