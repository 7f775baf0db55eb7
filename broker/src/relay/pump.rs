//! One relayed TCP connection and its data pump (paper 4.2.2, "TCP relay
//! rule": a mapping between two TCP sockets).
//!
//! Bytes move with `splice(2)` through one pipe per direction, socket →
//! pipe → socket, so they never enter user space. Both sockets are
//! non-blocking and registered edge-triggered for reading and writing; the
//! pump runs on any event of either socket and keeps moving until nothing
//! moves any more. Ending only on "nothing moved" is what makes edge
//! triggering safe:
//! * a read that fails with EAGAIN while the pipe holds data may mean the
//!   pipe is full (a pipe fills by pages, not bytes, so its byte count does
//!   not tell); draining it then counts as progress and the read is retried;
//! * a direction stops only when its source is empty (a readable edge will
//!   come) or its destination is full (a writable edge will come).
//!
//! Backpressure follows: a full destination leaves the pipe full, which
//! stops reads from the source, whose kernel buffer fills, whose TCP window
//! closes towards the sender.
//!
//! Half-close: EOF from one side is passed on as `shutdown(SHUT_WR)` to the
//! other once the pipe is drained; the other direction keeps flowing. The
//! relay is finished when both directions have passed their EOF. Any error
//! (a reset, EPIPE) fails the relay; the caller closes both sides and aborts
//! the healthy one with a reset, so neither end mistakes an abort for a
//! clean end of stream. (Rust's runtime ignores SIGPIPE, so a splice into a
//! closed socket returns EPIPE instead of killing the daemon.)

use std::io;
use std::net::{Shutdown, SocketAddrV4};
use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use mio::net::TcpStream;
use mio::Token;
use nix::errno::Errno;
use nix::fcntl::{splice, OFlag, SpliceFFlags};

/// Side 0 is the connector (GCB or regular), side 1 the listener.
pub const SIDES: [&str; 2] = ["connector", "listener"];
/// Bytes asked of one splice: a default pipe's capacity.
const SPLICE_LEN: usize = 64 * 1024;

/// How a pump run ended.
#[derive(Debug)]
pub enum Pumped {
    /// Nothing can move until the next event.
    Blocked,
    /// The budget ran out with work left: run again without waiting.
    Budget,
    /// Both directions passed their EOF: close the relay.
    Finished,
    /// A socket failed; `side` is the one that failed.
    Failed { side: usize, error: io::Error },
}

/// One direction: `streams[i]` → pipe → `streams[1 - i]`.
#[derive(Debug)]
struct Direction {
    pipe_r: OwnedFd,
    pipe_w: OwnedFd,
    /// Bytes in the pipe.
    held: usize,
    /// The source sent EOF.
    eof: bool,
    /// The EOF was passed on to the destination.
    shut: bool,
    /// Bytes delivered to the destination.
    bytes: u64,
}

impl Direction {
    fn new() -> io::Result<Self> {
        let (pipe_r, pipe_w) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        Ok(Direction {
            pipe_r,
            pipe_w,
            held: 0,
            eof: false,
            shut: false,
            bytes: 0,
        })
    }
}

#[derive(Debug)]
pub struct Relay {
    pub streams: [TcpStream; 2],
    /// The mio tokens the streams are registered under.
    pub tokens: [Token; 2],
    /// Each side's address as seen by the broker.
    pub addrs: [SocketAddrV4; 2],
    /// The listener's proxy address the connection was made to.
    pub proxy: SocketAddrV4,
    pub started: Instant,
    dirs: [Direction; 2],
}

impl Relay {
    /// Wraps the two connected sockets; fails only if the pipes cannot be
    /// made (out of file descriptors).
    pub fn new(
        streams: [TcpStream; 2],
        addrs: [SocketAddrV4; 2],
        proxy: SocketAddrV4,
        now: Instant,
    ) -> io::Result<Relay> {
        for s in &streams {
            // Small writes are the endpoints' business; the relay must not
            // add Nagle's delay on top of theirs.
            s.set_nodelay(true)?;
        }
        Ok(Relay {
            streams,
            tokens: [Token(usize::MAX); 2],
            addrs,
            proxy,
            started: now,
            dirs: [Direction::new()?, Direction::new()?],
        })
    }

    /// Bytes delivered: connector → listener, listener → connector.
    pub fn bytes(&self) -> [u64; 2] {
        [self.dirs[0].bytes, self.dirs[1].bytes]
    }

    /// Moves bytes until nothing moves, or `budget` rounds have moved
    /// something (so one busy relay cannot starve the event loop).
    pub fn pump(&mut self, budget: usize) -> Pumped {
        for _ in 0..budget {
            let mut moved = false;
            for i in 0..2 {
                match self.step(i) {
                    Ok(m) => moved |= m,
                    Err((side, error)) => return Pumped::Failed { side, error },
                }
            }
            if self.dirs.iter().all(|d| d.shut) {
                return Pumped::Finished;
            }
            if !moved {
                return Pumped::Blocked;
            }
        }
        Pumped::Budget
    }

    /// One read and one write attempt in direction `i`: whether anything
    /// moved, or the failing side and its error.
    fn step(&mut self, i: usize) -> Result<bool, (usize, io::Error)> {
        let (src, dst) = (&self.streams[i], &self.streams[1 - i]);
        let d = &mut self.dirs[i];
        let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
        let mut moved = false;
        if !d.eof {
            match splice(src.as_fd(), None, d.pipe_w.as_fd(), None, SPLICE_LEN, flags) {
                Ok(0) => {
                    d.eof = true;
                    moved = true;
                }
                Ok(n) => {
                    d.held += n;
                    moved = true;
                }
                Err(Errno::EAGAIN | Errno::EINTR) => {}
                Err(e) => return Err((i, e.into())),
            }
        }
        if d.held > 0 {
            match splice(d.pipe_r.as_fd(), None, dst.as_fd(), None, d.held, flags) {
                Ok(n) => {
                    d.held -= n;
                    d.bytes += n as u64;
                    moved |= n > 0;
                }
                Err(Errno::EAGAIN | Errno::EINTR) => {}
                Err(e) => return Err((1 - i, e.into())),
            }
        }
        if d.eof && d.held == 0 && !d.shut {
            d.shut = true;
            moved = true;
            match dst.shutdown(Shutdown::Write) {
                Ok(()) => {}
                // The destination is already gone entirely; the other
                // direction will report how.
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                Err(e) => return Err((1 - i, e)),
            }
        }
        Ok(moved)
    }
}

#[cfg(test)]
#[path = "pump_tests.rs"]
mod tests;
