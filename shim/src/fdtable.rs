//! Per-fd kind: does the shim have any business with this fd?
//!
//! Every hook asks this first, on every call, so the answer costs one relaxed atomic
//! load: a fixed array indexed by fd, static and zero-initialised (it lives in
//! `.bss`, so untouched pages cost nothing). No allocation, no lock, no system call.
//! Fds beyond [`CAPACITY`] are always plain; the shim never manages or owns one.
//!
//! Relaxed is enough: an fd is marked by the thread that created or adopted it
//! before the number is handed to anyone, and an application that passes an fd to
//! another thread synchronises the hand-over itself.
//!
//! Counters of non-plain entries let calls that take many fds at once (`poll`,
//! `close_range`) skip their scan with one load when there is nothing to find.
//!
//! # Kinds and which hooks care
//!
//! | kind      | what it is                                   | hooks that leave the fast path                 |
//! | --------- | -------------------------------------------- | ---------------------------------------------- |
//! | `Plain`   | none of the shim's business                  | none                                           |
//! | `Internal`| the shim's own fd (log, management socket)   | `close`, `dup2`/`dup3` onto it, range closes   |
//! | `Managed` | a GCB listener (registered or trying to be)  | every hook that takes the fd; waits run the AEH|
//! | `Named`   | a socket whose *names* the shim answers for  | `getsockname`, `getpeername`, `close`, dups    |
//! | `Watched` | a GCB-mode TCP socket not yet listening or connected | `bind`, `listen`, `connect`, `epoll_ctl`, `close`, dups |
//! | `WatchedUdp` | a GCB-mode UDP socket not (yet) registered or brokered | `bind`, `connect`, `sendto`/`sendmsg`/`sendmmsg`, `close`, dups |
//! | `Connecting` | a socket whose non-blocking connect the responder brokers | `getsockopt`, `epoll_ctl`, `close`, dups |
//!
//! A UDP socket becomes `Managed` once registered or once it sends to a GCB
//! address: then its reads are the shim's too (`gcb::udp`).
//!
//! `Named` (accepted or brokered connections) and `Watched` (connector candidates)
//! keep their data path on the fast path: `read`, `send`, `poll` and the rest test
//! for `Managed` only.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering::Relaxed};

use libc::c_int;

/// Number of fds the table covers.
pub const CAPACITY: usize = 65_536;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Not the shim's business: every call passes straight through.
    Plain = 0,
    /// The shim's own fd (log file, management sockets): protected from the
    /// application's `close`, `close_range`, `closefrom` and `dup2`.
    Internal = 1,
    /// An application socket under GCB or DPF.
    Managed = 2,
    /// A connection whose local or peer name the shim reports (accepted from a
    /// registered listener, or brokered by the connector); data passes through.
    Named = 3,
    /// A TCP socket made in GCB mode that may still listen or connect; the shim
    /// watches `listen`, `connect` and `epoll_ctl` on it.
    Watched = 4,
    /// A UDP socket made in GCB mode: its binds and sends are looked at, so it
    /// registers or is brokered when it needs to (`gcb::udp`).
    WatchedUdp = 5,
    /// A TCP socket whose non-blocking connect the responder is brokering: a
    /// placeholder the connection will be put on (`gcb::connecting`).
    Connecting = 6,
}

impl Kind {
    fn from_u8(v: u8) -> Kind {
        match v {
            1 => Kind::Internal,
            2 => Kind::Managed,
            3 => Kind::Named,
            4 => Kind::Watched,
            5 => Kind::WatchedUdp,
            6 => Kind::Connecting,
            _ => Kind::Plain,
        }
    }
}

pub struct FdTable {
    kinds: [AtomicU8; CAPACITY],
    managed: AtomicUsize,
    internal: AtomicUsize,
    /// The other kinds together: they matter only to range closes.
    other: AtomicUsize,
    /// One past the highest fd ever marked: the end of any scan.
    high: AtomicUsize,
}

/// The process's table.
pub static TABLE: FdTable = FdTable::new();

#[inline]
fn index(fd: c_int) -> Option<usize> {
    usize::try_from(fd).ok().filter(|&i| i < CAPACITY)
}

impl FdTable {
    #[allow(clippy::new_without_default)] // a 64 KiB value belongs in a static
    pub const fn new() -> FdTable {
        FdTable {
            kinds: [const { AtomicU8::new(Kind::Plain as u8) }; CAPACITY],
            managed: AtomicUsize::new(0),
            internal: AtomicUsize::new(0),
            other: AtomicUsize::new(0),
            high: AtomicUsize::new(0),
        }
    }

    #[inline]
    pub fn kind(&self, fd: c_int) -> Kind {
        index(fd).map_or(Kind::Plain, |i| Kind::from_u8(self.kinds[i].load(Relaxed)))
    }

    /// The fast-path test of most hooks.
    #[inline]
    pub fn is_managed(&self, fd: c_int) -> bool {
        index(fd).is_some_and(|i| self.kinds[i].load(Relaxed) == Kind::Managed as u8)
    }

    /// Whether any fd is managed (one load; for calls that take fd sets).
    #[inline]
    pub fn any_managed(&self) -> bool {
        self.managed.load(Relaxed) != 0
    }

    /// Whether any fd is anything but plain.
    #[inline]
    pub fn any_marked(&self) -> bool {
        self.any_managed() || self.internal.load(Relaxed) != 0 || self.other.load(Relaxed) != 0
    }

    /// Sets the kind of `fd` and returns the previous one; `None` if `fd` is outside
    /// the table (it stays plain).
    pub fn set(&self, fd: c_int, kind: Kind) -> Option<Kind> {
        let i = index(fd)?;
        let old = Kind::from_u8(self.kinds[i].swap(kind as u8, Relaxed));
        self.count(i, old, kind);
        Some(old)
    }

    /// Sets the kind of `fd` to `to` only if it is `from` now; false otherwise (also
    /// for fds outside the table). For state changes that race with the
    /// application closing the fd in another thread.
    pub fn replace(&self, fd: c_int, from: Kind, to: Kind) -> bool {
        let Some(i) = index(fd) else { return false };
        let swapped = self.kinds[i].compare_exchange(from as u8, to as u8, Relaxed, Relaxed).is_ok();
        if swapped {
            self.count(i, from, to);
        }
        swapped
    }

    fn count(&self, i: usize, old: Kind, new: Kind) {
        if old != new {
            if let Some(c) = self.counter(old) {
                c.fetch_sub(1, Relaxed);
            }
            if let Some(c) = self.counter(new) {
                c.fetch_add(1, Relaxed);
            }
        }
        if new != Kind::Plain {
            self.high.fetch_max(i + 1, Relaxed);
        }
    }

    fn counter(&self, kind: Kind) -> Option<&AtomicUsize> {
        match kind {
            Kind::Plain => None,
            Kind::Internal => Some(&self.internal),
            Kind::Managed => Some(&self.managed),
            Kind::Named | Kind::Watched | Kind::WatchedUdp | Kind::Connecting => Some(&self.other),
        }
    }

    /// Marked fds in `first..=last`, ascending.
    pub fn marked_in(&self, first: u32, last: u32) -> impl Iterator<Item = (c_int, Kind)> + '_ {
        let end = (last as usize).saturating_add(1).min(self.high.load(Relaxed));
        (first as usize..end).filter_map(move |i| match Kind::from_u8(self.kinds[i].load(Relaxed)) {
            Kind::Plain => None,
            // `i < CAPACITY`, so it fits a c_int.
            kind => Some((i as c_int, kind)),
        })
    }
}

#[inline]
pub fn kind(fd: c_int) -> Kind {
    TABLE.kind(fd)
}

#[inline]
pub fn is_managed(fd: c_int) -> bool {
    TABLE.is_managed(fd)
}

#[inline]
pub fn any_managed() -> bool {
    TABLE.any_managed()
}

#[inline]
pub fn any_marked() -> bool {
    TABLE.any_marked()
}

pub fn set(fd: c_int, kind: Kind) -> Option<Kind> {
    TABLE.set(fd, kind)
}

pub fn replace(fd: c_int, from: Kind, to: Kind) -> bool {
    TABLE.replace(fd, from, to)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Box<FdTable> {
        // Tests use their own table: the process table is live in the test binary.
        Box::new(FdTable::new())
    }

    #[test]
    fn starts_plain_everywhere() {
        let t = table();
        for fd in [-1, 0, 1, 2, 1000, CAPACITY as c_int - 1, CAPACITY as c_int, c_int::MAX] {
            assert!(!t.is_managed(fd));
            assert_eq!(t.kind(fd), Kind::Plain);
        }
        assert!(!t.any_marked());
        assert_eq!(t.marked_in(0, u32::MAX).count(), 0);
    }

    #[test]
    fn set_swaps_and_counts() {
        let t = table();
        assert_eq!(t.set(5, Kind::Managed), Some(Kind::Plain));
        assert!(t.is_managed(5) && t.any_managed());
        assert_eq!(t.set(5, Kind::Managed), Some(Kind::Managed), "idempotent");
        assert_eq!(t.managed.load(Relaxed), 1);
        assert_eq!(t.set(5, Kind::Internal), Some(Kind::Managed));
        assert!(!t.is_managed(5) && !t.any_managed() && t.any_marked());
        assert_eq!(t.set(5, Kind::Plain), Some(Kind::Internal));
        assert!(t.kind(5) == Kind::Plain && !t.any_marked());
    }

    #[test]
    fn other_kinds_count_as_marked_not_managed() {
        let t = table();
        t.set(9, Kind::Named);
        t.set(10, Kind::Watched);
        assert!(t.any_marked() && !t.any_managed());
        assert!(!t.is_managed(9) && t.kind(10) == Kind::Watched);
        assert_eq!(t.marked_in(0, 100).count(), 2);
        assert!(!t.replace(10, Kind::Named, Kind::Managed), "not Named");
        assert!(t.replace(10, Kind::Watched, Kind::Managed));
        assert!(t.any_managed() && t.is_managed(10));
        t.set(9, Kind::Plain);
        t.set(10, Kind::Plain);
        assert!(!t.any_marked());
        assert!(!t.replace(-1, Kind::Plain, Kind::Named));
    }

    #[test]
    fn out_of_range_stays_plain() {
        let t = table();
        assert_eq!(t.set(-3, Kind::Managed), None);
        assert_eq!(t.set(CAPACITY as c_int, Kind::Internal), None);
        assert!(!t.any_marked());
        assert_eq!(t.set(CAPACITY as c_int - 1, Kind::Internal), Some(Kind::Plain));
        assert_eq!(t.kind(CAPACITY as c_int - 1), Kind::Internal);
    }

    #[test]
    fn scan_finds_marked_in_range() {
        let t = table();
        t.set(3, Kind::Managed);
        t.set(700, Kind::Internal);
        t.set(701, Kind::Managed);
        t.set(701, Kind::Plain);
        let all: Vec<_> = t.marked_in(0, u32::MAX).collect();
        assert_eq!(all, vec![(3, Kind::Managed), (700, Kind::Internal)]);
        assert_eq!(t.marked_in(4, 699).count(), 0);
        assert_eq!(t.marked_in(700, 700).count(), 1);
        assert_eq!(t.marked_in(10, 5).count(), 0, "empty range");
    }

    #[test]
    fn concurrent_marking_keeps_counts() {
        let t: &'static FdTable = Box::leak(table());
        let threads: Vec<_> = (0..8)
            .map(|n| {
                std::thread::spawn(move || {
                    for round in 0..1000 {
                        let fd = (n * 1000 + round % 100) as c_int;
                        t.set(fd, Kind::Managed);
                        t.set(fd, Kind::Plain);
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|h| h.join().unwrap());
        assert!(!t.any_marked());
    }
}
