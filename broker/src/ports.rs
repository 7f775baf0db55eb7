//! The pool of proxy ports of one protocol, and the policy for choosing one.
//!
//! A proxy address is an identity: clients advertise it (Condor puts it in
//! ClassAds that other daemons cache for up to `CLASSAD_LIFETIME`, 15 min by
//! default). So the policy guards against one client's stale address
//! reaching another client:
//!
//! 1. The client's `desired_port` (its port before a broker restart) is
//!    taken if it is in the range, not in use, and not quarantined for
//!    someone else.
//! 2. Otherwise a **random** free port. Random rather than lowest-free:
//!    after a restart the broker has forgotten which ports were in use, and
//!    clients come back over a heartbeat interval asking for their old
//!    ports; lowest-free would hand exactly those ports to whoever registers
//!    first, while a random choice collides only with probability
//!    `used / range`.
//! 3. A released port is **quarantined** for [`QUARANTINE`]: given to
//!    nobody but its previous owner (same local address, same public IP),
//!    so a re-registering client gets it back and a stranger does not
//!    inherit traffic meant for it.
//! 4. Only when nothing else is left are quarantined ports reused, oldest
//!    first: a possibly stale address is better than refusing service.
//!
//! A client may also *require* a port (`Register` with `port_required`: the
//! application bound its socket to that proxy address itself, typically the
//! one it advertised before a restart). [`allocate_exact`](PortPool::allocate_exact)
//! gives that port or nothing; a port quarantined for a socket of the same
//! public IP counts as available, since a restarted daemon comes back with a
//! new local port but asks for exactly the address it advertised.
//!
//! Ports another program holds on the host are found by the bind failing
//! (EADDRINUSE), and skipped; a bounded number of failures ends the search,
//! so a range mostly taken by others cannot stall the event loop.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use crate::values::PortRange;
use daemon_kit::random::SplitMix64;

/// How long a released port is kept for its previous owner.
pub const QUARANTINE: Duration = Duration::from_secs(15 * 60);
/// Random probes before scanning the range in order.
const RANDOM_PROBES: usize = 32;
/// Binds that may fail with EADDRINUSE in one allocation.
const MAX_BIND_FAILURES: usize = 64;

/// Who held a port: the only party that may take it back early.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Owner {
    /// The registered socket's local address.
    pub local: SocketAddrV4,
    /// The client's public (source) IP.
    pub ip: Ipv4Addr,
}

/// Why no port could be had.
#[derive(Debug)]
pub enum AllocError {
    /// Every port of the range is in use (by us or by others).
    Exhausted,
    /// A bind failed for a reason another port would not fix (EMFILE, ...).
    Bind(io::Error),
}

#[derive(Debug, Clone, Copy)]
struct Quarantined {
    until: Instant,
    owner: Owner,
}

#[derive(Debug)]
pub struct PortPool {
    range: PortRange,
    in_use: HashSet<u16>,
    quarantine: HashMap<u16, Quarantined>,
    /// Quarantined ports in release order (oldest first); may hold stale
    /// entries for ports taken back early, skipped when met.
    order: VecDeque<u16>,
    hold: Duration,
}

impl PortPool {
    pub fn new(range: PortRange, hold: Duration) -> Self {
        PortPool {
            range,
            in_use: HashSet::new(),
            quarantine: HashMap::new(),
            order: VecDeque::new(),
            hold,
        }
    }

    /// Ports bound by registrations right now.
    pub fn in_use(&self) -> usize {
        self.in_use.len()
    }

    /// Ports held back for their previous owners right now.
    pub fn quarantined(&self) -> usize {
        self.quarantine.len()
    }

    /// Ports a new client could get without touching the quarantine (some
    /// may turn out to be held by other programs).
    pub fn free(&self) -> usize {
        self.range.len() as usize - self.in_use.len() - self.quarantine.len()
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&port) = self.order.front() {
            match self.quarantine.get(&port) {
                Some(q) if q.until > now => break,
                Some(_) => {
                    self.quarantine.remove(&port);
                }
                None => {}
            }
            self.order.pop_front();
        }
    }

    fn available_to(&self, port: u16, owner: &Owner) -> bool {
        self.range.contains(port)
            && !self.in_use.contains(&port)
            && !matches!(self.quarantine.get(&port), Some(q) if q.owner != *owner)
    }

    /// Chooses a port by the policy in the module docs and binds it with
    /// `bind`, which returns the socket (or the bind error). On success the
    /// port is in use until [`release`](Self::release)d.
    pub fn allocate<S>(
        &mut self,
        desired: Option<u16>,
        owner: &Owner,
        now: Instant,
        rng: &mut SplitMix64,
        mut bind: impl FnMut(u16) -> io::Result<S>,
    ) -> Result<(u16, S), AllocError> {
        self.expire(now);
        let mut failures = 0;
        let mut attempt = |pool: &mut PortPool, port: u16| -> Result<Option<S>, AllocError> {
            match bind(port) {
                Ok(s) => {
                    pool.in_use.insert(port);
                    pool.quarantine.remove(&port);
                    Ok(Some(s))
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                    failures += 1;
                    if failures >= MAX_BIND_FAILURES {
                        return Err(AllocError::Exhausted);
                    }
                    Ok(None)
                }
                Err(e) => Err(AllocError::Bind(e)),
            }
        };
        if let Some(port) = desired.filter(|p| self.available_to(*p, owner)) {
            if let Some(s) = attempt(self, port)? {
                return Ok((port, s));
            }
        }
        let stranger = |pool: &PortPool, port: u16| {
            !pool.in_use.contains(&port) && !pool.quarantine.contains_key(&port)
        };
        let (lo, len) = (self.range.lo, u64::from(self.range.len()));
        let pick = |rng: &mut SplitMix64| lo + rng.below(len) as u16;
        for _ in 0..RANDOM_PROBES {
            let port = pick(rng);
            if stranger(self, port) {
                if let Some(s) = attempt(self, port)? {
                    return Ok((port, s));
                }
            }
        }
        // Dense range: walk it once from a random start.
        let start = pick(rng);
        for i in 0..len {
            let port = lo + ((u64::from(start - lo) + i) % len) as u16;
            if stranger(self, port) {
                if let Some(s) = attempt(self, port)? {
                    return Ok((port, s));
                }
            }
        }
        let oldest: Vec<u16> = self.order.iter().copied().collect();
        for port in oldest {
            if self.quarantine.contains_key(&port) && !self.in_use.contains(&port) {
                if let Some(s) = attempt(self, port)? {
                    return Ok((port, s));
                }
            }
        }
        Err(AllocError::Exhausted)
    }

    /// Takes exactly `port` for `owner` (module docs) and binds it with
    /// `bind`; `Exhausted` when it is out of range, in use by a client or
    /// another program, or quarantined for a client of another public IP.
    pub fn allocate_exact<S>(
        &mut self,
        port: u16,
        owner: &Owner,
        now: Instant,
        bind: impl FnOnce(u16) -> io::Result<S>,
    ) -> Result<S, AllocError> {
        self.expire(now);
        let stranger = matches!(self.quarantine.get(&port), Some(q) if q.owner.ip != owner.ip);
        if !self.range.contains(port) || self.in_use.contains(&port) || stranger {
            return Err(AllocError::Exhausted);
        }
        match bind(port) {
            Ok(s) => {
                self.in_use.insert(port);
                self.quarantine.remove(&port);
                Ok(s)
            }
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(AllocError::Exhausted),
            Err(e) => Err(AllocError::Bind(e)),
        }
    }

    /// Gives a port back; it is quarantined for `owner`.
    pub fn release(&mut self, port: u16, owner: Owner, now: Instant) {
        if self.in_use.remove(&port) {
            self.quarantine.insert(
                port,
                Quarantined {
                    until: now + self.hold,
                    owner,
                },
            );
            self.order.push_back(port);
        }
    }

    /// Gives back a port that was never advertised (registering failed after
    /// the bind): no quarantine needed.
    pub fn abandon(&mut self, port: u16) {
        self.in_use.remove(&port);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RANGE: PortRange = PortRange { lo: 100, hi: 109 };

    fn owner(n: u8) -> Owner {
        Owner {
            local: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, n), 80),
            ip: Ipv4Addr::new(198, 51, 100, n),
        }
    }

    fn ok(_: u16) -> io::Result<()> {
        Ok(())
    }

    fn take(pool: &mut PortPool, desired: Option<u16>, who: u8, now: Instant) -> u16 {
        let mut rng = SplitMix64::new(u64::from(who) + 7);
        pool.allocate(desired, &owner(who), now, &mut rng, ok)
            .unwrap()
            .0
    }

    #[test]
    fn desired_port_is_honoured_when_free() {
        let t = Instant::now();
        let mut pool = PortPool::new(RANGE, QUARANTINE);
        assert_eq!(take(&mut pool, Some(105), 1, t), 105);
        // Taken: the next client with the same wish gets another port.
        let other = take(&mut pool, Some(105), 2, t);
        assert!(RANGE.contains(other) && other != 105);
        // Out of range: ignored.
        assert!(RANGE.contains(take(&mut pool, Some(5), 3, t)));
        assert_eq!((pool.in_use(), pool.free()), (3, 7));
    }

    #[test]
    fn released_port_is_quarantined_for_its_owner_only() {
        let t = Instant::now();
        let mut pool = PortPool::new(RANGE, Duration::from_secs(60));
        assert_eq!(take(&mut pool, Some(103), 1, t), 103);
        pool.release(103, owner(1), t);
        assert_eq!((pool.quarantined(), pool.free()), (1, 9));
        // Nobody else gets it, by wish or by chance, while ports are left.
        for who in 2..11 {
            assert_ne!(take(&mut pool, Some(103), who, t), 103);
        }
        // The owner does, even in quarantine.
        assert_eq!(take(&mut pool, Some(103), 1, t), 103);
        assert_eq!(pool.quarantined(), 0);
        pool.release(103, owner(1), t);
        pool.abandon(100);
        // After the quarantine, anyone may have it.
        let later = t + Duration::from_secs(61);
        assert_eq!(take(&mut pool, Some(103), 4, later), 103);
    }

    #[test]
    fn a_required_port_is_that_port_or_nothing() {
        let t = Instant::now();
        let mut pool = PortPool::new(RANGE, Duration::from_secs(60));
        assert!(pool.allocate_exact(104, &owner(1), t, ok).is_ok());
        let taken = pool.allocate_exact(104, &owner(2), t, ok);
        assert!(matches!(taken, Err(AllocError::Exhausted)), "in use");
        assert!(matches!(pool.allocate_exact(5, &owner(2), t, ok), Err(AllocError::Exhausted)), "out of range");
        let busy = |_| -> io::Result<()> { Err(io::ErrorKind::AddrInUse.into()) };
        assert!(matches!(pool.allocate_exact(106, &owner(2), t, busy), Err(AllocError::Exhausted)), "held by another program");
        let broken = |_| -> io::Result<()> { Err(io::Error::from_raw_os_error(libc::EMFILE)) };
        assert!(matches!(pool.allocate_exact(106, &owner(2), t, broken), Err(AllocError::Bind(_))));
        assert_eq!(pool.in_use(), 1, "failures take nothing");
        // Released: quarantined for its owner's public IP, whatever the local
        // socket (a restarted daemon has a new local port), not for strangers.
        pool.release(104, owner(1), t);
        assert!(matches!(pool.allocate_exact(104, &owner(2), t, ok), Err(AllocError::Exhausted)));
        let restarted = Owner {
            local: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 9), 41000),
            ..owner(1)
        };
        assert!(pool.allocate_exact(104, &restarted, t, ok).is_ok());
        assert_eq!((pool.in_use(), pool.quarantined()), (1, 0));
    }

    #[test]
    fn quarantined_ports_are_reused_oldest_first_when_nothing_else_is_left() {
        let t = Instant::now();
        let mut pool = PortPool::new(PortRange { lo: 100, hi: 102 }, QUARANTINE);
        for p in 100..=102 {
            assert_eq!(take(&mut pool, Some(p), 1, t), p);
        }
        pool.release(101, owner(1), t);
        pool.release(100, owner(1), t + Duration::from_secs(1));
        assert_eq!(take(&mut pool, None, 2, t), 101);
        assert_eq!(take(&mut pool, None, 2, t), 100);
        let mut rng = SplitMix64::new(1);
        assert!(matches!(
            pool.allocate(None, &owner(3), t, &mut rng, ok),
            Err(AllocError::Exhausted)
        ));
    }

    #[test]
    fn ports_held_by_other_programs_are_skipped_and_other_errors_stop() {
        let t = Instant::now();
        let mut pool = PortPool::new(RANGE, QUARANTINE);
        let mut rng = SplitMix64::new(3);
        let busy = |p: u16| {
            if p == 109 {
                Ok(p)
            } else {
                Err(io::Error::from(io::ErrorKind::AddrInUse))
            }
        };
        let (port, s) = pool
            .allocate(Some(101), &owner(1), t, &mut rng, busy)
            .unwrap();
        assert_eq!((port, s), (109, 109));
        assert_eq!(pool.in_use(), 1, "failed binds take nothing");
        let emfile = |_: u16| -> io::Result<()> { Err(io::Error::from_raw_os_error(24)) };
        assert!(matches!(
            pool.allocate(None, &owner(1), t, &mut rng, emfile),
            Err(AllocError::Bind(_))
        ));
        let taken = |_: u16| -> io::Result<()> { Err(io::ErrorKind::AddrInUse.into()) };
        assert!(matches!(
            pool.allocate(None, &owner(1), t, &mut rng, taken),
            Err(AllocError::Exhausted)
        ));
    }

    #[test]
    fn random_choice_spreads_over_the_range() {
        let t = Instant::now();
        let mut seen = HashSet::new();
        for seed in 0..50 {
            let mut pool = PortPool::new(RANGE, QUARANTINE);
            let mut rng = SplitMix64::new(seed);
            seen.insert(pool.allocate(None, &owner(1), t, &mut rng, ok).unwrap().0);
        }
        assert!(seen.len() >= 5, "not spread: {seen:?}");
    }
}
