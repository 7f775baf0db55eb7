//! The port-mapping client against a scripted gateway: what it sends, when,
//! and what each answer, silence or announcement makes of it.

use super::*;
use crate::strategies;
use proptest::prelude::*;

const NONCE: [u8; 12] = *b"nonce-nonce!";
const EXTERNAL: &str = "203.0.113.1:40000";

fn ext() -> SocketAddrV4 {
    EXTERNAL.parse().unwrap()
}

fn cfg() -> Config {
    let mut c = Config::new(Proto::Tcp, "192.0.2.10:8080".parse().unwrap(), NONCE, 42);
    c.lifetime = 120;
    c
}

fn started(c: Config, t0: Instant) -> (MapClient, Vec<u8>) {
    let mut m = MapClient::new(c);
    let out = m.start(t0);
    assert_eq!(out.send.len(), 1, "{out:?}");
    (m, out.send[0].clone())
}

fn pcp_req(bytes: &[u8]) -> pcp::Request {
    pcp::decode_request(bytes).expect("a PCP request")
}

/// The gateway's answer to `req` with `result`, `lifetime`, `epoch`.
fn pcp_answer(
    req: &[u8],
    result: pcp::ResultCode,
    lifetime: u32,
    epoch: u32,
    external: SocketAddrV4,
) -> Vec<u8> {
    let r = pcp_req(req);
    let mut map = r.map.unwrap();
    map.external_port = external.port();
    map.external_ip = pcp::mapped(*external.ip());
    pcp::encode_response(&pcp::Response {
        version: pcp::VERSION,
        opcode: pcp::OP_MAP,
        result,
        lifetime,
        epoch,
        map: Some(map),
        options: vec![],
    })
}

fn announce(epoch: u32) -> Vec<u8> {
    pcp::encode_response(&pcp::Response {
        version: pcp::VERSION,
        opcode: pcp::OP_ANNOUNCE,
        result: pcp::ResultCode::Success,
        lifetime: 0,
        epoch,
        map: None,
        options: vec![],
    })
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn mapped_event(out: &Output) -> (SocketAddrV4, u32, Via) {
    match out.events.as_slice() {
        [Event::Mapped {
            external,
            lifetime,
            via,
        }] => (*external, *lifetime, *via),
        other => panic!("want one Mapped, got {other:?}"),
    }
}

#[test]
fn pcp_map_then_renewal_between_half_and_five_eighths() {
    let t0 = Instant::now();
    let (mut m, req) = started(cfg(), t0);
    let r = pcp_req(&req);
    assert_eq!((r.opcode, r.lifetime), (pcp::OP_MAP, 120));
    assert_eq!(r.client, pcp::mapped("192.0.2.10".parse().unwrap()));
    let map = r.map.unwrap();
    assert_eq!(
        (
            map.nonce,
            map.protocol,
            map.internal_port,
            map.external_port
        ),
        (NONCE, 6, 8080, 0)
    );
    assert!(pcp::is_unspecified(map.external_ip) && r.options.is_empty());

    let t1 = t0 + secs(0.01);
    let out = m.on_datagram(
        &pcp_answer(&req, pcp::ResultCode::Success, 100, 500, ext()),
        t1,
    );
    assert_eq!(mapped_event(&out), (ext(), 100, Via::Pcp));
    assert!(out.send.is_empty());
    let renew = m.next_deadline().unwrap() - t1;
    assert!(renew >= secs(50.0) && renew <= secs(62.5), "{renew:?}");
    assert_eq!(m.mapping().unwrap().expires, t1 + secs(100.0));

    let t2 = t1 + renew;
    let out = m.poll_timeout(t2);
    assert_eq!(out.send.len(), 1);
    let again = pcp_req(&out.send[0]).map.unwrap();
    assert_eq!(
        (again.nonce, again.external_port),
        (NONCE, 40000),
        "renewal suggests what it holds"
    );
    let moved: SocketAddrV4 = "203.0.113.1:40007".parse().unwrap();
    let out = m.on_datagram(
        &pcp_answer(&out.send[0], pcp::ResultCode::Success, 100, 560, moved),
        t2,
    );
    assert_eq!(mapped_event(&out).0, moved);
}

#[test]
fn suggestion_with_prefer_failure_and_a_refusal() {
    let mut c = cfg();
    c.suggested_port = 40123;
    c.prefer_failure = true;
    let t0 = Instant::now();
    let (mut m, req) = started(c, t0);
    let r = pcp_req(&req);
    assert_eq!(r.map.unwrap().external_port, 40123);
    assert_eq!(r.options, vec![pcp::Opt::PreferFailure]);
    let refusal = pcp::encode_error_response(&req, pcp::ResultCode::CannotProvideExternal, 30, 9);
    let out = m.on_datagram(&refusal, t0);
    assert_eq!(
        out.events,
        vec![Event::Refused {
            code: Refusal::Pcp(pcp::ResultCode::CannotProvideExternal),
            retry_after_s: 30
        }]
    );
    assert!(m.is_done() && m.next_deadline().is_none() && m.mapping().is_none());
    assert_eq!(m.poll_timeout(t0 + secs(100.0)), Output::default());
}

#[test]
fn silence_is_retransmitted_per_rfc_and_ends_in_gave_up() {
    let t0 = Instant::now();
    let (mut m, first) = started(cfg(), t0);
    let mut sends = vec![(Duration::ZERO, first)];
    let mut events = Vec::new();
    for _ in 0..10 {
        let Some(at) = m.next_deadline() else { break };
        let out = m.poll_timeout(at);
        sends.extend(out.send.into_iter().map(|s| (at - t0, s)));
        events.extend(out.events);
    }
    let times: Vec<Duration> = sends.iter().map(|(t, _)| *t).collect();
    assert_eq!(times.len(), 4, "{times:?}");
    retry::tests::assert_jittered_doubling(&times, Retry::PCP.initial);
    assert_eq!(m.next_deadline(), None);
    assert!(
        sends.iter().all(|(_, s)| s == &sends[0].1),
        "retransmissions are identical"
    );
    assert_eq!(events, vec![Event::GaveUp]);
    assert!(m.is_done());
}

fn natpmp_answer(resp: natpmp::Response) -> Vec<u8> {
    natpmp::encode_response(&resp)
}

fn natpmp_map_ok(port: u16, lifetime: u32, epoch: u32) -> Vec<u8> {
    natpmp_answer(natpmp::Response {
        opcode: 2,
        result: natpmp::ResultCode::Success,
        epoch,
        body: natpmp::Body::Map {
            internal_port: 8080,
            external_port: port,
            lifetime,
        },
    })
}

fn natpmp_public(ip: &str, epoch: u32) -> Vec<u8> {
    natpmp_answer(natpmp::Response {
        opcode: 0,
        result: natpmp::ResultCode::Success,
        epoch,
        body: natpmp::Body::PublicAddress(ip.parse().unwrap()),
    })
}

/// A client that fell back to NAT-PMP and holds 203.0.113.1:40000.
fn natpmp_mapped(t0: Instant) -> MapClient {
    let (mut m, _) = started(cfg(), t0);
    // What a NAT-PMP-only gateway answers a PCP MAP request.
    let out = m.on_datagram(&[0, 0x81, 0, 1, 0, 0, 0, 5], t0);
    assert_eq!(m.via(), Via::NatPmp);
    let reqs: Vec<_> = out
        .send
        .iter()
        .map(|b| natpmp::decode_request(b).unwrap())
        .collect();
    assert_eq!(
        reqs,
        vec![
            natpmp::Request::PublicAddress,
            natpmp::Request::Map {
                proto: Proto::Tcp,
                internal_port: 8080,
                suggested_port: 0,
                lifetime: 120
            }
        ]
    );
    // The two answers in either order; the mapping is known after both.
    assert!(m
        .on_datagram(&natpmp_map_ok(40000, 120, 5), t0)
        .events
        .is_empty());
    let out = m.on_datagram(&natpmp_public("203.0.113.1", 5), t0);
    assert_eq!(mapped_event(&out), (ext(), 120, Via::NatPmp));
    m
}

#[test]
fn falls_back_to_natpmp_on_unsupported_version() {
    let t0 = Instant::now();
    let mut m = natpmp_mapped(t0);
    // Its renewal is a NAT-PMP mapping request alone: the address is known.
    let at = m.next_deadline().unwrap();
    let out = m.poll_timeout(at);
    assert_eq!(out.send.len(), 1);
    assert_eq!(
        natpmp::decode_request(&out.send[0]).unwrap(),
        natpmp::Request::Map {
            proto: Proto::Tcp,
            internal_port: 8080,
            suggested_port: 40000,
            lifetime: 120
        }
    );
    // NAT-PMP retransmits from 250 ms.
    let next = m.next_deadline().unwrap() - at;
    assert!(next >= secs(0.225) && next <= secs(0.275), "{next:?}");
}

#[test]
fn natpmp_refusal_and_announcement_of_a_new_address() {
    let t0 = Instant::now();
    let mut m = natpmp_mapped(t0);
    let t1 = t0 + secs(10.0);
    let out = m.on_datagram(&natpmp_public("203.0.113.9", 15), t1);
    assert_eq!(mapped_event(&out).0, "203.0.113.9:40000".parse().unwrap());

    let (mut m, _) = started(cfg(), t0);
    m.on_datagram(&[0, 0x81, 0, 1, 0, 0, 0, 5], t0);
    let refused = natpmp_answer(natpmp::Response {
        opcode: 2,
        result: natpmp::ResultCode::NotAuthorized,
        epoch: 5,
        body: natpmp::Body::Map {
            internal_port: 8080,
            external_port: 0,
            lifetime: 0,
        },
    });
    let out = m.on_datagram(&refused, t0);
    assert_eq!(
        out.events,
        vec![Event::Refused {
            code: Refusal::NatPmp(natpmp::ResultCode::NotAuthorized),
            retry_after_s: 0
        }]
    );
    let shown = Refusal::NatPmp(natpmp::ResultCode::NotAuthorized).to_string();
    assert_eq!(shown, "NAT-PMP not_authorized (2)");
}

/// A PCP client holding 203.0.113.1:40000, granted at `t0` with epoch 500.
fn pcp_mapped(t0: Instant) -> MapClient {
    let (mut m, req) = started(cfg(), t0);
    m.on_datagram(
        &pcp_answer(&req, pcp::ResultCode::Success, 120, 500, ext()),
        t0,
    );
    m
}

#[test]
fn announce_showing_a_restart_maps_again_soon() {
    let t0 = Instant::now();
    let mut m = pcp_mapped(t0);
    let renewal = m.next_deadline().unwrap();
    // An ANNOUNCE whose epoch kept time changes nothing.
    let t1 = t0 + secs(20.0);
    assert_eq!(m.on_datagram(&announce(520), t1), Output::default());
    assert_eq!(m.next_deadline(), Some(renewal));
    // One that went back to 3 s: map again within 5 s, asking for the old port.
    let t2 = t0 + secs(30.0);
    assert_eq!(m.on_datagram(&announce(3), t2), Output::default());
    let at = m.next_deadline().unwrap();
    assert!(at >= t2 && at <= t2 + ANNOUNCE_JITTER, "{:?}", at - t2);
    let out = m.poll_timeout(at);
    let req = out.send[0].clone();
    assert_eq!(pcp_req(&req).map.unwrap().external_port, 40000);
    let out = m.on_datagram(
        &pcp_answer(&req, pcp::ResultCode::Success, 120, 4, ext()),
        at,
    );
    assert_eq!(mapped_event(&out).0, ext());
}

#[test]
fn foreign_and_late_answers_are_ignored() {
    let t0 = Instant::now();
    let (mut m, req) = started(cfg(), t0);
    let mut other = req.clone();
    other[HEADER_NONCE] ^= 1;
    let stranger = pcp_answer(&other, pcp::ResultCode::Success, 120, 500, ext());
    assert_eq!(m.on_datagram(&stranger, t0), Output::default());
    let good = pcp_answer(&req, pcp::ResultCode::Success, 120, 500, ext());
    assert_eq!(m.on_datagram(&good, t0).events.len(), 1);
    let renewal = m.next_deadline();
    // A duplicate of the answer, 40 s late: no event, no restart detected.
    assert_eq!(m.on_datagram(&good, t0 + secs(40.0)), Output::default());
    assert_eq!(m.next_deadline(), renewal);
}

const HEADER_NONCE: usize = pcp::HEADER_LEN;

#[test]
fn an_unanswered_renewal_gives_up_at_expiry() {
    let t0 = Instant::now();
    let mut m = pcp_mapped(t0);
    let mut last = t0;
    let mut events = Vec::new();
    while let Some(at) = m.next_deadline() {
        assert!(at >= last && at <= t0 + secs(120.0), "{:?}", at - t0);
        last = at;
        events.extend(m.poll_timeout(at).events);
    }
    assert_eq!(last, t0 + secs(120.0));
    assert_eq!(events, vec![Event::GaveUp]);
}

#[test]
fn delete_over_pcp_and_natpmp() {
    let t0 = Instant::now();
    let mut m = pcp_mapped(t0);
    let out = m.delete(t0 + secs(1.0));
    let r = pcp_req(&out.send[0]);
    assert_eq!((r.lifetime, r.map.unwrap().nonce), (0, NONCE));
    let ok = pcp_answer(&out.send[0], pcp::ResultCode::Success, 0, 501, ext());
    assert_eq!(
        m.on_datagram(&ok, t0 + secs(1.0)).events,
        vec![Event::Deleted]
    );
    assert!(m.is_done());

    let mut m = natpmp_mapped(t0);
    let out = m.delete(t0);
    assert_eq!(
        out.send
            .iter()
            .map(|b| natpmp::decode_request(b).unwrap())
            .collect::<Vec<_>>(),
        vec![natpmp::Request::Map {
            proto: Proto::Tcp,
            internal_port: 8080,
            suggested_port: 0,
            lifetime: 0
        }]
    );
    let out = m.on_datagram(&natpmp_map_ok(0, 0, 6), t0);
    assert_eq!(out.events, vec![Event::Deleted]);
}

#[test]
fn a_short_first_bound_then_the_rfc_timing() {
    let t0 = Instant::now();
    let mut c = cfg();
    c.pcp_retry = Retry {
        initial: secs(0.25),
        max_interval: secs(1.0),
        max_attempts: 0,
        max_duration: secs(1.5),
    };
    let (mut m, req) = started(c, t0);
    let again = m.next_deadline().unwrap() - t0;
    assert!(again >= secs(0.225) && again <= secs(0.275), "{again:?}");
    let out = m.on_datagram(
        &pcp_answer(&req, pcp::ResultCode::Success, 120, 9, ext()),
        t0,
    );
    assert_eq!(mapped_event(&out).0, ext());
    m.set_retry(Retry::PCP, Retry::NATPMP);
    assert_eq!(m.config().pcp_retry, Retry::PCP);
    // The delete that follows waits the RFC's IRT before sending again.
    let t1 = t0 + secs(1.0);
    assert_eq!(m.delete(t1).send.len(), 1);
    let again = m.next_deadline().unwrap() - t1;
    assert!(again >= secs(2.7) && again <= secs(3.3), "{again:?}");
}

proptest! {
    #![proptest_config(strategies::config())]

    /// Junk from the gateway's address never panics, never makes a PCP
    /// client report anything, and never leaves it without a deadline.
    #[test]
    fn junk_changes_nothing(junk in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..80), 0..12)) {
        let t0 = Instant::now();
        let mut m = pcp_mapped(t0);
        for (i, j) in junk.iter().enumerate() {
            let out = m.on_datagram(j, t0 + secs(i as f64));
            prop_assert!(out.events.is_empty() && out.send.is_empty());
            prop_assert!(m.next_deadline().is_some());
        }
    }
}
