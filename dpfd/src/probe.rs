//! The probe (paper 3.2.1, 3.2.2): every `--probe-interval-s`, a TCP
//! connect to each client's management socket, a passive socket the client
//! keeps open as long as its forwarded socket lives.
//!
//! * connected: the client is alive; the connection is reset at once (an
//!   RST rather than a FIN, so the gateway keeps no TIME_WAIT per probe);
//! * refused, or host or network unreachable: the socket or the host is
//!   gone, and the forward is deleted (delete order, see `engine.rs`);
//! * no answer within the probe timeout: kept, but counted; after
//!   `PROBE_TIMEOUT_LIMIT` timeouts in a row it is deleted;
//! * a local error (e.g. out of file descriptors) says nothing about the
//!   client and changes nothing.
//!
//! Mappings made through NAT-PMP or PCP are not probed: they have no
//! management socket, and expire at the end of their lease instead.
//!
//! Connects are non-blocking sockets in the daemon's mio loop, at most
//! `MAX_IN_FLIGHT` at a time; forwards that share a management socket are
//! probed once. The round's verdicts enter the engine as they come and are
//! committed with the turn's other changes; when the last one is in, the
//! sync runs (`sync.rs`) and the next round is scheduled an interval later.
//!
//! A caveat for clients: a listening socket that never accepts holds each
//! completed probe connection in its accept queue, and once that queue is
//! full the kernel drops further SYNs, so probes time out. A client should
//! listen with a large backlog and accept-and-close what arrives on its
//! management socket now and then.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Token};
use nix::errno::Errno;
use nix::sys::socket::{setsockopt, sockopt};
use tracing::{debug, info, warn};

use crate::daemon::{Daemon, Dynamic, Timer};
use crate::table::{Key, ProbeResult};
use crate::timers::TimerId;

/// Probe connects in flight at once.
pub const MAX_IN_FLIGHT: usize = 256;
/// Longest wait for one connect; a LAN peer answers in well under a
/// millisecond, and a busy one within a SYN retransmission.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3);

/// One management socket and the forwards it vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub mgmt: SocketAddrV4,
    pub forwards: Vec<(Key, u64)>,
}

/// Verdicts per result, since startup.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    pub ok: u64,
    pub refused: u64,
    pub unreachable: u64,
    pub timeout: u64,
    pub error: u64,
}

impl Tally {
    pub fn count(&mut self, r: ProbeResult) {
        *match r {
            ProbeResult::Ok => &mut self.ok,
            ProbeResult::Refused => &mut self.refused,
            ProbeResult::Unreachable => &mut self.unreachable,
            ProbeResult::Timeout => &mut self.timeout,
            ProbeResult::Error => &mut self.error,
        } += 1;
    }
}

/// The bookkeeping of one round, free of I/O.
#[derive(Debug)]
pub struct Round {
    targets: Vec<Target>,
    next: usize,
    in_flight: usize,
    done: usize,
    pub started: Instant,
    pub tally: Tally,
}

impl Round {
    /// Groups forwards by management socket, in a stable order.
    pub fn new(
        forwards: impl Iterator<Item = (SocketAddrV4, Key, u64)>,
        started: Instant,
    ) -> Round {
        let mut by_mgmt: HashMap<SocketAddrV4, Vec<(Key, u64)>> = HashMap::new();
        for (mgmt, key, gen) in forwards {
            by_mgmt.entry(mgmt).or_default().push((key, gen));
        }
        let mut targets: Vec<Target> = by_mgmt
            .into_iter()
            .map(|(mgmt, forwards)| Target { mgmt, forwards })
            .collect();
        targets.sort_by_key(|t| t.mgmt);
        Round {
            targets,
            next: 0,
            in_flight: 0,
            done: 0,
            started,
            tally: Tally::default(),
        }
    }

    pub fn targets(&self) -> usize {
        self.targets.len()
    }

    /// The next target to connect to, if the concurrency bound allows.
    pub fn take(&mut self) -> Option<(usize, SocketAddrV4)> {
        if self.in_flight >= MAX_IN_FLIGHT || self.next >= self.targets.len() {
            return None;
        }
        let i = self.next;
        self.next += 1;
        self.in_flight += 1;
        Some((i, self.targets[i].mgmt))
    }

    /// Records the verdict on target `i`; returns the forwards it concerns.
    pub fn finish(&mut self, i: usize, result: ProbeResult) -> &[(Key, u64)] {
        self.in_flight -= 1;
        self.done += 1;
        self.tally.count(result);
        &self.targets[i].forwards
    }

    pub fn is_done(&self) -> bool {
        self.done == self.targets.len()
    }
}

/// A probe connect in flight.
pub struct ProbeConn {
    stream: TcpStream,
    target: usize,
    timer: Option<TimerId>,
}

fn classify(e: &io::Error) -> ProbeResult {
    match e.raw_os_error().map(Errno::from_raw) {
        Some(Errno::ECONNREFUSED | Errno::ECONNRESET) => ProbeResult::Refused,
        Some(Errno::EHOSTUNREACH | Errno::ENETUNREACH) => ProbeResult::Unreachable,
        Some(Errno::ETIMEDOUT) => ProbeResult::Timeout,
        _ => ProbeResult::Error,
    }
}

/// The outcome of a connect that reported an event, or `None` while it is
/// still in progress (mio may wake a connecting socket spuriously).
fn check(stream: &TcpStream) -> Option<ProbeResult> {
    match stream.take_error() {
        Ok(Some(e)) | Err(e) => return Some(classify(&e)),
        Ok(None) => {}
    }
    match stream.peer_addr() {
        Ok(_) => Some(ProbeResult::Ok),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => None,
        Err(e) => Some(classify(&e)),
    }
}

impl Daemon {
    pub(crate) fn probe_timeout(&self) -> Duration {
        self.probe_interval().min(MAX_TIMEOUT)
    }

    /// Starts a round over every forward in the table.
    pub(crate) fn start_probe_round(&mut self) {
        // Leased mappings (NAT-PMP, PCP) have no management socket: their
        // lease decides how long they live.
        let forwards = self
            .engine
            .table
            .entries()
            .filter(|e| e.fwd.lease.is_none())
            .map(|e| (e.fwd.mgmt(), e.fwd.key(), e.fwd.gen));
        let round = Round::new(forwards, Instant::now());
        debug!(
            "probe: {} forwards, {} management sockets",
            self.engine.table.len(),
            round.targets()
        );
        self.round = Some(round);
        self.probe_fill();
    }

    /// Starts connects up to the bound; ends the round when all are in.
    pub(crate) fn probe_fill(&mut self) {
        while let Some((i, mgmt)) = self.round.as_mut().and_then(Round::take) {
            match TcpStream::connect(SocketAddr::V4(mgmt)) {
                Ok(stream) => {
                    let deadline = Instant::now() + self.probe_timeout();
                    let conn = ProbeConn {
                        stream,
                        target: i,
                        timer: None,
                    };
                    let token = self.dynamic.insert(Dynamic::Probe(conn));
                    let Some(Dynamic::Probe(conn)) = self.dynamic.get_mut(token) else {
                        unreachable!()
                    };
                    if let Err(e) =
                        self.poll
                            .registry()
                            .register(&mut conn.stream, token, Interest::WRITABLE)
                    {
                        warn!("probe of {mgmt}: cannot watch the socket: {e}");
                        self.dynamic.remove(token);
                        self.probe_verdict(i, ProbeResult::Error);
                        continue;
                    }
                    conn.timer = Some(self.timers.schedule(deadline, Timer::ProbeTimeout(token)));
                }
                Err(e) => {
                    let r = classify(&e);
                    if r == ProbeResult::Error {
                        warn!("probe of {mgmt}: {e}");
                    }
                    self.probe_verdict(i, r);
                }
            }
        }
        if self.round.as_ref().is_some_and(Round::is_done) {
            let round = self.round.take().expect("checked");
            let t = &round.tally;
            let line = format!(
                "probe round done in {} ms: {} management sockets, ok {}, refused {}, unreachable {}, timeout {}, error {}",
                round.started.elapsed().as_millis(),
                round.targets(),
                t.ok,
                t.refused,
                t.unreachable,
                t.timeout,
                t.error
            );
            if t.refused + t.unreachable + t.timeout > 0 {
                info!("{line}");
            } else {
                debug!("{line}");
            }
            self.sync_due = true;
        }
    }

    /// A probe socket reported an event.
    pub(crate) fn on_probe_event(&mut self, token: Token) {
        let Some(Dynamic::Probe(conn)) = self.dynamic.get(token) else {
            return;
        };
        if let Some(result) = check(&conn.stream) {
            self.end_probe(token, result);
        }
    }

    /// A probe's deadline passed.
    pub(crate) fn on_probe_timeout(&mut self, token: Token) {
        if let Some(Dynamic::Probe(_)) = self.dynamic.get(token) {
            self.end_probe(token, ProbeResult::Timeout);
        }
    }

    fn end_probe(&mut self, token: Token, result: ProbeResult) {
        let Some(Dynamic::Probe(mut conn)) = self.dynamic.remove(token) else {
            return;
        };
        if let Some(timer) = conn.timer {
            self.timers.cancel(timer);
        }
        let _ = self.poll.registry().deregister(&mut conn.stream);
        if result == ProbeResult::Ok {
            // Reset rather than close, so no TIME_WAIT stays behind.
            let _ = setsockopt(
                &conn.stream,
                sockopt::Linger,
                &nix::libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                },
            );
        }
        drop(conn.stream);
        self.probe_verdict(conn.target, result);
        self.probe_fill();
    }

    /// Hands the verdict on target `i` to the engine and the tallies.
    fn probe_verdict(&mut self, i: usize, result: ProbeResult) {
        let Some(round) = self.round.as_mut() else {
            return;
        };
        let forwards = round.finish(i, result).to_vec();
        self.probes.count(result);
        for (key, gen) in forwards {
            self.engine.probe_result(key, gen, result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::Proto;
    use std::net::Ipv4Addr;

    fn key(port: u16) -> Key {
        Key {
            proto: Proto::Tcp,
            public: SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 1), port),
        }
    }

    #[test]
    fn shared_management_sockets_are_probed_once_and_concurrency_is_bounded() {
        let mgmt = |p| SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 10), p);
        let mut list = vec![(mgmt(1), key(40000), 1), (mgmt(1), key(40001), 2)];
        list.extend(
            (0..MAX_IN_FLIGHT as u16 + 5)
                .map(|i| (mgmt(100 + i), key(41000 + i), 10 + u64::from(i))),
        );
        let mut r = Round::new(list.into_iter(), Instant::now());
        assert_eq!(r.targets(), MAX_IN_FLIGHT + 6);
        let mut taken = Vec::new();
        while let Some(t) = r.take() {
            taken.push(t);
        }
        assert_eq!(taken.len(), MAX_IN_FLIGHT);
        assert_eq!(taken[0].1, mgmt(1));
        assert_eq!(
            r.finish(taken[0].0, ProbeResult::Ok),
            &[(key(40000), 1), (key(40001), 2)]
        );
        assert!(r.take().is_some(), "a finished connect frees a slot");
        assert!(!r.is_done());
        assert_eq!(r.tally.ok, 1);
    }

    #[test]
    fn errors_are_classified() {
        let e = |n: Errno| io::Error::from_raw_os_error(n as i32);
        assert_eq!(classify(&e(Errno::ECONNREFUSED)), ProbeResult::Refused);
        assert_eq!(classify(&e(Errno::EHOSTUNREACH)), ProbeResult::Unreachable);
        assert_eq!(classify(&e(Errno::ENETUNREACH)), ProbeResult::Unreachable);
        assert_eq!(classify(&e(Errno::EMFILE)), ProbeResult::Error);
    }

    #[test]
    fn empty_round_is_done_at_once() {
        let r = Round::new(std::iter::empty(), Instant::now());
        assert!(r.is_done());
    }
}
