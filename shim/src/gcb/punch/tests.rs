//! A punch on loopback, both sides real sessions, the broker a thread that
//! runs proto's `Meeting` over blocking sockets: the sides meet, dial each
//! other from their rendezvous ports, check each other's proof, and use the
//! punched connection (or the rendezvous one, on a relay verdict).

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use proto::gcb::punch::{Arrival, BrokerFrame, Effect, Meeting, PeerHello, Policy, PunchFailure, PunchHello, PunchProof, PunchReport, Schedule};
use proto::gcb::{Frame, Role, Token};

use super::{Progress, Session};
use crate::client::family::Family;
use crate::client::sys;
use crate::real;

const PROXY: &str = "203.0.113.10:20001";
const CONNECTOR_ID: &str = "203.0.113.2:40001";

fn v4(a: std::net::SocketAddr) -> SocketAddrV4 {
    match a {
        std::net::SocketAddr::V4(a) => a,
        _ => panic!("v4 only"),
    }
}

/// A broker for one meeting on `l`: `policy` decides, and with
/// `force_relay` it answers the reports with relay verdicts whatever they say.
fn broker(l: TcpListener, policy: Policy, force_relay: bool) -> thread::JoinHandle<Vec<Effect>> {
    let quirks = Quirks { force_relay, ..Quirks::default() };
    broker_of(l, Meeting::new(PROXY.parse().unwrap(), CONNECTOR_ID.parse().unwrap(), policy), quirks)
}

/// How a test broker departs from the meeting's word.
#[derive(Debug, Clone, Copy, Default)]
struct Quirks {
    /// Relay verdicts whatever the reports say.
    force_relay: bool,
    /// The first connector's hello is answered `Rejected { LimitReached }`
    /// and its connection closed, as a broker does with an early hello it
    /// cannot hold.
    turn_away: bool,
    /// No side is sent its verdict: in an early punch neither needs it.
    mute_verdicts: bool,
}

/// The same for a meeting of the caller's, with `quirks`.
fn broker_of(l: TcpListener, mut m: Meeting, quirks: Quirks) -> thread::JoinHandle<Vec<Effect>> {
    let Quirks { force_relay, mut turn_away, mute_verdicts } = quirks;
    thread::spawn(move || {
        let mut sides: Vec<(Role, TcpStream)> = Vec::new();
        let mut log = Vec::new();
        let send = |sides: &mut Vec<(Role, TcpStream)>, fx: &[Effect]| {
            for e in fx {
                if let Effect::Send(role, frame) = e {
                    if mute_verdicts && matches!(frame, BrokerFrame::Verdict(_)) {
                        continue;
                    }
                    let s = &mut sides.iter_mut().find(|(r, _)| r == role).unwrap().1;
                    // A connector that committed may have gone already.
                    let _ = s.write_all(&frame.to_bytes());
                }
            }
        };
        while sides.len() < 2 {
            let (mut s, from) = l.accept().unwrap();
            let mut buf = [0u8; PunchHello::LEN];
            s.read_exact(&mut buf).unwrap();
            let h = PunchHello::decode(&buf).unwrap();
            if std::mem::take(&mut turn_away) && h.role == Role::Connector {
                let no = proto::gcb::punch::PunchVerdict::Rejected { code: proto::gcb::ErrorCode::LimitReached };
                s.write_all(&no.to_bytes()).unwrap();
                log.push(Effect::Drop);
                continue;
            }
            turn_away = false;
            let fx = m.arrived(h.role, Arrival { observed: v4(from), local: h.local, rtt: None }, Instant::now()).unwrap();
            sides.push((h.role, s));
            send(&mut sides, &fx);
            log.extend(fx);
        }
        if m.ended() {
            return log;
        }
        for i in 0..2 {
            let mut buf = [0u8; 8];
            sides[i].1.read_exact(&mut buf).unwrap();
            let mut report = PunchReport::decode(&buf).unwrap();
            if force_relay {
                report = PunchReport::Failed(proto::gcb::punch::PunchFailure::Timeout);
            }
            let fx = m.reported(sides[i].0, report);
            send(&mut sides, &fx);
            log.extend(fx);
            if m.ended() {
                break;
            }
        }
        // Keep the rendezvous connections open until the sides are done with
        // them (a relay's bytes would flow here; nothing is spliced).
        for (_, s) in &mut sides {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
        }
        log
    })
}

/// Drives both sessions until neither waits; their outcomes.
fn drive(mut c: Session, mut l: Session) -> (Progress, Progress) {
    let (mut done_c, mut done_l) = (None, None);
    let until = Instant::now() + Duration::from_secs(10);
    while done_c.is_none() || done_l.is_none() {
        assert!(Instant::now() < until, "the punch did not finish");
        let mut fds = Vec::new();
        if done_c.is_none() {
            c.poll_fds(&mut fds);
        }
        if done_l.is_none() {
            l.poll_fds(&mut fds);
        }
        let mut p: Vec<libc::pollfd> = fds.iter().map(|&(fd, events)| libc::pollfd { fd, events, revents: 0 }).collect();
        let next = [done_c.is_none().then(|| c.next_deadline()), done_l.is_none().then(|| l.next_deadline())].into_iter().flatten().min().unwrap();
        // SAFETY: a live array of pollfds.
        unsafe { real::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, sys::poll_ms(next, Instant::now()).min(100)) };
        let now = Instant::now();
        let mut ready: Vec<(i32, i16)> = p.iter().filter(|p| p.revents != 0).map(|p| (p.fd, p.revents)).collect();
        ready.push((-1, 0));
        for (fd, rev) in ready {
            let ev = (fd >= 0).then_some((fd, rev));
            if done_c.is_none() && (fd < 0 || c.owns(fd)) {
                match c.advance(ev, now) {
                    Progress::Wait => {}
                    p => done_c = Some(p),
                }
            }
            if done_l.is_none() && (fd < 0 || l.owns(fd)) {
                match l.advance(ev, now) {
                    Progress::Wait => {}
                    p => done_l = Some(p),
                }
            }
        }
    }
    (done_c.unwrap(), done_l.unwrap())
}

fn sessions(at: SocketAddrV4, token: Token) -> (Session, Session) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let c = Session::start(Family::V4, at, token, Role::Connector, Schedule::default(), deadline).unwrap();
    let l = Session::start(Family::V4, at, token, Role::Listener, Schedule::default(), deadline).unwrap();
    (c, l)
}

fn exchange(a: &super::Held, b: &super::Held) {
    let (a, b) = (a.raw(), b.raw());
    // SAFETY: live buffers; loopback sockets with room for a few bytes.
    unsafe {
        assert_eq!(real::send(a, b"ping".as_ptr().cast(), 4, libc::MSG_NOSIGNAL), 4);
    }
    sys::wait_fd(b, libc::POLLIN, Instant::now() + Duration::from_secs(5)).unwrap();
    let mut buf = [0u8; 16];
    // SAFETY: as above.
    let n = unsafe { real::recv(b, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    assert_eq!(&buf[..n as usize], b"ping", "the application's bytes, and nothing of the punch");
}

#[test]
fn two_sessions_punch_to_each_other_and_check_each_others_proof() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let at = v4(l.local_addr().unwrap());
    let b = broker(l, Policy::default(), false);
    let token = Token(sys::random_u64());
    let (c, l) = sessions(at, token);
    let (pc, pl) = drive(c, l);
    let (Progress::Direct { sock: sc, peer: peer_c }, Progress::Direct { sock: sl, peer: peer_l }) = (pc, pl) else { panic!("not both direct") };
    assert_eq!(peer_c, PROXY.parse::<SocketAddrV4>().unwrap(), "the connector reports the listener's proxy address");
    assert_eq!(peer_l, CONNECTOR_ID.parse::<SocketAddrV4>().unwrap());
    assert_eq!(sys::peer_addr(sc.raw()).unwrap(), sys::local_addr(sl.raw()).unwrap(), "connected to each other");
    exchange(&sc, &sl);
    exchange(&sl, &sc);
    assert_eq!(sys::get_int_opt(sc.raw(), libc::SOL_SOCKET, libc::SO_REUSEPORT), Ok(1), "still the session's");
    let sock = sc.into_sock();
    assert_eq!(sys::get_int_opt(sock.raw(), libc::SOL_SOCKET, libc::SO_REUSEPORT), Ok(0), "handed over plain");
    drop((sock, sl));
    let log = b.join().unwrap();
    assert!(log.contains(&Effect::Release), "{log:?}");
}

/// An early connector and a listener meeting at a broker whose meeting has
/// the connector commit and the listener follow, and who sends neither its
/// verdict (`Quirks`), driven to their ends; and the broker's thread. The
/// connector's rendezvous is opened before any decision; with `say_early`
/// its early hello is said at once (as Fast Open does), else the brokers
/// here take a plain handshake and its hello follows, with the token.
fn early_punch(turn_away: bool, say_early: bool) -> (Progress, Progress, thread::JoinHandle<Vec<Effect>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let at = v4(l.local_addr().unwrap());
    let meeting = Meeting::new(PROXY.parse().unwrap(), CONNECTOR_ID.parse().unwrap(), Policy::default()).committing_connector(true);
    let b = broker_of(l, meeting, Quirks { turn_away, mute_verdicts: true, ..Quirks::default() });
    let token = Token(sys::random_u64());
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut early = super::Early::open(Family::V4, at, 0x5eed).unwrap();
    if say_early {
        early.say_early_hello_now(0x5eed);
    }
    let c = Session::resume(Family::V4, early, token, Schedule::default(), deadline, PROXY.parse().unwrap());
    let l = Session::start(Family::V4, at, token, Role::Listener, Schedule::default(), deadline).unwrap();
    let (pc, pl) = drive(c, l);
    (pc, pl, b)
}

#[test]
fn in_an_early_punch_both_sides_use_the_connection_without_the_verdict() {
    let (pc, pl, b) = early_punch(false, false);
    let (Progress::Direct { sock: sc, peer: peer_c }, Progress::Direct { sock: sl, peer: peer_l }) = (pc, pl) else { panic!("not both direct") };
    assert_eq!(peer_c, PROXY.parse::<SocketAddrV4>().unwrap(), "the connector names the address its program dialed");
    assert_eq!(peer_l, sys::local_addr(sc.raw()).unwrap(), "the listener names the connector's mapping (loopback: its address)");
    exchange(&sc, &sl);
    exchange(&sl, &sc);
    drop((sc, sl));
    let log = b.join().unwrap();
    assert!(log.contains(&Effect::Ended(proto::gcb::punch::Outcome::Direct)), "the listener's report, after the connector's, ends it direct: {log:?}");
}

#[test]
fn an_early_hello_said_before_the_decision_is_followed_by_the_go() {
    let (pc, pl, b) = early_punch(false, true);
    let (Progress::Direct { sock: sc, .. }, Progress::Direct { sock: sl, .. }) = (pc, pl) else { panic!("not both direct") };
    exchange(&sc, &sl);
    drop((sc, sl));
    assert!(b.join().unwrap().contains(&Effect::Ended(proto::gcb::punch::Outcome::Direct)));
}

#[test]
fn an_early_rendezvous_turned_away_before_the_go_is_made_again_with_the_token() {
    let (pc, pl, b) = early_punch(true, false);
    let (Progress::Direct { sock: sc, .. }, Progress::Direct { sock: sl, .. }) = (pc, pl) else { panic!("not both direct") };
    exchange(&sc, &sl);
    drop((sc, sl));
    let log = b.join().unwrap();
    assert_eq!(log.first(), Some(&Effect::Drop), "the first was turned away: {log:?}");
    assert!(log.contains(&Effect::Ended(proto::gcb::punch::Outcome::Direct)), "{log:?}");
}

#[test]
fn an_early_rendezvous_refused_for_the_connect_itself_fails_it_at_once() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let at = v4(l.local_addr().unwrap());
    let b = thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = [0u8; PunchHello::LEN];
        s.read_exact(&mut buf).unwrap();
        // The pairing failed: its listener is gone.
        let no = proto::gcb::punch::PunchVerdict::Rejected { code: proto::gcb::ErrorCode::NotRegistered };
        s.write_all(&no.to_bytes()).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let early = super::Early::open(Family::V4, at, 0x5eed).unwrap();
    let c = Session::resume(Family::V4, early, Token(sys::random_u64()), Schedule::default(), deadline, PROXY.parse().unwrap());
    // A meeting again would wait out the deadline: ETIMEDOUT, not this.
    assert_eq!(c.finish().err(), Some(libc::ECONNREFUSED));
    b.join().unwrap();
}

#[test]
fn a_relay_verdict_hands_over_the_rendezvous_connection() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let at = v4(l.local_addr().unwrap());
    let b = broker(l, Policy::default(), true);
    let (c, l) = sessions(at, Token(sys::random_u64()));
    let (pc, pl) = drive(c, l);
    let Progress::Relay { sock, peer } = pc else { panic!("{pc:?}") };
    assert!(matches!(pl, Progress::Relay { .. }), "{pl:?}");
    assert_eq!(peer, PROXY.parse::<SocketAddrV4>().unwrap());
    drop(sock);
    drop(pl);
    assert!(b.join().unwrap().contains(&Effect::Splice));
}

/// A connector alone: a broker thread sends its session a go towards
/// `peer` (the listener's hello is made up) with `budget`, and answers its
/// report with the meeting's verdict. The report, how long after the go it
/// came, and the session's outcome.
fn lone_connector(peer: SocketAddrV4, token: Token, budget: Duration) -> (PunchReport, Duration, Progress) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let at = v4(l.local_addr().unwrap());
    let policy = Policy { min_budget: budget, max_budget: budget, ..Policy::default() };
    let handle = thread::spawn(move || {
        let mut m = Meeting::new(PROXY.parse().unwrap(), CONNECTOR_ID.parse().unwrap(), policy);
        let (mut s, from) = l.accept().unwrap();
        let mut buf = [0u8; PunchHello::LEN];
        s.read_exact(&mut buf).unwrap();
        let h = PunchHello::decode(&buf).unwrap();
        assert_eq!((h.token, h.role), (token, Role::Connector), "the broker gets the token itself");
        m.arrived(h.role, Arrival { observed: v4(from), local: h.local, rtt: None }, Instant::now()).unwrap();
        let fx = m.arrived(Role::Listener, Arrival { observed: peer, local: peer, rtt: None }, Instant::now()).unwrap();
        for e in &fx {
            if let Effect::Send(Role::Connector, f @ BrokerFrame::Go(_)) = e {
                s.write_all(&f.to_bytes()).unwrap();
            }
        }
        let t = Instant::now();
        let mut rep = [0u8; 8];
        s.read_exact(&mut rep).unwrap();
        let took = t.elapsed();
        let fx = m.reported(Role::Connector, PunchReport::decode(&rep).unwrap());
        for e in &fx {
            if let Effect::Send(Role::Connector, f) = e {
                s.write_all(&f.to_bytes()).unwrap();
            }
        }
        (PunchReport::decode(&rep).unwrap(), took, s)
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut c = Session::start(Family::V4, at, token, Role::Connector, Schedule::default(), deadline).unwrap();
    let outcome = loop {
        let mut fds = Vec::new();
        c.poll_fds(&mut fds);
        let mut p: Vec<libc::pollfd> = fds.iter().map(|&(fd, events)| libc::pollfd { fd, events, revents: 0 }).collect();
        // SAFETY: a live array of pollfds.
        unsafe { real::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, sys::poll_ms(c.next_deadline(), Instant::now()).min(100)) };
        let ready = p.iter().find(|p| p.revents != 0).map(|p| (p.fd, p.revents));
        match c.advance(ready, Instant::now()) {
            Progress::Wait => assert!(Instant::now() < deadline),
            other => break other,
        }
    };
    let (report, took, _s) = handle.join().unwrap();
    (report, took, outcome)
}

/// A go whose peer never answers (nothing listens there): the side reports
/// a timeout within its budget and the broker's relay verdict follows.
#[test]
fn a_peer_that_never_answers_ends_on_the_relay_within_the_budget() {
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = v4(dead.local_addr().unwrap());
    drop(dead);
    let (report, took, outcome) = lone_connector(nowhere, Token(sys::random_u64()), Duration::from_millis(300));
    assert_eq!(report, PunchReport::Failed(PunchFailure::Timeout));
    assert!(took >= Duration::from_millis(250) && took < Duration::from_secs(3), "reported after {took:?}");
    assert!(matches!(outcome, Progress::Relay { .. }), "{outcome:?}");
}

/// A stranger at the peer's mapping (here: whatever listens where the go
/// points) gets the connector's proof, never the token, and cannot use it:
/// the proof sent back as the listener's (the replay) and a hello with the
/// raw token are both refused, and the punch falls back as `CheckFailed`.
#[test]
fn a_stranger_at_the_peers_mapping_gets_a_proof_it_cannot_replay() {
    let stranger = TcpListener::bind("127.0.0.1:0").unwrap();
    stranger.set_nonblocking(true).unwrap();
    let peer = v4(stranger.local_addr().unwrap());
    let token = Token(sys::random_u64());
    let st = thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        while seen.len() < 2 && Instant::now() < until {
            let Ok((mut s, _)) = stranger.accept() else {
                thread::sleep(Duration::from_millis(1));
                continue;
            };
            s.set_nonblocking(false).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut first = [0u8; PeerHello::LEN];
            s.read_exact(&mut first).unwrap();
            let h = PeerHello::decode(&first).unwrap();
            let answer = match seen.len() {
                0 => PeerHello { role: Role::Listener, ..h },
                _ => PeerHello { role: Role::Listener, proof: PunchProof(token.0.to_be_bytes()), ..h },
            };
            s.write_all(&answer.to_bytes()).unwrap();
            let mut rest = Vec::new();
            let end = s.read_to_end(&mut rest).map_err(|e| e.kind());
            seen.push((first, rest, end));
        }
        seen
    });
    let (report, _, outcome) = lone_connector(peer, token, Duration::from_millis(1000));
    let seen = st.join().unwrap();
    assert_eq!(seen.len(), 2, "the connector checked two connections from the stranger");
    for (first, rest, end) in &seen {
        assert_ne!(first[8..16], token.0.to_be_bytes(), "the token never goes to the peer's mapping");
        let h = PeerHello::decode(first).unwrap();
        assert_eq!((h.role, h.proof), (Role::Connector, PunchProof::of(token, Role::Connector)), "the connector's proof");
        assert!(rest.is_empty() && *end != Err(std::io::ErrorKind::WouldBlock), "closed after its hello, nothing more: {rest:?} {end:?}");
    }
    assert_eq!(report, PunchReport::Failed(PunchFailure::CheckFailed));
    assert!(matches!(outcome, Progress::Relay { .. }), "{outcome:?}");
}

/// The program `dup2`s onto a session's internal fd: the shim moves it, and
/// the session follows it to its new number, so it never closes the
/// program's file at the old one (`Registry::replace_internal_fd`).
#[test]
fn a_session_follows_its_fd_when_it_is_moved() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let via = v4(l.local_addr().unwrap());
    let mut s = Session::start(Family::V4, via, Token(7), Role::Connector, Schedule::default(), Instant::now() + Duration::from_secs(5)).unwrap();
    let mut fds = Vec::new();
    s.poll_fds(&mut fds);
    let old = fds[0].0;
    // SAFETY: duplicating the session's own socket, as the shim's evacuation does.
    let new = unsafe { libc::fcntl(old, libc::F_DUPFD_CLOEXEC, 0) };
    assert!(new >= 0);
    assert!(!s.renumber(new + 1000, new + 2000), "not one of its fds");
    assert!(s.renumber(old, new));
    assert!(s.owns(new) && !s.owns(old));
    // SAFETY: the old number is no longer the session's; dropping it closes the new one.
    unsafe { libc::close(old) };
    drop(s);
}
