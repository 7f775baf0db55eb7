//! dpfd's event loop: one thread, one mio `Poll` over the signalfd, the UDP
//! command socket and, as dpfd grows, the TCP connects of each probe round,
//! with deadlines from [`Timers`] setting the poll timeout.
//!
//! Each turn of the loop:
//! 1. sleeps in `poll` until an event or the next deadline (or not at all if
//!    the command socket still has a backlog from the previous turn);
//! 2. handles the events: fixed tokens by name, the rest through the slab;
//! 3. ends the token batch, so slots freed in step 2 become reusable;
//! 4. fires the deadlines that are due (the periodic probe among them);
//! 5. stops if SIGTERM or SIGINT arrived.
//!
//! Nothing here blocks except `poll`, so a flood of requests, a slow probe
//! target or a reload never stalls the rest.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::Signal;
use tracing::{debug, error, info, trace, warn};

use crate::cli::DaemonArgs;
use crate::config::{self, Config, Env, Loaded};
use crate::logging::LogHandle;
use crate::net;
use crate::reload;
use crate::signals::{Request, Signals};
use crate::timers::{TimerId, Timers};
use crate::tokens::{TokenSlab, COMMAND, SIGNALS};
use crate::values::Secret;

/// Largest UDP payload; a request never comes close, but reading less would
/// silently truncate whatever arrives.
const MAX_DATAGRAM: usize = 65_536;
/// Datagrams read from the command socket per loop turn before other events
/// get their share; the rest waits for the next turn.
const COMMAND_BUDGET: usize = 1024;

/// What happened on the command socket since startup.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub received: u64,
    /// Dropped because the source is outside every private network.
    pub foreign: u64,
    /// Datagrams that are not a well-formed request (counted once the
    /// request parser lands; dropped, never fatal).
    pub malformed: u64,
    /// From a private host, but dropped: this build has no request handler.
    pub unhandled: u64,
    pub receive_errors: u64,
}

/// Event sources that get a token from the slab: the probe's TCP connects
/// will be a variant here. There are none yet, so no dynamic token can be
/// live.
enum Dynamic {}

/// Deadlines the loop acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    /// Probe the clients' management sockets, then sync the tables.
    Probe,
}

pub struct Daemon {
    poll: Poll,
    signals: Signals,
    command: UdpSocket,
    command_addr: SocketAddr,
    /// The command socket stopped at its budget and still has datagrams.
    command_backlog: bool,
    dynamic: TokenSlab<Dynamic>,
    timers: Timers<Timer>,
    /// The pending probe, rescheduled when SIGHUP changes the interval.
    probe: Option<TimerId>,
    counters: Counters,
    config: Config,
    secret: Option<Secret>,
    /// The command line and environment as parsed at startup, for re-merging
    /// with the re-read file on SIGHUP.
    args: DaemonArgs,
    env: Env,
    log: LogHandle,
    buf: Vec<u8>,
}

impl Daemon {
    /// Binds the command socket and registers the fixed sources. Errors are
    /// one line, for exit code 1.
    pub fn start(
        loaded: Loaded,
        args: DaemonArgs,
        env: Env,
        log: LogHandle,
        signals: Signals,
    ) -> Result<Daemon, String> {
        let config = loaded.config;
        let mut command = UdpSocket::bind(config.listen)
            .map_err(|e| format!("cannot bind the command port udp {}: {e}", config.listen))?;
        let command_addr = command
            .local_addr()
            .map_err(|e| format!("command socket: {e}"))?;

        let poll = Poll::new().map_err(|e| format!("cannot create the event loop: {e}"))?;
        signals
            .register(poll.registry(), SIGNALS)
            .map_err(|e| format!("cannot watch signals: {e}"))?;
        poll.registry()
            .register(&mut command, COMMAND, Interest::READABLE)
            .map_err(|e| format!("cannot watch the command socket: {e}"))?;

        info!(
            "dpfd {} started: {}",
            env!("CARGO_PKG_VERSION"),
            config.summary(command_addr, loaded.secret.as_ref())
        );
        Ok(Daemon {
            poll,
            signals,
            command,
            command_addr,
            command_backlog: false,
            dynamic: TokenSlab::new(),
            timers: Timers::new(),
            probe: None,
            counters: Counters::default(),
            config,
            secret: loaded.secret,
            args,
            env,
            log,
            buf: vec![0; MAX_DATAGRAM],
        })
    }

    fn probe_interval(&self) -> Duration {
        Duration::from_secs(self.config.probe_interval_s)
    }

    /// Runs until SIGTERM or SIGINT, returning the signal; an error is a
    /// failure of the loop itself (the poll call), not of any one client.
    pub fn run(&mut self) -> Result<Signal, String> {
        let mut events = Events::with_capacity(1024);
        self.probe = Some(
            self.timers
                .schedule(Instant::now() + self.probe_interval(), Timer::Probe),
        );
        loop {
            let timeout = if self.command_backlog {
                Some(Duration::ZERO)
            } else {
                self.timers.poll_timeout(Instant::now())
            };
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("event loop: {e}")),
            }

            let mut stop = None;
            let mut command_done = false;
            for event in events.iter() {
                match event.token() {
                    SIGNALS => stop = stop.or(self.on_signals()),
                    COMMAND => {
                        self.on_command();
                        command_done = true;
                    }
                    token => self.on_dynamic(token),
                }
            }
            if self.command_backlog && !command_done {
                self.on_command();
            }
            self.dynamic.end_batch();

            let now = Instant::now();
            while let Some(timer) = self.timers.pop_due(now) {
                self.on_timer(timer);
            }

            if let Some(signal) = stop {
                let c = &self.counters;
                info!(
                    "stopping on {}: requests received {}, from outside the private networks {}, \
                     malformed {}, unhandled {}",
                    signal.as_str(),
                    c.received,
                    c.foreign,
                    c.malformed,
                    c.unhandled
                );
                return Ok(signal);
            }
        }
    }

    /// Returns the stop signal if one arrived; a reload is done on the spot.
    fn on_signals(&mut self) -> Option<Signal> {
        let requests = match self.signals.drain() {
            Ok(requests) => requests,
            Err(e) => {
                // A signalfd read does not fail in practice; if it does,
                // going on without signals is better than dying on a hiccup.
                error!("reading signals: {e}");
                return None;
            }
        };
        let mut stop = None;
        for request in requests {
            match request {
                Request::Reload => self.reload(),
                Request::Stop(signal) => stop = stop.or(Some(signal)),
            }
        }
        stop
    }

    /// Drains the command socket up to the budget. Requests from outside
    /// the private networks are dropped first (DESIGN.md, Security); the
    /// rest are counted and, in this build, dropped: the request handler
    /// arrives with the `proto` crate.
    fn on_command(&mut self) {
        self.command_backlog = false;
        for _ in 0..COMMAND_BUDGET {
            match self.command.recv_from(&mut self.buf) {
                Ok((len, from)) => {
                    self.counters.received += 1;
                    if !self
                        .config
                        .private_nets
                        .iter()
                        .any(|n| n.contains(from.ip()))
                    {
                        self.counters.foreign += 1;
                        debug!("command port: dropped {len} bytes from {from}: not in a private network");
                        continue;
                    }
                    self.counters.unhandled += 1;
                    debug!("command port: dropped {len} bytes from {from}: no request handler in this build");
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Per-datagram errors (e.g. an ICMP error queued on the
                    // socket) are reported once and cleared; keep reading.
                    self.counters.receive_errors += 1;
                    debug!("command port {}: receive error: {e}", self.command_addr);
                }
            }
        }
        self.command_backlog = true;
    }

    fn on_dynamic(&mut self, token: Token) {
        match self.dynamic.get(token) {
            Some(source) => match *source {},
            // The source was closed earlier in this batch.
            None => trace!("event for closed token {}", token.0),
        }
    }

    fn on_timer(&mut self, timer: Timer) {
        match timer {
            Timer::Probe => {
                // There is no mapping table yet, hence nothing to probe.
                debug!("probe: 0 forwards");
                // The next round counts from the end of this one, so a slow
                // round never makes rounds pile up.
                let next = Instant::now() + self.probe_interval();
                self.probe = Some(self.timers.schedule(next, Timer::Probe));
            }
        }
    }

    /// SIGHUP: re-read the config file and apply what can change live.
    fn reload(&mut self) {
        let Some(path) = self.args.config.clone() else {
            info!("SIGHUP: no --config file to re-read; nothing changed");
            return;
        };
        // Interfaces may have changed since startup; a derived private
        // network follows them.
        self.env.addresses = net::local_addresses();
        let loaded = match config::load(&self.args, &self.env) {
            Ok(loaded) => loaded,
            Err(e) => {
                error!("reload failed, keeping the running configuration: {e}");
                return;
            }
        };
        for warning in &loaded.warnings {
            warn!("{warning}");
        }
        let changes = reload::diff(&self.config, &loaded.config, loaded.secret != self.secret);
        if changes.is_empty() {
            info!("reload: {}: no changes", path.display());
            return;
        }
        for c in &changes {
            if c.live {
                info!("reload: {} changed from {} to {}", c.key, c.old, c.new);
            } else {
                warn!(
                    "reload: {} changed from {} to {}, which needs a restart; still using {}",
                    c.key, c.old, c.new, c.old
                );
            }
        }
        // Log the changes before a new filter may hide info lines.
        if loaded.config.log_filter != self.config.log_filter {
            if let Err(e) = self.log.set(&loaded.config.log_filter) {
                error!("reload: {e}");
            }
        }
        let interval_changed = loaded.config.probe_interval_s != self.config.probe_interval_s;
        self.config = reload::apply(&self.config, &loaded.config);
        self.secret = loaded.secret;
        if interval_changed {
            if let Some(pending) = self.probe.take() {
                self.timers.cancel(pending);
            }
            let next = Instant::now() + self.probe_interval();
            self.probe = Some(self.timers.schedule(next, Timer::Probe));
        }
    }
}
