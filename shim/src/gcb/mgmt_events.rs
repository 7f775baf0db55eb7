//! The responder's side of the management sockets ([`mgmt`]): the broker's
//! datagrams on them ([`on_datagram`]: replies to the listeners' requests, and
//! the broker's commands, answered with `Ack` through the proto
//! [`ReplyCache`](proto::rudp::ReplyCache) so retransmissions are answered
//! again without being acted on twice), and the timers ([`on_timers`], due at
//! [`next_deadline`]): heartbeats, registration retries and joins,
//! retransmissions, failover, and the UDP holes and channels that hang on a
//! registration. Everything here runs under the registry lock and only ever
//! sends (non-blocking), never waits.
//!
//! Above [`mgmt`] and the UDP client's [`control`](super::udp::control) and
//! [`channel`](super::udp::channel), which it drives; they, in turn, send
//! requests through [`mgmt`] without knowing this module.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use proto::gcb::{self, ErrorCode, Message};
use proto::rudp::Timeout;
use proto::Endpoint;

use super::mgmt::{self, register_message, reregister, send_datagram, start};
use super::registry::serving::{Dial, Job};
use super::registry::{Listener, ListenerId, Purpose, Registry};
use crate::client::seal;
use crate::config;

/// Handles one datagram from listener `id`'s management socket. Returns the
/// connection to make when it is a `ReverseConnect` or `RelayConnect`.
pub fn on_datagram(reg: &mut Registry, id: ListenerId, bytes: &[u8], now: Instant) -> Option<Job> {
    let opened = match seal::verify(bytes) {
        Ok(o) => o,
        Err(e) => return drop_datagram(e),
    };
    let (header, msg) = match gcb::decode(&opened.message) {
        Ok(m) => m,
        Err(e) => {
            log!(Debug, "management datagram dropped: {e:?}");
            return None;
        }
    };
    note_heard(reg, id, now);
    if msg.is_response() {
        if let Err(e) = seal::admit(&mut reg.guard, opened.stamp) {
            return drop_datagram(e);
        }
        on_reply(reg, id, header.request_id, msg, now);
        return None;
    }
    let (broker, fd) = reg.listener(id).map(|l| (l.mgmt.broker, l.mgmt.fd))?;
    if let Some(cached) = reg.replies.lookup(&broker, header.request_id, now) {
        let _ = send_datagram(fd, cached);
        return None;
    }
    if let Err(e) = seal::admit(&mut reg.guard, opened.stamp) {
        return drop_datagram(e);
    }
    let (reply, job) = match msg {
        Message::MakeHole { token, target, peer, proxy } => (super::udp::control::make_hole(reg, id, token, target, peer, proxy, false, now), None),
        Message::PunchHole { token, target, peer, proxy } => (super::udp::control::make_hole(reg, id, token, target, peer, proxy, true, now), None),
        msg => command(reg, id, msg),
    };
    if let Ok(bytes) = seal::gcb_encode(&reply, header.request_id) {
        // The Ack of a connection command waits until the connection is under
        // way ([`send_acks_due`]): sent first, it wakes the broker, which on a
        // busy machine takes the CPU from the dial it only confirms.
        if job.is_some() {
            reg.acks_due.push((fd, bytes.clone()));
        } else {
            let _ = send_datagram(fd, &bytes);
        }
        reg.replies.insert(broker, header.request_id, bytes, now);
    }
    job
}

/// Sends the Acks [`on_datagram`] held back. The broker retransmits a command
/// only after its first timeout, far longer than the dial that comes first.
pub fn send_acks_due(reg: &mut Registry) {
    for (fd, bytes) in reg.acks_due.drain(..) {
        let _ = send_datagram(fd, &bytes);
    }
}

/// The broker spoke on listener `id`'s socket: it is alive (failover's clock).
fn note_heard(reg: &mut Registry, id: ListenerId, now: Instant) {
    let Some(l) = reg.listener_mut(id) else { return };
    l.mgmt.heard = now;
    let broker = l.mgmt.broker;
    reg.brokers.loaded().mark_alive(broker);
}

/// A management datagram that failed authentication: dropped, one debug line.
fn drop_datagram(e: proto::auth::AuthError) -> Option<Job> {
    log!(Debug, "management datagram dropped: {e}");
    None
}

/// The reply to a broker command, and the connection it asks for: refused
/// when the listener's backlog is full, as the kernel drops a connection it
/// has no room for.
fn command(reg: &Registry, id: ListenerId, msg: Message) -> (Message, Option<Job>) {
    let Some(l) = reg.listener(id) else {
        return (Message::error(ErrorCode::NotRegistered, "no such listener here"), None);
    };
    let (token, dial, peer, proxy) = match msg {
        Message::ReverseConnect { token, connector, peer, proxy } => (token, Dial::Reverse { connector }, peer, proxy),
        Message::RelayConnect { token, broker, peer, proxy } => (token, Dial::Relay { broker }, peer, proxy),
        Message::PunchConnect { token, broker, peer, proxy, standby } => (token, Dial::Punch { broker, standby }, peer, proxy),
        other => {
            log!(Debug, "command {:?} not handled by a TCP listener", other.kind());
            return (Message::error(ErrorCode::Unsupported, "not a TCP listener command"), None);
        }
    };
    if l.proxy != Some(proxy) {
        return (Message::error(ErrorCode::NotRegistered, "no such listener here"), None);
    }
    if !reg.room_for(id) {
        log!(Debug, "a connection from {peer} to {proxy} refused: its accept queue is full ({})", l.backlog);
        return (Message::error(ErrorCode::LimitReached, "the listener's accept queue is full"), None);
    }
    log!(Debug, "broker asks for a connection from {peer} to {proxy}: {dial:?}");
    (Message::Ack, Some(Job { listener: id, token, dial, peer, proxy }))
}

fn on_reply(reg: &mut Registry, id: ListenerId, request_id: u64, msg: Message, now: Instant) {
    let Some(l) = reg.listener_mut(id) else { return };
    let broker = l.mgmt.broker;
    let purpose = l.mgmt.requester.on_response(request_id, &broker, now).and_then(|_| l.mgmt.pending.remove(&request_id));
    let mut renamed = false;
    let mut paths = false;
    let mut reopened = None;
    match (purpose, msg) {
        (Some(Purpose::Register), Message::RegisterOk { proxy, udp_token, .. }) => {
            if l.proxy.is_some_and(|old| old != proxy) {
                log!(Warn, "{} {} re-registered as {proxy}, not as before {}", l.proto, l.reg_local, l.proxy.unwrap_or(proxy));
            }
            renamed = l.proxy != Some(proxy);
            l.proxy = Some(proxy);
            l.joined = true;
            l.udp_token = udp_token;
            if renamed || std::mem::take(&mut l.lost) {
                log!(Info, "registered {} {} as {proxy}", l.proto, l.reg_local);
            } else {
                // This process joined a registration it knew (a forked child,
                // a new image): the address it reports has not changed.
                log!(Debug, "holding {} {} as {proxy}", l.proto, l.reg_local);
            }
            paths = true;
        }
        (Some(Purpose::Register), Message::Error { code, detail }) => {
            log!(Warn, "the broker {broker} refused to register {} {}: {code:?} {detail}", l.proto, l.reg_local);
            if code == ErrorCode::PortUnavailable && l.proxy.is_some() {
                let msg = register_message(l.proto, l.reg_local, l.mgmt.local, None);
                start(l, Purpose::Register, &msg, now);
            }
        }
        (_, Message::ReregisterRequest { unknown }) => {
            if l.proxy.is_some_and(|p| unknown.contains(&Endpoint::new(l.proto, p))) {
                log!(Debug, "the broker {broker} forgot {} {}; registering again", l.proto, l.reg_local);
                l.joined = false;
                l.lost = true;
                reregister(l, now);
            }
        }
        (Some(Purpose::Heartbeat), Message::HeartbeatAck) => {}
        (Some(Purpose::Heartbeat), Message::Error { code: ErrorCode::NotRegistered, .. }) => {
            l.joined = false;
            l.lost = true;
            reregister(l, now)
        }
        (Some(Purpose::Channel { fd, peer }), reply) => reopened = Some((fd, peer, reply)),
        (Some(_), other) => log!(Debug, "reply {:?} from {broker} ignored", other.kind()),
        (None, _) => {} // a reply to another process sharing the socket, or a late one
    }
    if paths {
        super::udp::control::open_data_path(reg, id);
        super::udp::channel::reopen_all(reg, id, now, config::get().heartbeat);
    }
    if let Some((fd, peer, reply)) = reopened {
        super::udp::channel::on_reopen_reply(reg, id, fd, peer, reply, now);
    }
    if renamed {
        super::inherit::publish(reg);
    }
}

/// Heartbeats and registration retries that are due, retransmissions, and
/// failover of listeners whose broker went silent.
pub fn on_timers(reg: &mut Registry, now: Instant, interval: Duration) {
    let limit = super::brokers::silence_limit(interval);
    let silent: Vec<ListenerId> =
        reg.listeners().filter(|(_, l)| l.mgmt.fd >= 0 && now.saturating_duration_since(l.mgmt.heard) >= limit).map(|(id, _)| id).collect();
    for id in silent {
        mgmt::fail_over(reg, id, now, interval);
    }
    let mut heartbeated = Vec::new();
    for (id, l) in reg.listeners_mut() {
        if l.mgmt.fd < 0 && !open_own(l) {
            continue;
        }
        if now >= l.mgmt.next_heartbeat {
            l.mgmt.next_heartbeat = now + interval;
            match l.proxy.filter(|_| l.joined) {
                Some(proxy) => {
                    let msg = Message::Heartbeat { held: vec![Endpoint::new(l.proto, proxy)] };
                    start(l, Purpose::Heartbeat, &msg, now);
                    heartbeated.push(id);
                }
                None => reregister(l, now),
            }
        }
        for t in l.mgmt.requester.poll_timeout(now) {
            match t {
                Timeout::Retransmit { bytes, .. } => {
                    let _ = send_datagram(l.mgmt.fd, &bytes);
                }
                Timeout::GaveUp { id, peer } => {
                    let purpose = l.mgmt.pending.remove(&id);
                    log!(Debug, "{purpose:?} to {peer} for {} {} got no answer", l.proto, l.reg_local);
                }
            }
        }
    }
    // A UDP socket's NAT mapping is kept (or, after the gateway dropped it,
    // made again) by its own Dummy.
    for id in heartbeated {
        super::udp::control::open_data_path(reg, id);
    }
    super::udp::control::on_timers(reg, now);
    super::udp::channel::on_timers(reg, now, interval);
}

/// Opens this process's own management socket for `l`, which it holds
/// without one (a forked child, a new image, a received listener); the next
/// step registers from it, which joins the registration. False if it could
/// not (out of descriptors): tried again next round.
fn open_own(l: &mut Listener) -> bool {
    match crate::client::exchange::open(l.mgmt.broker) {
        Ok((sock, local)) => {
            l.mgmt.fd = crate::internal::adopt(sock.into_raw());
            l.mgmt.local = local;
            if l.local.ip().is_unspecified() {
                l.reg_local = SocketAddrV4::new(*local.ip(), l.local.port());
            }
            l.joined = false;
            true
        }
        Err(e) => {
            log!(Debug, "no management socket for {} {} yet: {}", l.proto, l.reg_local, std::io::Error::from_raw_os_error(e));
            false
        }
    }
}

/// When [`on_timers`] next has work.
pub fn next_deadline(reg: &Registry) -> Option<Instant> {
    let holes = super::udp::control::next_deadline(reg).into_iter().chain(super::udp::channel::next_deadline(reg));
    reg.listeners().flat_map(|(_, l)| [Some(l.mgmt.next_heartbeat), l.mgmt.requester.next_deadline()]).flatten().chain(holes).min()
}

#[cfg(test)]
#[path = "mgmt_events_tests.rs"]
mod tests;
