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
//! Pipe size: every pipe starts at the kernel's default (64 KiB), which costs
//! nothing for the many quiet relays of a pool. A direction that fills its pipe
//! in one splice after it has already carried [`BULK_AFTER`] bytes is a bulk
//! transfer; its pipe grows to [`BULK_PIPE`], which cuts the broker's splice
//! calls, and its CPU per gigabyte, by about a third. At most
//! [`MAX_BULK_PIPES`] pipes are grown at once, so a thousand busy relays cannot
//! pin gigabytes of pipe pages or exhaust the user's pipe quota
//! (`fs.pipe-user-pages-soft`), past which the kernel would shrink new pipes.
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
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use mio::net::TcpStream;
use mio::Token;
use nix::errno::Errno;
use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};

/// Side 0 is the connector (GCB or regular), side 1 the listener.
pub const SIDES: [&str; 2] = ["connector", "listener"];
/// A new pipe's capacity (the kernel's default).
const DEFAULT_PIPE: usize = 64 * 1024;
/// The capacity a bulk direction's pipe grows to (the default
/// `fs.pipe-max-size`, so no privilege is needed).
pub const BULK_PIPE: usize = 1024 * 1024;
/// Bytes a direction carries before it may count as bulk.
pub const BULK_AFTER: u64 = 4 * 1024 * 1024;
/// Grown pipes in the whole broker at most (64 MiB of pipe buffers).
pub const MAX_BULK_PIPES: usize = 64;
/// Grown pipes now; the broker has one event loop, the atomic only makes
/// the static safe.
static BULK_PIPES: AtomicUsize = AtomicUsize::new(0);

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
    /// The pipe's capacity: what one splice asks for.
    capacity: usize,
    growth: Growth,
}

/// Whether a direction's pipe was grown for bulk transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Growth {
    NotYet,
    /// Grown, and counted in [`BULK_PIPES`].
    Grown,
    /// The kernel refused; not tried again.
    Refused,
}

impl Drop for Direction {
    fn drop(&mut self) {
        if self.growth == Growth::Grown {
            BULK_PIPES.fetch_sub(1, Ordering::Relaxed);
        }
    }
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
            capacity: DEFAULT_PIPE,
            growth: Growth::NotYet,
        })
    }

    /// Grows the pipe of a direction that has shown itself to be bulk, if the
    /// broker-wide cap allows; a refusal (the user's pipe quota) keeps the
    /// default size and is not retried.
    fn grow_if_bulk(&mut self, just_read: usize) {
        if self.growth != Growth::NotYet || just_read < DEFAULT_PIPE || self.bytes < BULK_AFTER {
            return;
        }
        if BULK_PIPES.fetch_add(1, Ordering::Relaxed) >= MAX_BULK_PIPES {
            BULK_PIPES.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        match fcntl(self.pipe_w.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(BULK_PIPE as i32)) {
            Ok(size) if size as usize > DEFAULT_PIPE => {
                self.capacity = size as usize;
                self.growth = Growth::Grown;
            }
            _ => {
                BULK_PIPES.fetch_sub(1, Ordering::Relaxed);
                self.growth = Growth::Refused;
            }
        }
    }
}

/// Pipes grown for bulk relays right now.
#[cfg(test)]
pub fn bulk_pipes() -> usize {
    BULK_PIPES.load(Ordering::Relaxed)
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

    /// Whether a writable edge on the socket registered under `token` can move
    /// anything: only a direction into it that holds bytes or an EOF to pass
    /// on waits for room. Every other writable edge (each socket's first one,
    /// right after pairing, and one after every send that drained its buffer)
    /// would cost a pump run of empty splices.
    pub fn waits_for_room(&self, token: Token) -> bool {
        let Some(side) = self.tokens.iter().position(|t| *t == token) else {
            return true;
        };
        let into = &self.dirs[1 - side];
        into.held > 0 || (into.eof && !into.shut)
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
            match splice(src.as_fd(), None, d.pipe_w.as_fd(), None, d.capacity, flags) {
                Ok(0) => {
                    d.eof = true;
                    moved = true;
                }
                Ok(n) => {
                    d.held += n;
                    moved = true;
                    d.grow_if_bulk(n);
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
