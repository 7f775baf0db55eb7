//! The broker's event loop: one thread, one mio `Poll` over the signalfd, the
//! UDP command socket, the TCP rendezvous socket and the dynamic sources
//! (proxy listeners and UDP sockets, channel sockets, rendezvous
//! connections saying hello, relay sockets), around the pure core
//! ([`Engine`]), which decides everything; the loop reads and writes
//! sockets, feeds the core what arrived, and carries out what it asks
//! (`command::carry_out`).
//!
//! Each turn of the loop:
//! 1. sleeps in `poll` until an event or the next deadline, or not at all if
//!    some source stopped at its budget in the previous turn;
//! 2. handles the events: fixed tokens by name, the rest through the slab,
//!    then the sources that stopped at their budget;
//! 3. ends the token batch, so slots freed in step 2 become reusable;
//! 4. handles what is due: its own timers (the stats line, hello timeouts,
//!    accept retries), the core's deadlines (expiry of holders, pairings,
//!    UDP rules and channels; command retransmissions), `/metrics`
//!    connections;
//! 5. stops if SIGTERM or SIGINT arrived.
//!
//! Nothing here blocks except `poll`, so a flood on one socket, a slow peer
//! or a reload never stalls the rest. The I/O lives in its own modules as
//! further `impl Daemon` blocks: `command` (the command port and the
//! effects), `relay` (proxy listeners, rendezvous, relays), `udp::io`
//! (proxy and channel UDP sockets), `metrics` and `reload`.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, UdpSocket};
use mio::{Events, Interest, Token};
use nix::sys::signal::Signal;
use tracing::{debug, info, trace, warn};

use crate::cli::DaemonArgs;
use crate::config::{Env, Loaded};
use crate::engine::Engine;
use crate::io::{Dynamic, Io};
use crate::logging::LogHandle;
use crate::relay::RENDEZVOUS;
use crate::signals::Signals;
use crate::timers::Timers;
use crate::tokens::{COMMAND, SIGNALS};
use daemon_kit::command_port;
use daemon_kit::metrics::http::{self, Server};
use daemon_kit::throttle::Throttle;
use daemon_kit::turn;

/// Largest UDP payload; a command never comes close, but reading less would
/// silently truncate whatever arrives.
const MAX_DATAGRAM: usize = 65_536;
/// How often the counters go to the debug log.
const STATS_INTERVAL: Duration = Duration::from_secs(60);
/// At most one warning line per condition per this interval.
const WARN_INTERVAL: Duration = Duration::from_secs(10);
/// The open-files limit is raised to the hard limit, up to this.
const NOFILE_CAP: u64 = 1 << 20;

/// The loop's own deadlines; the core keeps its own (`Engine::next_deadline`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timer {
    /// Log the counters and schedule the next one.
    Stats,
    /// A rendezvous connection's time to say hello; `serial` tells it from
    /// a later source that got the same slab token.
    Hello { token: Token, serial: u64 },
    /// Retry accepting on a proxy listener after running out of descriptors
    /// (a late retry on a reused token is a harmless spurious event).
    Accept(Token),
    /// Retry accepting on the rendezvous socket, likewise.
    Rendezvous,
}

pub struct Daemon {
    pub(crate) engine: Engine,
    pub(crate) io: Io,
    pub(crate) signals: Signals,
    pub(crate) command: UdpSocket,
    pub(crate) command_addr: SocketAddr,
    /// The command socket stopped at its budget and still has datagrams,
    /// or errors queued.
    pub(crate) command_backlog: bool,
    /// The command socket's error queue may hold entries (see `icmp`).
    pub(crate) command_errors: bool,
    pub(crate) rendezvous: TcpListener,
    /// The rendezvous socket stopped at its accept budget.
    pub(crate) rendezvous_backlog: bool,
    /// Sources that stopped at their budget, to run again next turn.
    pub(crate) rerun: VecDeque<Token>,
    pub(crate) timers: Timers<Timer>,
    /// Accept failures (out of descriptors), throttled in the log.
    pub(crate) accept_errors: Throttle,
    /// Rendezvous connections waiting for their hello, and the serial the
    /// last one got.
    pub(crate) hellos: usize,
    pub(crate) next_serial: u64,
    /// `/metrics`, if served (`--metrics-listen`).
    pub(crate) metrics: Option<Server>,
    /// The command line and environment as parsed at startup, for re-merging
    /// with the re-read file on SIGHUP.
    pub(crate) args: DaemonArgs,
    pub(crate) env: Env,
    pub(crate) log: LogHandle,
    pub(crate) buf: Vec<u8>,
}

fn ipv4(ip: IpAddr, what: &str) -> Result<Ipv4Addr, String> {
    match ip {
        IpAddr::V4(ip) => Ok(ip),
        IpAddr::V6(_) => Err(format!(
            "{what} {ip} is IPv6; GCB proxy addresses are IPv4, so give an IPv4 address"
        )),
    }
}

impl Daemon {
    /// Binds the command and rendezvous sockets and registers the fixed
    /// sources. Errors are one line, for exit code 1.
    /// `given` is the command line and environment as parsed, kept for
    /// re-merging on SIGHUP.
    pub fn start(
        loaded: Loaded,
        given: (DaemonArgs, Env),
        log: LogHandle,
        signals: Signals,
    ) -> Result<Daemon, String> {
        let (args, env) = given;
        let config = loaded.config;
        let public_ip = ipv4(config.public_ip, "--public-ip")?;
        ipv4(config.listen.ip(), "--listen")?;
        // Proxy sockets are bound on the public IP later, one by one; find
        // out now, not at the first registration, if it is not ours. With
        // --freebind it may not be ours yet: proxy sockets are only made
        // for clients that reached the broker there, so it is by then.
        let held = std::net::UdpSocket::bind(SocketAddr::new(config.public_ip, 0));
        match (held, config.freebind) {
            (Ok(_), _) => {}
            (Err(e), false) => {
                return Err(format!(
                    "cannot bind on --public-ip {}: {e}",
                    config.public_ip
                ))
            }
            (Err(_), true) => info!(
                "--public-ip {} is not on this host yet (freebind): serving once it arrives",
                config.public_ip
            ),
        }
        let (mut command, command_addr) = command_port::bind_with(config.listen, config.freebind)?;
        // A dead client's closed socket then shows as an ICMP error (`icmp`).
        crate::icmp::errqueue::enable(&command)
            .map_err(|e| format!("cannot set IP_RECVERR on the command port: {e}"))?;
        // Same IP and port number as the command socket, TCP: see
        // docs/gcb-client-design.md, "Rendezvous on the broker".
        let mut rendezvous = match config.freebind {
            false => TcpListener::bind(command_addr),
            true => daemon_kit::freebind::tcp_listener(command_addr).map(TcpListener::from_std),
        }
        .map_err(|e| format!("cannot bind the rendezvous port tcp {command_addr}: {e}"))?;
        crate::relay::fast_open::enable(&rendezvous);

        let poll = command_port::event_loop(&signals, &mut command)?;
        poll.registry()
            .register(&mut rendezvous, RENDEZVOUS, Interest::READABLE)
            .map_err(|e| format!("cannot watch the rendezvous socket: {e}"))?;
        let metrics = http::start(config.shared.metrics_listen, poll.registry())?;

        info!(
            "gcb-broker {} started: {}",
            env!("CARGO_PKG_VERSION"),
            config.summary(command_addr, loaded.secret.as_ref())
        );
        match daemon_kit::rlimit::raise_nofile(NOFILE_CAP) {
            Ok((soft, _)) => debug!("open files limit {soft}"),
            Err(e) => warn!("cannot raise the open files limit: {e}"),
        }
        let engine = Engine::new(
            config,
            loaded.secret,
            public_ip,
            command_addr,
            Instant::now(),
        );
        Ok(Daemon {
            engine,
            io: Io::new(poll),
            signals,
            command,
            command_addr,
            command_backlog: false,
            command_errors: false,
            rendezvous,
            rendezvous_backlog: false,
            rerun: VecDeque::new(),
            timers: Timers::new(),
            accept_errors: Throttle::new(WARN_INTERVAL),
            hellos: 0,
            next_serial: 0,
            metrics,
            args,
            env,
            log,
            buf: vec![0; MAX_DATAGRAM],
        })
    }

    /// Runs until SIGTERM or SIGINT, returning the signal; an error is a
    /// failure of the loop itself (the poll call), not of any one peer.
    pub fn run(&mut self) -> Result<Signal, String> {
        let mut events = Events::with_capacity(1024);
        self.timers
            .schedule(Instant::now() + STATS_INTERVAL, Timer::Stats);
        loop {
            let busy = self.command_backlog || self.rendezvous_backlog || !self.rerun.is_empty();
            let deadline = self.next_deadline();
            if !turn::wait(&mut self.io.poll, &mut events, busy, deadline)? {
                continue;
            }
            let stop = self.on_events(&events);
            self.io.slab.end_batch();
            self.on_deadlines(Instant::now());
            if let Some(signal) = stop {
                self.stop(signal);
                return Ok(signal);
            }
        }
    }

    /// Handles one turn's events (step 2), and returns the stop signal if
    /// one came.
    fn on_events(&mut self, events: &Events) -> Option<Signal> {
        let mut stop = None;
        let (mut command, mut rendezvous) = (false, false);
        let rerun = std::mem::take(&mut self.rerun);
        for event in events.iter() {
            let token = event.token();
            if token == SIGNALS {
                stop = stop.or(self.on_signals());
            } else if token == COMMAND {
                self.on_command();
                command = true;
            } else if token == RENDEZVOUS {
                self.on_rendezvous();
                rendezvous = true;
            } else if http::owns(token) {
                self.on_metrics_event(token);
            } else if let Some(Dynamic::Relay(id)) = self.io.slab.get(token) {
                let id = *id;
                let writable_only = event.is_writable()
                    && !(event.is_readable()
                        || event.is_read_closed()
                        || event.is_write_closed()
                        || event.is_error());
                self.on_relay_event(id, token, writable_only);
            } else {
                self.on_dynamic(token);
            }
        }
        // What stopped at its budget last turn runs again without an event.
        if self.command_backlog && !command {
            self.on_command();
        }
        if self.rendezvous_backlog && !rendezvous {
            self.on_rendezvous();
        }
        for token in rerun {
            self.on_dynamic(token);
        }
        stop
    }

    /// On SIGTERM or SIGINT: one line of what the broker did, and every
    /// relayed or parked connection reset.
    fn stop(&mut self, signal: Signal) {
        let c = self.engine.counters();
        let running = self.io.relays.bytes_running();
        info!(
            "stopping on {}: command datagrams received {}, malformed {}, registrations {}, \
             relays opened {}, bytes relayed {}",
            signal.as_str(),
            c.received,
            c.malformed,
            self.engine.gauges(Instant::now()).registrations,
            c.relays_opened,
            c.bytes_closed.iter().chain(&running).sum::<u64>()
        );
        self.io.abort_relays();
    }

    /// The earliest deadline of the loop, the core and `/metrics`.
    fn next_deadline(&mut self) -> Option<Instant> {
        [
            self.timers.next_deadline(),
            self.engine.next_deadline(),
            self.metrics_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn on_dynamic(&mut self, token: Token) {
        match self.io.slab.get(token) {
            Some(Dynamic::Proxy { .. }) => self.on_proxy_ready(token),
            Some(Dynamic::Hello(_)) => self.on_hello_readable(token),
            Some(Dynamic::Punch { .. }) => self.on_punch_readable(token),
            Some(Dynamic::Relay(id)) => {
                let id = *id;
                self.pump_relay(id);
            }
            Some(Dynamic::UdpProxy { .. } | Dynamic::UdpChannel { .. }) => self.on_udp_ready(token),
            // The source was closed earlier in this batch.
            None => trace!("event for closed token {}", token.0),
        }
    }

    fn on_deadlines(&mut self, now: Instant) {
        while let Some(timer) = self.timers.pop_due(now) {
            match timer {
                Timer::Stats => {
                    self.log_stats();
                    self.timers.schedule(now + STATS_INTERVAL, Timer::Stats);
                }
                Timer::Hello { token, serial } => self.hello_timed_out(token, serial),
                Timer::Accept(token) => self.on_dynamic(token),
                Timer::Rendezvous => self.on_rendezvous(),
            }
        }
        self.engine.on_deadlines(now);
        self.carry_out();
        self.expire_metrics(now);
    }

    /// The periodic debug line: live counts and the counters that moved.
    fn log_stats(&self) {
        let g = self.engine.gauges(Instant::now());
        let line: Vec<String> = self
            .engine
            .counter_fields()
            .iter()
            .filter(|(_, v)| *v > 0)
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        debug!(
            "stats: registrations {}, relays {}, pending pairings {}; {}",
            g.registrations,
            g.relays,
            g.pending_pairings,
            line.join(", ")
        );
    }
}
