//! SIGTERM, SIGINT and SIGHUP delivered as readable events in the event loop.
//!
//! The signals are blocked and read from a signalfd registered with mio, so
//! they are handled in the loop like any socket: no handler runs at an
//! arbitrary point, and nothing needs to be async-signal-safe. Blocking must
//! happen before any thread exists, because threads inherit the mask and a
//! thread without it would take the signal the default way. Child processes
//! started with `std::process::Command` get an empty mask back, so blocking
//! here does not leak into them.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use tracing::error;

/// What the daemon was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// SIGTERM or SIGINT: stop cleanly.
    Stop(Signal),
    /// SIGHUP: re-read the config file.
    Reload,
}

pub struct Signals {
    fd: SignalFd,
}

impl Signals {
    /// Blocks the handled signals in the calling thread and opens the signalfd.
    pub fn new() -> io::Result<Signals> {
        let mut set = SigSet::empty();
        for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
            set.add(signal);
        }
        set.thread_block().map_err(io::Error::from)?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(io::Error::from)?;
        Ok(Signals { fd })
    }

    pub fn register(&self, registry: &Registry, token: Token) -> io::Result<()> {
        let raw: RawFd = self.fd.as_raw_fd();
        registry.register(&mut SourceFd(&raw), token, Interest::READABLE)
    }

    /// Reads every pending signal. mio is edge-triggered, so the fd must be
    /// drained each time it is reported readable.
    pub fn drain(&mut self) -> io::Result<Vec<Request>> {
        let mut requests = Vec::new();
        while let Some(info) = self.fd.read_signal().map_err(io::Error::from)? {
            let signal = i32::try_from(info.ssi_signo)
                .ok()
                .and_then(|n| Signal::try_from(n).ok());
            match signal {
                Some(Signal::SIGHUP) => requests.push(Request::Reload),
                Some(s @ (Signal::SIGTERM | Signal::SIGINT)) => requests.push(Request::Stop(s)),
                // Only the three signals above are in the set; anything else
                // would be a kernel surprise and is ignored.
                _ => {}
            }
        }
        Ok(requests)
    }

    /// [`Signals::drain`] for the event loop: a read error is logged and
    /// reads as no signals. A signalfd read does not fail in practice; if it
    /// does, going on without signals is better than dying on a hiccup.
    pub fn pending(&mut self) -> Vec<Request> {
        self.drain().unwrap_or_else(|e| {
            error!("reading signals: {e}");
            Vec::new()
        })
    }
}

/// Runs `reload` for each SIGHUP, in order, and returns the first stop
/// signal, which the loop acts on once the turn's events are handled.
pub fn handle(requests: Vec<Request>, mut reload: impl FnMut()) -> Option<Signal> {
    let mut stop = None;
    for request in requests {
        match request {
            Request::Reload => reload(),
            Request::Stop(signal) => stop = stop.or(Some(signal)),
        }
    }
    stop
}
