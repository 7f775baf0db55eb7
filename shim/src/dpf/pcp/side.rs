//! What the DPF client keeps for a standard gateway, as data: a forward's
//! [`Mapping`], and the [`Side`] the state holds besides the forwards, with
//! the mappings being wound up ([`Winding`]). Kept apart from the modules
//! that drive them (`map`, `serve`, `wind`), which use the state these types
//! are part of.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use libc::c_int;
use proto::portmap::{MapClient, Retry};
use proto::Proto;


/// A delete's retransmissions: at about 0, 0.5, 1.5 and 3.5 s.
pub const WIND_RETRY: Retry = Retry {
    initial: Duration::from_millis(500),
    max_interval: Duration::from_secs(2),
    max_attempts: 4,
    max_duration: Duration::from_secs(5),
};
/// One forward's port-mapping client, kept in its `Forward` record.
#[derive(Debug, Clone)]
pub struct Mapping {
    pub client: MapClient,
    /// The socket's inode, by which other holders are told apart ([`super::holders`]).
    pub inode: u64,
    /// The socket is AF_INET6 (dual stack), which the kernel lists apart.
    pub v6: bool,
    /// Map afresh at this instant: after a loss, or in a new image.
    pub restart_at: Option<Instant>,
    /// Renewals or new MAPs that failed in a row (the first one is a
    /// warning, the next ones are not).
    pub failures: u32,
}

impl PartialEq for Mapping {
    fn eq(&self, other: &Mapping) -> bool {
        self.client.config().nonce == other.client.config().nonce && self.inode == other.inode
    }
}

impl Eq for Mapping {}

/// What the PCP side keeps besides the forwards.
#[derive(Debug, Default)]
pub struct Side {
    /// The socket that hears ANNOUNCEs, once opened.
    pub announce_fd: Option<c_int>,
    /// Opening it was tried (and failed, if `announce_fd` is `None`).
    pub announce_tried: bool,
    /// Mappings whose socket this process has closed: deleted, or looked at first.
    pub winding: Vec<Winding>,
}

impl Side {
    /// An internal fd moved (the application `dup2`ed onto its number).
    pub fn replace_fd(&mut self, old: c_int, new: c_int) -> bool {
        if self.announce_fd == Some(old) {
            self.announce_fd = Some(new);
            return true;
        }
        match self.winding.iter_mut().find(|w| w.sock == old) {
            Some(w) => {
                w.sock = new;
                true
            }
            None => false,
        }
    }
}

/// A mapping whose socket this process no longer holds.
#[derive(Debug)]
pub struct Winding {
    pub client: MapClient,
    pub proto: Proto,
    pub local: SocketAddrV4,
    /// The UDP socket to the gateway (internal), or -1.
    pub sock: c_int,
    /// Look whether another process holds the socket before deleting.
    pub check: Option<Check>,
    /// The delete was sent.
    pub deleting: bool,
    /// Another process holds the socket (or nobody could say): no delete.
    pub left: bool,
}

/// The socket to look for, and when.
#[derive(Debug, Clone, Copy)]
pub struct Check {
    pub inode: u64,
    pub v6: bool,
    pub at: Instant,
    /// Looks made so far.
    pub looks: usize,
}

impl Winding {
    /// When the responder next has work for it.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.check {
            Some(c) => Some(c.at),
            None => self.client.next_deadline(),
        }
    }

    /// The mapping of `proto` `local`, whose socket to the gateway is `sock`.
    pub fn new(proto: Proto, local: SocketAddrV4, sock: c_int, client: MapClient) -> Winding {
        Winding { client, proto, local, sock, check: None, deleting: false, left: false }
    }

    pub fn finished(&self) -> bool {
        self.check.is_none() && (self.left || self.client.is_done())
    }

    /// A delete is under way.
    pub fn waiting(&self) -> bool {
        self.deleting && !self.client.is_done() && self.sock >= 0
    }

    /// Sends the delete's first datagram.
    pub fn delete(&mut self, now: Instant) {
        self.deleting = true;
        self.client.set_retry(WIND_RETRY, WIND_RETRY);
        let out = self.client.delete(now);
        if self.sock < 0 {
            if let Some(fd) = super::wire::gateway().and_then(|g| crate::client::exchange::open(g).ok()).map(|(s, _)| crate::internal::adopt(s.into_raw())) {
                self.sock = fd;
            }
        }
        if self.sock >= 0 {
            let _ = super::wire::send(self.sock, &out);
        }
        log!(Debug, "deleting the mapping of {} {}", self.proto, self.local);
    }

    pub fn release(self) {
        if self.sock >= 0 {
            crate::internal::release(self.sock);
        }
    }
}
