//! UDP helpers of the end-to-end tests: a fake GCB client with one
//! registered UDP socket (its management socket plus the application
//! socket the Dummy and relayed datagrams use), plain sockets as regular
//! peers, and the status counters.

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use proto::gcb::{self, Message, Token, UdpRelayHeader};
use proto::Proto;

use super::{Broker, Mgmt, WAIT};

/// How long to listen for a datagram that must not come. Only after the
/// broker has shown (a counter, a reply, a log line it writes after the
/// fact) that it handled what would have sent it: on loopback a datagram it
/// sent by then is already queued, so this is margin, not the proof.
pub const QUIET: Duration = Duration::from_millis(300);

pub fn v4(s: &UdpSocket) -> SocketAddrV4 {
    match s.local_addr().unwrap() {
        SocketAddr::V4(a) => a,
        other => panic!("{other}"),
    }
}

pub fn sock() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

/// The next datagram within `within`: (bytes, source).
pub fn recv(s: &UdpSocket, within: Duration) -> Option<(Vec<u8>, SocketAddrV4)> {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = vec![0u8; 65_536];
    let got = s.recv_from(&mut buf).ok().map(|(n, from)| match from {
        SocketAddr::V4(from) => (buf[..n].to_vec(), from),
        other => panic!("{other}"),
    });
    s.set_read_timeout(Some(WAIT)).unwrap();
    got
}

/// A fake GCB client with one registered UDP socket.
pub struct Client {
    pub mgmt: Mgmt,
    pub app: UdpSocket,
    pub proxy: SocketAddrV4,
    pub token: Token,
}

impl Client {
    pub fn register(b: &Broker, mgmt_ip: &str, realm: Option<&str>) -> Client {
        let mut mgmt = Mgmt::new(b.addr);
        let app = sock();
        let local = v4(&app).to_string();
        match mgmt.register_proto(Proto::Udp, &local, mgmt_ip, realm, None, 10) {
            Message::RegisterOk {
                proxy,
                udp_token: Some(token),
                ..
            } => Client {
                mgmt,
                app,
                proxy,
                token,
            },
            other => panic!("udp register refused: {other:?}"),
        }
    }

    /// Sends Dummy from `from` (the app socket, or another one standing in
    /// for a new NAT mapping) and waits, bounded, until the broker has taken
    /// it (its `udp_dummies` counter moves). The broker does not answer it.
    pub fn dummy_from(&self, b: &Broker, from: &UdpSocket, token: Token) {
        let before = counter(b, "udp_dummies");
        let bytes = gcb::encode(&Message::Dummy { token }, 5).unwrap();
        from.send_to(&bytes, self.proxy).unwrap();
        let end = Instant::now() + WAIT;
        while counter(b, "udp_dummies") == before {
            assert!(Instant::now() < end, "the broker never took the Dummy");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn dummy(&self, b: &Broker) {
        self.dummy_from(b, &self.app, self.token);
    }

    /// Expects a relayed datagram: (peer named in the header, payload).
    pub fn recv_relayed(&self) -> (SocketAddrV4, Vec<u8>) {
        let (d, src) = recv(&self.app, WAIT).expect("a relayed datagram");
        assert_eq!(src, self.proxy);
        let (h, payload) = UdpRelayHeader::decode(&d).expect("a relay header");
        (h.peer, payload.to_vec())
    }

    pub fn send_to_peer(&self, peer: SocketAddrV4, payload: &[u8]) {
        let d = UdpRelayHeader { peer }.encode(payload).unwrap();
        self.app.send_to(&d, self.proxy).unwrap();
    }
}

/// One counter from `query --json`.
pub fn counter(b: &Broker, name: &str) -> u64 {
    let (code, out, err) = b.query(true);
    assert_eq!(code, 0, "{err}");
    let v = testbed::json::parse(&out).unwrap();
    match v.get("counters").and_then(|c| c.get(name)) {
        Some(testbed::json::Value::Num(n)) => *n as u64,
        other => panic!("counter {name}: {other:?} in {out}"),
    }
}

/// Waits (bounded) until a counter reaches `want`: the broker counts after
/// the datagram that a test cannot observe arriving.
pub fn expect_counter(b: &Broker, name: &str, want: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let n = counter(b, name);
        if n == want {
            return;
        }
        assert!(Instant::now() < deadline, "{name} is {n}, want {want}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
