//! The parked connections (`park`) as the registry holds them: connections
//! established end to end and waiting for `accept`, by key, and this
//! process's park socket with the requests it has accepted. Plain data and
//! its bookkeeping (counts, moved fds, letting go, a forked child's share);
//! `park` opens the socket and hands the connections out.

use std::collections::HashMap;
use std::time::Instant;

use libc::c_int;
use proto::gcb::doorbell::Park;

use crate::gcb::registration::ListenerId;

/// One parked connection.
#[derive(Debug)]
pub struct Parked {
    pub listener: ListenerId,
    pub fd: c_int,
    pub since: Instant,
}

/// This process's park socket.
#[derive(Debug)]
pub(crate) struct Server {
    pub(crate) fd: c_int,
    pub(crate) park: Park,
}

/// A connection to the park socket that has not sent its key yet.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) fd: c_int,
    pub(crate) deadline: Instant,
}

/// The table of parked connections and the park socket that hands them out.
#[derive(Debug, Default)]
pub struct Parking {
    pub(crate) by_key: HashMap<u64, Parked>,
    pub(crate) server: Option<Server>,
    pub(crate) requests: Vec<Request>,
}

impl Parking {
    pub fn count_for(&self, id: ListenerId) -> usize {
        self.by_key.values().filter(|p| p.listener == id).count()
    }

    /// The fds the responder waits on: the park socket and the requests.
    pub fn poll_fds(&self) -> impl Iterator<Item = c_int> + '_ {
        self.server.iter().map(|s| s.fd).chain(self.requests.iter().map(|r| r.fd))
    }

    pub fn is_server(&self, fd: c_int) -> bool {
        self.server.as_ref().is_some_and(|s| s.fd == fd)
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.requests.iter().map(|r| r.deadline).min()
    }

    /// An internal fd of the park moved (the program `dup2`ed onto its
    /// number); false if not one of them.
    pub fn moved(&mut self, old: c_int, new: c_int) -> bool {
        let fds = self.by_key.values_mut().map(|p| &mut p.fd);
        let fds = fds.chain(self.server.iter_mut().map(|s| &mut s.fd)).chain(self.requests.iter_mut().map(|r| &mut r.fd));
        for fd in fds {
            if *fd == old {
                *fd = new;
                return true;
            }
        }
        false
    }

    /// The doorbell of `key` ended: a connection nobody took is closed.
    pub fn let_go(&mut self, key: u64) {
        if let Some(p) = self.by_key.remove(&key) {
            log!(Debug, "a parked connection for listener {} was not accepted; closed", p.listener);
            crate::internal::release(p.fd);
        }
    }

    /// A forked child's copies of what its parent parked, and of its park
    /// socket, are the parent's: closed here (the parent's stay open).
    pub fn forget_in_child(&mut self) {
        for (_, p) in self.by_key.drain() {
            crate::internal::release(p.fd);
        }
        for r in self.requests.drain(..) {
            crate::internal::release(r.fd);
        }
        if let Some(s) = self.server.take() {
            crate::internal::release(s.fd);
        }
    }

    #[cfg(test)]
    pub fn forget_listener_for_tests(&mut self, id: ListenerId) {
        let keys: Vec<u64> = self.by_key.iter().filter(|(_, p)| p.listener == id).map(|(k, _)| *k).collect();
        for k in keys {
            if let Some(p) = self.by_key.remove(&k) {
                crate::internal::release(p.fd);
            }
        }
    }
}
