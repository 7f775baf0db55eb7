//! The responder: the one thread the shim runs in a process, so that the
//! network is answered whatever the program's own threads are doing
//! (docs/gcb-client-design.md, "Answering like the kernel").
//!
//! The kernel answers for a listener while its program sleeps, computes, or
//! waits in `waitpid`: the handshake completes and the connection waits in the
//! backlog. The shim owes the broker as much: heartbeats on time, commands
//! answered and dialed at once, connections established end to end and
//! queued for `accept`, the program's non-blocking connects carried through.
//! The client of the process's mode says what to wait on and what to do
//! ([`Duties`]: `gcb::serve` or `dpf::serve`); this module only owns the
//! thread and its loop.
//!
//! # Life of the thread
//!
//! * Started by [`ensure`] when the client first has something to answer for
//!   (a registration, a forward, a non-blocking brokered connect): never at
//!   load time, and not in a process that only makes plain connections.
//! * Every signal is blocked in it, so the program's signals go to the
//!   program's threads, as they would without the shim; glibc keeps its own
//!   internal signals (`setxid`, cancellation) deliverable regardless.
//! * It marks itself as inside the shim for good: its libc calls pass through
//!   the hooks.
//! * It never holds the client's lock across a wait, and a panic in one round
//!   is logged and the loop goes on.
//! * `fork` leaves the child without it; the child starts its own from the
//!   `fork` hook, or at its first hooked call after a fork the hook did not see
//!   (`init`). A `vfork` child never starts one (`process::borrowed`).
//! * `exec` ends it with the image; [`WAKE`] is close-on-exec.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering::Relaxed};
use std::time::Instant;

use libc::{c_int, pollfd};

use crate::{process, real};

/// What the mode's client asks of the responder, once per round: the fds to
/// wait on ([`gather`](Duties::gather)), then what to do with the ones that
/// are ready and with the timers that fell due ([`run`](Duties::run)).
pub trait Duties {
    /// Adds every fd to wait on to `set`; returns the next timer deadline.
    fn gather(set: &mut PollSet, now: Instant) -> Option<Instant>;
    /// Handles `ready` (each entry's tag and `revents`) and due timers.
    fn run(ready: &[(u64, i16)], now: Instant);
}

/// The fds of one round and the tag each was added with.
#[derive(Default)]
pub struct PollSet {
    fds: Vec<pollfd>,
    tags: Vec<u64>,
}

impl PollSet {
    pub fn add(&mut self, fd: c_int, events: i16, tag: u64) {
        self.fds.push(pollfd { fd, events, revents: 0 });
        self.tags.push(tag);
    }

    fn clear(&mut self) {
        self.fds.clear();
        self.tags.clear();
    }
}

/// The pid the responder runs in; 0 when none runs in this memory.
static RUNNING_IN: AtomicI32 = AtomicI32::new(0);
/// Someone is starting it now (at most one thread does).
static STARTING: AtomicBool = AtomicBool::new(false);
/// The eventfd that wakes the responder for new work; -1 when none.
static WAKE: AtomicI32 = AtomicI32::new(-1);

/// Tag of the wake-up eventfd in every round's set.
const WAKE_TAG: u64 = u64::MAX;

/// Whether the responder runs in this process.
pub fn running() -> bool {
    let pid = RUNNING_IN.load(Relaxed);
    pid != 0 && pid == process::owner()
}

/// Starts the responder of this process if it is not running, with the duties
/// of `D`. Never in a borrowing child. Returns whether it runs.
pub fn ensure<D: Duties>() -> bool {
    if running() {
        return true;
    }
    if process::borrowed() || STARTING.swap(true, Relaxed) {
        return running();
    }
    let started = start::<D>();
    STARTING.store(false, Relaxed);
    if let Err(e) = &started {
        log!(Warn, "cannot start the responder thread ({e}); the broker is answered only inside the program's calls");
    }
    started.is_ok()
}

fn start<D: Duties>() -> std::io::Result<()> {
    let wake = WAKE.load(Relaxed);
    // A forked child's copy of its parent's eventfd would wake the parent too.
    if wake >= 0 {
        crate::internal::release(wake);
        WAKE.store(-1, Relaxed);
    }
    // SAFETY: flags only.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let wake = crate::internal::adopt(fd);
    WAKE.store(wake, Relaxed);
    crate::internal::reserve_room(wake);
    let pid = process::owner();
    // The new thread inherits the caller's signal mask: block all for it.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid sets; the caller's mask is restored below.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    let spawned = std::thread::Builder::new()
        .name("gcb-responder".into())
        .stack_size(256 * 1024)
        .spawn(move || serve::<D>(pid));
    // SAFETY: the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    spawned.map(|_| RUNNING_IN.store(pid, Relaxed))
}

/// Wakes the responder so it looks at new work at once.
pub fn wake() {
    let fd = WAKE.load(Relaxed);
    if fd >= 0 && running() {
        let one: u64 = 1;
        // SAFETY: an 8-byte value to our eventfd; non-blocking.
        unsafe { real::write(fd, (&one as *const u64).cast(), 8) };
    }
}

/// The wake-up eventfd moved (the program `dup2`ed onto its number); false
/// if `old` is not it.
pub fn wake_fd_moved(old: c_int, new: c_int) -> bool {
    WAKE.compare_exchange(old, new, Relaxed, Relaxed).is_ok()
}

/// Called in a forked child: its parent's responder is not here.
pub fn forget_in_child() {
    RUNNING_IN.store(0, Relaxed);
    STARTING.store(false, Relaxed);
}

/// The thread's body: rounds for ever.
fn serve<D: Duties>(pid: c_int) {
    // Inside the shim for the thread's whole life (module docs).
    std::mem::forget(crate::guard::Inside::enter());
    log!(Debug, "responder started in process {pid}");
    let mut set = PollSet::default();
    let mut ready = Vec::new();
    loop {
        let round = crate::guard::contain("the responder goes on", || one_round::<D>(&mut set, &mut ready));
        if round.is_none() {
            // Logged by the panic hook; a short pause keeps a persistent fault
            // from spinning.
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

fn one_round<D: Duties>(set: &mut PollSet, ready: &mut Vec<(u64, i16)>) {
    set.clear();
    ready.clear();
    let wake = WAKE.load(Relaxed);
    set.add(wake, libc::POLLIN, WAKE_TAG);
    let deadline = D::gather(set, Instant::now());
    let n = crate::client::sys::poll_until(&mut set.fds, deadline);
    if n < 0 {
        let e = crate::guard::errno();
        if e != libc::EINTR {
            log!(Warn, "responder: poll failed: {}", std::io::Error::from_raw_os_error(e));
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        return;
    }
    for (p, &tag) in set.fds.iter().zip(&set.tags) {
        if p.revents == 0 {
            continue;
        }
        if tag == WAKE_TAG {
            let mut v: u64 = 0;
            // SAFETY: an 8-byte read from our eventfd.
            unsafe { real::read(wake, (&mut v as *mut u64).cast(), 8) };
        } else {
            ready.push((tag, p.revents));
        }
    }
    D::run(ready, Instant::now());
}
