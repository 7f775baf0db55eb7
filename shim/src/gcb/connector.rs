//! The connector side: `connect` on a GCB-mode TCP socket asks the broker at the
//! destination's IP who dials whom, and carries out the answer
//! (docs/gcb-client-design.md, "Connector side").
//!
//! 1. Destinations that never need brokering go straight to the real `connect`:
//!    loopback, `GCB_ROUTE` `direct`, and IPs in the negative cache.
//! 2. Otherwise a hidden temporary listener on the IP the kernel uses towards
//!    the destination (in case the answer is a reversal; the process's spare
//!    one if free, see `reversal_listener`) is sent along, and `Connect`
//!    goes to `IP:command_port` on a *connected* UDP socket, with the short probe
//!    retry policy. ECONNREFUSED, a foreign reply or silence mean "not GCB": the
//!    IP is cached as negative and the socket connects directly.
//! 3. `Direct` and `SameRealm`: the real `connect` to the address given.
//!    `NotRegistered`: ECONNREFUSED.
//!    `Relay`: the application's socket meets the listener at the broker's
//!    rendezvous. `Reversal`: the listener's connection arrives on the temporary
//!    listener and is put on the application's fd number with `dup3`, keeping its
//!    O_NONBLOCK and FD_CLOEXEC, its common options, and its epoll registrations;
//!    or the broker's `ConnectFailed` arrives on the `Connect` socket, kept open
//!    for it, and the connect fails with ECONNREFUSED (the listener is gone).
//!
//! With `GCB_STANDBY=1`, a standby connection kept for the destination
//! (`standby`) is taken first, with no brokering at all.
//!
//! A non-blocking socket returns EINPROGRESS at once, before any of this:
//! the responder carries the steps out and puts the connection on the fd
//! (`connecting`). A blocking one does them inside the call, bounded by the
//! socket's `SO_SNDTIMEO` or else the `dial` timeouts (ETIMEDOUT past them),
//! and its connect completes as soon as the connection is established end to
//! end: the listener's responder dials and parks it without waiting for its
//! program's `accept`. `getpeername` on a brokered socket reports the address
//! the application dialed, its peer's identity.
//!
//! Only sockets made by `socket()` in this process image while GCB is on are
//! candidates (`Watched`): AF_INET, and AF_INET6 dialing a v4-mapped address
//! (names and the reversed connection's socket are then AF_INET6 too, see
//! `family`); pure IPv6 passes through. A reversal replaces the socket, so a local address the
//! application bound before `connect` is not kept; an application that needs a
//! fixed source port should list the destination as `direct` in `GCB_ROUTE`.

use std::net::SocketAddrV4;
use std::time::Instant;

use libc::{c_int, sockaddr, socklen_t};
use proto::gcb::{Decision, Role};
use proto::Proto;

use super::ask::{ask, log_path, remember_no_broker, unoffered, worth_asking, Asked};
use super::dial;
use crate::client::family::{self, Family};
use super::registry::Names;
use super::reversal_listener::TempListener;
use super::spare;
use super::standby;
use super::swap::{put_on, AppSocket};
use crate::client::sys::{self, Errno, Sock};
use crate::fdtable::{self, Kind};
use crate::guard::{errno, set_errno};
use crate::real;

/// `connect` on a watched socket.
///
/// # Safety
///
/// The C contract of `connect`.
pub unsafe fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    let now = Instant::now();
    // Pure IPv6 is not brokered; neither is a v4-mapped address on a v6-only
    // socket, which the kernel refuses by itself.
    let dest = sys::from_sockaddr(addr, len).filter(|d| worth_asking(*d));
    let fam = if dest.is_some() { family::of(fd) } else { Family::V4 };
    let Some(dest) = dest.filter(|_| fam == Family::V4 || !family::v6only(fd)) else {
        fdtable::replace(fd, Kind::Watched, Kind::Plain);
        return real::connect(fd, addr, len);
    };
    let saved = errno();
    // A non-blocking socket gets EINPROGRESS at once; the responder brokers it.
    if sys::is_nonblocking(fd) {
        if let Some(r) = super::connecting::start(fd, dest, fam) {
            return r;
        }
    } else if crate::config::get().standby && standby::any_kept() && !crate::process::borrowed() {
        if let Some(r) = take_standby(fd, dest, fam, saved, now) {
            return r;
        }
    }
    match ask(dest, fam) {
        Asked::NotGcb => {
            log!(Debug, "{} has no broker; connecting directly", dest.ip());
            remember_no_broker(*dest.ip());
            super::state::with(|reg| super::fdops::unwatch(reg, fd));
            set_errno(saved);
            real::connect(fd, addr, len)
        }
        Asked::Silent => {
            log!(Warn, "the broker at {} did not answer a Connect for {dest}; connecting to it directly", dest.ip());
            super::state::with(|reg| super::fdops::unwatch(reg, fd));
            set_errno(saved);
            real::connect(fd, addr, len)
        }
        Asked::Refused(code) => {
            log!(Warn, "the broker at {} refused a connection to {dest}: {code:?}", dest.ip());
            fail(libc::ECONNREFUSED)
        }
        Asked::Decision(decision, tmp, notices, early) => {
            let r = decide(fd, dest, decision, (tmp, notices, early), saved, now);
            // A punch logs which way it went itself.
            let logged = matches!(decision, Decision::PunchTcp { .. });
            if !logged && (r == 0 || errno() == libc::EINPROGRESS) {
                log_path(Proto::Tcp, dest, &decision, now);
            }
            r
        }
        Asked::NoResources(e) => {
            log!(Warn, "connect to {dest}: no socket for the broker's exchange: {}", std::io::Error::from_raw_os_error(e));
            fail(e)
        }
    }
}

/// The program's blocking connect takes a standby connection kept for
/// `dest`, if there is one (`standby`): no brokering, only the claim and the
/// listener's answer, and the next standby is asked for. `None` if there is
/// none, or the listener refused the claim: the connect is brokered. No
/// answer by the connect's deadline fails it with ETIMEDOUT.
fn take_standby(fd: c_int, dest: SocketAddrV4, fam: Family, saved: c_int, since: Instant) -> Option<c_int> {
    let app = AppSocket::read(fd).ok()?;
    let conn = super::state::with(|reg| standby::outgoing::claim(reg, dest, fam))?;
    match standby::outgoing::await_answer(conn.raw(), Instant::now(), connect_deadline(fd)) {
        standby::outgoing::Answer::Taken => {}
        standby::outgoing::Answer::Refused => {
            log!(Debug, "connect to {dest}: the listener did not take the standby connection; asking the broker");
            return None;
        }
        standby::outgoing::Answer::Lost => {
            log!(Info, "connect to {dest}: the standby connection's path is gone; asking the broker");
            return None;
        }
        standby::outgoing::Answer::Pending => {
            log!(Warn, "connect to {dest}: the listener did not answer the claim of a standby connection in time");
            return Some(fail(libc::ETIMEDOUT));
        }
    }
    let put = super::state::with(|reg| {
        let regs = reg.interest.take(fd);
        put_on(fd, conn.into_sock(), true, &app, regs)?;
        name_in(reg, fd, dest);
        Ok(standby::outgoing::want(reg, dest, fam, Instant::now()))
    });
    match put {
        Err(e) => {
            log!(Warn, "connect to {dest}: the standby connection could not be put on fd {fd} ({}); the connect fails", std::io::Error::from_raw_os_error(e));
            Some(fail(e))
        }
        Ok(wanted) => {
            // Connected: a panic from here on must not fail the connect (`hook`, rule 4).
            crate::guard::bookkeep(|| {
                log!(Info, "connect tcp {dest} via punched (standby) in {} us", since.elapsed().as_micros());
                if wanted {
                    super::state::ensure_responder();
                }
            });
            set_errno(saved);
            Some(0)
        }
    }
}

fn fail(e: Errno) -> c_int {
    set_errno(e);
    -1
}

/// Carries out the broker's decision on the application's socket `fd`.
unsafe fn decide(fd: c_int, dest: SocketAddrV4, d: Decision, (tmp, notices, early): (Option<TempListener>, Option<Sock>, Option<super::punch::Early>), saved: c_int, since: Instant) -> c_int {
    log!(Debug, "connect to {dest}: {d:?}");
    let tmp = match d {
        Decision::Reversal { .. } => tmp,
        _ => {
            // Unused: nothing was told to dial it.
            if let Some(t) = tmp {
                spare::give_back(t);
            }
            None
        }
    };
    match d {
        Decision::Direct { addr } | Decision::SameRealm { addr } => {
            name(fd, dest);
            let raw = family::encode(addr, family::of(fd));
            set_errno(saved);
            real::connect(fd, raw.ptr(), raw.len())
        }
        Decision::NotRegistered => {
            log!(Info, "connect to {dest}: nothing is registered there");
            fail(libc::ECONNREFUSED)
        }
        Decision::PunchTcp { via, token, early: is_early } => {
            let app = match AppSocket::read(fd) {
                Ok(app) => app,
                Err(e) => return brokered_failed(dest, "punch", e),
            };
            let fam = family::of(fd);
            let (schedule, deadline) = (super::punch::schedule(), connect_deadline(fd));
            let session = match (is_early, early) {
                (true, Some(e)) => Ok(super::punch::Session::resume(fam, e, token, schedule, deadline, dest)),
                (true, None) => Err(unoffered(&d)),
                (false, _) => super::punch::Session::start(fam, via, token, Role::Connector, schedule, deadline),
            };
            let punched = session.and_then(|s| s.finish());
            match punched.and_then(|(sock, direct)| swap(fd, sock.into_sock(), true, &app).map(|()| direct)) {
                Ok(direct) => {
                    // Connected: a panic from here on must not fail the connect (`hook`, rule 4).
                    crate::guard::bookkeep(|| {
                        name(fd, dest);
                        log_path(Proto::Tcp, dest, &if direct { d } else { Decision::Relay { via, token } }, since);
                        if direct {
                            standby::replenish(dest, fam);
                        }
                    });
                    set_errno(saved);
                    0
                }
                Err(e) => brokered_failed(dest, "punch", e),
            }
        }
        Decision::PunchUdp { .. } => brokered_failed(dest, "punch", unoffered(&d)),
        Decision::Relay { via, token } => match dial::relay(fd, via, token, connect_deadline(fd)) {
            Ok(()) => {
                // Connected: a panic naming it must not fail the connect (`hook`, rule 4).
                crate::guard::bookkeep(|| name(fd, dest));
                set_errno(saved);
                0
            }
            Err(e) => brokered_failed(dest, "relay", e),
        },
        Decision::Reversal { token } => {
            let Some(tmp) = tmp else { return brokered_failed(dest, "reversal", libc::ECONNREFUSED) };
            let deadline = connect_deadline(fd);
            // Read while the listener dials, not after its connection is in.
            let app = match AppSocket::read(fd) {
                Ok(app) => app,
                Err(e) => return brokered_failed(dest, "reversal", e),
            };
            let notices = notices.as_ref().map(Sock::raw);
            match dial::accept_reversed(tmp.raw(), notices, token, deadline, app.nonblocking, tmp.hello_wait()).and_then(|c| swap(fd, c, app.nonblocking, &app)) {
                Ok(()) => {
                    // Its connection taken; after a failure the listener's
                    // dial may still come, so that one is closed (dropped).
                    // Connected: a panic from here on must not fail the
                    // connect (`hook`, rule 4).
                    crate::guard::bookkeep(|| {
                        spare::give_back(tmp);
                        name(fd, dest);
                    });
                    set_errno(saved);
                    0
                }
                Err(e) => brokered_failed(dest, "reversal", e),
            }
        }
    }
}

/// How long a brokered connect of `fd` may take: the socket's `SO_SNDTIMEO` if the
/// application set one (the kernel bounds a blocking connect by it), else
/// [`dial::PAIR_TIMEOUT`].
fn connect_deadline(fd: c_int) -> Instant {
    let mut tv = libc::timeval { tv_sec: 0, tv_usec: 0 };
    let mut len = std::mem::size_of::<libc::timeval>() as socklen_t;
    // SAFETY: a timeval-sized buffer.
    let r = unsafe { real::getsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDTIMEO, (&mut tv as *mut libc::timeval).cast(), &mut len) };
    let set = std::time::Duration::new(tv.tv_sec.max(0) as u64, tv.tv_usec.clamp(0, 999_999) as u32 * 1000);
    Instant::now() + if r == 0 && !set.is_zero() { set } else { dial::PAIR_TIMEOUT }
}

/// One line for a brokered connect that failed; the application gets `e`.
fn brokered_failed(dest: SocketAddrV4, how: &str, e: Errno) -> c_int {
    log!(Warn, "connect to {dest} by {how} failed: {}", std::io::Error::from_raw_os_error(e));
    fail(e)
}

/// `fd` is now a brokered connection to `dest`: report `dest` as its peer.
fn name(fd: c_int, dest: SocketAddrV4) {
    super::state::with(|reg| {
        reg.interest.take(fd);
        name_in(reg, fd, dest);
    });
}

/// [`name`], for a caller that holds the registry.
fn name_in(reg: &mut super::registry::Registry, fd: c_int, dest: SocketAddrV4) {
    reg.set_names(fd, Names { local: None, peer: Some(dest) });
    // A connected socket has no error of a connect before it.
    super::registry::connects::keep_error(fd, 0);
    fdtable::set(fd, Kind::Named);
}

/// Puts connection `c` (non-blocking if `c_nonblocking`) on the application's
/// fd number, as `app` was set up (see `swap`).
fn swap(fd: c_int, c: Sock, c_nonblocking: bool, app: &AppSocket) -> Result<(), Errno> {
    let regs = super::state::with(|reg| reg.interest.take(fd));
    put_on(fd, c, c_nonblocking, app, regs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection that never says hello (a stray, or one that lost its
    /// way) is not taken by a reversed connect: the one that speaks is.
    #[test]
    fn a_silent_connection_does_not_hold_up_the_reversed_one() {
        let tmp = spare::take(std::net::Ipv4Addr::LOCALHOST, Family::V4).unwrap();
        let at = tmp.at;
        let silent = sys::socket(libc::SOCK_STREAM, true, true).unwrap();
        sys::connect(silent.raw(), at, Instant::now() + std::time::Duration::from_secs(5)).unwrap();
        let token = proto::gcb::Token(9);
        let speaking = dial::tests::dial_hello(at, token);
        // Well under the hello timeout a silent connection taken first would cost.
        let got = dial::accept_reversed(tmp.raw(), None, token, Instant::now() + std::time::Duration::from_secs(3), true, tmp.hello_wait()).unwrap();
        assert_eq!(sys::peer_addr(got.raw()).unwrap(), sys::local_addr(speaking.raw()).unwrap());
        assert_eq!(sys::get_int_opt(got.raw(), libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT), Ok(0), "not carried to the application");
        // Never accepted, so never closed by the connector: no end of stream.
        let soon = Instant::now() + std::time::Duration::from_millis(500);
        assert_eq!(sys::wait_fd(silent.raw(), libc::POLLIN, soon), Err(libc::ETIMEDOUT), "the silent connection was not taken");
    }

    #[test]
    fn swap_keeps_flags_and_epoll_registrations() {
        use crate::client::options::Options;
        let l = sys::socket(libc::SOCK_STREAM, true, false).unwrap();
        sys::bind(l.raw(), "127.0.0.1:0".parse().unwrap()).unwrap();
        assert_eq!(unsafe { real::listen(l.raw(), 4) }, 0);
        let at = sys::local_addr(l.raw()).unwrap();
        // The application's socket: non-blocking, not close-on-exec, in an epoll set.
        let app = sys::socket(libc::SOCK_STREAM, false, true).unwrap();
        let ep = unsafe { real::epoll_create1(libc::EPOLL_CLOEXEC) };
        let mut ev = libc::epoll_event { events: libc::EPOLLOUT as u32, u64: 5 };
        assert_eq!(unsafe { real::epoll_ctl(ep, libc::EPOLL_CTL_ADD, app.raw(), &mut ev) }, 0);
        super::super::state::with(|reg| reg.interest.record(ep, libc::EPOLL_CTL_ADD, app.raw(), Some((ev.events, 5))));
        super::super::state::with(|reg| reg.interest.record(ep + 1000, libc::EPOLL_CTL_ADD, app.raw(), Some((1, 1))));
        let c = sys::socket(libc::SOCK_STREAM, true, false).unwrap();
        sys::connect(c.raw(), at, Instant::now() + std::time::Duration::from_secs(2)).unwrap_or(());
        let local = sys::local_addr(c.raw()).unwrap();
        sys::set_int_opt(app.raw(), libc::IPPROTO_TCP, libc::TCP_NODELAY, 1).unwrap();
        let read = AppSocket { options: Options::read(app.raw()), ..AppSocket::read(app.raw()).unwrap() };
        swap(app.raw(), c, false, &read).unwrap();
        assert_eq!(sys::local_addr(app.raw()).unwrap(), local, "the fd number now holds the new connection");
        assert!(sys::is_nonblocking(app.raw()));
        assert_eq!(sys::get_int_opt(app.raw(), libc::IPPROTO_TCP, libc::TCP_NODELAY), Ok(1), "options carried");
        assert_eq!(unsafe { real::fcntl(app.raw(), libc::F_GETFD, 0) } & libc::FD_CLOEXEC, 0);
        let mut out = [libc::epoll_event { events: 0, u64: 0 }; 2];
        assert_eq!(unsafe { real::epoll_wait(ep, out.as_mut_ptr(), 2, 1000) }, 1, "re-added to the live set");
        assert_eq!({ out[0].u64 }, 5);
        unsafe { real::close(ep) };
    }
}
