//! The listener's side of a brokered connection, carried out by the responder
//! the moment the broker asks for it (`ReverseConnect`, `RelayConnect`): dial
//! the connector (reversal) or the broker's rendezvous (relay), say the stream
//! hello, and for a relay wait for `Paired`. The connection is then established
//! end to end, and the connector's `connect` has completed, whatever the
//! listening program is doing; it is parked (`park`) and its doorbell rung
//! (`doorbell`), so the program's `accept` finds it in the kernel's queue.
//!
//! Each dial is a small state machine ([`Serving`], its record in
//! `registry::serving`) on a non-blocking internal socket, advanced by the
//! responder when its socket is ready and given up at its deadline; nothing
//! here blocks. Dials and parked connections of one
//! listener together stay within its listen backlog (`Registry::room_for`), so a flood
//! of connections costs what the kernel's backlog would: the excess is refused.

use std::net::SocketAddrV4;
use std::time::Instant;

use libc::c_int;
use proto::gcb::{Frame, Role, StreamHello, StreamPeer};

use super::registry::serving::{Dial, Job, Serving, Stage, DIAL_TIMEOUT, PAIR_TIMEOUT};
use super::registry::Registry;
use crate::client::sys::{self, Errno};
use crate::real;

/// Starts dialing for `job` (under the registry lock: nothing here blocks).
/// The listener's family decides the socket's, as the accepted fd it replaces.
pub fn start(reg: &mut Registry, job: Job, now: Instant) {
    let Some(family) = reg.listener(job.listener).map(|l| l.family) else { return };
    let to = match job.dial {
        Dial::Reverse { connector } => connector,
        Dial::Relay { broker } => broker,
        Dial::Punch { broker, .. } => return super::serve_punch::start(reg, job, broker, now),
    };
    let started = sys::socket_of(family, libc::SOCK_STREAM, true, true).and_then(|s| {
        // The hello carries the handshake's last ACK: one segment fewer.
        sys::ack_with_first_data(s.raw());
        sys::connect_start(s.raw(), family, to).map(|_| s)
    });
    match started {
        Ok(s) => {
            let fd = crate::internal::adopt(s.into_raw());
            reg.serving.push(Serving { job, fd, stage: Stage::Connecting, deadline: now + DIAL_TIMEOUT });
        }
        Err(e) => failed(&job, e),
    }
}

fn failed(job: &Job, e: Errno) {
    let e = std::io::Error::from_raw_os_error(e);
    log!(Warn, "brokered connection from {} to {} failed: {e}", job.peer, job.proxy);
}

/// What one step of a dial came to.
enum Step {
    Wait,
    /// Established end to end: park it, reporting `peer`.
    Done { peer: SocketAddrV4 },
    Failed(Errno),
}

/// Advances the dial on `fd`, ready with `revents`. A dial that is done is
/// parked and its doorbell rung; a failed one is closed.
pub fn progress(reg: &mut Registry, fd: c_int, revents: i16, now: Instant) {
    let Some(i) = reg.serving.iter().position(|s| s.fd == fd) else { return };
    let step = advance(&mut reg.serving[i], revents, now);
    if matches!(step, Step::Wait) {
        return;
    }
    let s = reg.serving.swap_remove(i);
    match step {
        Step::Done { peer } => {
            super::park::park(reg, s.job.listener, s.fd, peer, s.job.proxy, now);
        }
        Step::Failed(e) => {
            failed(&s.job, e);
            crate::internal::release(s.fd);
        }
        Step::Wait => unreachable!(),
    }
}

fn advance(s: &mut Serving, revents: i16, now: Instant) -> Step {
    match &mut s.stage {
        Stage::Connecting => {
            match sys::get_int_opt(s.fd, libc::SOL_SOCKET, libc::SO_ERROR) {
                Ok(0) if revents & libc::POLLOUT != 0 => {}
                Ok(0) => return Step::Wait,
                Ok(e) | Err(e) => return Step::Failed(e),
            }
            let hello = StreamHello { token: s.job.token, role: Role::Listener }.to_bytes();
            // A fresh socket's send buffer takes 16 bytes whole.
            // SAFETY: a live buffer of the given length.
            let n = unsafe { real::send(s.fd, hello.as_ptr().cast(), hello.len(), libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
            if n != hello.len() as isize {
                return Step::Failed(if n < 0 { crate::guard::errno() } else { libc::EIO });
            }
            match s.job.dial {
                Dial::Reverse { .. } => Step::Done { peer: s.job.peer },
                Dial::Relay { .. } | Dial::Punch { .. } => {
                    s.stage = Stage::Pairing { buf: [0; StreamPeer::LEN], have: 0 };
                    s.deadline = now + PAIR_TIMEOUT;
                    Step::Wait
                }
            }
        }
        Stage::Pairing { buf, have } => {
            let rest = &mut buf[*have..];
            // Never past the 12 bytes: the peer's data that follows is the application's.
            // SAFETY: a live buffer of the given length.
            let n = unsafe { real::recv(s.fd, rest.as_mut_ptr().cast(), rest.len(), libc::MSG_DONTWAIT) };
            match n {
                0 => return Step::Failed(libc::ECONNRESET),
                n if n < 0 => {
                    return match crate::guard::errno() {
                        libc::EAGAIN | libc::EINTR => Step::Wait,
                        e => Step::Failed(e),
                    }
                }
                n => *have += n as usize,
            }
            if *have < StreamPeer::LEN {
                return Step::Wait;
            }
            match StreamPeer::decode(buf) {
                Ok(StreamPeer::Paired { peer }) => Step::Done { peer },
                Ok(StreamPeer::Rejected { code }) => {
                    log!(Debug, "the broker rejected a rendezvous: {code:?}");
                    Step::Failed(libc::ECONNREFUSED)
                }
                Err(e) => {
                    log!(Warn, "the broker's rendezvous answered something else ({e:?})");
                    Step::Failed(libc::EPROTO)
                }
            }
        }
    }
}

/// Gives up on dials past their deadline.
pub fn on_timers(reg: &mut Registry, now: Instant) {
    let (late, keep): (Vec<Serving>, Vec<Serving>) = reg.serving.drain(..).partition(|s| now >= s.deadline);
    reg.serving = keep;
    for s in late {
        failed(&s.job, libc::ETIMEDOUT);
        crate::internal::release(s.fd);
    }
}

/// The earliest dial deadline.
pub fn next_deadline(reg: &Registry) -> Option<Instant> {
    reg.serving.iter().map(|s| s.deadline).min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use super::super::registry::ListenerId;
    use proto::gcb::Token;
    use std::time::Duration;
    use std::net::Ipv4Addr;

    /// A listening socket on loopback recorded as a registered listener
    /// (without a management socket), and its id.
    fn registered_listener(backlog: usize) -> (sys::Sock, ListenerId) {
        let app = sys::socket(libc::SOCK_STREAM, true, true).unwrap();
        sys::bind(app.raw(), SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).unwrap();
        assert_eq!(unsafe { real::listen(app.raw(), 8) }, 0);
        let mut l = crate::gcb::registration::tests::listener(&[app.raw()], -1);
        l.local = sys::local_addr(app.raw()).unwrap();
        l.proxy = Some("203.0.113.10:20001".parse().unwrap());
        l.backlog = backlog;
        let id = super::super::state::with(|reg| reg.add_listener(l).0);
        (app, id)
    }

    /// A reversal dialed by the responder arrives at the connector's
    /// listener with its hello, and the connection is parked.
    #[test]
    fn a_reversal_is_dialed_said_hello_and_parked() {
        let connector = sys::socket(libc::SOCK_STREAM, true, true).unwrap();
        sys::bind(connector.raw(), SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).unwrap();
        assert_eq!(unsafe { real::listen(connector.raw(), 4) }, 0);
        let at = sys::local_addr(connector.raw()).unwrap();
        let (_app, id) = registered_listener(4);
        let token = Token(sys::random_u64());
        let peer: SocketAddrV4 = "198.51.100.10:4000".parse().unwrap();
        let proxy: SocketAddrV4 = "203.0.113.10:20001".parse().unwrap();
        let job = Job { listener: id, token, dial: Dial::Reverse { connector: at }, peer, proxy };
        let now = Instant::now();
        let fd = super::super::state::with(|reg| {
            assert!(reg.room_for(id));
            start(reg, job, now);
            reg.serving.last().unwrap().fd
        });
        sys::wait_fd(fd, libc::POLLOUT, now + Duration::from_secs(5)).unwrap();
        super::super::state::with(|reg| progress(reg, fd, libc::POLLOUT, Instant::now()));
        assert!(super::super::state::with(|reg| reg.serving.iter().all(|s| s.fd != fd)), "done dialing");
        sys::wait_fd(connector.raw(), libc::POLLIN, Instant::now() + Duration::from_secs(5)).unwrap();
        let c = sys::Sock::from_raw(unsafe { real::accept(connector.raw(), std::ptr::null_mut(), std::ptr::null_mut()) });
        let mut hello = [0u8; StreamHello::LEN];
        sys::recv_exact(c.raw(), &mut hello, Instant::now() + Duration::from_secs(5)).unwrap();
        assert_eq!(StreamHello::decode(&hello).unwrap(), StreamHello { token, role: Role::Listener });
        assert_eq!(super::super::state::with(|reg| reg.parked.count_for(id)), 1, "parked");
        super::super::state::with(|reg| {
            reg.parked.forget_listener_for_tests(id);
            reg.remove_fd(_app.raw());
        });
    }
}
