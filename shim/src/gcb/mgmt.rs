//! Management sockets: the UDP conversation between a listener and its broker.
//!
//! Each registered listener has one management socket, a UDP socket connected to
//! the broker (paper 4.2.1: it shares the listener's fate). Over it go the
//! listener's requests (`Register`, `Heartbeat`, `Unregister`), numbered and
//! retransmitted by the proto [`Requester`](proto::rudp::Requester), and the broker's commands
//! (`ReverseConnect`, `RelayConnect`), answered with `Ack` through the proto
//! [`ReplyCache`](proto::rudp::ReplyCache) so retransmissions are answered again
//! without being acted on twice.
//!
//! Two styles of exchange:
//! * [`exchange`] is blocking and bounded: `listen` registers this way, and the
//!   connector asks `Connect` this way on a socket of its own;
//! * everything else is asynchronous: [`start`] sends, and the responder feeds
//!   the socket's datagrams to [`on_datagram`] and calls [`on_timers`] when
//!   [`next_deadline`] passes. These run under the registry lock and only ever
//!   send (non-blocking), never wait.
//!
//! A management socket is one process's own: every process that holds a
//! listener (after `fork`, `exec`, or receiving it over `SCM_RIGHTS`) opens
//! its own and registers the same local address from it, which the broker
//! takes as one more holder of the same registration ([`Listener::joined`]).
//! A holder heartbeats only once its own `Register` has been answered.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use libc::c_int;
use proto::gcb::{self, Decision, ErrorCode, Message, MgmtInfo};
use proto::rudp::{RetryPolicy, Timeout};
use proto::{Endpoint, Proto};

use super::serve::{Dial, Job};
use super::registry::{Listener, ListenerId, Purpose, Registry};
use crate::client::seal;
use crate::client::sys;
use crate::config;

pub use crate::client::exchange::{new_requester, send_datagram, NoAnswer, DATAGRAM_MAX};

/// The GCB codec for [`crate::client::exchange`].
pub(crate) const CODEC: crate::client::exchange::Codec<Message> =
    crate::client::exchange::Codec { encode: seal::gcb_encode, decode: seal::gcb_decode, is_response: Message::is_response };

/// Sends `msg` to the broker and waits for the reply, retransmitting per
/// `policy` (see [`crate::client::exchange::exchange`]).
pub fn exchange(fd: c_int, peer: SocketAddrV4, policy: RetryPolicy, msg: &Message) -> Result<Message, NoAnswer> {
    crate::client::exchange::exchange(fd, peer, policy, &CODEC, msg)
}

extern "C" {
    /// glibc's name of the running program, without directories.
    static program_invocation_short_name: *const libc::c_char;
}

fn mgmt_info(mgmt_local: SocketAddrV4) -> MgmtInfo {
    // SAFETY: glibc sets it before main; a NUL-terminated string or null.
    let name = unsafe {
        let p = program_invocation_short_name;
        if p.is_null() {
            String::new()
        } else {
            std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u32;
    let secs = config::get().heartbeat.as_secs().min(u64::from(u16::MAX)) as u16;
    MgmtInfo { features: super::punch::offered(), ..MgmtInfo::new(mgmt_local, pid, secs, &name) }
}

/// The `Register` for a TCP listener or UDP socket known to the broker as `local`.
pub fn register_message(proto: Proto, local: SocketAddrV4, mgmt_local: SocketAddrV4, desired_port: Option<u16>) -> Message {
    Message::Register {
        proto,
        local,
        realm: config::get().realm.clone(),
        desired_port,
        port_required: false,
        mgmt: mgmt_info(mgmt_local),
    }
}

/// As [`register_message`], for a socket the application bound to the proxy
/// address itself: `port` (when not 0) is required, not preferred.
pub fn pinned_register_message(proto: Proto, local: SocketAddrV4, mgmt_local: SocketAddrV4, port: u16) -> Message {
    let desired_port = (port != 0).then_some(port);
    let mut msg = register_message(proto, local, mgmt_local, desired_port);
    if let Message::Register { port_required, .. } = &mut msg {
        *port_required = desired_port.is_some();
    }
    msg
}

/// Starts a request on `l`'s management socket; its reply comes through [`on_datagram`].
pub fn start(l: &mut Listener, purpose: Purpose, msg: &Message, now: Instant) {
    let broker = l.mgmt.broker;
    match l.mgmt.requester.send(broker, now, |id| seal::gcb_encode(msg, id)) {
        Ok((id, bytes)) => {
            let _ = send_datagram(l.mgmt.fd, bytes);
            l.mgmt.pending.insert(id, purpose);
        }
        Err(e) => log!(Debug, "{purpose:?} to {broker} not sent: {e}"),
    }
}

/// Best effort, one datagram, no reply awaited: the listener is being closed.
pub fn send_unregister(l: &mut Listener) {
    // A `Register` still in flight may yet join: leave after it, in order.
    let holding = l.joined || register_pending(l);
    let Some(proxy) = l.proxy.filter(|_| l.mgmt.fd >= 0 && holding) else { return };
    let msg = Message::Unregister { proxy: Endpoint::new(l.proto, proxy) };
    if let Ok((id, bytes)) = l.mgmt.requester.send(l.mgmt.broker, Instant::now(), |id| seal::gcb_encode(&msg, id)) {
        let _ = send_datagram(l.mgmt.fd, bytes);
        l.mgmt.requester.cancel(id);
    }
    log!(Debug, "unregistered {} {proxy}", l.proto);
}

fn register_pending(l: &Listener) -> bool {
    l.mgmt.pending.values().any(|p| *p == Purpose::Register)
}

/// Sends `Register` for `l` again unless one is under way. From the same
/// management socket the broker answers with the registration it has (its
/// current proxy and `udp_token`), or makes a new one if it has none.
pub fn reregister(l: &mut Listener, now: Instant) {
    if !register_pending(l) {
        let msg = register_message(l.proto, l.reg_local, l.mgmt.local, l.proxy.map(|p| p.port()));
        start(l, Purpose::Register, &msg, now);
    }
}

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
        Message::PunchConnect { token, broker, peer, proxy } => (token, Dial::Punch { broker }, peer, proxy),
        other => {
            log!(Debug, "command {:?} not handled by a TCP listener", other.kind());
            return (Message::error(ErrorCode::Unsupported, "not a TCP listener command"), None);
        }
    };
    if l.proxy != Some(proxy) {
        return (Message::error(ErrorCode::NotRegistered, "no such listener here"), None);
    }
    if !super::serve::room_for(reg, id) {
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
        fail_over(reg, id, now, interval);
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

/// Reads a `ConnectDecision` (or its refusal) from a connector's exchange.
pub fn decision_of(reply: Message) -> Result<Decision, Option<ErrorCode>> {
    match reply {
        Message::ConnectDecision(d) => Ok(d),
        Message::Error { code, detail } => {
            log!(Debug, "Connect refused: {code:?} {detail}");
            Err(Some(code))
        }
        _ => Err(None),
    }
}

/// Listener `id`'s broker has been silent past [`super::brokers::silence_limit`]: move it to the
/// next broker and register there. With nowhere to go, only restart the clock.
pub fn fail_over(reg: &mut Registry, id: ListenerId, now: Instant, interval: Duration) {
    let Some(old) = reg.listener(id).map(|l| l.mgmt.broker) else { return };
    let brokers = reg.brokers.loaded();
    brokers.mark_dead(old, now, interval);
    let next = brokers.after(old, now);
    let Some(l) = reg.listener_mut(id) else { return };
    let silent = now.saturating_duration_since(l.mgmt.heard);
    l.mgmt.heard = now;
    let Some(next) = next else { return };
    // A UDP connect only changes the socket's peer: it never blocks.
    let local = match sys::connect(l.mgmt.fd, next, now).and_then(|()| sys::local_addr(l.mgmt.fd)) {
        Ok(local) => local,
        Err(e) => {
            log!(Warn, "broker {old} silent for {}s; cannot move tcp {} to {next}: {}", silent.as_secs(), l.reg_local, std::io::Error::from_raw_os_error(e));
            return;
        }
    };
    log!(Warn, "broker {old} silent for {}s; {} {} moves to broker {next}", silent.as_secs(), l.proto, l.reg_local);
    l.mgmt.broker = next;
    l.mgmt.local = local;
    if l.local.ip().is_unspecified() {
        l.reg_local = SocketAddrV4::new(*local.ip(), l.local.port());
    }
    l.mgmt.requester = new_requester(proto::rudp::RetryPolicy::default());
    l.mgmt.pending.clear();
    l.mgmt.next_heartbeat = now + interval;
    l.joined = false;
    let msg = register_message(l.proto, l.reg_local, local, l.proxy.map(|p| p.port()));
    start(l, Purpose::Register, &msg, now);
}

#[cfg(test)]
#[path = "mgmt_tests.rs"]
mod tests;
