//! Whether the shim handles a call: the one place where a hooked call either
//! takes a [`Detour`] through the shim (to [`crate::managed`], or
//! [`crate::reclaim`] for the shim's own fds) or bypasses it straight to libc,
//! with the [`Bypass`] reason.
//!
//! One function per call family, each a pure reading of the fd table and, for
//! the calls DPF looks at whatever the fd, the mode. Which kinds concern which
//! calls is the table in [`crate::fdtable`]. The hooks act on the variant
//! alone; the reasons are for tests and for reading the rules, and cost
//! nothing: every function is inlined into its hook, where the reason is
//! dropped and the test folds back into the one relaxed load of the fd table
//! (a second relaxed load, of the mode, only where DPF is asked).

use libc::c_int;

use crate::dpf;
use crate::fdtable::{self, Kind};

/// Why a call goes through the shim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detour {
    /// The fd is marked with a kind this call concerns.
    Tracked(Kind),
    /// The fd is the shim's own: the application must not close or replace it.
    Own,
    /// DPF mode looks at every `bind`, `listen` and `connect`, whatever the fd.
    DpfMode,
    /// Some fd is marked, and a call over a range of fds may reach it.
    Marked,
}

/// Why a call goes straight to libc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bypass {
    /// The fd is none of the shim's business (`Plain`).
    Plain,
    /// The fd is marked, but with a kind this call leaves alone: a named
    /// connection's data, a watched socket's reads, a listener's `epoll_ctl`.
    NotForThisCall(Kind),
    /// No fd is marked at all: a range of fds holds nothing of the shim's.
    NothingMarked,
}

/// A call's way: through the shim, or past it.
pub type Way = Result<Detour, Bypass>;

#[inline(always)]
fn by_kind(kind: Kind, concerned: bool) -> Way {
    match kind {
        _ if concerned => Ok(Detour::Tracked(kind)),
        Kind::Plain => Err(Bypass::Plain),
        other => Err(Bypass::NotForThisCall(other)),
    }
}

/// Like [`by_kind`], with DPF mode taking every fd the kind test lets pass.
#[inline(always)]
fn by_kind_or_dpf(kind: Kind, concerned: bool) -> Way {
    match by_kind(kind, concerned) {
        Err(_) if dpf::mode::enabled() => Ok(Detour::DpfMode),
        way => way,
    }
}

/// Whether the GCB client keeps anything for fds of `kind`: the kinds whose
/// dups and closes it must see.
#[inline(always)]
pub fn tracked(kind: Kind) -> bool {
    matches!(kind, Kind::Managed | Kind::Named | Kind::Watched | Kind::WatchedUdp | Kind::Connecting)
}

/// Reads, `send`, `write`, `writev`, `accept`, `shutdown`, `recvmmsg`:
/// managed sockets only (a registered or brokered UDP socket, a listener).
#[inline(always)]
pub fn managed_only(fd: c_int) -> Way {
    let kind = fdtable::kind(fd);
    by_kind(kind, kind == Kind::Managed)
}

/// `sendto`, `sendmsg`, `sendmmsg`: those that name a destination, which
/// may be a proxy address for a GCB-mode UDP socket.
#[inline(always)]
pub fn send_to(fd: c_int) -> Way {
    let kind = fdtable::kind(fd);
    by_kind(kind, matches!(kind, Kind::Managed | Kind::WatchedUdp))
}

/// `connect`: connector candidates, GCB-mode UDP sockets, managed ones (a
/// registered UDP socket may connect); every socket in DPF mode.
#[inline(always)]
pub fn connect(fd: c_int) -> Way {
    let kind = fdtable::kind(fd);
    by_kind_or_dpf(kind, matches!(kind, Kind::Watched | Kind::WatchedUdp | Kind::Managed))
}

/// `bind`: sockets that may register; every socket in DPF mode.
#[inline(always)]
pub fn bind(fd: c_int) -> Way {
    let kind = fdtable::kind(fd);
    by_kind_or_dpf(kind, matches!(kind, Kind::Managed | Kind::Watched | Kind::WatchedUdp))
}

/// `listen`: TCP sockets that may register; every socket in DPF mode.
#[inline(always)]
pub fn listen(fd: c_int) -> Way {
    let kind = fdtable::kind(fd);
    by_kind_or_dpf(kind, matches!(kind, Kind::Watched | Kind::Managed))
}

/// `getsockname`, `getpeername`: sockets whose names the shim reports.
#[inline(always)]
pub fn names(fd: c_int) -> Way {
    let kind = fdtable::kind(fd);
    by_kind(kind, matches!(kind, Kind::Managed | Kind::Named))
}

/// `epoll_ctl`: sockets the shim may swap under the program.
#[inline(always)]
pub fn epoll_ctl(fd: c_int) -> Way {
    let kind = fdtable::kind(fd);
    by_kind(kind, matches!(kind, Kind::Watched | Kind::Connecting))
}

/// `getsockopt`: a managed socket's options, and the `SO_ERROR` of a named
/// or still connecting socket in GCB mode (a brokered connect's failure,
/// kept before the connection goes on the fd, which is named just after).
#[inline(always)]
pub fn getsockopt(fd: c_int, level: c_int, name: c_int) -> Way {
    let kind = fdtable::kind(fd);
    let connect_error = matches!(kind, Kind::Named | Kind::Connecting) && level == libc::SOL_SOCKET && name == libc::SO_ERROR && !dpf::mode::enabled();
    by_kind(kind, kind == Kind::Managed || connect_error)
}

/// `dup`, `fcntl`: fds the client keeps records for.
#[inline(always)]
pub fn dup(fd: c_int) -> Way {
    let kind = fdtable::kind(fd);
    by_kind(kind, tracked(kind))
}

/// `close`: the shim's own fd is refused, a tracked one forgotten first.
#[inline(always)]
pub fn close(fd: c_int) -> Way {
    match fdtable::kind(fd) {
        Kind::Plain => Err(Bypass::Plain),
        Kind::Internal => Ok(Detour::Own),
        kind => Ok(Detour::Tracked(kind)),
    }
}

/// `dup2`, `dup3`: an fd of the shim's, or a tracked one, at `new`, or a
/// tracked `old` whose record `new` then shares.
#[inline(always)]
pub fn dup_onto(old: c_int, new: c_int) -> Way {
    match fdtable::kind(new) {
        Kind::Internal => Ok(Detour::Own),
        Kind::Plain => dup(old),
        kind => Ok(Detour::Tracked(kind)),
    }
}

/// `close_range`, `closefrom`: any marked fd may lie in the range.
#[inline(always)]
pub fn range() -> Way {
    if fdtable::any_marked() {
        Ok(Detour::Marked)
    } else {
        Err(Bypass::NothingMarked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KINDS: [Kind; 7] =
        [Kind::Plain, Kind::Internal, Kind::Managed, Kind::Named, Kind::Watched, Kind::WatchedUdp, Kind::Connecting];

    /// The kinds each call takes through the shim, with neither mode on: the
    /// rows of the table in `fdtable`.
    #[test]
    fn each_call_detours_for_its_kinds_and_says_why_not_for_the_rest() {
        // An fd far from any other test's, marked in turn with every kind.
        let fd = 60_001;
        let cases: [(&str, fn(c_int) -> Way, &[Kind]); 9] = [
            ("data", managed_only, &[Kind::Managed]),
            ("send_to", send_to, &[Kind::Managed, Kind::WatchedUdp]),
            ("connect", connect, &[Kind::Managed, Kind::Watched, Kind::WatchedUdp]),
            ("bind", bind, &[Kind::Managed, Kind::Watched, Kind::WatchedUdp]),
            ("listen", listen, &[Kind::Managed, Kind::Watched]),
            ("names", names, &[Kind::Managed, Kind::Named]),
            ("epoll_ctl", epoll_ctl, &[Kind::Watched, Kind::Connecting]),
            ("dup", dup, &[Kind::Managed, Kind::Named, Kind::Watched, Kind::WatchedUdp, Kind::Connecting]),
            ("close", close, &[Kind::Internal, Kind::Managed, Kind::Named, Kind::Watched, Kind::WatchedUdp, Kind::Connecting]),
        ];
        for kind in KINDS {
            fdtable::set(fd, kind);
            for (call, way, detoured) in cases {
                let want = match kind {
                    k if detoured.contains(&k) && k == Kind::Internal => Ok(Detour::Own),
                    k if detoured.contains(&k) => Ok(Detour::Tracked(k)),
                    Kind::Plain => Err(Bypass::Plain),
                    k => Err(Bypass::NotForThisCall(k)),
                };
                assert_eq!(way(fd), want, "{call} on a {kind:?} fd");
            }
        }
        fdtable::set(fd, Kind::Plain);
        assert_eq!(managed_only(-1), Err(Bypass::Plain), "outside the table");
        assert_eq!(managed_only(fdtable::CAPACITY as c_int), Err(Bypass::Plain));
    }

    #[test]
    fn getsockopt_and_dup_onto() {
        let (a, b) = (60_002, 60_003);
        fdtable::set(a, Kind::Named);
        assert_eq!(getsockopt(a, libc::SOL_SOCKET, libc::SO_ERROR), Ok(Detour::Tracked(Kind::Named)));
        assert_eq!(getsockopt(a, libc::SOL_SOCKET, libc::SO_RCVBUF), Err(Bypass::NotForThisCall(Kind::Named)));
        assert_eq!(dup_onto(b, a), Ok(Detour::Tracked(Kind::Named)), "a tracked fd is replaced");
        assert_eq!(dup_onto(a, b), Ok(Detour::Tracked(Kind::Named)), "the new fd shares a record");
        fdtable::set(b, Kind::Internal);
        assert_eq!(dup_onto(a, b), Ok(Detour::Own), "the shim's fd moves first");
        fdtable::set(a, Kind::Plain);
        fdtable::set(b, Kind::Plain);
        assert_eq!(dup_onto(a, b), Err(Bypass::Plain));
    }
}
