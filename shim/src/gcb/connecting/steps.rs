//! The steps of a non-blocking brokered connect (`connecting`): ask the
//! broker, then dial directly, meet the listener at the broker's rendezvous,
//! or take the listener's reversed connection. Each step is a non-blocking
//! call on a socket of the job's own, made by the responder when that socket
//! is ready or a timer falls due; [`advance`] says what came of it.

use std::net::SocketAddrV4;
use std::time::Instant;

use libc::c_int;
use proto::gcb::{Decision, Frame, Role, StreamHello, StreamPeer, Token};

use super::super::ask::{self, Asked};
use crate::client::family::Family;
use super::super::punch::{self, Progress, Session};
use super::super::reversal_listener::TempListener;
use super::super::spare;
use super::super::standby;
use crate::client::sys::{self, Errno, Sock};
use super::super::notice::refusal_errno;
use super::super::registry::connects::{Job, Stage};
use crate::client::exchange::Exchange;
use crate::real;

/// Reversed connections that have not said hello yet, per job.
const MAX_UNSPOKEN: usize = 4;

/// What a step came to.
pub(super) enum Step {
    Wait,
    /// Connected (or, for a direct dial, done with the kernel's verdict in
    /// the socket), to be reported as a connection to the destination or not.
    Done { sock: Sock, named: bool, decision: Option<Decision> },
    /// The standby connection kept for the destination (`standby`), claimed.
    Standby(Sock),
    Failed(Errno),
}

/// One step of `job`; `ready` is the socket that woke it, if one did.
pub(super) fn advance(job: &mut Job, ready: Option<(c_int, i16)>, now: Instant) -> Step {
    if now >= job.deadline && !matches!(job.stage, Stage::Dialing { .. } | Stage::Punching { .. }) {
        return Step::Failed(libc::ETIMEDOUT);
    }
    match std::mem::replace(&mut job.stage, Stage::New) {
        Stage::New => ask(job),
        Stage::Asking(asking, ex) => match ask::step(asking, ex, ready.is_some(), now, job.dest) {
            Ok(asked) => decided(job, asked),
            Err((asking, ex)) => {
                job.stage = Stage::Asking(asking, ex);
                Step::Wait
            }
        },
        Stage::Dialing { sock, decision } => Step::Done { named: decision.is_some(), sock, decision },
        Stage::Relaying { sock, token, said_hello, buf, have, decision } => relaying(job, sock, token, said_hello, buf, have, decision),
        Stage::Reversing { tmp, notices, token, unspoken, decision } => reversing(job, ready, tmp, notices, token, unspoken, decision),
        // Silent until the job's deadline: ETIMEDOUT above, never brokered
        // (`standby::outgoing::await_answer`).
        Stage::Claiming { conn, claimed, lost_check } => match standby::outgoing::answer_or_lost(conn.raw(), claimed, now) {
            standby::outgoing::Answer::Taken => Step::Standby(conn.into_sock()),
            standby::outgoing::Answer::Pending => {
                // Acknowledged by the time of the check: only the answer is awaited now.
                let lost_check = lost_check.filter(|at| now < *at);
                job.stage = Stage::Claiming { conn, claimed, lost_check };
                Step::Wait
            }
            standby::outgoing::Answer::Refused => {
                log!(Debug, "connect to {}: the listener did not take the standby connection; asking the broker", job.dest);
                ask_broker(job)
            }
            standby::outgoing::Answer::Lost => {
                log!(Info, "connect to {}: the standby connection's path is gone; asking the broker", job.dest);
                ask_broker(job)
            }
        },
        Stage::Punching { mut session, via, token, early } => match session.advance(ready, now) {
            Progress::Wait => {
                job.stage = Stage::Punching { session, via, token, early };
                Step::Wait
            }
            Progress::Direct { sock, .. } => Step::Done { sock: sock.into_sock(), named: true, decision: Some(Decision::PunchTcp { via, token, early }) },
            Progress::Relay { sock, .. } => Step::Done { sock: sock.into_sock(), named: true, decision: Some(Decision::Relay { via, token }) },
            Progress::Failed(e) => Step::Failed(e),
        },
    }
}

/// Claims a standby connection for the destination if one is kept, else
/// sends the `Connect`.
fn ask(job: &mut Job) -> Step {
    if crate::config::get().standby && standby::any_kept() {
        if let Some(conn) = super::super::state::with(|reg| standby::outgoing::claim(reg, job.dest, job.family)) {
            let claimed = Instant::now();
            job.stage = Stage::Claiming { conn, claimed, lost_check: Some(claimed + standby::LOST_AFTER) };
            return Step::Wait;
        }
    }
    ask_broker(job)
}

/// Sends the `Connect`.
fn ask_broker(job: &mut Job) -> Step {
    match ask::prepare_ask(job.dest, job.family) {
        Ok(asking) => match Exchange::start_as(asking.probe.raw(), asking.cmd, asking.policy, &super::super::mgmt::CODEC, &asking.msg, asking.request_id) {
            Ok(ex) => {
                job.stage = Stage::Asking(Box::new(asking), ex);
                Step::Wait
            }
            Err(why) => {
                let asked = ask::answered(asking, Err(why), job.dest);
                decided(job, asked)
            }
        },
        Err(asked) => decided(job, asked),
    }
}

/// The next stage once the broker (or its absence) has spoken.
fn decided(job: &mut Job, asked: Asked) -> Step {
    match asked {
        Asked::NotGcb => {
            log!(Debug, "{} has no broker; connecting directly", job.dest.ip());
            ask::remember_no_broker(*job.dest.ip());
            dial(job, job.dest, None)
        }
        Asked::Silent => {
            log!(Warn, "the broker at {} did not answer a Connect for {}; connecting to it directly", job.dest.ip(), job.dest);
            dial(job, job.dest, None)
        }
        Asked::Refused(code) => {
            log!(Warn, "the broker at {} refused a connection to {}: {code:?}", job.dest.ip(), job.dest);
            Step::Failed(libc::ECONNREFUSED)
        }
        Asked::NoResources(e) => Step::Failed(e),
        Asked::Decision(d, tmp, notices, early) => {
            log!(Debug, "connect to {}: {d:?}", job.dest);
            let tmp = match d {
                Decision::Reversal { .. } => tmp,
                _ => {
                    if let Some(t) = tmp {
                        spare::give_back(t);
                    }
                    None
                }
            };
            match d {
                Decision::Direct { addr } | Decision::SameRealm { addr } => dial(job, addr, Some(d)),
                Decision::NotRegistered => {
                    log!(Info, "connect to {}: nothing is registered there", job.dest);
                    Step::Failed(libc::ECONNREFUSED)
                }
                Decision::PunchTcp { via, token, early: true } => match early {
                    Some(e) => {
                        let session = Session::resume(job.family, e, token, punch::schedule(), job.deadline, job.dest);
                        job.stage = Stage::Punching { session: Box::new(session), via, token, early: true };
                        Step::Wait
                    }
                    None => Step::Failed(ask::unoffered(&d)),
                },
                Decision::PunchTcp { via, token, early: false } => match Session::start(job.family, via, token, Role::Connector, punch::schedule(), job.deadline) {
                    Ok(session) => {
                        job.stage = Stage::Punching { session: Box::new(session), via, token, early: false };
                        Step::Wait
                    }
                    Err(e) => Step::Failed(e),
                },
                Decision::PunchUdp { .. } => Step::Failed(ask::unoffered(&d)),
                Decision::Relay { via, token } => match started(job.family, via) {
                    Ok(sock) => {
                        job.stage = Stage::Relaying { sock, token, said_hello: false, buf: [0; StreamPeer::LEN], have: 0, decision: d };
                        Step::Wait
                    }
                    Err(e) => Step::Failed(e),
                },
                Decision::Reversal { token } => match tmp {
                    Some(tmp) => {
                        job.stage = Stage::Reversing { tmp, notices, token, unspoken: Vec::new(), decision: d };
                        Step::Wait
                    }
                    None => Step::Failed(libc::ECONNREFUSED),
                },
            }
        }
    }
}

/// A new non-blocking socket of `fam` connecting to `to`.
fn started(fam: Family, to: SocketAddrV4) -> Result<Sock, Errno> {
    let s = sys::socket_of(fam, libc::SOCK_STREAM, true, true)?;
    sys::connect_start(s.raw(), fam, to)?;
    Ok(s)
}

fn dial(job: &mut Job, to: SocketAddrV4, decision: Option<Decision>) -> Step {
    match started(job.family, to) {
        Ok(sock) => {
            job.stage = Stage::Dialing { sock, decision };
            Step::Wait
        }
        Err(e) => Step::Failed(e),
    }
}

#[allow(clippy::too_many_arguments)]
fn relaying(job: &mut Job, sock: Sock, token: Token, said_hello: bool, mut buf: [u8; StreamPeer::LEN], mut have: usize, decision: Decision) -> Step {
    if !said_hello {
        match sys::get_int_opt(sock.raw(), libc::SOL_SOCKET, libc::SO_ERROR) {
            Ok(0) => {}
            Ok(e) | Err(e) => return Step::Failed(e),
        }
        let hello = StreamHello { token, role: Role::Connector }.to_bytes();
        // SAFETY: a live buffer; a fresh socket takes 16 bytes whole.
        let n = unsafe { real::send(sock.raw(), hello.as_ptr().cast(), hello.len(), libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
        if n != hello.len() as isize {
            return Step::Failed(if n < 0 { crate::guard::errno() } else { libc::EIO });
        }
        job.stage = Stage::Relaying { sock, token, said_hello: true, buf, have, decision };
        return Step::Wait;
    }
    // Never past the 12 bytes: what follows is the program's.
    // SAFETY: a live buffer of the given length.
    let n = unsafe { real::recv(sock.raw(), buf[have..].as_mut_ptr().cast(), StreamPeer::LEN - have, libc::MSG_DONTWAIT) };
    match n {
        0 => return Step::Failed(libc::ECONNREFUSED),
        n if n < 0 => {
            let e = crate::guard::errno();
            if e != libc::EAGAIN && e != libc::EINTR {
                return Step::Failed(e);
            }
        }
        n => have += n as usize,
    }
    if have < StreamPeer::LEN {
        job.stage = Stage::Relaying { sock, token, said_hello, buf, have, decision };
        return Step::Wait;
    }
    match StreamPeer::decode(&buf) {
        Ok(StreamPeer::Paired { .. }) => Step::Done { sock, named: true, decision: Some(decision) },
        Ok(StreamPeer::Rejected { code }) => {
            log!(Debug, "the broker rejected a rendezvous: {code:?}");
            Step::Failed(refusal_errno(code))
        }
        Err(_) => Step::Failed(libc::EPROTO),
    }
}

fn reversing(job: &mut Job, ready: Option<(c_int, i16)>, tmp: TempListener, notices: Option<Sock>, token: Token, mut unspoken: Vec<Sock>, decision: Decision) -> Step {
    let fd = ready.map(|(fd, _)| fd);
    if let (Some(n), Some(fd)) = (&notices, fd) {
        if n.raw() == fd {
            if let Some(code) = super::super::notice::take(fd, token) {
                log!(Debug, "the broker says the listener will not dial: {code:?}");
                return Step::Failed(refusal_errno(code));
            }
        }
    }
    if fd == Some(tmp.raw()) {
        for _ in 0..MAX_UNSPOKEN {
            // SAFETY: no address wanted.
            let c = unsafe { real::accept4(tmp.raw(), std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK) };
            if c < 0 {
                break;
            }
            unspoken.push(Sock::from_raw(c));
        }
        unspoken.truncate(MAX_UNSPOKEN);
    }
    let mut i = 0;
    while i < unspoken.len() {
        match hello_of(unspoken[i].raw()) {
            Some(Ok(t)) if t == token => {
                let sock = unspoken.swap_remove(i);
                spare::give_back(tmp);
                return Step::Done { sock, named: true, decision: Some(decision) };
            }
            None => i += 1,
            // Another token, or not a hello: a stray connection.
            Some(_) => drop(unspoken.swap_remove(i)),
        }
    }
    job.stage = Stage::Reversing { tmp, notices, token, unspoken, decision };
    Step::Wait
}

/// The token of the hello waiting whole on `fd`; `None` while it has not
/// arrived whole (it was sent in one segment, so it comes whole or not yet).
fn hello_of(fd: c_int) -> Option<Result<Token, ()>> {
    let mut buf = [0u8; StreamHello::LEN];
    // SAFETY: a live buffer of the given length.
    let n = unsafe { real::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT | libc::MSG_PEEK) };
    if n == 0 || (n < 0 && crate::guard::errno() != libc::EAGAIN) {
        return Some(Err(()));
    }
    if n < StreamHello::LEN as isize {
        return None;
    }
    // SAFETY: as above; takes the hello that was peeked.
    unsafe { real::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    match StreamHello::decode(&buf) {
        Ok(StreamHello { token, role: Role::Listener }) => Some(Ok(token)),
        _ => Some(Err(())),
    }
}
