//! One side of one TCP hole punch, on non-blocking sockets of the shim's own
//! (docs/hole-punching.md): the rendezvous connection to the broker, the
//! attempts and connections to the peer's mapping, and the listening socket
//! on the same port. The decisions are proto's [`Dialer`]; a session only
//! carries out its [`Do`]s and feeds it what the sockets did.
//!
//! The connector's non-blocking connect (`connecting`), its blocking connect
//! (`connector`) and the listener's responder (`serve_punch`) all drive a
//! session the same way: wait on [`Session::poll_fds`] until
//! [`Session::next_deadline`], then [`Session::advance`], until it is no
//! longer [`Progress::Wait`].
//!
//! The rendezvous connection carries the token, which the broker finds the
//! meeting by ([`Dialer::rendezvous_hello`]); a connection to the peer's
//! mapping carries only this side's proof, and is checked against the
//! peer's ([`Dialer::peer_hello_frame`], proto's `punch::proof`).
//!
//! Every socket shares the rendezvous connection's local port, with
//! `SO_REUSEADDR` and `SO_REUSEPORT`: the port the broker saw, and the one
//! the gateway mapped, is the one the peer dials. All are internal fds
//! (`internal`) while the session holds them; the one handed over is a
//! plain socket again, with both options cleared.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Instant;

use libc::c_int;
use proto::gcb::punch::{BrokerFrame, BrokerFrameReader, ConnId, DialFailure, Dialer, Do, PeerHello, PunchVerdict, Schedule};
use proto::gcb::{Frame, FrameReader, Role, Token};

use crate::client::family::Family;
use crate::client::sys::{self, Errno, Sock};
use crate::real;

use super::sock::{rendezvous, reusable, send_whole, Held};

/// How a session stands after a step.
#[derive(Debug)]
pub enum Progress {
    Wait,
    /// Punched: the connection to the peer, and the peer to report.
    Direct { sock: Held, peer: SocketAddrV4 },
    /// The broker relays: the rendezvous connection, and the peer to report.
    Relay { sock: Held, peer: SocketAddrV4 },
    Failed(Errno),
}

/// Where the rendezvous connection stands.
#[derive(Debug)]
enum Rendezvous {
    /// The handshake is under way; our hello follows it.
    Connecting,
    /// The broker's first frame: a go, or at once a verdict.
    First(BrokerFrameReader),
    /// Reported or not yet, the verdict is the next thing it sends.
    Verdict(FrameReader<PunchVerdict>),
}

#[derive(Debug)]
enum Stage {
    Dialing,
    /// Our hello (our proof) sent; the peer's being read.
    Checking { buf: [u8; PeerHello::LEN], have: usize },
}

#[derive(Debug)]
struct Conn {
    id: ConnId,
    sock: Held,
    stage: Stage,
}

/// One side of one punch (module docs).
#[derive(Debug)]
pub struct Session {
    fam: Family,
    dialer: Dialer,
    rendezvous: Option<Held>,
    rv: Rendezvous,
    /// The rendezvous connection's local address, once connected.
    local: SocketAddrV4,
    listener: Option<Held>,
    conns: Vec<Conn>,
    deadline: Instant,
    /// An early rendezvous (`resume`) the broker turned away before its go
    /// (it held too many: `LimitReached`, or the connection ended) is made
    /// again here, once, with the token, which finds the meeting the broker
    /// decided.
    again_at: Option<SocketAddrV4>,
}

/// `s`, listening (a few: only the peer's SYN is expected).
fn listening(s: Sock) -> Result<Sock, Errno> {
    // SAFETY: listen on our own socket.
    match unsafe { real::listen(s.raw(), 4) } {
        0 => Ok(s),
        _ => Err(crate::guard::errno()),
    }
}

/// Errors of a dial that say the far side was not open (yet), as opposed to
/// our own socket failing.
fn refused(e: Errno) -> bool {
    matches!(e, libc::ECONNREFUSED | libc::ECONNRESET | libc::EHOSTUNREACH | libc::ENETUNREACH | libc::ETIMEDOUT | libc::EPIPE)
}

impl Session {
    /// Dials the rendezvous `via` for `token` as `role`; the whole punch,
    /// relay fallback included, must be over by `deadline`.
    pub fn start(fam: Family, via: SocketAddrV4, token: Token, role: Role, schedule: Schedule, deadline: Instant) -> Result<Session, Errno> {
        // The hello rides in the SYN where the kernel has the broker's Fast
        // Open cookie; the connection is the same either way.
        let (s, _) = rendezvous(fam, via)?;
        Ok(Session {
            fam,
            dialer: Dialer::new(token, role, schedule),
            rendezvous: Some(Held::adopt(s)),
            rv: Rendezvous::Connecting,
            local: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
            listener: None,
            conns: Vec::new(),
            deadline,
            again_at: None,
        })
    }

    /// The connector's side on the rendezvous connection it opened beside its
    /// `Connect` (`Early`), which the broker took for the punch `token`
    /// (`Decision::PunchTcp { early }`): the go comes on it, and the
    /// connection to the listener is used once its proof checks, named
    /// `peer` (the proxy address the program dialed), without the verdict.
    pub fn resume(fam: Family, early: super::early::Early, token: Token, schedule: Schedule, deadline: Instant, peer: SocketAddrV4) -> Session {
        let rv = if early.said_hello { Rendezvous::First(BrokerFrameReader::new()) } else { Rendezvous::Connecting };
        Session {
            fam,
            dialer: Dialer::new(token, Role::Connector, schedule).commit_on_check(peer),
            rendezvous: Some(early.sock),
            rv,
            local: early.local,
            listener: None,
            conns: Vec::new(),
            deadline,
            again_at: Some(early.via),
        }
    }

    /// Whether the early rendezvous is to be made again (`again_at`): only
    /// before the broker's first frame on it.
    fn dial_again(&mut self) -> bool {
        let Some(via) = self.again_at.take() else { return false };
        if !matches!(self.rv, Rendezvous::First(_) | Rendezvous::Connecting) {
            return false;
        }
        let Ok((s, _)) = rendezvous(self.fam, via) else { return false };
        log!(Debug, "punch: the broker turned the early rendezvous away; meeting it again with the token");
        self.rendezvous = Some(Held::adopt(s));
        self.rv = Rendezvous::Connecting;
        true
    }

    /// Attempts dialed so far, for the log.
    pub fn attempts(&self) -> u32 {
        self.dialer.attempts()
    }

    /// The fds to wait on, with their events.
    pub fn poll_fds(&self, out: &mut Vec<(c_int, i16)>) {
        if let Some(r) = &self.rendezvous {
            let ev = if matches!(self.rv, Rendezvous::Connecting) { libc::POLLOUT } else { libc::POLLIN };
            out.push((r.raw(), ev));
        }
        if let Some(l) = &self.listener {
            out.push((l.raw(), libc::POLLIN));
        }
        for c in &self.conns {
            out.push((c.sock.raw(), if matches!(c.stage, Stage::Dialing) { libc::POLLOUT } else { libc::POLLIN }));
        }
    }

    pub fn owns(&self, fd: c_int) -> bool {
        self.rendezvous.as_ref().is_some_and(|r| r.raw() == fd)
            || self.listener.as_ref().is_some_and(|l| l.raw() == fd)
            || self.conns.iter().any(|c| c.sock.raw() == fd)
    }

    /// The program `dup2`ed onto one of this session's internal fds and the
    /// shim moved it to `new` (`Registry::replace_internal_fd`); false if
    /// none is `old`.
    pub fn renumber(&mut self, old: c_int, new: c_int) -> bool {
        self.rendezvous.iter_mut().chain(self.listener.iter_mut()).chain(self.conns.iter_mut().map(|c| &mut c.sock)).any(|h| h.renumber(old, new))
    }

    /// When to advance without an event.
    pub fn next_deadline(&self) -> Instant {
        self.dialer.next_wakeup().map_or(self.deadline, |t| t.min(self.deadline))
    }

    /// Runs the session to its end in the calling thread (a blocking
    /// connect): the connection and whether it was punched (else relayed).
    /// Signals do not cut it short; the deadline bounds it.
    pub fn finish(mut self) -> Result<(Held, bool), Errno> {
        let mut fds = Vec::new();
        loop {
            fds.clear();
            self.poll_fds(&mut fds);
            let mut p: Vec<libc::pollfd> = fds.iter().map(|&(fd, events)| libc::pollfd { fd, events, revents: 0 }).collect();
            match sys::wait_fds(&mut p, self.next_deadline()) {
                Ok(()) | Err(libc::ETIMEDOUT) => {}
                Err(e) => return Err(e),
            }
            let mut ready: Vec<(c_int, i16)> = p.iter().filter(|p| p.revents != 0).map(|p| (p.fd, p.revents)).collect();
            if ready.is_empty() {
                ready.push((-1, 0));
            }
            for (fd, revents) in ready {
                // An fd an earlier step of this round closed is skipped.
                if fd >= 0 && !self.owns(fd) {
                    continue;
                }
                match self.advance((fd >= 0).then_some((fd, revents)), Instant::now()) {
                    Progress::Wait => {}
                    Progress::Direct { sock, .. } => return Ok((sock, true)),
                    Progress::Relay { sock, .. } => return Ok((sock, false)),
                    Progress::Failed(e) => return Err(e),
                }
            }
        }
    }

    /// One step: `ready` is the fd that woke it and its events, if one did.
    pub fn advance(&mut self, ready: Option<(c_int, i16)>, now: Instant) -> Progress {
        if now >= self.deadline {
            return Progress::Failed(libc::ETIMEDOUT);
        }
        let mut todo = Vec::new();
        if let Some((fd, revents)) = ready {
            if self.rendezvous.as_ref().is_some_and(|r| r.raw() == fd) {
                match self.on_rendezvous(revents, now) {
                    Ok(dos) => todo.extend(dos),
                    Err(e) => return self.broker_failed(e),
                }
            } else if self.listener.as_ref().is_some_and(|l| l.raw() == fd) {
                todo.extend(self.on_listener(now));
            } else if let Some(i) = self.conns.iter().position(|c| c.sock.raw() == fd) {
                todo.extend(self.on_conn(i, revents, now));
            }
        }
        todo.extend(self.dialer.timer(now));
        self.run(todo, now)
    }

    /// The rendezvous connection failed or ended before a verdict: the
    /// dialer closes what it holds, and the connect fails with `e`.
    fn broker_failed(&mut self, e: Errno) -> Progress {
        if self.dial_again() {
            return Progress::Wait;
        }
        let dos = self.dialer.broker_lost();
        match self.run(dos, Instant::now()) {
            Progress::Failed(_) | Progress::Wait => Progress::Failed(e),
            other => other,
        }
    }

    fn on_rendezvous(&mut self, revents: i16, now: Instant) -> Result<Vec<Do>, Errno> {
        let fd = self.rendezvous.as_ref().map_or(-1, Held::raw);
        match &mut self.rv {
            Rendezvous::Connecting => {
                match sys::get_int_opt(fd, libc::SOL_SOCKET, libc::SO_ERROR)? {
                    0 if revents & libc::POLLOUT != 0 => {}
                    0 => return Ok(Vec::new()),
                    e => return Err(e),
                }
                self.local = sys::local_addr(fd)?;
                send_whole(fd, &self.dialer.rendezvous_hello(self.local).to_bytes())?;
                self.rv = Rendezvous::First(BrokerFrameReader::new());
                Ok(Vec::new())
            }
            Rendezvous::First(reader) => {
                let mut buf = [0u8; 18];
                let n = recv_some(fd, &mut buf[..reader.missing()])?;
                let (_, frame) = reader.feed(&buf[..n]).map_err(|_| libc::EPROTO)?;
                let Some(frame) = frame else { return Ok(Vec::new()) };
                // Only "not held" makes it worth meeting again: any other
                // refusal is the connect's own (its listener failed).
                let turned_away = matches!(frame, BrokerFrame::Verdict(PunchVerdict::Rejected { code: proto::gcb::ErrorCode::LimitReached }));
                if turned_away && self.dial_again() {
                    return Ok(Vec::new());
                }
                self.again_at = None;
                self.rv = Rendezvous::Verdict(FrameReader::new());
                Ok(self.dialer.broker_frame(frame, now))
            }
            Rendezvous::Verdict(reader) => {
                let mut buf = [0u8; PunchVerdict::LEN];
                let n = recv_some(fd, &mut buf[..reader.missing()])?;
                let (_, verdict) = reader.feed(&buf[..n]).map_err(|_| libc::EPROTO)?;
                Ok(verdict.map(|v| self.dialer.verdict(v)).unwrap_or_default())
            }
        }
    }

    fn on_listener(&mut self, now: Instant) -> Vec<Do> {
        let Some(l) = &self.listener else { return Vec::new() };
        let mut out = Vec::new();
        // A few at most: only the peer's SYN is expected here.
        for _ in 0..4 {
            // SAFETY: no address wanted; the peer's is read below.
            let c = unsafe { real::accept4(l.raw(), std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK) };
            if c < 0 {
                break;
            }
            let sock = Held::adopt(Sock::from_raw(c));
            let from = sys::peer_addr(sock.raw()).unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
            let (id, dos) = self.dialer.accepted(from, now);
            self.conns.push(Conn { id, sock, stage: Stage::Dialing });
            out.extend(dos);
        }
        out
    }

    fn on_conn(&mut self, i: usize, revents: i16, now: Instant) -> Vec<Do> {
        let (id, fd) = (self.conns[i].id, self.conns[i].sock.raw());
        match &mut self.conns[i].stage {
            Stage::Dialing => match sys::get_int_opt(fd, libc::SOL_SOCKET, libc::SO_ERROR) {
                Ok(0) if revents & libc::POLLOUT == 0 => Vec::new(),
                Ok(0) => match sys::peer_addr(fd) {
                    Ok(from) => self.dialer.connected(id, from, now),
                    Err(e) => self.dialer.dial_failed(id, if refused(e) || e == libc::ENOTCONN { DialFailure::Refused } else { DialFailure::Local }, now),
                },
                Ok(e) | Err(e) => self.dialer.dial_failed(id, if refused(e) { DialFailure::Refused } else { DialFailure::Local }, now),
            },
            Stage::Checking { buf, have } => {
                // Never past the hello: the peer sends nothing else before the verdict.
                // SAFETY: a live buffer of the given length.
                let n = unsafe { real::recv(fd, buf[*have..].as_mut_ptr().cast(), PeerHello::LEN - *have, libc::MSG_DONTWAIT) };
                let hello = match n {
                    n if n > 0 => {
                        *have += n as usize;
                        if *have < PeerHello::LEN {
                            return Vec::new();
                        }
                        PeerHello::decode(&buf[..]).map_err(drop)
                    }
                    n if n < 0 && matches!(crate::guard::errno(), libc::EAGAIN | libc::EINTR) => return Vec::new(),
                    _ => Err(()),
                };
                self.dialer.peer_hello(id, hello, now)
            }
        }
    }

    /// Carries out `todo`, and what the dialer says to each result, until
    /// nothing is left or the session is over.
    fn run(&mut self, mut todo: Vec<Do>, now: Instant) -> Progress {
        let mut i = 0;
        while i < todo.len() {
            let d = todo[i];
            i += 1;
            match d {
                Do::Listen => match reusable(self.fam, self.local.port()).and_then(listening) {
                    Ok(s) => self.listener = Some(Held::adopt(s)),
                    // Dialing works without it; only a SYN between attempts is lost.
                    Err(e) => log!(Debug, "punch: no listener on port {}: {}", self.local.port(), std::io::Error::from_raw_os_error(e)),
                },
                Do::Unlisten => self.listener = None,
                Do::Dial { conn, to } => match reusable(self.fam, self.local.port()).and_then(|s| sys::connect_start(s.raw(), self.fam, to).map(|_| s)) {
                    Ok(s) => self.conns.push(Conn { id: conn, sock: Held::adopt(s), stage: Stage::Dialing }),
                    Err(e) => todo.extend(self.dialer.dial_failed(conn, if refused(e) { DialFailure::Refused } else { DialFailure::Local }, now)),
                },
                Do::ReadHello(conn) => {
                    if let Some(c) = self.conns.iter_mut().find(|c| c.id == conn) {
                        c.stage = Stage::Checking { buf: [0; PeerHello::LEN], have: 0 };
                    }
                }
                Do::SendHello(conn) => {
                    let hello = self.dialer.peer_hello_frame(self.local).to_bytes();
                    if let Some(c) = self.conns.iter_mut().find(|c| c.id == conn) {
                        match send_whole(c.sock.raw(), &hello) {
                            Ok(()) => c.stage = Stage::Checking { buf: [0; PeerHello::LEN], have: 0 },
                            Err(_) => todo.extend(self.dialer.peer_hello(conn, Err(()), now)),
                        }
                    }
                }
                Do::Close(conn) => {
                    // A rejected connection ends with a reset, not a FIN: a
                    // FIN would leave it in TIME-WAIT, and every later attempt
                    // from this port to the same peer would fail locally.
                    if let Some(c) = self.conns.iter().find(|c| c.id == conn) {
                        sys::reset_on_close(c.sock.raw());
                    }
                    self.conns.retain(|c| c.id != conn);
                }
                Do::Report(r) => {
                    let fd = self.rendezvous.as_ref().map_or(-1, Held::raw);
                    if let Err(e) = send_whole(fd, &r.to_bytes()) {
                        return self.broker_failed(e);
                    }
                    log!(Debug, "punch: reported {r:?} after {} attempts", self.dialer.attempts());
                }
                Do::Use { conn, peer } => {
                    let Some(at) = self.conns.iter().position(|c| c.id == conn) else { return Progress::Failed(libc::EPROTO) };
                    let c = self.conns.swap_remove(at);
                    self.rendezvous = None;
                    self.conns.clear();
                    return Progress::Direct { sock: c.sock, peer };
                }
                Do::UseRelay { peer } => {
                    self.conns.clear();
                    return match self.rendezvous.take() {
                        Some(sock) => Progress::Relay { sock, peer },
                        None => Progress::Failed(libc::EPROTO),
                    };
                }
                Do::Fail(code) => {
                    self.conns.clear();
                    self.rendezvous = None;
                    return Progress::Failed(super::super::notice::refusal_errno(code));
                }
            }
        }
        Progress::Wait
    }
}

/// Reads what is there, at most `buf.len()` bytes; the end of the stream is
/// an error (the broker went away before its verdict).
fn recv_some(fd: c_int, buf: &mut [u8]) -> Result<usize, Errno> {
    // SAFETY: a live buffer of the given length.
    let n = unsafe { real::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    match n {
        0 => Err(libc::ECONNRESET),
        n if n > 0 => Ok(n as usize),
        _ => match crate::guard::errno() {
            libc::EAGAIN | libc::EINTR => Ok(0),
            e => Err(e),
        },
    }
}
