//! What the responder (`crate::responder`, through `dpf::serve`) does for a
//! standard gateway's mappings, so they last while the socket does whatever
//! the program is doing: it waits on every mapping's socket to the gateway,
//! on the announcement socket ([`super::announce`]) and on the clients'
//! timers, and
//!
//! * feeds answers and announcements to the clients, and runs their timers
//!   (renewals, retransmissions, the new MAP after a restart);
//! * follows a mapping the gateway moved (a restart gave the port away):
//!   `getsockname` reports the new address from then on, after a warning;
//! * maps afresh a mapping the gateway refused to renew, or let expire
//!   unanswered, every [`RETRY`] (or the refusal's own lifetime, if longer),
//!   warning once; an announcement brings that forward;
//! * in a forked child, opens the child's own sockets when they are needed;
//! * winds up the mappings this process closed ([`super::wind`]).

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use libc::c_int;
use proto::portmap::{Event, MapClient, Output, Retry};

use super::side::Mapping;
use super::wire::RETRY;
use super::{announce, wind};
use crate::dpf::state::{Forward, State};
use crate::responder::PollSet;

/// Tag of the announcement socket in the poll set (others are their fd).
const ANNOUNCE_TAG: u64 = u64::MAX - 1;
/// The longest a refusal's own lifetime defers the next attempt.
const MAX_RETRY: Duration = Duration::from_secs(1800);

fn earliest(a: &mut Option<Instant>, b: Option<Instant>) {
    if let Some(b) = b {
        *a = Some(a.map_or(b, |a| a.min(b)));
    }
}

/// Adds the mappings' sockets to `set`; the next timer.
pub fn gather(set: &mut PollSet, _now: Instant) -> Option<Instant> {
    crate::dpf::state::with(|st| {
        keep_announce(st);
        if let Some(fd) = st.pcp.announce_fd {
            set.add(fd, libc::POLLIN, ANNOUNCE_TAG);
        }
        let mut next = None;
        for f in st.forwards() {
            let Some(m) = &f.pcp else { continue };
            if f.mgmt_fd >= 0 {
                set.add(f.mgmt_fd, libc::POLLIN, f.mgmt_fd as u64);
            }
            earliest(&mut next, m.client.next_deadline());
            earliest(&mut next, m.restart_at);
        }
        for w in &st.pcp.winding {
            if w.sock >= 0 {
                set.add(w.sock, libc::POLLIN, w.sock as u64);
            }
            earliest(&mut next, w.deadline());
        }
        next
    })
}

/// Opens the announcement socket while there are mappings, closes it after.
fn keep_announce(st: &mut State) {
    let towards = st.forwards().find(|f| f.pcp.is_some()).map(|f| *f.local.ip());
    match (towards, st.pcp.announce_fd) {
        (Some(ip), None) if !st.pcp.announce_tried => {
            st.pcp.announce_tried = true;
            match announce::open(ip) {
                Ok(fd) => st.pcp.announce_fd = Some(fd),
                Err(e) => log!(
                    Debug,
                    "cannot hear gateway announcements on 224.0.0.1:5350 ({}); a restart shows at the next renewal",
                    std::io::Error::from_raw_os_error(e)
                ),
            }
        }
        (None, Some(fd)) => {
            crate::internal::release(fd);
            st.pcp.announce_fd = None;
            st.pcp.announce_tried = false;
        }
        _ => {}
    }
}

/// Handles the ready sockets and the timers that fell due.
pub fn run(ready: &[(u64, i16)], now: Instant) {
    let Some(gateway) = super::wire::gateway() else { return };
    crate::dpf::state::with(|st| {
        let mut moved = false;
        let heard = match st.pcp.announce_fd {
            Some(fd) if ready.iter().any(|&(t, _)| t == ANNOUNCE_TAG) => announce::read(fd, *gateway.ip()),
            _ => Vec::new(),
        };
        let ready_fds: Vec<c_int> = ready.iter().filter(|&&(t, _)| t != ANNOUNCE_TAG).map(|&(t, _)| t as c_int).collect();
        for f in st.forwards_mut() {
            let Some(mut m) = f.pcp.take() else { continue };
            let mut out = Output::default();
            if f.mgmt_fd >= 0 && ready_fds.contains(&f.mgmt_fd) {
                // An error here is the gateway's port refusing for a moment
                // (it restarts): the retransmissions go on.
                if let Ok(o) = super::wire::drain(f.mgmt_fd, &mut m.client, now) {
                    merge(&mut out, o);
                }
            }
            for d in &heard {
                merge(&mut out, m.client.on_datagram(d, now));
                if m.client.is_done() {
                    // A gateway back from a restart: map again soon.
                    let soon = now + Duration::from_millis(u64::from(crate::client::sys::random_u64() as u16 % 5000));
                    m.restart_at = Some(m.restart_at.map_or(soon, |r| r.min(soon)));
                }
            }
            if m.client.next_deadline().is_some_and(|d| now >= d) {
                merge(&mut out, m.client.poll_timeout(now));
            }
            if m.restart_at.is_some_and(|r| now >= r) {
                m.restart_at = None;
                m.client = fresh(&m.client, f.public);
                merge(&mut out, m.client.start(now));
            }
            moved |= apply(f, &mut m, out, gateway, now);
            f.pcp = Some(m);
        }
        if moved {
            crate::dpf::inherit::publish(st);
        }
        wind::tick(&mut st.pcp.winding, &ready_fds, now);
    });
}

fn merge(all: &mut Output, out: Output) {
    all.send.extend(out.send);
    all.events.extend(out.events);
}

/// A client for the same socket and nonce, asking for `public` again.
pub fn fresh(old: &MapClient, public: SocketAddrV4) -> MapClient {
    let mut cfg = old.config().clone();
    cfg.suggested_ip = Some(*public.ip());
    cfg.suggested_port = public.port();
    cfg.prefer_failure = false;
    cfg.pcp_retry = Retry::PCP;
    cfg.natpmp_retry = Retry::NATPMP;
    MapClient::new(cfg)
}

/// Sends `out`'s datagrams (opening this process's socket to the gateway if
/// it has none yet) and acts on its events. True if the public address moved.
fn apply(f: &mut Forward, m: &mut Mapping, out: Output, gateway: SocketAddrV4, now: Instant) -> bool {
    if !out.send.is_empty() {
        if f.mgmt_fd < 0 {
            if let Ok((s, _)) = crate::client::exchange::open(gateway) {
                f.mgmt_fd = crate::internal::adopt(s.into_raw());
            }
        }
        let _ = super::wire::send(f.mgmt_fd, &out);
    }
    let (proto, local, public) = (f.proto, f.local, f.public);
    let mut moved = false;
    for e in out.events {
        match e {
            Event::Mapped { external, lifetime, via } => {
                if external != public {
                    log!(Warn, "gateway {gateway} maps {proto} {local} at {external} now, not {public} (it lost its state); the socket reports {external}");
                    f.public = external;
                    crate::dpf::public::KNOWN.learn(*external.ip());
                    moved = true;
                } else if m.failures > 0 {
                    log!(Info, "gateway {gateway} maps {proto} {local} at {public} again, by {via}");
                } else {
                    log!(Debug, "gateway {gateway} renewed {proto} {local} at {public} for {lifetime} s by {via}");
                }
                m.failures = 0;
            }
            Event::Refused { code, retry_after_s } => {
                let wait = Duration::from_secs(u64::from(retry_after_s)).clamp(RETRY, MAX_RETRY);
                lost(m, now + wait, &format!("gateway {gateway} refused to keep {proto} {local} at {public}: {code}"));
            }
            Event::GaveUp => lost(m, now + RETRY, &format!("gateway {gateway} stopped answering for {proto} {local} at {public}")),
            Event::Deleted => {}
        }
    }
    moved
}

/// The mapping is gone at the gateway: asked for again at `at`.
fn lost(m: &mut Mapping, at: Instant, what: &str) {
    m.failures += 1;
    m.restart_at = Some(at);
    let every = at.saturating_duration_since(Instant::now()).as_secs();
    if m.failures == 1 {
        log!(Warn, "{what}; asking again every {every} s");
    } else {
        log!(Debug, "{what}; asking again in {every} s");
    }
}
