//! A client that keeps one port mapped on a standard gateway: PCP MAP
//! (RFC 6887), falling back to NAT-PMP (RFC 6886) when the gateway
//! answers UNSUPP_VERSION in NAT-PMP's format (RFC 6887 Appendix A).
//! Sans-I/O like the rest of the crate: the caller owns a UDP socket
//! connected to the gateway's port 5351 (and, to hear restart
//! announcements, one on port 5350 joined to 224.0.0.1) and drives
//! [`MapClient`] with
//!
//! * [`MapClient::start`], once;
//! * [`MapClient::on_datagram`] for every datagram from the gateway's
//!   address (answers, and unsolicited ANNOUNCEs);
//! * [`MapClient::poll_timeout`] whenever [`MapClient::next_deadline`]
//!   has passed;
//! * [`MapClient::delete`] when the socket is closed,
//!
//! sending every datagram each call returns and acting on its events.
//!
//! What it does:
//! * the first request suggests [`Config::suggested_port`]; every exchange
//!   is retransmitted per RFC 6887 §8.1.1 within a bound ([`Retry`]), and
//!   silence ends in [`Event::GaveUp`];
//! * a mapping is renewed at a random point between 1/2 and 5/8 of its
//!   lifetime (§11.2.1), suggesting the address it has; a renewal nobody
//!   answers is retransmitted until the mapping expires;
//! * every answer's epoch is checked (§8.5, RFC 6886 §3.6), and an
//!   ANNOUNCE, or NAT-PMP's restart announcement, that shows the gateway
//!   lost its state makes it map again after a random 0-5 s (§14.1.3),
//!   suggesting the old address;
//! * a refusal ends in [`Event::Refused`] with the result code and the
//!   time the gateway says the error holds;
//! * [`MapClient::delete`] sends the request with lifetime 0 and ends in
//!   [`Event::Deleted`] (or `Refused`, or `GaveUp`).
//!
//! [`Event::Mapped`] comes with every successful answer, renewals
//! included; callers compare `external` with the previous one to see a
//! move (after a gateway restart the old port may be taken).

mod epoch;
mod handle;
mod nonce;
mod retry;

pub use epoch::{lost as epoch_lost, Epoch};
pub use nonce::derived_nonce;
pub use retry::{Exchange, Fire, Retry, Rng};

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use crate::common::Proto;
use crate::{natpmp, pcp};

/// The longest random wait before mapping again after an ANNOUNCE.
pub const ANNOUNCE_JITTER: Duration = Duration::from_secs(5);

/// Which protocol the gateway is spoken to in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Via {
    Pcp,
    NatPmp,
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Via::Pcp => "PCP",
            Via::NatPmp => "NAT-PMP",
        })
    }
}

/// A gateway's refusal, in the result codes of the protocol it came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    Pcp(pcp::ResultCode),
    NatPmp(natpmp::ResultCode),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Pcp(c) => c.fmt(f),
            Refusal::NatPmp(c) => c.fmt(f),
        }
    }
}

/// What the client has to say to its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The port is mapped at `external` for `lifetime` seconds.
    Mapped {
        external: SocketAddrV4,
        lifetime: u32,
        via: Via,
    },
    /// The gateway refused; the client has stopped. `retry_after_s` is the
    /// error's lifetime (how long the gateway says it holds; 0 if unsaid).
    Refused { code: Refusal, retry_after_s: u32 },
    /// No answer within the bound (or, for a renewal, before the mapping
    /// expired); the client has stopped.
    GaveUp,
    /// The gateway confirmed the delete; the client has stopped.
    Deleted,
}

/// What one call asks of its caller.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Output {
    /// Datagrams to send to the gateway, in order.
    pub send: Vec<Vec<u8>>,
    pub events: Vec<Event>,
}

/// What to map and how.
#[derive(Debug, Clone)]
pub struct Config {
    pub proto: Proto,
    /// The client's own address as the gateway sees it (not 0.0.0.0: PCP
    /// puts it in every request) and the port to map.
    pub internal: SocketAddrV4,
    /// External port to ask for; 0 for no preference.
    pub suggested_port: u16,
    /// External IP to ask for; `None` for no preference.
    pub suggested_ip: Option<Ipv4Addr>,
    /// Fail (CANNOT_PROVIDE_EXTERNAL) rather than map another port than
    /// the suggested one (PCP only; NAT-PMP has no such option).
    pub prefer_failure: bool,
    /// Requested lifetime in seconds (gateways clamp it).
    pub lifetime: u32,
    /// Bounds for the first mapping and the delete over PCP...
    pub pcp_retry: Retry,
    /// ...and over NAT-PMP.
    pub natpmp_retry: Retry,
    /// Random per mapping (PCP's mapping nonce): only its holder may renew
    /// or delete the mapping.
    pub nonce: [u8; 12],
    /// Seeds the timing jitter.
    pub seed: u64,
}

impl Config {
    /// A config with the RFCs' defaults: no suggestion, two hours, the
    /// bounded retransmissions of [`Retry::PCP`] and [`Retry::NATPMP`].
    pub fn new(proto: Proto, internal: SocketAddrV4, nonce: [u8; 12], seed: u64) -> Config {
        Config {
            proto,
            internal,
            suggested_port: 0,
            suggested_ip: None,
            prefer_failure: false,
            lifetime: 7200,
            pcp_retry: Retry::PCP,
            natpmp_retry: Retry::NATPMP,
            nonce,
            seed,
        }
    }
}

/// The mapping as last granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub external: SocketAddrV4,
    pub lifetime: u32,
    pub expires: Instant,
    pub via: Via,
}

#[derive(Debug, Clone)]
enum Phase {
    /// Not started.
    Idle,
    /// A MAP exchange: the first, a renewal, or a re-map.
    Mapping(Exchange),
    /// Mapped; the renewal starts at the instant.
    Holding(Instant),
    /// The gateway lost state; mapping again at the instant.
    RemapAt(Instant),
    Deleting(Exchange),
    /// Stopped for good (refused, gave up, deleted).
    Done,
}

/// The client for one port; see the module docs.
#[derive(Debug, Clone)]
pub struct MapClient {
    cfg: Config,
    via: Via,
    phase: Phase,
    mapping: Option<Mapping>,
    /// NAT-PMP's public address, asked for separately.
    public_ip: Option<Ipv4Addr>,
    /// NAT-PMP's mapped port and lifetime, waiting for the public address.
    natpmp_port: Option<(u16, u32)>,
    epoch: Epoch,
    rng: Rng,
}

impl MapClient {
    pub fn new(cfg: Config) -> MapClient {
        let rng = Rng::new(cfg.seed);
        MapClient {
            cfg,
            via: Via::Pcp,
            phase: Phase::Idle,
            mapping: None,
            public_ip: None,
            natpmp_port: None,
            epoch: Epoch::default(),
            rng,
        }
    }

    /// Sends the first MAP request.
    pub fn start(&mut self, now: Instant) -> Output {
        if !matches!(self.phase, Phase::Idle) {
            return Output::default();
        }
        self.begin_mapping(now, None)
    }

    /// The protocol in use (PCP until the gateway turned out to speak only
    /// NAT-PMP).
    pub fn via(&self) -> Via {
        self.via
    }

    /// The current mapping, if any.
    pub fn mapping(&self) -> Option<Mapping> {
        self.mapping
    }

    /// Whether the client has stopped (refused, gave up or deleted).
    pub fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Changes the bounds of the exchanges that start from now on: a
    /// caller that maps inside an application's call with a short bound
    /// hands the renewals that follow the RFCs' own.
    pub fn set_retry(&mut self, pcp: Retry, natpmp: Retry) {
        self.cfg.pcp_retry = pcp;
        self.cfg.natpmp_retry = natpmp;
    }

    /// When [`poll_timeout`](Self::poll_timeout) next has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Mapping(ex) | Phase::Deleting(ex) => Some(ex.deadline()),
            Phase::Holding(at) | Phase::RemapAt(at) => Some(*at),
            Phase::Idle | Phase::Done => None,
        }
    }

    /// Retransmits, renews, re-maps or gives up, whichever is due.
    pub fn poll_timeout(&mut self, now: Instant) -> Output {
        match self.phase {
            Phase::Mapping(_) | Phase::Deleting(_) => self.fire(now),
            Phase::Holding(at) if now >= at => {
                let expires = self.mapping.map(|m| m.expires);
                self.begin_mapping(now, expires)
            }
            Phase::RemapAt(at) if now >= at => self.begin_mapping(now, None),
            _ => Output::default(),
        }
    }

    /// Asks the gateway to delete the mapping (lifetime 0). Also sent when
    /// no answer has come yet: the gateway may have mapped and the answer
    /// been lost.
    pub fn delete(&mut self, now: Instant) -> Output {
        if matches!(self.phase, Phase::Idle | Phase::Done | Phase::Deleting(_)) {
            self.phase = Phase::Done;
            return Output::default();
        }
        let retry = self.retry();
        self.phase = Phase::Deleting(Exchange::new(retry, now, None));
        self.fire(now)
    }

    fn retry(&self) -> Retry {
        match self.via {
            Via::Pcp => self.cfg.pcp_retry,
            Via::NatPmp => self.cfg.natpmp_retry,
        }
    }

    /// Starts a MAP exchange. A renewal passes the mapping's expiry as
    /// `hard`: it is retried until then, however long that is (§11.2.1).
    fn begin_mapping(&mut self, now: Instant, hard: Option<Instant>) -> Output {
        let mut retry = self.retry();
        if hard.is_some() {
            retry.max_attempts = 0;
            retry.max_duration = Duration::ZERO;
        }
        self.phase = Phase::Mapping(Exchange::new(retry, now, hard));
        self.fire(now)
    }

    /// Runs the current exchange's timer.
    fn fire(&mut self, now: Instant) -> Output {
        let deleting = matches!(self.phase, Phase::Deleting(_));
        let verdict = match &mut self.phase {
            Phase::Mapping(ex) | Phase::Deleting(ex) => ex.fire(now, &mut self.rng),
            _ => return Output::default(),
        };
        match verdict {
            Fire::Wait => Output::default(),
            Fire::Send => Output {
                send: self.requests(deleting),
                events: Vec::new(),
            },
            Fire::GiveUp => self.finish(Event::GaveUp),
        }
    }

    /// Stops for good with `event`.
    fn finish(&mut self, event: Event) -> Output {
        self.phase = Phase::Done;
        self.mapping = None;
        Output {
            send: Vec::new(),
            events: vec![event],
        }
    }
}

#[cfg(test)]
mod tests;
