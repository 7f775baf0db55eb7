//! The application's epoll interest in sockets the shim may swap.
//!
//! A reversed connect ends with `dup3(accepted, app_fd)`: the application's fd
//! number stays, but the file behind it changes, and the kernel drops the old
//! file from every epoll set when it closes. An application that registered its
//! socket with `epoll_ctl` before `connect` returned (the usual way with
//! non-blocking connects) would then wait forever. So `epoll_ctl` on a
//! [`Watched`](crate::fdtable::Kind::Watched) socket is recorded here, and after a
//! swap the connector re-adds the fd to each set it was in.
//!
//! Records can go stale when the application closes an epoll fd and the number
//! is reused. The connector therefore re-adds only where the old registration is
//! confirmed to exist (an `EPOLL_CTL_MOD` with the recorded event succeeds before
//! the swap), so a stale record can never put the socket into a stranger's set.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use libc::c_int;

use crate::fdtable::CAPACITY;

/// Bit `fd`: the registry's [`Interest`] may hold records for `fd`. Read
/// without the lock, so closing a watched socket that was never put in an
/// epoll set (the usual case: one bound to find a free port, then closed)
/// takes none. Set and cleared under the lock; a stale set bit costs a lock.
static RECORDED: [AtomicU64; CAPACITY / 64] = [const { AtomicU64::new(0) }; CAPACITY / 64];

fn bit(fd: c_int) -> Option<(&'static AtomicU64, u64)> {
    let i = usize::try_from(fd).ok().filter(|&i| i < CAPACITY)?;
    Some((&RECORDED[i / 64], 1 << (i % 64)))
}

/// Whether the registry may hold epoll records for `fd`.
pub fn maybe_recorded(fd: c_int) -> bool {
    bit(fd).map_or(true, |(word, mask)| word.load(Relaxed) & mask != 0)
}

/// One registration: `epoll_ctl(epfd, ADD, fd, {events, data})`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registration {
    pub epfd: c_int,
    pub events: u32,
    pub data: u64,
}

/// Registrations per watched fd. Bounded per fd: a socket in more sets than
/// [`Interest::MAX_SETS`] loses the oldest record, which at worst means that set
/// is not re-armed after a swap.
#[derive(Debug, Default)]
pub struct Interest {
    by_fd: HashMap<c_int, Vec<Registration>>,
    /// This is the registry's, whose records [`maybe_recorded`] tells of.
    registry: bool,
}

impl Interest {
    pub const MAX_SETS: usize = 16;

    /// The registry's records (the one instance [`maybe_recorded`] follows).
    pub fn for_registry() -> Interest {
        Interest { by_fd: HashMap::new(), registry: true }
    }

    fn mark(&self, fd: c_int, recorded: bool) {
        if let Some((word, mask)) = bit(fd).filter(|_| self.registry) {
            if recorded {
                word.fetch_or(mask, Relaxed);
            } else {
                word.fetch_and(!mask, Relaxed);
            }
        }
    }

    /// Records a successful `epoll_ctl(epfd, op, fd, event)`.
    pub fn record(&mut self, epfd: c_int, op: c_int, fd: c_int, event: Option<(u32, u64)>) {
        match (op, event) {
            (libc::EPOLL_CTL_ADD | libc::EPOLL_CTL_MOD, Some((events, data))) => {
                self.mark(fd, true);
                let regs = self.by_fd.entry(fd).or_default();
                regs.retain(|r| r.epfd != epfd);
                if regs.len() >= Self::MAX_SETS {
                    regs.remove(0);
                }
                regs.push(Registration { epfd, events, data });
            }
            (libc::EPOLL_CTL_DEL, _) => {
                if let Some(regs) = self.by_fd.get_mut(&fd) {
                    regs.retain(|r| r.epfd != epfd);
                    if regs.is_empty() {
                        self.take(fd);
                    }
                }
            }
            _ => {}
        }
    }

    /// Takes every record for `fd` (it is being swapped, or closed).
    pub fn take(&mut self, fd: c_int) -> Vec<Registration> {
        self.mark(fd, false);
        self.by_fd.remove(&fd).unwrap_or_default()
    }

    /// Registrations recorded, over all fds. A duplicate of a watched fd starts with
    /// none: epoll keys on the fd number as well as the file.
    pub fn len(&self) -> usize {
        self.by_fd.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_fd.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_mod_del_and_take() {
        let mut i = Interest::default();
        i.record(7, libc::EPOLL_CTL_ADD, 5, Some((libc::EPOLLIN as u32, 42)));
        i.record(8, libc::EPOLL_CTL_ADD, 5, Some((libc::EPOLLOUT as u32, 43)));
        i.record(7, libc::EPOLL_CTL_MOD, 5, Some((libc::EPOLLOUT as u32 | libc::EPOLLET as u32, 44)));
        assert_eq!(i.len(), 2, "MOD replaces the set's record");
        i.record(8, libc::EPOLL_CTL_DEL, 5, None);
        i.record(9, libc::EPOLL_CTL_DEL, 6, None);
        let regs = i.take(5);
        assert_eq!(regs, vec![Registration { epfd: 7, events: libc::EPOLLOUT as u32 | libc::EPOLLET as u32, data: 44 }]);
        assert!(i.is_empty() && i.take(5).is_empty());
    }

    #[test]
    fn del_of_last_forgets_the_fd_and_sets_are_bounded() {
        let mut i = Interest::default();
        i.record(7, libc::EPOLL_CTL_ADD, 5, Some((1, 1)));
        i.record(7, libc::EPOLL_CTL_DEL, 5, None);
        assert!(i.is_empty());
        for epfd in 0..40 {
            i.record(epfd, libc::EPOLL_CTL_ADD, 5, Some((1, epfd as u64)));
        }
        let regs = i.take(5);
        assert_eq!(regs.len(), Interest::MAX_SETS);
        assert_eq!(regs.last().unwrap().epfd, 39, "the newest records stay");
        i.record(7, 99, 5, Some((1, 1)));
        assert!(i.is_empty(), "unknown ops are ignored");
    }
}
