//! Tests of the responder's handling of the management sockets, with a
//! datagram socketpair standing in for the management socket and the broker.

use super::*;
use crate::client::sys::Sock;
use crate::gcb::mgmt::{new_requester, send_unregister, DATAGRAM_MAX};
use proto::rudp::RetryPolicy;
use proto::Proto;
use proto::gcb::Token;

fn addr(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

/// A registry with one registered listener whose management socket is one end of
/// a socketpair; the other end is returned, as the broker.
fn setup() -> (Registry, ListenerId, Sock) {
    let mut sv = [0; 2];
    // SAFETY: socketpair writes two fds.
    assert_eq!(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_NONBLOCK, 0, sv.as_mut_ptr()) }, 0);
    let mut reg = Registry::new();
    let mut listener = crate::gcb::registration::tests::listener(&[900_000], sv[0]);
    listener.proxy = Some(addr("203.0.113.10:20001"));
    listener.mgmt.requester = new_requester(RetryPolicy::default());
    listener.mgmt.next_heartbeat = Instant::now() + Duration::from_secs(10);
    let (id, _) = reg.add_listener(listener);
    (reg, id, Sock::from_raw(sv[1]))
}

/// The next datagram the listener sent, decoded.
fn sent(broker: &Sock) -> Option<(u64, Message)> {
    let mut buf = [0u8; DATAGRAM_MAX];
    // SAFETY: a live buffer.
    let n = unsafe { libc::recv(broker.raw(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    (n > 0).then(|| gcb::decode(&buf[..n as usize]).map(|(h, m)| (h.request_id, m)).unwrap())
}

#[test]
fn commands_are_acked_once_and_duplicates_answered_from_the_cache() {
    let (mut reg, id, broker) = setup();
    let now = Instant::now();
    let relay = Message::RelayConnect {
        token: Token(7),
        broker: addr("203.0.113.10:65432"),
        peer: addr("198.51.100.9:5000"),
        proxy: addr("203.0.113.10:20001"),
    };
    let bytes = gcb::encode(&relay, 77).unwrap();
    let job = on_datagram(&mut reg, id, &bytes, now).expect("a connection to make");
    assert_eq!(job.dial, Dial::Relay { broker: addr("203.0.113.10:65432") });
    assert_eq!((job.token, job.peer, job.proxy), (Token(7), addr("198.51.100.9:5000"), addr("203.0.113.10:20001")));
    assert_eq!(sent(&broker), None, "the Ack waits for the dial");
    send_acks_due(&mut reg);
    assert_eq!(sent(&broker), Some((77, Message::Ack)));
    // The broker's retransmission: the same Ack, no second connection.
    assert!(on_datagram(&mut reg, id, &bytes, now).is_none());
    assert_eq!(sent(&broker), Some((77, Message::Ack)));
    // A command for a proxy address this listener does not hold.
    let other = Message::ReverseConnect {
        token: Token(8),
        connector: addr("203.0.113.20:1"),
        peer: addr("203.0.113.20:1"),
        proxy: addr("203.0.113.10:29999"),
    };
    assert!(on_datagram(&mut reg, id, &gcb::encode(&other, 78).unwrap(), now).is_none());
    assert!(matches!(sent(&broker), Some((78, Message::Error { code: ErrorCode::NotRegistered, .. }))));
    // Garbage and foreign replies are dropped without an answer.
    assert!(on_datagram(&mut reg, id, b"HTTP/1.0 400", now).is_none());
    assert!(on_datagram(&mut reg, id, &gcb::encode(&Message::HeartbeatAck, 5).unwrap(), now).is_none());
    assert_eq!(sent(&broker), None);
}

#[test]
fn heartbeats_and_reregistration_with_the_old_port() {
    let (mut reg, id, broker) = setup();
    let start = Instant::now();
    let interval = Duration::from_secs(10);
    on_timers(&mut reg, start, interval);
    assert_eq!(sent(&broker), None, "nothing due yet");
    let due = reg.listener(id).unwrap().mgmt.next_heartbeat;
    assert_eq!(next_deadline(&reg), Some(due));
    on_timers(&mut reg, due, interval);
    let (hb, msg) = sent(&broker).expect("a heartbeat");
    let proxy = addr("203.0.113.10:20001");
    assert_eq!(msg, Message::Heartbeat { held: vec![Endpoint::new(Proto::Tcp, proxy)] });
    // The broker restarted: it asks for a new registration, which asks for the old port.
    let rereg = Message::ReregisterRequest { unknown: vec![Endpoint::new(Proto::Tcp, proxy)] };
    on_datagram(&mut reg, id, &gcb::encode(&rereg, hb).unwrap(), due);
    let (rid, msg) = sent(&broker).expect("a register");
    match msg {
        Message::Register { local, desired_port, .. } => assert_eq!((local, desired_port), (addr("192.0.2.10:7000"), Some(20001))),
        other => panic!("{other:?}"),
    }
    // Only one register in flight, even if asked again.
    on_datagram(&mut reg, id, &gcb::encode(&rereg, 999).unwrap(), due);
    assert_eq!(sent(&broker), None);
    // Retransmitted until answered.
    let retry = reg.listener(id).unwrap().mgmt.requester.next_deadline().unwrap();
    on_timers(&mut reg, retry, interval);
    assert_eq!(sent(&broker).map(|(i, _)| i), Some(rid));
    let ok = Message::RegisterOk { proxy, observed: addr("203.0.113.1:40000"), udp_token: None };
    on_datagram(&mut reg, id, &gcb::encode(&ok, rid).unwrap(), retry);
    assert_eq!(reg.listener(id).unwrap().proxy, Some(proxy));
    assert!(reg.listener(id).unwrap().mgmt.pending.is_empty());
}

#[test]
fn unregistered_listeners_retry_registration_every_heartbeat() {
    let (mut reg, id, broker) = setup();
    reg.listener_mut(id).unwrap().proxy = None;
    let t = reg.listener(id).unwrap().mgmt.next_heartbeat;
    on_timers(&mut reg, t, Duration::from_secs(10));
    let (rid, msg) = sent(&broker).expect("a register");
    assert!(matches!(msg, Message::Register { desired_port: None, .. }));
    let ok = Message::RegisterOk { proxy: addr("203.0.113.10:20002"), observed: addr("203.0.113.1:1"), udp_token: None };
    on_datagram(&mut reg, id, &gcb::encode(&ok, rid).unwrap(), t);
    assert_eq!(reg.listener(id).unwrap().proxy, Some(addr("203.0.113.10:20002")));
    // Unregister on close: one datagram, nothing left in flight.
    send_unregister(reg.listener_mut(id).unwrap());
    assert!(matches!(sent(&broker), Some((_, Message::Unregister { .. }))));
    assert!(reg.listener(id).unwrap().mgmt.requester.is_empty());
}
