//! The program's non-blocking brokered connects, carried by the responder.
//!
//! `connect` on a non-blocking watched socket returns EINPROGRESS at once,
//! with no round trip inside the call: the socket is parked in SYN_SENT on
//! the process's gate (`gate`), marked `Connecting`, and handed to the
//! responder as a [`Job`] (its record is in `registry::connects`). The
//! responder asks the broker, dials (directly, at the broker's rendezvous, or
//! waits for the listener's reversed connection) on sockets of its own, and when the connection is established end to end,
//! or has failed, puts it on the program's fd number (`swap`): the socket
//! becomes writable, and `SO_ERROR` says how it went, through the program's
//! own `select`, `poll`, `epoll` or library loop, as a kernel connect would.
//! The placeholder is shut down after the swap, which wakes a `poll` or
//! `select` another thread was blocked in on the old file.
//!
//! A failure the kernel would report with another errno than ECONNREFUSED
//! (ETIMEDOUT for a listener that stays silent, or an out-of-resources error)
//! is kept for `getsockopt(SO_ERROR)` ([`so_error`]), since the socket put on
//! the fd is a refused one (`gate::refused`).
//!
//! The program may close the fd (or `dup2` over it) meanwhile: the job is
//! then cancelled ([`cancel`]), and a swap happens only under the registry
//! lock while the job is still live and the fd still holds the placeholder
//! (`kcmp`), so it never lands on a number the program has reused.
//!
//! `connect` itself takes no lock and allocates nothing (the allocator has
//! locks of its own): on a loaded machine a thread that waits for a lock the
//! responder holds can lose its CPU for milliseconds, and an event loop must
//! not. A standby connection (`standby`) is claimed by the responder too.
//! A job goes to the responder as a [`Request`] in per-fd atomics
//! (`registry::connects::hand_over`), and whether it is still live is one
//! atomic per fd (`LIVE`, beside it): the job's id while it is, 0 once
//! cancelled or done.
//!
//! Limits: the socket is replaced, so a local address bound before `connect`
//! is not kept (such sockets are brokered inside the call instead, see
//! `connector`); a `dup` of a connecting socket keeps the placeholder; a
//! child forked meanwhile keeps a placeholder that never connects.

mod steps;

use steps::{advance, Step};

use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use libc::c_int;

use super::ask;
use super::registry::connects::{self, is_live, live_slot, Job, Request, Stage};
use super::registry::{Names, Registry};
use super::swap::{put_on, AppSocket};
use crate::client::family::{self, Family};
use crate::client::sys::{self, Errno};
use crate::fdtable::{self, Kind};
use crate::{process, real};

/// Bound on a brokered connect (the blocking path's too, `dial::PAIR_TIMEOUT`).
const CONNECT_TIMEOUT: Duration = super::dial::PAIR_TIMEOUT;
/// Ids of jobs, for `registry::connects::LIVE`; 0 is none.
static NEXT_ID: AtomicU32 = AtomicU32::new(1);

/// Moves the requests left since the last round into the registry (the
/// responder, or a close, under the lock); cancelled ones are dropped.
pub fn take_incoming(reg: &mut Registry) {
    let now = Instant::now();
    for r in connects::take_all() {
        let since = connects::instant_of(r.since_ns, now);
        let job = Job { id: r.id, app_fd: r.app_fd, placeholder: r.placeholder, dest: r.dest, family: r.family, since, deadline: since + CONNECT_TIMEOUT, stage: Stage::New };
        if is_live(job.app_fd, job.id) {
            reg.connects.jobs.push(job);
        }
    }
}

/// Starts brokering a non-blocking connect of watched socket `fd` to `dest`;
/// `Some(-1)` with EINPROGRESS, or `None` when it must be brokered inside the
/// call (the socket is bound, there is no gate, or no responder here).
pub fn start(fd: c_int, dest: SocketAddrV4, fam: Family) -> Option<c_int> {
    let since_ns = connects::monotonic_ns();
    // Fds beyond the per-fd tables are brokered inside the call.
    let slot = live_slot(fd)?;
    if process::borrowed() || sys::local_addr(fd).is_ok_and(|a| a.port() != 0) {
        return None;
    }
    let gate = super::gate::at()?;
    // SAFETY: duplicating the program's socket to a high, close-on-exec number.
    let dup = unsafe { real::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return None;
    }
    let placeholder = crate::internal::adopt(dup);
    let raw = family::encode(gate, fam);
    // SAFETY: a valid address of the stated length.
    let r = unsafe { real::connect(fd, raw.ptr(), raw.len()) };
    if r == 0 || crate::guard::errno() != libc::EINPROGRESS {
        log!(Warn, "the gate did not hold a connect ({}); connecting to {dest} inside the call", std::io::Error::last_os_error());
        crate::internal::release(placeholder);
        return None;
    }
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed).max(1);
    slot.store(id, Ordering::Release);
    if !fdtable::replace(fd, Kind::Watched, Kind::Connecting) {
        // Another thread closed or replaced the fd during the call.
        slot.store(0, Ordering::Release);
        crate::internal::release(placeholder);
        crate::guard::set_errno(libc::EBADF);
        return Some(-1);
    }
    connects::hand_over(Request { id, app_fd: fd, placeholder, dest, family: fam, since_ns });
    if slot.load(Ordering::Acquire) != id && connects::withdraw(fd) {
        // Closed by another thread before the request was published: the
        // close found nothing to cancel, so the placeholder is ours to drop.
        crate::internal::release(placeholder);
    }
    super::state::ensure_responder();
    crate::guard::set_errno(libc::EINPROGRESS);
    Some(-1)
}

/// The program closed `fd` (or replaced it): its job is dropped.
pub fn cancel(reg: &mut Registry, fd: c_int) {
    if let Some(slot) = live_slot(fd) {
        if slot.load(Ordering::Acquire) != 0 {
            // A request the responder has not taken yet becomes a job here,
            // dropped below with the fd's others (its fields may then be
            // written again by a connect on the reused number).
            take_incoming(reg);
        }
        if slot.swap(0, Ordering::AcqRel) != 0 {
            reg.connects.jobs.retain(|j| j.app_fd != fd);
        }
    }
    connects::keep_error(fd, 0);
}

/// `getsockopt(fd, SOL_SOCKET, SO_ERROR, ...)` on a named connection: the
/// error kept for a failed brokered connect, once, if there is one (the
/// kernel's own is cleared with it); else the kernel's.
///
/// # Safety
///
/// The C contract of `getsockopt`.
pub unsafe fn getsockopt_error(fd: c_int, value: *mut libc::c_void, len: *mut libc::socklen_t) -> c_int {
    let r = real::getsockopt(fd, libc::SOL_SOCKET, libc::SO_ERROR, value, len);
    if r == 0 && !value.is_null() && !len.is_null() && *len as usize >= std::mem::size_of::<c_int>() {
        if let Some(e) = connects::take_error(fd) {
            std::ptr::write_unaligned(value.cast::<c_int>(), e);
        }
    }
    r
}

/// The fds the responder waits on, with their events.
pub fn poll_fds(reg: &Registry) -> Vec<(c_int, i16)> {
    let mut out = Vec::new();
    for j in &reg.connects.jobs {
        match &j.stage {
            Stage::New => {}
            Stage::Asking(a, _) => out.push((a.probe.raw(), libc::POLLIN)),
            Stage::Dialing { sock, .. } => out.push((sock.raw(), libc::POLLOUT)),
            Stage::Relaying { sock, said_hello, .. } => out.push((sock.raw(), if *said_hello { libc::POLLIN } else { libc::POLLOUT })),
            Stage::Reversing { tmp, notices, unspoken, .. } => {
                out.push((tmp.raw(), libc::POLLIN));
                out.extend(notices.iter().map(|n| (n.raw(), libc::POLLIN)));
                out.extend(unspoken.iter().map(|u| (u.raw(), libc::POLLIN)));
            }
            Stage::Punching { session, .. } => session.poll_fds(&mut out),
            Stage::Claiming { conn, .. } => out.push((conn.raw(), libc::POLLIN)),
        }
    }
    out
}

/// When the responder must look at the jobs again without an event.
pub fn next_deadline(reg: &Registry) -> Option<Instant> {
    let now = Instant::now();
    reg.connects
        .jobs
        .iter()
        .map(|j| match &j.stage {
            Stage::New => now,
            Stage::Asking(_, ex) => ex.next_deadline().unwrap_or(now).min(j.deadline),
            Stage::Punching { session, .. } => session.next_deadline().min(j.deadline),
            Stage::Claiming { lost_check: Some(at), .. } => (*at).min(j.deadline),
            _ => j.deadline,
        })
        .min()
}

/// The responder's work on job socket `fd`, ready with `revents`.
pub fn progress(fd: c_int, revents: i16, now: Instant) {
    let job = super::state::with(|reg| {
        let i = reg.connects.jobs.iter().position(|j| owns(j, fd))?;
        Some(reg.connects.jobs.swap_remove(i))
    });
    if let Some(mut job) = job {
        let step = advance(&mut job, Some((fd, revents)), now);
        conclude(job, step);
    }
}

/// New jobs, and those whose timers fell due.
pub fn on_timers(now: Instant) {
    let due: Vec<Job> = super::state::with(|reg| {
        let (due, keep): (Vec<Job>, Vec<Job>) = reg.connects.jobs.drain(..).partition(|j| due(j, now));
        reg.connects.jobs = keep;
        due
    });
    for mut job in due {
        let step = advance(&mut job, None, now);
        conclude(job, step);
    }
}

fn due(j: &Job, now: Instant) -> bool {
    match &j.stage {
        Stage::New => true,
        Stage::Asking(_, ex) => now >= j.deadline || ex.next_deadline().map_or(true, |d| now >= d),
        Stage::Dialing { .. } => false,
        Stage::Punching { session, .. } => now >= session.next_deadline().min(j.deadline),
        Stage::Claiming { lost_check: Some(at), .. } => now >= (*at).min(j.deadline),
        _ => now >= j.deadline,
    }
}

fn owns(j: &Job, fd: c_int) -> bool {
    match &j.stage {
        Stage::New => false,
        Stage::Asking(a, _) => a.probe.raw() == fd,
        Stage::Dialing { sock, .. } | Stage::Relaying { sock, .. } => sock.raw() == fd,
        Stage::Reversing { tmp, notices, unspoken, .. } => {
            tmp.raw() == fd || notices.as_ref().is_some_and(|n| n.raw() == fd) || unspoken.iter().any(|u| u.raw() == fd)
        }
        Stage::Punching { session, .. } => session.owns(fd),
        Stage::Claiming { conn, .. } => conn.raw() == fd,
    }
}

/// Ends a step: the job goes back to wait, or its connection (or failure)
/// goes on the program's fd. Whatever stops that (no socket for the
/// failure, the fd holding something else, a failed `dup3`), a job still live
/// ends with its placeholder shut down: the program's connect then fails, it
/// never waits for ever.
fn conclude(mut job: Job, step: Step) {
    let standby = matches!(step, Step::Standby(_));
    let (sock, named, decision, error) = match step {
        Step::Wait => {
            super::state::with(|reg| {
                if is_live(job.app_fd, job.id) {
                    reg.connects.jobs.push(job);
                }
            });
            return;
        }
        Step::Done { sock, named, decision } => (Some(sock), named, decision, None),
        Step::Standby(sock) => (Some(sock), true, None, None),
        Step::Failed(e) => {
            log!(Warn, "connect to {} failed: {}", job.dest, std::io::Error::from_raw_os_error(e));
            let refused = super::gate::refused(job.family).ok();
            let error = (e != libc::ECONNREFUSED || refused.is_none()).then_some(e);
            (refused, false, None, error)
        }
    };
    drop(std::mem::replace(&mut job.stage, Stage::New));
    let swapped = super::state::with(|reg| {
        if !is_live(job.app_fd, job.id) {
            return Swap::Cancelled;
        }
        if let Some(slot) = live_slot(job.app_fd) {
            slot.store(0, Ordering::Release);
        }
        if !same_file(job.app_fd, job.placeholder) {
            return Swap::Cancelled;
        }
        // Kept before the swap: the program may ask as soon as the fd is writable.
        connects::keep_error(job.app_fd, error.unwrap_or(0));
        let put = match (sock, AppSocket::read(job.app_fd)) {
            (Some(sock), Ok(app)) => {
                let regs = reg.interest.take(job.app_fd);
                put_on(job.app_fd, sock, true, &app, regs)
            }
            (None, _) => Err(libc::ENOBUFS),
            (_, Err(e)) => Err(e),
        };
        if named || error.is_some() || put.is_err() {
            reg.set_names(job.app_fd, Names { local: None, peer: named.then_some(job.dest) });
            fdtable::set(job.app_fd, Kind::Named);
        } else {
            fdtable::set(job.app_fd, Kind::Plain);
        }
        match put {
            Ok(()) => Swap::Done,
            Err(e) => {
                // The placeholder stays on the fd and fails below.
                connects::keep_error(job.app_fd, error.unwrap_or(libc::ECONNREFUSED));
                Swap::Failed(e)
            }
        }
    });
    match swapped {
        Swap::Cancelled => return,
        Swap::Failed(e) => {
            log!(Warn, "connect to {}: the connection could not be put on fd {} ({}); the connect fails", job.dest, job.app_fd, std::io::Error::from_raw_os_error(e));
        }
        Swap::Done => {
            if let Some(d) = decision {
                ask::log_path(proto::Proto::Tcp, job.dest, &d, job.since);
            }
            if standby {
                log!(Info, "connect tcp {} via punched (standby) in {} us", job.dest, job.since.elapsed().as_micros());
            }
            if standby || matches!(decision, Some(proto::gcb::Decision::PunchTcp { .. })) {
                super::standby::replenish(job.dest, job.family);
            }
        }
    }
    // Wakes a poll or select still waiting on the placeholder (after a swap),
    // or fails the connect on it (when the swap could not be made).
    // SAFETY: our duplicate of the placeholder.
    unsafe { real::shutdown(job.placeholder, libc::SHUT_RDWR) };
}

/// How putting a job's outcome on the program's fd went.
enum Swap {
    Done,
    /// The job was cancelled, or the fd holds something else now.
    Cancelled,
    Failed(Errno),
}

/// Whether fds `a` and `b` of this process refer to the same open file
/// (`kcmp` says 0); true where the kernel cannot say (no `kcmp`, or not
/// allowed here).
fn same_file(a: c_int, b: c_int) -> bool {
    const KCMP_FILE: libc::c_long = 0;
    let pid = libc::c_long::from(process::owner());
    // SAFETY: kcmp only compares; no memory is passed.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid, pid, KCMP_FILE, a as libc::c_long, b as libc::c_long) };
    r <= 0
}
