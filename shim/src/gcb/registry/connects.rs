//! The program's non-blocking connects being brokered (`connecting`), as the
//! registry holds them: each job and the stage it stands at, with the
//! sockets of its own it holds there, and the errors kept for `SO_ERROR`;
//! and, outside the lock, the per-fd atomics that say whether a job is still
//! live (`LIVE`) and the lock-free list that brings new jobs to the
//! responder (`Incoming`). Plain data and its bookkeeping (moved fds, a
//! forked child's share); `connecting` and its steps drive the jobs.

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU32, Ordering};
use std::time::Instant;

use libc::c_int;
use proto::gcb::{Decision, Frame, Message, StreamPeer, Token};
use proto::rudp::RetryPolicy;

use crate::client::exchange::Exchange;
use crate::client::family::Family;
use crate::client::sys::Sock;
use crate::fdtable;
use crate::gcb::punch::Session;
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
    Punching { session: Box<Session>, via: SocketAddrV4, token: Token },
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

/// New jobs on their way to the responder: a lock-free stack the program's
/// threads push on and the responder takes whole (no ABA: nothing is ever
/// popped singly).
pub(crate) struct Incoming {
    head: AtomicPtr<Node>,
}

struct Node {
    job: Job,
    next: *mut Node,
}

pub(crate) static INCOMING: Incoming = Incoming { head: AtomicPtr::new(ptr::null_mut()) };

impl Incoming {
    pub(crate) fn push(&self, job: Job) {
        let node = Box::into_raw(Box::new(Node { job, next: ptr::null_mut() }));
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            // SAFETY: `node` is ours until the exchange publishes it.
            unsafe { (*node).next = head };
            match self.head.compare_exchange_weak(head, node, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return,
                Err(now) => head = now,
            }
        }
    }

    /// Every job pushed so far, oldest first.
    pub(crate) fn take_all(&self) -> Vec<Job> {
        let mut p = self.head.swap(ptr::null_mut(), Ordering::Acquire);
        let mut out = Vec::new();
        while !p.is_null() {
            // SAFETY: each node was made by `push` and is taken here once.
            let node = unsafe { Box::from_raw(p) };
            p = node.next;
            out.push(node.job);
        }
        out.reverse();
        out
    }
}

/// The jobs the responder works on, and the errors kept for `SO_ERROR`.
#[derive(Default)]
pub struct Connects {
    pub(crate) jobs: Vec<Job>,
    pub(crate) errors: HashMap<c_int, c_int>,
}

impl std::fmt::Debug for Connects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connects").field("jobs", &self.jobs.len()).field("errors", &self.errors).finish()
    }
}

impl Connects {
    /// A forked child's copies of its parent's jobs are the parent's.
    pub fn forget_in_child(&mut self) {
        for job in self.jobs.drain(..).chain(INCOMING.take_all()) {
            if let Some(slot) = live_slot(job.app_fd) {
                slot.store(0, Ordering::Release);
            }
        }
    }

    /// An internal fd of a job moved (the program `dup2`ed onto its number).
    pub fn moved(&mut self, old: c_int, new: c_int) -> bool {
        match self.jobs.iter_mut().find(|j| j.placeholder == old) {
            Some(j) => {
                j.placeholder = new;
                true
            }
            None => false,
        }
    }
}
