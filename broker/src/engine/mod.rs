//! The broker's pure core: every decision the broker makes and all the
//! state behind them, with no socket in sight. The event loop (`daemon`
//! and the I/O modules) feeds it events with the time, and carries out
//! what it asks for; the core is unit- and property-tested without binding
//! anything (`tests`).
//!
//! Events in:
//! * a command-port datagram ([`Engine::on_command_datagram`]: auth,
//!   decoding, the rate limit, the reply cache, then one request to
//!   [`Engine::handle`], which takes a decoded message, its source and the
//!   time, and returns the reply);
//! * errors queued on the command socket ([`Engine::on_icmp`]);
//! * a connection accepted on a proxy listener ([`Engine::on_regular`]) and
//!   a rendezvous connection that said hello ([`Engine::on_hello`]), each
//!   named by a [`StreamId`] the loop keeps the stream under;
//! * a datagram on a proxy UDP socket or a channel socket
//!   ([`Engine::on_udp_datagram`], [`Engine::on_channel_datagram`]),
//!   answered with one [`UdpSend`], so the data path allocates nothing;
//! * a punch's hello, report or end on the rendezvous port
//!   ([`Engine::on_punch_hello`], [`Engine::on_punch_report`],
//!   [`Engine::on_punch_gone`]; `punch`);
//! * a relay that started or ended ([`Engine::relay_started`],
//!   [`Engine::relay_ended`]);
//! * the clock ([`Engine::on_deadlines`] at [`Engine::next_deadline`]) and
//!   a reloaded configuration ([`Engine::reconfigure`]).
//!
//! Out: the replies, and [`Effect`]s queued in order for the loop
//! ([`Engine::take_effects`]): datagrams to send from the command socket
//! (replies, commands and their retransmissions), sockets to close, parked
//! streams to reject, reset or relay. Opening a socket is the one effect
//! whose outcome the core needs at once (a port another program holds is
//! skipped for the next; a required port is that port or a refusal), so it
//! goes through the [`Host`] trait, as dpfd's engine reaches its mirror
//! and kernel; the test fake binds nothing. Log lines are written here,
//! with `tracing`.
//!
//! Invariants, kept by every entry point (the property tests check them
//! after every step):
//! 1. Every socket opened through [`Host::open`] belongs to exactly one
//!    registration (its record's token) or one UDP channel until the core
//!    emits [`Effect::Close`] for it, once.
//! 2. Every stream handed in is held by exactly one pending pairing or one
//!    punch under way, or handed back in exactly one [`Effect::Reject`],
//!    [`Effect::RejectPunch`], [`Effect::Abort`], [`Effect::Hangup`] or
//!    [`Effect::Relay`].
//! 3. `relays` is the number of [`Effect::Relay`]s emitted and not ended;
//!    it never exceeds `--max-relays`, and neither does it plus the
//!    pairings that will become relays when one is admitted.
//! 4. A UDP registration has an entry in the relay table exactly while its
//!    record lives; its channels go with it.

mod auth;
mod channels;
mod cmd_failure;
mod command;
mod connect;
mod holders;
mod icmp;
mod punch;
mod punch_early;
mod punch_udp;
mod register;
mod status;
mod streams;
mod udp;

#[cfg(test)]
mod tests;

pub use udp::{UdpSend, HEADROOM};

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use daemon_kit::metrics::Timing;
use daemon_kit::random::{random_u64, SplitMix64};
use daemon_kit::ratelimit::SourceGate;
use daemon_kit::throttle::Throttle;
use proto::auth::Authenticator;
use proto::gcb::punch::BrokerFrame;
use proto::gcb::{ErrorCode, Role, Token};
use proto::rudp::ReplyCache;
use proto::{Endpoint, Proto};

use crate::async_cmd::AsyncCommands;
use crate::config::{Config, Limits};
use crate::counters::Counters;
use crate::pairing::{Half, Pairings};
use crate::punch_cache::OutcomeCache;
use crate::registry::Registry;
use crate::status::{RelayView, Snapshots};
use crate::udp::UdpRelay;
use crate::values::Secret;

/// A socket the core had the loop open: its token in the event loop.
pub type SocketId = mio::Token;

/// A TCP connection the loop holds for the core (accepted on a proxy
/// listener or the rendezvous port), until an effect hands it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u64);

/// What a socket opened through [`Host::open`] is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// The proxy socket of a registration: a TCP listener or a UDP socket,
    /// as the endpoint's protocol says.
    Proxy(Endpoint),
    /// A UDP channel socket (`udp::channels`).
    Channel,
}

/// What the core asks of the machine while it decides.
pub trait Host {
    /// Binds a socket for `what` at `addr` and watches it in the event
    /// loop. `AddrInUse`: another program holds the port.
    fn open(&mut self, what: Opening, addr: SocketAddrV4) -> io::Result<SocketId>;
    /// Whether `ip` is an address of this host (may ask for the status).
    fn is_own_address(&self, ip: Ipv4Addr) -> bool;
    /// The running relays, for the status.
    fn relays(&self) -> Vec<RelayView>;
}

/// Both halves of a pairing are here and the relay limit allows it.
#[derive(Debug)]
pub struct RelayStart {
    pub token: Token,
    /// A GCB connector (told `Paired` first), or a regular one, which is
    /// told nothing.
    pub gcb: bool,
    /// The fallback of a punch: the sides were told by their relay verdict,
    /// so neither gets `StreamPeer`.
    pub punched: bool,
    pub connector: Half<StreamId>,
    pub listener: Half<StreamId>,
    pub proxy: SocketAddrV4,
    /// Whom the listener is told it is paired with.
    pub connector_id: SocketAddrV4,
}

/// What the loop carries out, in order.
#[derive(Debug)]
pub enum Effect {
    /// A datagram from the command socket: a reply, a command to a client,
    /// or a command's retransmission.
    Send { to: SocketAddrV4, bytes: Vec<u8> },
    /// Stop watching and close a socket opened through [`Host::open`].
    Close(SocketId),
    /// Tell a rendezvous connection why it will not be paired, and close it.
    Reject { stream: StreamId, code: ErrorCode },
    /// Close a parked connection with a reset, so its peer sees a failure
    /// rather than a clean end of stream.
    Abort(StreamId),
    /// Tell a punch's rendezvous connection why it will not be paired
    /// (`PunchVerdict::Rejected`), and close it.
    RejectPunch { stream: StreamId, code: ErrorCode },
    /// Write a punch frame on a rendezvous connection the loop holds; if it
    /// cannot, it reports [`Engine::on_punch_gone`].
    PunchSend { stream: StreamId, frame: BrokerFrame },
    /// Read a held rendezvous connection: one `PunchReport`
    /// ([`Engine::on_punch_report`]), or its end ([`Engine::on_punch_gone`]).
    PunchWatch(StreamId),
    /// Stop reading it: its verdict is out, and what follows is the
    /// program's.
    PunchUnwatch(StreamId),
    /// Close a held connection quietly: its punch ended.
    Hangup(StreamId),
    /// Tell both halves they are paired and relay between them; the loop
    /// reports the outcome with [`Engine::relay_started`] or
    /// [`Engine::relay_ended`].
    Relay(RelayStart),
}

/// Sources the rate limiter tracks at once (see daemon_kit::ratelimit).
const RATE_LIMIT_SOURCES: usize = 65_536;
/// Reply cache bounds: at the default rate limit a source cannot push its
/// own entries out within the cache's time to live.
const REPLY_CACHE_ENTRIES: usize = 65_536;
const REPLY_CACHE_BYTES: usize = 16 << 20;
/// At most one warning line per condition per this interval.
const WARN_INTERVAL: Duration = Duration::from_secs(10);
/// How long a token waits for both halves of its connection. The shim
/// waits as long (its PAIR_TIMEOUT) before giving up on its side.
pub const PAIR_TIMEOUT: Duration = Duration::from_secs(10);

/// Bucket bounds of the decision time, in seconds: a decision is a table
/// look-up and, for a reversal or relay, one datagram to the listener,
/// so tens of microseconds; the top buckets catch a stalled loop.
const DECISION_BUCKETS: [f64; 12] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.1,
    1.0,
];

/// Warning lines that could flood the log, each throttled on its own.
struct Throttles {
    registrations: Throttle,
    relays: Throttle,
}

/// The live counts a scrape or the stats line shows besides the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gauges {
    pub registrations: usize,
    pub relays: usize,
    pub pending_pairings: usize,
    /// Punches whose sides are both at the rendezvous.
    pub punches: usize,
    /// Pairs of realms the outcome cache relays at once, both protocols
    /// together (a pair blocked for both counts twice).
    pub punch_blocked_pairs: usize,
    /// The same by protocol: TCP, UDP.
    pub punch_blocked: [usize; 2],
    pub commands_in_flight: usize,
    pub udp_rules: usize,
    pub udp_channels: usize,
    /// The proxy port pools, TCP then UDP.
    pub ports: [Ports; 2],
}

/// The counts of one proxy port pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub proto: Proto,
    pub in_use: usize,
    pub free: usize,
    pub quarantined: usize,
}

pub struct Engine {
    config: Config,
    secret: Option<Secret>,
    /// Seals and opens datagrams; present exactly when `secret` is.
    auth: Option<Authenticator>,
    public_ip: Ipv4Addr,
    /// The command port as bound, for the status.
    command: SocketAddr,
    /// `public_ip:command_port`: where clients meet for relays.
    rendezvous: SocketAddrV4,
    started: Instant,
    registry: Registry,
    pairings: Pairings<StreamId>,
    /// Punches whose sides are both here (`punch`), and their streams.
    punches: HashMap<Token, punch::Punch>,
    punch_streams: HashMap<StreamId, (Token, Role)>,
    punch_cache: OutcomeCache,
    /// Connectors' rendezvous connections that came with their `Connect`.
    early: punch_early::EarlyRendezvous,
    asyncs: AsyncCommands,
    udp: UdpRelay,
    replies: ReplyCache<SocketAddrV4>,
    gate: SourceGate<Ipv4Addr>,
    snapshots: Snapshots,
    throttles: Throttles,
    counters: Counters,
    /// Time from a `Connect` request to its decision.
    decision: Timing,
    rng: SplitMix64,
    /// Relays started and not ended (invariant 3).
    relays: usize,
    effects: Vec<Effect>,
}

impl Engine {
    /// A core for `config`, whose command port is bound at `command` and
    /// whose proxy sockets go on `public_ip`.
    pub fn new(
        config: Config,
        secret: Option<Secret>,
        public_ip: Ipv4Addr,
        command: SocketAddr,
        now: Instant,
    ) -> Engine {
        let limits = &config.limits;
        let throttle = || Throttle::new(WARN_INTERVAL);
        Engine {
            registry: Registry::new(
                config.port_range,
                Duration::from_secs(limits.heartbeat_timeout_s),
            ),
            pairings: Pairings::new(),
            punches: HashMap::new(),
            punch_streams: HashMap::new(),
            punch_cache: OutcomeCache::default(),
            early: punch_early::EarlyRendezvous::default(),
            asyncs: AsyncCommands::new(random_u64()),
            udp: UdpRelay::new(limits),
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
            },
            counters: Counters::default(),
            decision: Timing::new(
                "connect_decision",
                "Time from a Connect request to the broker's decision (a reversal or relay \
                 includes sending the listener its command)",
                &DECISION_BUCKETS,
            ),
            rng: SplitMix64::from_entropy(),
            relays: 0,
            effects: Vec::new(),
            auth: secret.as_ref().map(daemon_kit::auth::authenticator),
            secret,
            public_ip,
            command,
            rendezvous: SocketAddrV4::new(public_ip, command.port()),
            started: now,
            config,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn secret(&self) -> Option<&Secret> {
        self.secret.as_ref()
    }

    /// Applies a reloaded configuration: the running one with the re-read
    /// live settings (see `reload`), and the secret.
    pub fn reconfigure(&mut self, config: Config, secret: Option<Secret>) {
        daemon_kit::auth::reload(&mut self.auth, secret.as_ref());
        self.secret = secret;
        self.config = config;
        let limits = &self.config.limits;
        self.gate.set_rate(limits.rate_limit);
        self.registry
            .set_timeout(Duration::from_secs(limits.heartbeat_timeout_s));
        self.udp.set_limits(limits);
    }

    /// The effects queued since the last call, in order. Hand the vector
    /// back with [`give_back`](Self::give_back) to keep its allocation.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    pub fn give_back(&mut self, mut spent: Vec<Effect>) {
        if self.effects.is_empty() {
            spent.clear();
            self.effects = spent;
        }
    }

    /// The counters, for the loop to count what only it sees (I/O errors,
    /// bad hellos) and for the status and `/metrics`.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn count(&mut self) -> &mut Counters {
        &mut self.counters
    }

    /// Every counter by name, the authentication refusals included.
    pub fn counter_fields(&self) -> Vec<(&'static str, u64)> {
        let mut fields = self.counters.fields();
        fields.extend(self.auth_counters());
        fields
    }

    /// The live counts at `now` (the outcome cache's entries past their
    /// time are not counted).
    pub fn gauges(&self, now: Instant) -> Gauges {
        let pool = |proto| {
            let p = self.registry.pool(proto);
            Ports {
                proto,
                in_use: p.in_use(),
                free: p.free(),
                quarantined: p.quarantined(),
            }
        };
        let blocked = self.punch_cache.blocked_counts(now);
        Gauges {
            registrations: self.registry.len(),
            relays: self.relays,
            pending_pairings: self.pairings.len(),
            punches: self.punches.len(),
            punch_blocked_pairs: blocked[0] + blocked[1],
            punch_blocked: blocked,
            commands_in_flight: self.asyncs.len(),
            udp_rules: self.udp.table.rules_len(),
            udp_channels: self.udp.channels.len(),
            ports: [pool(Proto::Tcp), pool(Proto::Udp)],
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.config.limits
    }

    pub fn decision_timing(&self) -> &Timing {
        &self.decision
    }

    pub fn uptime(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }

    /// The earliest deadline of the core's tables.
    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.registry.next_deadline(),
            self.pairings.next_deadline(),
            self.asyncs.next_deadline(),
            self.udp.table.next_deadline(),
            self.udp.channels.next_deadline(),
            self.next_punch_deadline(),
            self.early.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// What is due at `now`: holders whose heartbeats stopped (and with the
    /// last one its registration), pairings whose halves never came, idle
    /// UDP rules and channels, and commands to retransmit or give up.
    pub fn on_deadlines(&mut self, now: Instant) {
        self.expire_holders(now);
        self.expire_pairings(now);
        self.expire_punches(now);
        self.expire_early(now);
        self.expire_udp_rules(now);
        self.expire_udp_channels(now);
        self.poll_commands(now);
    }

    fn emit(&mut self, effect: Effect) {
        self.effects.push(effect);
    }

    /// A fresh random token no pending pairing uses.
    fn new_token(&mut self) -> Token {
        loop {
            let t = Token(random_u64());
            if t.0 != 0 && self.pairings.get(t).is_none() && !self.punches.contains_key(&t) {
                return t;
            }
        }
    }
}
