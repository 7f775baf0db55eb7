//! The program's non-blocking connects being brokered (`connecting`), as the
//! registry holds them: each job and the stage it stands at, with the
//! sockets of its own it holds there; and, outside the lock, the per-fd
//! atomics that say whether a job is still live (`LIVE`), that bring new
//! jobs to the responder ([`hand_over`]) and that keep the errors for
//! `SO_ERROR` ([`keep_error`]), so the program's `connect` and `getsockopt`
//! never wait for the responder. Plain data and its bookkeeping (moved fds, a
//! forked child's share); `connecting` and its steps drive the jobs.

use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use libc::c_int;
use proto::gcb::{Decision, Frame, Message, StreamPeer, Token};
use proto::rudp::RetryPolicy;

use crate::client::exchange::Exchange;
use crate::client::family::Family;
use crate::client::sys::Sock;
use crate::fdtable;
use crate::gcb::punch::{Held, Session};
use crate::gcb::reversal_listener::TempListener;

/// A `Connect` ready to go (`ask::prepare_ask`): its socket (connected to
/// the command port at `cmd`), the temporary listener named in it, and the
/// retry policy.
pub(crate) struct Asking {
    pub probe: Sock,
    pub cmd: SocketAddrV4,
    pub tmp: Option<TempListener>,
    pub msg: Message,
    pub policy: RetryPolicy,
    /// `cmd` is one of our own brokers.
    pub ours: bool,
    /// The rendezvous connection opened beside the `Connect` (`punch::early`).
    pub early: Option<super::super::punch::Early>,
    /// The `Connect`'s request id, random: the early hello names it.
    pub request_id: u64,
}

/// Where a job stands.
pub(crate) enum Stage {
    /// Not started: the responder sends the `Connect`.
    New,
    Asking(Box<Asking>, Exchange),
    /// A plain TCP connect to `to` (direct, same realm, or no broker there).
    Dialing { sock: Sock, decision: Option<Decision> },
    Relaying { sock: Sock, token: Token, said_hello: bool, buf: [u8; StreamPeer::LEN], have: usize, decision: Decision },
    Reversing { tmp: TempListener, notices: Option<Sock>, token: Token, unspoken: Vec<Sock>, decision: Decision },
    /// A hole punch met at the broker's rendezvous (`punch`).
    Punching { session: Box<Session>, via: SocketAddrV4, token: Token, early: bool },
    /// A standby connection claimed (`standby`): the listener's answer is
    /// awaited, until the job's deadline; at `lost_check`, if set, whether
    /// the claim was acknowledged at all.
    Claiming { conn: Held, claimed: Instant, lost_check: Option<Instant> },
}

/// One non-blocking connect being brokered.
pub struct Job {
    pub(crate) id: u32,
    /// The program's fd, holding the placeholder until the swap.
    pub(crate) app_fd: c_int,
    /// An internal duplicate of the placeholder: proves the fd still holds it,
    /// and wakes waiters on it once the fd holds the connection.
    pub(crate) placeholder: c_int,
    pub(crate) dest: SocketAddrV4,
    pub(crate) family: Family,
    pub(crate) since: Instant,
    pub(crate) deadline: Instant,
    pub(crate) stage: Stage,
}

impl Drop for Job {
    fn drop(&mut self) {
        crate::internal::release(self.placeholder);
    }
}

/// Per program fd, the id of its live job; 0 when it has none (cancelled,
/// done, or never). Fds beyond the table are never brokered in the
/// background.
static LIVE: [AtomicU32; fdtable::CAPACITY] = [const { AtomicU32::new(0) }; fdtable::CAPACITY];

pub(crate) fn live_slot(fd: c_int) -> Option<&'static AtomicU32> {
    usize::try_from(fd).ok().and_then(|i| LIVE.get(i))
}

pub(crate) fn is_live(fd: c_int, id: u32) -> bool {
    live_slot(fd).is_some_and(|s| s.load(Ordering::Acquire) == id)
}

/// A non-blocking connect as the program's thread hands it to the responder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Request {
    pub id: u32,
    pub app_fd: c_int,
    pub placeholder: c_int,
    pub dest: SocketAddrV4,
    pub family: Family,
    /// `CLOCK_MONOTONIC` when `connect` was called, in nanoseconds ([`monotonic_ns`]).
    pub since_ns: u64,
}

/// Requests on their way to the responder, kept per program fd in plain
/// atomics with a bitmap of the fds whose request waits. `connect` neither
/// allocates nor locks to leave one (an allocation takes the allocator's
/// lock, which the responder may hold while it frees, and a thread that
/// waits for it can lose its CPU for milliseconds on a loaded machine).
///
/// A bit is set (Release) once its fd's fields are written, and cleared
/// (Acquire) by whoever takes them, under the registry lock ([`take_all`]).
/// The fields of an fd are written again only by a later `connect` on the
/// same number, after the program closed it; a close takes the waiting
/// request under the registry lock first (`connecting::cancel`), so fields
/// are never written before they were read.
static PLACEHOLDER_AND_ID: [AtomicU64; fdtable::CAPACITY] = [const { AtomicU64::new(0) }; fdtable::CAPACITY];
static DEST_AND_FAMILY: [AtomicU64; fdtable::CAPACITY] = [const { AtomicU64::new(0) }; fdtable::CAPACITY];
static SINCE_NS: [AtomicU64; fdtable::CAPACITY] = [const { AtomicU64::new(0) }; fdtable::CAPACITY];
static WAITING: [AtomicU64; fdtable::CAPACITY / 64] = [const { AtomicU64::new(0) }; fdtable::CAPACITY / 64];
/// Set after a bit of [`WAITING`], so a round with nothing new skips the scan.
static ANY_WAITING: AtomicBool = AtomicBool::new(false);

/// `CLOCK_MONOTONIC` in nanoseconds: the clock `Instant` reads on Linux.
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: writes the struct we pass; vDSO, never hooked.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

/// The `Instant` a [`monotonic_ns`] reading stands for, as seen from `now`.
pub(crate) fn instant_of(since_ns: u64, now: Instant) -> Instant {
    let age = std::time::Duration::from_nanos(monotonic_ns().saturating_sub(since_ns));
    now.checked_sub(age).unwrap_or(now)
}

/// Leaves `r` for the responder. Its fd has a [`live_slot`], so it is
/// inside the tables.
pub(crate) fn hand_over(r: Request) {
    let Some(i) = usize::try_from(r.app_fd).ok().filter(|&i| i < fdtable::CAPACITY) else {
        return;
    };
    let (ip, port) = (u32::from(*r.dest.ip()) as u64, r.dest.port() as u64);
    let fam = matches!(r.family, Family::Mapped) as u64;
    PLACEHOLDER_AND_ID[i].store(((r.placeholder as u32 as u64) << 32) | r.id as u64, Ordering::Relaxed);
    DEST_AND_FAMILY[i].store((ip << 32) | (port << 16) | fam, Ordering::Relaxed);
    SINCE_NS[i].store(r.since_ns, Ordering::Relaxed);
    WAITING[i / 64].fetch_or(1 << (i % 64), Ordering::Release);
    // A read-modify-write, so the taker that reads it synchronises with
    // every thread that set it, not only the last.
    ANY_WAITING.swap(true, Ordering::Release);
}

/// Takes `fd`'s request back if it still waits (true: the caller owns its
/// placeholder again).
pub(crate) fn withdraw(fd: c_int) -> bool {
    let Some(i) = usize::try_from(fd).ok().filter(|&i| i < fdtable::CAPACITY) else {
        return false;
    };
    let bit = 1u64 << (i % 64);
    WAITING[i / 64].fetch_and(!bit, Ordering::AcqRel) & bit != 0
}

/// The fds whose bits are set in `bits`, word `w` of [`WAITING`].
fn fds_of(w: usize, mut bits: u64) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        let i = (bits != 0).then(|| w * 64 + bits.trailing_zeros() as usize)?;
        bits &= bits - 1;
        Some(i)
    })
}

/// A waiting request's placeholder moved from `old` to `new` (the program
/// `dup2`ed onto its number); false if none has it. Under the registry
/// lock, as [`take_all`].
fn retarget_waiting(old: c_int, new: c_int) -> bool {
    let waiting = WAITING.iter().enumerate().flat_map(|(w, word)| fds_of(w, word.load(Ordering::Acquire)));
    for i in waiting {
        let pid = PLACEHOLDER_AND_ID[i].load(Ordering::Relaxed);
        if (pid >> 32) as u32 as c_int == old {
            PLACEHOLDER_AND_ID[i].store(((new as u32 as u64) << 32) | (pid & 0xffff_ffff), Ordering::Relaxed);
            return true;
        }
    }
    false
}

/// Every request left since the last call, lowest fd first. Called under
/// the registry lock, so at most one thread takes them.
pub(crate) fn take_all() -> Vec<Request> {
    if !ANY_WAITING.swap(false, Ordering::Acquire) {
        return Vec::new();
    }
    take_every_bit()
}

/// [`take_all`] without trusting [`ANY_WAITING`]: a child forked between
/// another thread's bit and its flag has the bit alone.
fn take_every_bit() -> Vec<Request> {
    let taken = |word: &AtomicU64| if word.load(Ordering::Relaxed) == 0 { 0 } else { word.swap(0, Ordering::Acquire) };
    let waiting = WAITING.iter().enumerate().flat_map(|(w, word)| fds_of(w, taken(word)));
    waiting
        .map(|i| {
            let pid = PLACEHOLDER_AND_ID[i].load(Ordering::Relaxed);
            let daf = DEST_AND_FAMILY[i].load(Ordering::Relaxed);
            Request {
                id: pid as u32,
                app_fd: i as c_int,
                placeholder: (pid >> 32) as u32 as c_int,
                dest: SocketAddrV4::new(std::net::Ipv4Addr::from((daf >> 32) as u32), (daf >> 16) as u16),
                family: if daf & 1 == 1 { Family::Mapped } else { Family::V4 },
                since_ns: SINCE_NS[i].load(Ordering::Relaxed),
            }
        })
        .collect()
}

/// Per program fd, the error a failed brokered connect keeps for
/// `getsockopt(SO_ERROR)` (0: none). An event loop asks after every
/// connect; without a lock it never waits for a responder round.
static KEPT_ERRORS: [AtomicI32; fdtable::CAPACITY] = [const { AtomicI32::new(0) }; fdtable::CAPACITY];

/// Keeps `e` (0: none) as `fd`'s error for `SO_ERROR`.
pub(crate) fn keep_error(fd: c_int, e: c_int) {
    if let Some(slot) = usize::try_from(fd).ok().and_then(|i| KEPT_ERRORS.get(i)) {
        slot.store(e, Ordering::Release);
    }
}

/// The error kept for `fd`, once (a `vfork` child reads it and leaves it to
/// the parent, whose memory it shares).
pub(crate) fn take_error(fd: c_int) -> Option<c_int> {
    let slot = usize::try_from(fd).ok().and_then(|i| KEPT_ERRORS.get(i))?;
    // A load first: the common answer (none) writes nothing.
    match slot.load(Ordering::Acquire) {
        0 => None,
        e if crate::process::borrowed() => Some(e),
        _ => Some(slot.swap(0, Ordering::AcqRel)).filter(|&e| e != 0),
    }
}

/// The jobs the responder works on.
#[derive(Default)]
pub struct Connects {
    pub(crate) jobs: Vec<Job>,
}

impl std::fmt::Debug for Connects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connects").field("jobs", &self.jobs.len()).finish()
    }
}

impl Connects {
    /// A forked child's copies of its parent's jobs are the parent's.
    pub fn forget_in_child(&mut self) {
        let forget = |fd: c_int| {
            if let Some(slot) = live_slot(fd) {
                slot.store(0, Ordering::Release);
            }
        };
        // A dropped job releases its placeholder; a request has none to drop.
        for job in self.jobs.drain(..) {
            forget(job.app_fd);
        }
        for r in take_every_bit() {
            forget(r.app_fd);
            crate::internal::release(r.placeholder);
        }
    }

    /// An internal fd of a job moved (the program `dup2`ed onto its number).
    pub fn moved(&mut self, old: c_int, new: c_int) -> bool {
        if let Some(j) = self.jobs.iter_mut().find(|j| j.placeholder == old) {
            j.placeholder = new;
            return true;
        }
        // A claimed standby, an early rendezvous and a punch's sockets are
        // internal.
        let ours = self.jobs.iter_mut().any(|j| match &mut j.stage {
            Stage::Claiming { conn, .. } => conn.renumber(old, new),
            Stage::Punching { session, .. } => session.renumber(old, new),
            Stage::Asking(asking, _) => asking.early.as_mut().is_some_and(|e| e.renumber(old, new)),
            _ => false,
        });
        ours || retarget_waiting(old, new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(app_fd: c_int, placeholder: c_int, family: Family) -> Request {
        let dest = SocketAddrV4::new(std::net::Ipv4Addr::new(203, 0, 113, 10), 20_000 + (app_fd % 1_000) as u16);
        Request { id: 7_000 + app_fd as u32, app_fd, placeholder, dest, family, since_ns: monotonic_ns() }
    }

    /// The only test in this process that hands requests over: `take_all`
    /// takes every waiting one.
    #[test]
    fn requests_come_back_whole_once_follow_a_moved_placeholder_and_can_be_withdrawn() {
        assert!(take_all().is_empty(), "nothing waits at first");
        // Fds across word boundaries, the table's last one, and both families.
        let sent = [request(3, 1_001, Family::V4), request(64, 1_002, Family::Mapped), request(65_535, 65_534, Family::V4)];
        for r in sent {
            hand_over(r);
        }
        assert!(retarget_waiting(1_002, 1_010), "a waiting request's placeholder is found");
        assert!(!retarget_waiting(4_444, 4_445), "and only one that exists");
        let mut want = sent.to_vec();
        want[1].placeholder = 1_010;
        assert_eq!(take_all(), want);
        assert!(take_all().is_empty(), "each request is taken once");
        // A request past the table is never left (its connect is brokered in the call).
        hand_over(request(fdtable::CAPACITY as c_int, 5, Family::V4));
        assert!(take_all().is_empty());
        // A request withdrawn before it is taken is gone, once.
        hand_over(request(9, 1_003, Family::V4));
        assert!(withdraw(9) && !withdraw(9));
        assert!(take_all().is_empty());
        let earlier = monotonic_ns() - 250_000_000;
        let now = Instant::now();
        let then = instant_of(earlier, now);
        assert!(now - then >= std::time::Duration::from_millis(250) && now - then < std::time::Duration::from_secs(5));
    }
}
