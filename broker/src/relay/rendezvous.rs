//! The rendezvous port: a TCP listener on the command port's IP and port
//! number where both halves of a relayed connection meet
//! (docs/gcb-client-design.md).
//!
//! An accepted connection must first say hello within [`HELLO_TIMEOUT`]:
//! `StreamHello{token, role}` (16 bytes) for a relay, or `PunchHello{token,
//! role, local}` (22 bytes) for a hole punch, told apart by their magic
//! (proto's `FirstFrameReader`). It is read never a byte past the hello,
//! so application data that follows stays in the socket for the relay. It is read at once on accept
//! (the shim's hello comes with the handshake's last ACK); only a connection
//! whose hello is not complete yet takes a slot, a timer and a registration
//! in the loop. Garbage, EOF or silence close
//! the connection and are counted. A complete hello goes to the core
//! (`engine::streams`, `engine::punch`, the latter with the connection's
//! smoothed round trip from `TCP_INFO`), with the connection parked,
//! unread and deregistered, until the core rejects it or pairs it.

use std::io::{self, Read};
use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use proto::gcb::punch::{FirstFrame, FirstFrameReader};
use proto::gcb::MAX_FRAME_LEN;
use tracing::{debug, warn};

use crate::daemon::{Daemon, Timer};
use crate::io::Dynamic;
use crate::timers::TimerId;

/// The rendezvous TCP listener's fixed token (the slab starts at 16).
pub(crate) const RENDEZVOUS: Token = Token(2);
/// How long a rendezvous connection may take to say hello. The shim sends
/// it right after connecting, so this only has to cover a slow network.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Rendezvous connections waiting to say hello at once; more are closed at
/// once, so idle connections cannot use up the broker's descriptors.
const MAX_HELLOS: usize = 1024;
/// Connections accepted per event before other sources get their turn.
pub(crate) const ACCEPT_BUDGET: usize = 64;
/// When accepting fails for want of descriptors, the next try is this much
/// later: retrying at once would spin the loop until one is freed.
pub(crate) const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// A rendezvous connection that has not said hello yet.
pub(crate) struct Hello {
    stream: TcpStream,
    addr: SocketAddrV4,
    reader: FirstFrameReader,
    serial: u64,
    timer: Option<TimerId>,
}

impl Hello {
    pub(crate) fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(&mut self.stream, token, Interest::READABLE)
    }

    pub(crate) fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        registry.deregister(&mut self.stream)
    }
}

/// What reading a hello came to: the hello, or whether the bytes were
/// garbage (rather than an early close or an error) and why.
type HelloRead = Result<FirstFrame, (bool, String)>;

/// Reads what there is of a hello from `stream` into `reader`, never a byte
/// past it; `None` while it is incomplete and the socket has nothing more.
fn read_hello(stream: &mut TcpStream, reader: &mut FirstFrameReader) -> Option<HelloRead> {
    let mut buf = [0u8; MAX_FRAME_LEN];
    loop {
        let want = reader.missing();
        match stream.read(&mut buf[..want]) {
            Ok(0) => return Some(Err((false, "closed before saying hello".to_string()))),
            Ok(n) => match reader.feed(&buf[..n]) {
                Ok((_, Some(hello))) => return Some(Ok(hello)),
                Ok((_, None)) => {}
                Err(e) => return Some(Err((true, format!("not a hello: {e}")))),
            },
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Some(Err((false, e.to_string()))),
        }
    }
}

/// Whether an accept error is about one connection (skip it) rather than
/// the process (stop accepting for now).
pub(crate) fn transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::ECONNABORTED | nix::libc::EPROTO | nix::libc::EPERM)
    ) || e.kind() == io::ErrorKind::Interrupted
}

impl Daemon {
    /// Accepts rendezvous connections, up to the budget.
    pub(crate) fn on_rendezvous(&mut self) {
        self.rendezvous_backlog = false;
        for _ in 0..ACCEPT_BUDGET {
            match self.rendezvous.accept() {
                Ok((stream, addr)) => self.on_rendezvous_conn(stream, addr),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if transient_accept_error(&e) => {}
                Err(e) => {
                    // Out of descriptors, typically. The pending connection
                    // stays queued, and no new edge will tell: try again soon.
                    let now = Instant::now();
                    if let Some(more) = self.accept_errors.hit(now) {
                        warn!("rendezvous: cannot accept: {e} ({more} more such errors)");
                    }
                    self.timers.schedule(now + ACCEPT_RETRY, Timer::Rendezvous);
                    return;
                }
            }
        }
        self.rendezvous_backlog = true;
    }

    fn on_rendezvous_conn(&mut self, mut stream: TcpStream, addr: SocketAddr) {
        let SocketAddr::V4(addr) = addr else {
            return;
        };
        // The shim sends its hello with the handshake's last ACK, so it is
        // usually here already: then the connection needs no slot, timer or
        // registration of its own.
        let mut reader = FirstFrameReader::new();
        if let Some(outcome) = read_hello(&mut stream, &mut reader) {
            debug!("rendezvous: connection from {addr}");
            self.hello_outcome(outcome, stream, addr);
            return;
        }
        if self.hellos >= MAX_HELLOS {
            let c = self.engine.count();
            c.bad_hellos += 1;
            c.bad_hellos_overflow += 1;
            debug!(
                "rendezvous: {MAX_HELLOS} connections already waiting to say hello; closing {addr}"
            );
            return;
        }
        self.next_serial += 1;
        let serial = self.next_serial;
        let hello = Hello {
            stream,
            addr,
            reader,
            serial,
            timer: None,
        };
        let token = match self.io.watch(Dynamic::Hello(hello)) {
            Ok(token) => token,
            Err(e) => {
                warn!("rendezvous: cannot watch the connection from {addr}: {e}");
                return;
            }
        };
        self.hellos += 1;
        let at = Instant::now() + HELLO_TIMEOUT;
        let timer = self.timers.schedule(at, Timer::Hello { token, serial });
        if let Some(Dynamic::Hello(h)) = self.io.slab.get_mut(token) {
            h.timer = Some(timer);
        }
        debug!("rendezvous: connection from {addr}, waiting for its hello");
    }

    /// Removes a hello connection from the loop and hands it back.
    fn drop_hello(&mut self, token: Token) -> Option<Hello> {
        let Some(Dynamic::Hello(h)) = self.io.close(token) else {
            return None;
        };
        self.hellos -= 1;
        if let Some(t) = h.timer {
            self.timers.cancel(t);
        }
        Some(h)
    }

    /// Reads what there is of the hello; acts on it once complete.
    pub(crate) fn on_hello_readable(&mut self, token: Token) {
        let Some(Dynamic::Hello(h)) = self.io.slab.get_mut(token) else {
            return;
        };
        let Some(outcome) = read_hello(&mut h.stream, &mut h.reader) else {
            return;
        };
        if let Some(h) = self.drop_hello(token) {
            self.hello_outcome(outcome, h.stream, h.addr);
        }
    }

    /// A complete hello goes to the core with its connection; anything else
    /// is counted and the connection closed.
    fn hello_outcome(&mut self, outcome: HelloRead, stream: TcpStream, addr: SocketAddrV4) {
        match outcome {
            Ok(FirstFrame::Stream(hello)) => {
                let stream = self.io.park(stream);
                self.engine.on_hello(hello, stream, addr, Instant::now());
                self.carry_out();
            }
            Ok(FirstFrame::Punch(hello)) => {
                let rtt = super::punch::smoothed_rtt(&stream);
                let stream = self.io.park(stream);
                self.engine
                    .on_punch_hello(hello, stream, addr, rtt, Instant::now());
                self.carry_out();
            }
            Err((garbage, why)) => {
                let c = self.engine.count();
                c.bad_hellos += 1;
                if garbage {
                    c.bad_hellos_garbage += 1;
                } else {
                    c.bad_hellos_closed += 1;
                }
                debug!("rendezvous: closing {addr}: {why}");
            }
        }
    }

    pub(crate) fn hello_timed_out(&mut self, token: Token, serial: u64) {
        let ours = matches!(self.io.slab.get(token), Some(Dynamic::Hello(h)) if h.serial == serial);
        if !ours {
            return;
        }
        if let Some(h) = self.drop_hello(token) {
            let c = self.engine.count();
            c.bad_hellos += 1;
            c.bad_hellos_silent += 1;
            debug!(
                "rendezvous: closing {}: no hello within {HELLO_TIMEOUT:?}",
                h.addr
            );
        }
    }
}
