//! dpfd's event loop: one thread, one mio `Poll` over the signalfd, the UDP
//! command socket, the NAT-PMP/PCP socket (`standard`), the status socket
//! and the TCP connects of each probe round, with deadlines from [`Timers`]
//! setting the poll timeout.
//!
//! Each turn of the loop:
//! 1. sleeps in `poll` until an event or the next deadline (or not at all if
//!    the command socket still has a backlog from the previous turn);
//! 2. handles the events: fixed tokens by name, the rest through the slab;
//!    requests and probe verdicts change the mapping table only;
//! 3. ends the token batch, so slots freed in step 2 become reusable;
//! 4. fires the deadlines that are due (probe rounds, probe timeouts);
//! 5. commits what steps 2 and 4 changed (mirror file, kernel; see
//!    `engine.rs`) and only then sends the replies: one group commit per
//!    turn;
//! 6. runs the sync once a probe round has ended, and schedules the next;
//! 7. stops if SIGTERM or SIGINT arrived.
//!
//! Nothing here blocks except `poll`, the fdatasync of a commit and the
//! `nft` run of a commit, each bounded by the work of one turn.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use daemon_kit::command_port;
use daemon_kit::ratelimit::SourceGate;
use daemon_kit::turn;
use mio::net::{UdpSocket, UnixListener};
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::Signal;
use proto::rudp::ReplyCache;
use tracing::{error, info, trace, warn};

use crate::cli::DaemonArgs;
use crate::config::{Config, Env, Loaded};
use crate::engine::Engine;
use crate::handler::Refusals;
use crate::logging::LogHandle;
use crate::metrics::{self, Metrics};
use crate::mirror::MirrorFile;
use crate::nft::Nft;
use crate::probe::{ProbeConn, Round, Tally};
use crate::signals::{self, Signals};
use crate::standard::{self, Counters as StdCounters, StdSocket, STD};
use crate::status::{self, StatusConn, STATUS};
use crate::sync::SyncReport;
use crate::table::Table;
use crate::timers::{TimerId, Timers};
use crate::tokens::{TokenSlab, COMMAND, SIGNALS};
use crate::values::Secret;

/// Largest UDP payload; a request never comes close, but reading less would
/// silently truncate whatever arrives.
pub const MAX_DATAGRAM: usize = 65_536;
/// Most cached replies, and their bytes: a reply is under 64 bytes, so this
/// covers ten seconds of requests at well over 5,000 a second.
const REPLY_CACHE_ENTRIES: usize = 100_000;
const REPLY_CACHE_BYTES: usize = 8 << 20;
/// Sources the rate limiter tracks at once: more hosts than a private
/// network behind one gateway holds.
const RATE_LIMIT_SOURCES: usize = 65_536;

/// What happened on the command socket since startup.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub received: u64,
    /// Dropped because the source is outside every private network.
    pub foreign: u64,
    /// Dropped because the source sent more than the rate limit.
    pub rate_limited: u64,
    /// Not a well-formed DPF request: dropped, never fatal.
    pub malformed: u64,
    /// The same drops by class; `replies` are well-formed DPF replies sent
    /// to the command port, which takes only requests.
    pub malformed_by: proto::drops::DecodeDrops,
    pub malformed_replies: u64,
    /// Retransmissions answered from the reply cache (or still pending).
    pub duplicates: u64,
    pub forward: u64,
    pub delete: u64,
    pub query: u64,
    pub refused: Refusals,
    pub receive_errors: u64,
    pub send_errors: u64,
}

/// Event sources that get a token from the slab.
pub enum Dynamic {
    Probe(ProbeConn),
    Status(StatusConn),
}

/// Deadlines the loop acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// Probe the clients' management sockets, then sync the tables.
    Probe,
    /// The earliest NAT-PMP/PCP lease ends.
    Expiry,
    /// One probe connect took too long.
    ProbeTimeout(Token),
}

pub struct Daemon {
    pub(crate) poll: Poll,
    signals: Signals,
    pub(crate) command: UdpSocket,
    pub(crate) command_addr: SocketAddr,
    /// The command socket stopped at its budget and still has datagrams.
    pub(crate) command_backlog: bool,
    pub(crate) status_listener: Option<UnixListener>,
    pub(crate) dynamic: TokenSlab<Dynamic>,
    pub(crate) timers: Timers<Timer>,
    /// The pending probe, rescheduled when SIGHUP changes the interval.
    pub(crate) probe: Option<TimerId>,
    pub(crate) round: Option<Round>,
    /// A probe round ended; sync once the turn's batch is committed.
    pub(crate) sync_due: bool,
    pub(crate) engine: Engine<MirrorFile, Nft>,
    /// The NAT-PMP/PCP socket, unless `--pcp-port 0`.
    pub(crate) std: Option<StdSocket>,
    pub(crate) std_counters: StdCounters,
    /// The pending lease-expiry timer and the Unix second it is for.
    pub(crate) expiry: Option<(u64, TimerId)>,
    pub(crate) replies: ReplyCache<SocketAddr>,
    /// The per-source rate limit, after the private-network filter.
    pub(crate) gate: SourceGate<IpAddr>,
    /// Requests of this turn not yet answered, to drop retransmissions of
    /// them that arrive in the same turn.
    pub(crate) in_batch: HashSet<(SocketAddr, u64)>,
    pub(crate) counters: Counters,
    pub(crate) metrics: Metrics,
    pub(crate) probes: Tally,
    pub(crate) started: Instant,
    pub(crate) recovery: SyncReport,
    pub(crate) last_sync: Option<(Instant, SyncReport)>,
    pub(crate) config: Config,
    pub(crate) secret: Option<Secret>,
    /// Seals replies and opens requests; present exactly when `secret` is.
    pub(crate) auth: Option<proto::auth::Authenticator>,
    /// The command line and environment as parsed at startup, for re-merging
    /// with the re-read file on SIGHUP.
    pub(crate) args: DaemonArgs,
    pub(crate) env: Env,
    pub(crate) log: LogHandle,
    pub(crate) buf: Vec<u8>,
}

/// Unix seconds now, for creation times in the mirror file.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Daemon {
    /// Binds the command socket, recovers the forwards from the mirror file
    /// into the table and the kernel, opens the status socket and registers
    /// the fixed sources. Errors are one line, for exit code 1.
    pub fn start(
        loaded: Loaded,
        args: DaemonArgs,
        env: Env,
        log: LogHandle,
        signals: Signals,
    ) -> Result<Daemon, String> {
        let config = loaded.config;
        // The port first: a second dpfd fails here before touching anything.
        let (mut command, command_addr) = command_port::bind(config.listen)?;

        let public_ips = config
            .public_ips
            .iter()
            .map(|ip| match ip {
                std::net::IpAddr::V4(v4) => Ok(*v4),
                std::net::IpAddr::V6(_) => {
                    Err(format!("public IP {ip}: only IPv4 forwards are supported"))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let table = Table::new(public_ips, config.port_range, config.per_host_quota);
        let recovery_started = Instant::now();
        let (mirror, replay) = MirrorFile::open(&config.mirror)?;
        let kernel_timing = metrics::kernel_timing();
        let mut nft = Nft::new(&config.nft_table);
        nft.timing = Some(kernel_timing.clone());
        let mut engine = Engine::new(table, mirror, nft);
        let recovery = engine.recover(&replay, recovery_started, unix_now())?;
        info!(
            "recovered {} forwards from the mirror file in {} ms ({} records, {} corrupt, torn last record: {}, \
             {} outside the configuration dropped, {} leases ended while down; kernel: {} element changes; \
             NAT-PMP/PCP epoch {})",
            recovery.live,
            recovery.millis,
            recovery.records,
            recovery.corrupt,
            if recovery.torn { "yes" } else { "no" },
            recovery.dropped,
            recovery.expired,
            recovery.kernel_ops,
            if recovery.epoch_kept { "kept" } else { "started again" }
        );

        let poll = command_port::event_loop(&signals, &mut command)?;
        let metrics = Metrics::start(config.shared.metrics_listen, poll.registry(), kernel_timing)?;
        let std = standard::bind(command_addr.ip(), config.pcp_port, poll.registry())?;
        let status_listener = match status::listen(command_addr.port()) {
            Ok(mut l) => {
                poll.registry()
                    .register(&mut l, STATUS, Interest::READABLE)
                    .map_err(|e| format!("cannot watch the status socket: {e}"))?;
                Some(l)
            }
            Err(e) => {
                warn!("{e}; `dpfd status` will not reach this daemon");
                None
            }
        };
        info!(
            "dpfd {} started: {}",
            env!("CARGO_PKG_VERSION"),
            config.summary(command_addr, loaded.secret.as_ref())
        );
        let mut daemon = Daemon {
            poll,
            signals,
            command,
            command_addr,
            command_backlog: false,
            status_listener,
            dynamic: TokenSlab::new(),
            timers: Timers::new(),
            probe: None,
            round: None,
            sync_due: false,
            engine,
            std,
            std_counters: StdCounters::default(),
            expiry: None,
            replies: ReplyCache::new(
                ReplyCache::<SocketAddr>::DEFAULT_TTL,
                REPLY_CACHE_ENTRIES,
                REPLY_CACHE_BYTES,
            ),
            in_batch: HashSet::new(),
            gate: SourceGate::new(config.rate_limit, RATE_LIMIT_SOURCES, "requests"),
            counters: Counters::default(),
            metrics,
            probes: Tally::default(),
            started: Instant::now(),
            recovery,
            last_sync: None,
            config,
            auth: loaded.secret.as_ref().map(crate::auth::authenticator),
            secret: loaded.secret,
            args,
            env,
            log,
            buf: vec![0; MAX_DATAGRAM],
        };
        if !daemon.recovery.epoch_kept {
            daemon.announce();
        }
        daemon.schedule_expiry();
        Ok(daemon)
    }

    pub(crate) fn probe_interval(&self) -> Duration {
        Duration::from_secs(self.config.probe_interval_s)
    }

    pub(crate) fn schedule_probe(&mut self) {
        if let Some(pending) = self.probe.take() {
            self.timers.cancel(pending);
        }
        let next = Instant::now() + self.probe_interval();
        self.probe = Some(self.timers.schedule(next, Timer::Probe));
    }

    /// Runs until SIGTERM or SIGINT, returning the signal; an error is a
    /// failure of the loop itself (the poll call), not of any one client.
    pub fn run(&mut self) -> Result<Signal, String> {
        let mut events = Events::with_capacity(1024);
        self.schedule_probe();
        loop {
            let std_backlog = self.std.as_ref().is_some_and(|s| s.backlog);
            let busy = self.command_backlog || std_backlog;
            let deadline = [self.timers.next_deadline(), self.metrics.next_deadline()]
                .into_iter()
                .flatten()
                .min();
            if !turn::wait(&mut self.poll, &mut events, busy, deadline)? {
                continue;
            }

            let mut stop = None;
            let mut command_done = false;
            let mut std_done = false;
            for event in events.iter() {
                match event.token() {
                    SIGNALS => stop = stop.or(self.on_signals()),
                    COMMAND => {
                        self.on_command();
                        command_done = true;
                    }
                    STATUS => self.on_status_accept(),
                    token if metrics::owns(token) => self.on_metrics_event(token),
                    STD => {
                        self.on_std();
                        std_done = true;
                    }
                    token => self.on_dynamic(token),
                }
            }
            if self.command_backlog && !command_done {
                self.on_command();
            }
            if std_backlog && !std_done {
                self.on_std();
            }
            self.dynamic.end_batch();

            let now = Instant::now();
            while let Some(timer) = self.timers.pop_due(now) {
                self.on_timer(timer);
            }
            self.expire_metrics(now);

            self.flush();
            self.schedule_expiry();
            if self.sync_due {
                self.run_sync();
            }

            if let Some(signal) = stop {
                self.log_stop(signal);
                return Ok(signal);
            }
        }
    }

    fn log_stop(&self, signal: Signal) {
        let c = &self.counters;
        let s = &self.engine.stats;
        info!(
            "stopping on {}: requests received {}, from outside the private networks {}, rate limited {}, \
             malformed {}, duplicates {}, refused {}; forwards {} (added {}, deleted by clients {}, by the probe {})",
            signal.as_str(),
            c.received,
            c.foreign,
            c.rate_limited,
            c.malformed,
            c.duplicates,
            c.refused.values().sum::<u64>(),
            self.engine.table.len(),
            s.added,
            s.deleted_by_client,
            s.deleted_by_probe
        );
    }

    /// Commits the turn's batch and sends its replies (step 5).
    fn flush(&mut self) {
        if !self.engine.has_pending() {
            return;
        }
        let replies = self.engine.commit();
        let now = Instant::now();
        for r in replies {
            self.send_reply(r.to, r.request_id, &r.msg, now);
        }
        self.send_std_replies();
        self.in_batch.clear();
    }

    /// The sync after a probe round (step 6), then the next round.
    fn run_sync(&mut self) {
        self.sync_due = false;
        match self.engine.sync() {
            Ok(report) => {
                let line = format!(
                    "sync: {} forwards, mirror file compacted from {} records in {} ms; table fixes {}, kernel changes {}",
                    report.live, report.records, report.millis, report.table_fixes, report.kernel_ops
                );
                if report.table_fixes + report.kernel_ops > 0 {
                    info!("{line}");
                } else {
                    tracing::debug!("{line}");
                }
                self.last_sync = Some((Instant::now(), report));
            }
            Err(e) => error!("sync failed, retrying after the next probe round: {e}"),
        }
        // The next round counts from the end of this one, so a slow round
        // never makes rounds pile up.
        self.schedule_probe();
    }

    /// Returns the stop signal if one arrived; a reload is done on the spot.
    fn on_signals(&mut self) -> Option<Signal> {
        let requests = self.signals.pending();
        signals::handle(requests, || self.reload())
    }

    fn on_dynamic(&mut self, token: Token) {
        match self.dynamic.get(token) {
            Some(Dynamic::Probe(_)) => self.on_probe_event(token),
            Some(Dynamic::Status(_)) => self.on_status_writable(token),
            // The source was closed earlier in this batch.
            None => trace!("event for closed token {}", token.0),
        }
    }

    fn on_timer(&mut self, timer: Timer) {
        match timer {
            Timer::Probe => {
                self.probe = None;
                if self.round.is_none() {
                    self.start_probe_round();
                }
            }
            Timer::ProbeTimeout(token) => self.on_probe_timeout(token),
            Timer::Expiry => self.on_expiry(),
        }
    }
}
