//! One side's part of a TCP hole punch (docs/hole-punching.md), without I/O:
//! when to dial the peer's mapping and from which port, which connection
//! showed the peer's proof, what to report, and what the broker's verdict
//! means.
//! The shim (a non-blocking connect's job, a blocking connect, or the
//! listener's responder) owns the sockets and tells the dialer what they did;
//! the dialer answers with [`Do`]s.
//!
//! A side dials one attempt at a time: a SYN that meets the far gateway
//! before the far side's own SYN left it is reset there (or dropped), so a
//! refused attempt is followed by a fresh one, and one still in progress after
//! [`Schedule::attempt_timeout`] is replaced rather than left to TCP's
//! one-second retransmission.
//!
//! The wait after a refusal is [`Schedule::after_refusal`] plus a random part
//! of up to [`Schedule::spread`] times the refused attempt's own round trip.
//! The two SYNs only meet when each leaves its gateway while the other's
//! mapping is open, a window about one gateway-to-gateway round trip wide; the
//! reset that closes one side's window closes the other's too. With a fixed
//! wait both sides retry in lockstep and keep their first offset, so two sides
//! that missed once miss every time (seen on the test bed: hundreds of
//! attempts, docs/nat-punching-notes.md). A random wait on the scale of the
//! round trip moves the offset by about a window each attempt. With
//! [`Schedule::listen`] a listening socket on the same port takes a SYN that
//! arrives between two attempts. Every connection, dialed or accepted, must
//! come from the peer's mapping and start with the peer's [`PeerHello`]
//! (the opposite role, and that role's proof of the token: `proof`) before
//! it counts. The raw token goes only to the broker, in
//! [`Dialer::rendezvous_hello`].
//!
//! In an early punch (`Decision::PunchTcp { early }`) neither side waits for
//! the broker's verdict. The connector [commits on its check](Dialer::commit_on_check):
//! it sends its own hello only once the listener's proof checked, in the
//! same step as it reports `Punched` and uses the connection, so its proof
//! *is* its commitment. A listener told so in its go (`PunchGo::commit`)
//! uses the connection as soon as the connector's proof checks: the
//! connector has committed by then. The connector's data follows its hello
//! at once, so the listener's program has the connection when the data
//! comes, as it would without NAT. The broker gives such a listener a
//! longer budget than the connector's, so a connector that committed within
//! its budget finds the listener still there; a side that could not punch
//! still reports and waits for the verdict, to be relayed. The broker sends
//! such a listener a relay verdict as soon as the connector failed, and the
//! listener reports then, while it dials, so that its report, not the
//! verdict, is the last thing it sends before the relay's bytes. Nor does
//! such a listener give up at its own deadline while a connection waits for
//! the connector's proof: it stops dialing and waits for that proof, or for
//! the verdict (the broker's own deadline bounds it).
//!
//! Invariants, checked by the tests:
//! * exactly one `Report`, and never after the verdict (but for a following
//!   listener's, which comes with the verdict when it found it dialing);
//! * nothing is dialed after the report or past the deadline;
//! * `Use` names only a connection whose hello checked, and only on a
//!   `Direct` verdict or, for a side that commits on its check, right after
//!   its `Punched` report; every other connection and attempt is closed;
//! * after `Finished` the dialer does nothing more.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use super::frames::{BrokerFrame, PunchFailure, PunchGo, PunchHello, PunchReport, PunchVerdict};
use super::proof::{PeerHello, PunchProof};
use crate::gcb::{ErrorCode, Role, Token};

/// How a side spaces its attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// The least wait after a refused attempt.
    pub after_refusal: Duration,
    /// The random part of that wait is up to this many times the refused
    /// attempt's round trip (0: none).
    pub spread: u32,
    pub attempt_timeout: Duration,
    pub max_attempts: u32,
    pub listen: bool,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule { after_refusal: Duration::from_micros(20), spread: 2, attempt_timeout: Duration::from_millis(50), max_attempts: 1000, listen: true }
    }
}

/// A connection or dial attempt, named by the dialer.
pub type ConnId = u32;

/// Why a dial attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialFailure {
    /// Refused or unreachable: the far gateway was not open yet.
    Refused,
    /// The side's own socket, bind or connect failed (EADDRINUSE, EMFILE…).
    Local,
}

/// What the dialer asks its owner to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Do {
    /// Open a listening socket on the local port, reusable.
    Listen,
    /// Close it.
    Unlisten,
    /// Open a reusable socket bound to the local port and connect it,
    /// non-blocking, to `to`; tell the dialer what came of it as `conn`.
    Dial { conn: ConnId, to: SocketAddrV4 },
    /// Send our [`Dialer::peer_hello_frame`] on `conn`, then read the peer's
    /// (unless it was read already: a committing connector's).
    SendHello(ConnId),
    /// Read the peer's hello on `conn` without sending ours yet (a
    /// connector that commits on its check).
    ReadHello(ConnId),
    /// Close `conn` (an attempt or a connection).
    Close(ConnId),
    /// Send this report on the rendezvous connection.
    Report(PunchReport),
    /// The verdict is direct: `conn` is the program's connection, its peer
    /// `peer`; close the rendezvous connection.
    Use { conn: ConnId, peer: SocketAddrV4 },
    /// The verdict is relay: the rendezvous connection is the program's.
    UseRelay { peer: SocketAddrV4 },
    /// No connection: fail the program's connect (or drop the parked
    /// one) with this code.
    Fail(ErrorCode),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Stage {
    /// Before the broker's first frame.
    Waiting,
    Dialing { peer: SocketAddrV4, deadline: Instant },
    /// Reported; holding `chosen` (if punched) until the verdict.
    Reported { chosen: Option<ConnId> },
    Finished,
}

/// One side of one punch.
#[derive(Debug, Clone)]
pub struct Dialer {
    token: Token,
    role: Role,
    schedule: Schedule,
    stage: Stage,
    next_id: ConnId,
    attempts: u32,
    /// The attempt in flight and when it started.
    current: Option<(ConnId, Instant)>,
    /// When the next attempt may start (none in flight).
    next_dial: Option<Instant>,
    /// Connections whose hello is awaited.
    checking: Vec<ConnId>,
    listening: bool,
    check_failures: u32,
    refusals: u32,
    local_failures: u32,
    /// xorshift64 state for the random part of the waits, seeded from the
    /// token and the role, so the two sides draw differently.
    rng: u64,
    /// Commit on our own check, naming this peer (module docs).
    commit_as: Option<SocketAddrV4>,
    /// A following listener past its deadline, waiting on the connections
    /// it has for the connector's proof, or for the verdict.
    overtime: bool,
}

impl Dialer {
    pub fn new(token: Token, role: Role, schedule: Schedule) -> Self {
        Dialer {
            token,
            role,
            schedule,
            stage: Stage::Waiting,
            next_id: 1,
            attempts: 0,
            current: None,
            next_dial: None,
            checking: Vec::new(),
            listening: false,
            check_failures: 0,
            refusals: 0,
            local_failures: 0,
            rng: (token.0 ^ if role == Role::Connector { 0x9e37_79b9_7f4a_7c15 } else { 0xc2b2_ae3d_27d4_eb4f }) | 1,
            commit_as: None,
            overtime: false,
        }
    }

    /// This side (a connector) uses its punched connection as soon as the
    /// peer's proof checks, without the broker's verdict, with `peer` as its
    /// peer, and says its own hello only then (module docs). Only for a
    /// broker that said so (`Decision::PunchTcp { early }`).
    pub fn commit_on_check(mut self, peer: SocketAddrV4) -> Self {
        self.commit_as = Some(peer);
        self
    }

    /// A random duration of up to `max`.
    fn random_up_to(&mut self, max: Duration) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let nanos = max.as_nanos() as u64;
        Duration::from_nanos(if nanos == 0 { 0 } else { self.rng % (nanos + 1) })
    }

    /// Our hello for the rendezvous connection to the broker, with the token.
    pub fn rendezvous_hello(&self, local: SocketAddrV4) -> PunchHello {
        PunchHello::new(self.token, self.role, local)
    }

    /// Our hello for each punched connection, with our role's proof: the
    /// token itself never goes to the peer's mapping.
    pub fn peer_hello_frame(&self, local: SocketAddrV4) -> PeerHello {
        PeerHello { proof: PunchProof::of(self.token, self.role), role: self.role, local }
    }

    pub fn finished(&self) -> bool {
        self.stage == Stage::Finished
    }

    /// Attempts dialed so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// When [`timer`](Self::timer) must run next, if ever.
    pub fn next_wakeup(&self) -> Option<Instant> {
        let Stage::Dialing { deadline, .. } = self.stage else { return None };
        if self.overtime {
            return None;
        }
        let attempt = match self.current {
            Some((_, since)) => Some(since + self.schedule.attempt_timeout),
            None if self.checking.is_empty() => self.next_dial,
            None => None,
        };
        Some(attempt.map_or(deadline, |a| a.min(deadline)))
    }

    /// The broker's frame after our hello on the rendezvous connection.
    pub fn broker_frame(&mut self, frame: BrokerFrame, now: Instant) -> Vec<Do> {
        match frame {
            BrokerFrame::Verdict(v) => self.verdict(v),
            BrokerFrame::Go(go) => self.go(go, now),
        }
    }

    fn go(&mut self, go: PunchGo, now: Instant) -> Vec<Do> {
        if self.stage != Stage::Waiting {
            return self.protocol_broken();
        }
        let start = now + go.delay;
        if go.commit && self.role == Role::Listener {
            // The connector's proof is its commitment (module docs).
            self.commit_as = Some(go.peer);
        }
        self.stage = Stage::Dialing { peer: go.peer, deadline: start + go.budget };
        self.next_dial = Some(start);
        let mut out = Vec::new();
        if self.schedule.listen {
            self.listening = true;
            out.push(Do::Listen);
        }
        out.extend(self.timer(now));
        out
    }

    /// Time passed: start, replace or give up attempts.
    pub fn timer(&mut self, now: Instant) -> Vec<Do> {
        let Stage::Dialing { peer, deadline } = self.stage else { return Vec::new() };
        if now >= deadline && self.role == Role::Listener && self.commit_as.is_some() && !self.checking.is_empty() {
            // A connector that committed within its budget may have sent its
            // proof just now: the connections up wait for it, or for the
            // verdict the broker sends when the connector failed.
            if std::mem::replace(&mut self.overtime, true) {
                return Vec::new();
            }
            let mut out: Vec<Do> = self.current.take().map(|(c, _)| Do::Close(c)).into_iter().collect();
            if std::mem::take(&mut self.listening) {
                out.push(Do::Unlisten);
            }
            self.next_dial = None;
            return out;
        }
        if now >= deadline {
            let why = if self.check_failures > 0 {
                PunchFailure::CheckFailed
            } else if self.local_failures > 0 && self.refusals == 0 {
                PunchFailure::LocalError
            } else {
                PunchFailure::Timeout
            };
            return self.report(None, PunchReport::Failed(why));
        }
        let mut out = Vec::new();
        if let Some((conn, since)) = self.current {
            if now < since + self.schedule.attempt_timeout {
                return out;
            }
            out.push(Do::Close(conn));
            self.current = None;
            self.next_dial = Some(now);
        }
        let due = self.next_dial.is_some_and(|t| now >= t);
        if due && self.checking.is_empty() && self.attempts < self.schedule.max_attempts {
            let conn = self.take_id();
            self.attempts += 1;
            self.current = Some((conn, now));
            self.next_dial = None;
            out.push(Do::Dial { conn, to: peer });
        }
        out
    }

    /// Attempt `conn` failed.
    pub fn dial_failed(&mut self, conn: ConnId, why: DialFailure, now: Instant) -> Vec<Do> {
        let Some((c, since)) = self.current else { return Vec::new() };
        if c != conn {
            return Vec::new();
        }
        self.current = None;
        match why {
            DialFailure::Refused => self.refusals += 1,
            DialFailure::Local => self.local_failures += 1,
        }
        // Round trips are capped, so a refusal that took long (a loaded
        // machine, an ICMP error after retransmissions) never stalls dialing.
        let round_trip = now.saturating_duration_since(since).min(Duration::from_millis(100));
        let random = self.random_up_to(round_trip * self.schedule.spread);
        self.next_dial = Some(now + self.schedule.after_refusal + random);
        let mut out = vec![Do::Close(conn)];
        out.extend(self.timer(now));
        out
    }

    /// Attempt `conn` connected, to `from` (its `getpeername`).
    pub fn connected(&mut self, conn: ConnId, from: SocketAddrV4, now: Instant) -> Vec<Do> {
        if !matches!(self.current, Some((c, _)) if c == conn) {
            return vec![Do::Close(conn)];
        }
        self.current = None;
        self.admit(conn, from, now)
    }

    /// The listening socket accepted a connection from `from`; the dialer
    /// names it.
    pub fn accepted(&mut self, from: SocketAddrV4, now: Instant) -> (ConnId, Vec<Do>) {
        let conn = self.take_id();
        if !matches!(self.stage, Stage::Dialing { .. }) {
            return (conn, vec![Do::Close(conn)]);
        }
        (conn, self.admit(conn, from, now))
    }

    fn admit(&mut self, conn: ConnId, from: SocketAddrV4, now: Instant) -> Vec<Do> {
        match self.stage {
            Stage::Dialing { peer, .. } if from == peer => {
                self.checking.push(conn);
                if self.withholds_hello() {
                    vec![Do::ReadHello(conn)]
                } else {
                    vec![Do::SendHello(conn)]
                }
            }
            Stage::Dialing { .. } => {
                // Not the peer's mapping: a stranger, whatever it would say.
                self.check_failures += 1;
                let mut out = vec![Do::Close(conn)];
                out.extend(self.timer(now));
                out
            }
            _ => vec![Do::Close(conn)],
        }
    }

    /// The peer's first bytes on `conn`: its hello, or something else
    /// (`Err`), or the end of the connection (`Err`).
    pub fn peer_hello(&mut self, conn: ConnId, hello: Result<PeerHello, ()>, now: Instant) -> Vec<Do> {
        let Some(at) = self.checking.iter().position(|c| *c == conn) else { return Vec::new() };
        self.checking.swap_remove(at);
        match hello {
            Ok(h) if h.is_peer_of(self.token, self.role) => {
                let withheld = self.withholds_hello();
                let mut out = self.report(Some(conn), PunchReport::Punched);
                if let Some(peer) = self.commit_as {
                    if withheld {
                        out.push(Do::SendHello(conn));
                    }
                    self.stage = Stage::Finished;
                    out.push(Do::Use { conn, peer });
                }
                out
            }
            _ => {
                self.check_failures += 1;
                let mut out = vec![Do::Close(conn)];
                if self.checking.is_empty() && self.current.is_none() && self.next_dial.is_none() {
                    self.next_dial = Some(now);
                }
                out.extend(self.timer(now));
                out
            }
        }
    }

    /// A committing connector says its hello only once it commits.
    fn withholds_hello(&self) -> bool {
        self.role == Role::Connector && self.commit_as.is_some()
    }

    /// Ends dialing: closes all but `chosen`, and reports.
    fn report(&mut self, chosen: Option<ConnId>, report: PunchReport) -> Vec<Do> {
        let mut out = self.close_all_but(chosen);
        out.push(Do::Report(report));
        self.stage = Stage::Reported { chosen };
        out
    }

    fn close_all_but(&mut self, keep: Option<ConnId>) -> Vec<Do> {
        let mut out = Vec::new();
        if let Some((c, _)) = self.current.take() {
            out.push(Do::Close(c));
        }
        out.extend(self.checking.drain(..).filter(|c| Some(*c) != keep).map(Do::Close));
        if std::mem::take(&mut self.listening) {
            out.push(Do::Unlisten);
        }
        self.next_dial = None;
        out
    }

    /// The broker's verdict, whenever it comes (it may come before our
    /// report: the other side failed, or the broker chose the relay at once).
    pub fn verdict(&mut self, v: PunchVerdict) -> Vec<Do> {
        // A following listener reports even when the relay verdict came
        // first: the broker sent it at once and splices after that report.
        let late_report = matches!(self.stage, Stage::Dialing { .. }) && self.role == Role::Listener && self.commit_as.is_some() && matches!(v, PunchVerdict::Relay { .. });
        let chosen = match self.stage {
            Stage::Finished => return Vec::new(),
            Stage::Reported { chosen } => chosen,
            _ => None,
        };
        let mut out = self.close_all_but(None);
        if late_report {
            out.push(Do::Report(PunchReport::Failed(PunchFailure::Timeout)));
        }
        self.stage = Stage::Finished;
        match (v, chosen) {
            (PunchVerdict::Direct { peer }, Some(conn)) => out.push(Do::Use { conn, peer }),
            (PunchVerdict::Direct { .. }, None) => out.push(Do::Fail(ErrorCode::Internal)),
            (PunchVerdict::Relay { peer }, chosen) => {
                out.extend(chosen.map(Do::Close));
                out.push(Do::UseRelay { peer });
            }
            (PunchVerdict::Rejected { code }, chosen) => {
                out.extend(chosen.map(Do::Close));
                out.push(Do::Fail(code));
            }
        }
        out
    }

    /// The rendezvous connection ended, or said something out of turn: no
    /// connection at all.
    pub fn broker_lost(&mut self) -> Vec<Do> {
        if self.stage == Stage::Finished {
            return Vec::new();
        }
        let chosen = match self.stage {
            Stage::Reported { chosen } => chosen,
            _ => None,
        };
        let mut out = self.close_all_but(None);
        out.extend(chosen.map(Do::Close));
        self.stage = Stage::Finished;
        out.push(Do::Fail(ErrorCode::Internal));
        out
    }

    fn protocol_broken(&mut self) -> Vec<Do> {
        self.broker_lost()
    }

    fn take_id(&mut self) -> ConnId {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }
}
