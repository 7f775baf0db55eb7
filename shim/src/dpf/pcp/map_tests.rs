//! The bounded MAP inside a call, against a gateway scripted on loopback:
//! what it sends, how long it waits, and what each answer or silence makes
//! of it.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use proto::{natpmp, pcp};

use super::*;

/// A scripted gateway: answers each datagram with what `answer` returns
/// (nothing for `None`), for as long as the test lasts; the datagrams it got.
fn gateway(answer: impl Fn(&[u8]) -> Option<Vec<u8>> + Send + 'static) -> (SocketAddrV4, std::sync::mpsc::Receiver<Vec<u8>>) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let addr = match s.local_addr().unwrap() {
        std::net::SocketAddr::V4(a) => a,
        _ => unreachable!(),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            if tx.send(buf[..n].to_vec()).is_err() {
                return;
            }
            if let Some(a) = answer(&buf[..n]) {
                let _ = s.send_to(&a, from);
            }
        }
    });
    (addr, rx)
}

fn client_to(gw: SocketAddrV4, prefer_failure: bool) -> (sys::Sock, MapClient) {
    let (sock, local) = crate::client::exchange::open(gw).unwrap();
    let desired = prefer_failure.then(|| "100.0.0.1:40500".parse().unwrap());
    let mut cfg = config(Proto::Tcp, SocketAddrV4::new(*local.ip(), 7000), desired, prefer_failure);
    cfg.pcp_retry = CALL_RETRY;
    cfg.natpmp_retry = CALL_RETRY;
    (sock, MapClient::new(cfg))
}

/// The MAP success answer to a PCP request, at `external`.
fn granted(req: &[u8], external: &str) -> Vec<u8> {
    let r = pcp::decode_request(req).unwrap();
    let mut map = r.map.unwrap();
    let ext: SocketAddrV4 = external.parse().unwrap();
    map.external_port = ext.port();
    map.external_ip = pcp::mapped(*ext.ip());
    pcp::encode_response(&pcp::Response { version: 2, opcode: pcp::OP_MAP, result: pcp::ResultCode::Success, lifetime: 600, epoch: 7, map: Some(map), options: vec![] })
}

#[test]
fn pcp_grant_with_the_suggestion_and_prefer_failure() {
    let (gw, got) = gateway(|req| Some(granted(req, "100.0.0.1:40500")));
    let (sock, mut client) = client_to(gw, true);
    let t0 = Instant::now();
    let outcome = run(&mut client, sock.raw(), CALL_BOUND);
    assert_eq!(outcome, Outcome::Mapped { external: "100.0.0.1:40500".parse().unwrap(), lifetime: 600, via: Via::Pcp });
    assert!(t0.elapsed() < Duration::from_millis(500), "{:?}", t0.elapsed());
    let req = pcp::decode_request(&got.recv().unwrap()).unwrap();
    let map = req.map.unwrap();
    assert_eq!((req.lifetime, map.internal_port, map.external_port, map.protocol), (LIFETIME_S, 7000, 40500, 6));
    assert_eq!(pcp::unmapped(map.external_ip), Some("100.0.0.1".parse().unwrap()));
    assert_eq!(req.options, vec![pcp::Opt::PreferFailure]);
}

#[test]
fn natpmp_after_unsupp_version() {
    let (gw, got) = gateway(|req| match req[0] {
        // A NAT-PMP-only gateway's answer to anything else.
        2 => Some(vec![0, 0x81, 0, 1, 0, 0, 0, 9]),
        _ if req[1] == 0 => Some(natpmp::encode_response(&natpmp::Response {
            opcode: 0,
            result: natpmp::ResultCode::Success,
            epoch: 9,
            body: natpmp::Body::PublicAddress("100.0.0.1".parse().unwrap()),
        })),
        _ => Some(natpmp::encode_response(&natpmp::Response {
            opcode: req[1],
            result: natpmp::ResultCode::Success,
            epoch: 9,
            body: natpmp::Body::Map { internal_port: 7000, external_port: 41000, lifetime: 600 },
        })),
    });
    let (sock, mut client) = client_to(gw, false);
    let outcome = run(&mut client, sock.raw(), CALL_BOUND);
    assert_eq!(outcome, Outcome::Mapped { external: "100.0.0.1:41000".parse().unwrap(), lifetime: 600, via: Via::NatPmp });
    let kinds: Vec<u8> = got.try_iter().map(|d| d[0]).collect();
    assert_eq!(kinds, vec![2, 0, 0], "a PCP MAP, then NAT-PMP's two requests");
}

#[test]
fn a_refusal_ends_it_at_once_with_its_code() {
    let (gw, _got) = gateway(|req| Some(pcp::encode_error_response(req, pcp::ResultCode::NotAuthorized, 30, 3)));
    let (sock, mut client) = client_to(gw, false);
    let outcome = run(&mut client, sock.raw(), CALL_BOUND);
    assert_eq!(outcome, Outcome::Refused(Refusal::Pcp(pcp::ResultCode::NotAuthorized)));
    assert!(!port_unavailable(Refusal::Pcp(pcp::ResultCode::NotAuthorized)));
    assert!(port_unavailable(Refusal::Pcp(pcp::ResultCode::CannotProvideExternal)));
    assert!(port_unavailable(Refusal::NatPmp(natpmp::ResultCode::OutOfResources)));
}

/// Silence: three transmissions at about 0, 0.25 and 0.75 s, and the call
/// returns at its bound. RFC 6887's jitter compounds (each interval is
/// (1 ± 0.1) times twice the last one as drawn), so when every draw is low a
/// fourth goes out at about 1.36 s, still inside the 1.5 s bound.
#[test]
fn silence_is_bounded() {
    let (gw, got) = gateway(|_| None);
    let (sock, mut client) = client_to(gw, false);
    let t0 = Instant::now();
    let outcome = run(&mut client, sock.raw(), CALL_BOUND);
    let took = t0.elapsed();
    assert_eq!(outcome, Outcome::Silent(NoAnswer::Timeout));
    assert!(took >= CALL_BOUND && took < CALL_BOUND + Duration::from_millis(500), "{took:?}");
    let sent = got.try_iter().count();
    assert!((3..=4).contains(&sent), "{sent} transmissions");
}

/// Nothing listens at the gateway's port: the kernel says so at once.
#[test]
fn a_closed_port_is_refused_at_once() {
    let gw = {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        match s.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            _ => unreachable!(),
        }
    };
    let (sock, mut client) = client_to(gw, false);
    let t0 = Instant::now();
    assert_eq!(run(&mut client, sock.raw(), CALL_BOUND), Outcome::Silent(NoAnswer::Refused));
    assert!(t0.elapsed() < Duration::from_millis(500));
}
