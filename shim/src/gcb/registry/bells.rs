//! The doorbells the responder still looks after (`doorbell`), as the
//! registry holds them: each an internal fd, connecting or with its record
//! sent. Plain data; `doorbell` rings them and drives them.

use std::net::SocketAddrV4;
use std::time::Instant;

use libc::c_int;
use proto::gcb::doorbell::RECORD_LEN;

/// A doorbell the responder still looks after: an internal fd, connecting
/// (waiting for POLLOUT, then the record is sent) or sent (waiting for the end
/// of stream that says the accepting side has taken the record).
#[derive(Debug)]
pub struct PendingBell {
    pub fd: c_int,
    /// The parked connection's key: let go if the bell ends unanswered.
    pub key: u64,
    pub record: [u8; RECORD_LEN],
    pub target: SocketAddrV4,
    pub sent: bool,
    /// Until the record is sent only.
    pub deadline: Option<Instant>,
}

impl PendingBell {
    /// The poll events the responder waits for on it.
    pub fn events(&self) -> i16 {
        if self.sent {
            libc::POLLIN
        } else {
            libc::POLLOUT
        }
    }
}

/// A forked child's copies of its parent's doorbells are the parent's.
pub fn forget_in_child(bells: &mut Vec<PendingBell>) {
    for b in bells.drain(..) {
        crate::internal::release(b.fd);
    }
}

/// Doorbell fd `old` moved to `new` (the program `dup2`ed onto it); false if
/// it is not one of them.
pub fn moved(bells: &mut [PendingBell], old: c_int, new: c_int) -> bool {
    match bells.iter_mut().find(|b| b.fd == old) {
        Some(b) => {
            b.fd = new;
            true
        }
        None => false,
    }
}
