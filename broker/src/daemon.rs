//! The broker's event loop: one thread, one mio `Poll` over the signalfd, the
//! UDP command socket, the TCP rendezvous socket and the dynamic sources
//! (proxy listeners, rendezvous connections saying hello, relay sockets).
//!
//! Each turn of the loop:
//! 1. sleeps in `poll` until an event or the next deadline, or not at all if
//!    some source stopped at its budget in the previous turn;
//! 2. handles the events: fixed tokens by name, the rest through the slab,
//!    then the sources that stopped at their budget;
//! 3. ends the token batch, so slots freed in step 2 become reusable;
//! 4. handles what is due: timers, registration expiry, pairing deadlines,
//!    retransmissions of commands to clients;
//! 5. stops if SIGTERM or SIGINT arrived.
//!
//! Nothing here blocks except `poll`, so a flood on one socket, a slow peer
//! or a reload never stalls the rest. The handlers live in their own
//! modules as further `impl Daemon` blocks: `command` (the command port),
//! `handlers` (the GCB requests), `relay` (proxy sockets, rendezvous,
//! relays), `udp` (proxy UDP sockets and relay rules) and `status`; this
//! struct is the state they share.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::Signal;
use proto::rudp::ReplyCache;
use proto::Endpoint;
use tracing::{debug, info, trace, warn};

use crate::async_cmd::AsyncCommands;
use crate::cli::DaemonArgs;
use crate::config::{Config, Env, Loaded};
use crate::counters::Counters;
use crate::logging::LogHandle;
use crate::metrics::{self, Metrics};
use crate::pairing::Pairings;
use crate::registry::Registry;
use crate::relay::{Hello, Relays, RENDEZVOUS};
use crate::signals::Signals;
use crate::status::Snapshots;
use crate::timers::{TimerId, Timers};
use crate::tokens::{TokenSlab, COMMAND, SIGNALS};
use crate::udp::UdpRelay;
use crate::values::Secret;
use daemon_kit::command_port;
use daemon_kit::random::{random_u64, SplitMix64};
use daemon_kit::ratelimit::SourceGate;
use daemon_kit::throttle::Throttle;

/// Largest UDP payload; a command never comes close, but reading less would
/// silently truncate whatever arrives.
const MAX_DATAGRAM: usize = 65_536;
/// How often the counters go to the debug log.
const STATS_INTERVAL: Duration = Duration::from_secs(60);
/// Sources the rate limiter tracks at once (see daemon_kit::ratelimit).
const RATE_LIMIT_SOURCES: usize = 65_536;
/// Reply cache bounds: at the default rate limit a source cannot push its
/// own entries out within the cache's time to live.
const REPLY_CACHE_ENTRIES: usize = 65_536;
const REPLY_CACHE_BYTES: usize = 16 << 20;
/// At most one warning line per condition per this interval.
const WARN_INTERVAL: Duration = Duration::from_secs(10);
/// The open-files limit is raised to the hard limit, up to this.
const NOFILE_CAP: u64 = 1 << 20;

/// Event sources that get a token from the slab.
pub(crate) enum Dynamic {
    /// The proxy TCP listener of registration `proxy`.
    Proxy {
        proxy: Endpoint,
        listener: TcpListener,
    },
    /// A rendezvous connection that has not said hello yet.
    Hello(Hello),
    /// One of the two sockets of relay number `.0`.
    Relay(u64),
    /// The proxy UDP socket of registration `proxy` (see `udp`).
    UdpProxy { proxy: Endpoint, socket: UdpSocket },
    /// A UDP channel socket at `addr` (see `udp::channels`).
    UdpChannel {
        addr: SocketAddrV4,
        socket: UdpSocket,
    },
}

/// Deadlines kept in the timer heap; registrations, pairings and commands
/// keep their own deadline indexes.
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

/// Warning lines that could flood the log, each throttled on its own.
pub(crate) struct Throttles {
    pub registrations: Throttle,
    pub relays: Throttle,
    pub accept: Throttle,
}

pub struct Daemon {
    pub(crate) poll: Poll,
    pub(crate) signals: Signals,
    pub(crate) command: UdpSocket,
    pub(crate) command_addr: SocketAddr,
    /// The command socket stopped at its budget and still has datagrams,
    /// or errors queued.
    pub(crate) command_backlog: bool,
    /// The command socket's error queue may hold entries (see `icmp`).
    pub(crate) command_errors: bool,
    pub(crate) rendezvous: TcpListener,
    /// `public_ip:command_port`: where clients meet for relays.
    pub(crate) rendezvous_addr: SocketAddrV4,
    /// The rendezvous socket stopped at its accept budget.
    pub(crate) rendezvous_backlog: bool,
    pub(crate) public_ip: Ipv4Addr,
    pub(crate) slab: TokenSlab<Dynamic>,
    /// Sources that stopped at their budget, to run again next turn.
    pub(crate) rerun: VecDeque<Token>,
    pub(crate) timers: Timers<Timer>,
    pub(crate) registry: Registry,
    pub(crate) pairings: Pairings<TcpStream>,
    pub(crate) relays: Relays,
    pub(crate) udp: UdpRelay,
    pub(crate) asyncs: AsyncCommands,
    pub(crate) replies: ReplyCache<SocketAddrV4>,
    pub(crate) gate: SourceGate<Ipv4Addr>,
    pub(crate) snapshots: Snapshots,
    pub(crate) throttles: Throttles,
    pub(crate) counters: Counters,
    pub(crate) metrics: Metrics,
    pub(crate) rng: SplitMix64,
    pub(crate) hellos: usize,
    pub(crate) next_serial: u64,
    pub(crate) started: Instant,
    pub(crate) config: Config,
    pub(crate) secret: Option<Secret>,
    /// Seals and opens datagrams; present exactly when `secret` is.
    pub(crate) auth: Option<proto::auth::Authenticator>,
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
    pub fn start(
        loaded: Loaded,
        args: DaemonArgs,
        env: Env,
        log: LogHandle,
        signals: Signals,
    ) -> Result<Daemon, String> {
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
        let rendezvous_addr = SocketAddrV4::new(public_ip, command_addr.port());

        let poll = command_port::event_loop(&signals, &mut command)?;
        poll.registry()
            .register(&mut rendezvous, RENDEZVOUS, Interest::READABLE)
            .map_err(|e| format!("cannot watch the rendezvous socket: {e}"))?;
        let metrics = Metrics::start(config.metrics_listen, poll.registry())?;

        info!(
            "gcb-broker {} started: {}",
            env!("CARGO_PKG_VERSION"),
            config.summary(command_addr, loaded.secret.as_ref())
        );
        match daemon_kit::rlimit::raise_nofile(NOFILE_CAP) {
            Ok((soft, _)) => debug!("open files limit {soft}"),
            Err(e) => warn!("cannot raise the open files limit: {e}"),
        }
        let limits = &config.limits;
        let throttle = || Throttle::new(WARN_INTERVAL);
        Ok(Daemon {
            poll,
            signals,
            command,
            command_addr,
            command_backlog: false,
            command_errors: false,
            rendezvous,
            rendezvous_addr,
            rendezvous_backlog: false,
            public_ip,
            slab: TokenSlab::new(),
            rerun: VecDeque::new(),
            timers: Timers::new(),
            registry: Registry::new(
                config.port_range,
                Duration::from_secs(limits.heartbeat_timeout_s),
            ),
            pairings: Pairings::new(),
            relays: Relays::default(),
            udp: UdpRelay::new(limits),
            asyncs: AsyncCommands::new(random_u64()),
            replies: ReplyCache::new(
                ReplyCache::<SocketAddrV4>::DEFAULT_TTL,
                REPLY_CACHE_ENTRIES,
                REPLY_CACHE_BYTES,
            ),
            gate: SourceGate::new(limits.rate_limit, RATE_LIMIT_SOURCES, "commands"),
            snapshots: Snapshots::default(),
            throttles: Throttles {
                registrations: throttle(),
                relays: throttle(),
                accept: throttle(),
            },
            counters: Counters::default(),
            metrics,
            rng: SplitMix64::from_entropy(),
            hellos: 0,
            next_serial: 0,
            started: Instant::now(),
            config,
            auth: loaded.secret.as_ref().map(crate::auth::authenticator),
            secret: loaded.secret,
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
            let timeout = if busy {
                Some(Duration::ZERO)
            } else {
                self.next_deadline()
                    .map(|at| at.saturating_duration_since(Instant::now()))
            };
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("event loop: {e}")),
            }

            let mut stop = None;
            let (mut command_done, mut rendezvous_done) = (false, false);
            let rerun = std::mem::take(&mut self.rerun);
            for event in events.iter() {
                match event.token() {
                    SIGNALS => stop = stop.or(self.on_signals()),
                    COMMAND => {
                        self.on_command();
                        command_done = true;
                    }
                    RENDEZVOUS => {
                        self.on_rendezvous();
                        rendezvous_done = true;
                    }
                    token if metrics::owns(token) => self.on_metrics_event(token),
                    token => match self.slab.get(token) {
                        Some(Dynamic::Relay(id)) => {
                            let id = *id;
                            let writable_only = event.is_writable()
                                && !(event.is_readable()
                                    || event.is_read_closed()
                                    || event.is_write_closed()
                                    || event.is_error());
                            self.on_relay_event(id, token, writable_only);
                        }
                        _ => self.on_dynamic(token),
                    },
                }
            }
            if self.command_backlog && !command_done {
                self.on_command();
            }
            if self.rendezvous_backlog && !rendezvous_done {
                self.on_rendezvous();
            }
            for token in rerun {
                self.on_dynamic(token);
            }
            self.slab.end_batch();
            self.on_deadlines(Instant::now());

            if let Some(signal) = stop {
                let c = &self.counters;
                info!(
                    "stopping on {}: command datagrams received {}, malformed {}, registrations {}, \
                     relays opened {}, bytes relayed {}",
                    signal.as_str(),
                    c.received,
                    c.malformed,
                    self.registry.len(),
                    c.relays_opened,
                    self.relays.bytes_total(c).iter().sum::<u64>()
                );
                self.abort_relays();
                return Ok(signal);
            }
        }
    }

    /// The earliest deadline of every component.
    fn next_deadline(&mut self) -> Option<Instant> {
        [
            self.timers.next_deadline(),
            self.registry.next_deadline(),
            self.pairings.next_deadline(),
            self.asyncs.next_deadline(),
            self.udp.table.next_deadline(),
            self.udp.channels.next_deadline(),
            self.metrics.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn on_dynamic(&mut self, token: Token) {
        let what = match self.slab.get(token) {
            Some(Dynamic::Proxy { .. }) => 0,
            Some(Dynamic::Hello(_)) => 1,
            Some(Dynamic::Relay(id)) => {
                let id = *id;
                self.pump_relay(id);
                return;
            }
            Some(Dynamic::UdpProxy { .. }) => return self.on_udp_proxy_ready(token),
            Some(Dynamic::UdpChannel { .. }) => return self.on_udp_channel_ready(token),
            // The source was closed earlier in this batch.
            None => {
                trace!("event for closed token {}", token.0);
                return;
            }
        };
        if what == 0 {
            self.on_proxy_ready(token);
        } else {
            self.on_hello_readable(token);
        }
    }

    fn on_deadlines(&mut self, now: Instant) {
        while let Some(timer) = self.timers.pop_due(now) {
            match timer {
                Timer::Stats => {
                    let mut fields = self.counters.fields();
                    fields.extend(self.auth_counters());
                    let line: Vec<String> = fields
                        .iter()
                        .filter(|(_, v)| *v > 0)
                        .map(|(k, v)| format!("{k} {v}"))
                        .collect();
                    debug!(
                        "stats: registrations {}, relays {}, pending pairings {}; {}",
                        self.registry.len(),
                        self.relays.len(),
                        self.pairings.len(),
                        line.join(", ")
                    );
                    self.timers.schedule(now + STATS_INTERVAL, Timer::Stats);
                }
                Timer::Hello { token, serial } => self.hello_timed_out(token, serial),
                Timer::Accept(token) => self.on_dynamic(token),
                Timer::Rendezvous => self.on_rendezvous(),
            }
        }
        self.expire_holders(now);
        self.expire_pairings(now);
        self.expire_udp_rules(now);
        self.expire_udp_channels(now);
        self.poll_commands(now);
        self.expire_metrics(now);
    }

    /// Schedules a timer; exists so other modules need not name the heap.
    pub(crate) fn schedule(&mut self, at: Instant, timer: Timer) -> TimerId {
        self.timers.schedule(at, timer)
    }
}
