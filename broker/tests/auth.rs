//! `gcb-broker --secret-file`: only sealed requests are served, replies and
//! commands are sealed, and every refusal is silent and counted by reason.
//! The client here seals with the proto `auth` module directly, as the shim
//! does, so the bytes on the wire are the real ones.

mod support;

use std::net::{SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use proto::auth::{self, Key, ReplayGuard, Stamp};
use proto::gcb::{self, Message, MgmtInfo};
use proto::Proto;
use support::{a, Broker, BIN, WAIT};

const SECRET: &[u8] = b"broker test secret, 32 bytes long";
/// How long a refused request is given to (wrongly) produce an answer.
const SILENCE: Duration = Duration::from_millis(1500);

fn secret_file(name: &str, bytes: &[u8]) -> String {
    let dir = std::env::temp_dir().join(format!("gcb-auth-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    path.to_string_lossy().into_owned()
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn stamp_at(unix_ms: u64) -> Stamp {
    static NONCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let nonce = NONCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ^ u64::from(std::process::id()) << 32;
    Stamp { unix_ms, nonce }
}

fn sealed(msg: &Message, id: u64, key: &Key, stamp: Stamp) -> Vec<u8> {
    let mut bytes = gcb::encode(msg, id).unwrap();
    auth::seal(&mut bytes, key, stamp).unwrap();
    bytes
}

fn register_msg(sock: &UdpSocket, local: &str) -> Message {
    let SocketAddr4(mgmt) = SocketAddr4::of(sock);
    Message::Register {
        proto: Proto::Tcp,
        local: a(local),
        realm: None,
        desired_port: None,
        port_required: false,
        mgmt: MgmtInfo::new(mgmt, std::process::id(), 10, "auth-test"),
    }
}

struct SocketAddr4(SocketAddrV4);

impl SocketAddr4 {
    fn of(sock: &UdpSocket) -> SocketAddr4 {
        match sock.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => SocketAddr4(a),
            other => panic!("{other}"),
        }
    }
}

/// The next datagram within `within`, raw.
fn recv(sock: &UdpSocket, within: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + within;
    let mut buf = vec![0u8; 65_536];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            return Some(buf[..n].to_vec());
        }
    }
    None
}

fn client() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").unwrap()
}

/// `gcb-broker query --json [--secret-file]`: (exit code, stdout, stderr).
fn query(b: &Broker, secret: Option<&str>) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["query", &b.addr.to_string(), "--json"]);
    if let Some(s) = secret {
        cmd.args(["--secret-file", s]);
    }
    let out = cmd.stdin(std::process::Stdio::null()).output().unwrap();
    let text = |v: Vec<u8>| String::from_utf8(v).unwrap();
    (
        out.status.code().unwrap_or(-1),
        text(out.stdout),
        text(out.stderr),
    )
}

/// The broker's counter `name` and its registration count, via an
/// authenticated query.
fn status(b: &Broker, secret: &str) -> (testbed::json::Value, usize) {
    let (code, out, err) = query(b, Some(secret));
    assert_eq!(code, 0, "{err}");
    let v = testbed::json::parse(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let regs = v
        .get("registrations")
        .and_then(|r| r.as_array())
        .map_or(0, |r| r.len());
    (v, regs)
}

fn counter(v: &testbed::json::Value, name: &str) -> u64 {
    v.get("counters")
        .and_then(|c| c.get(name))
        .and_then(|n| match n {
            testbed::json::Value::Num(x) => Some(*x as u64),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no counter {name}"))
}

#[test]
fn unauthenticated_wrong_key_stale_and_replayed_requests_are_refused_and_counted() {
    let path = secret_file("good", SECRET);
    let mut b = Broker::start(&["--secret-file", &path]);
    let key = Key::new(SECRET);

    // Unauthenticated: silence, and nothing registered.
    let c = client();
    c.send_to(
        &gcb::encode(&register_msg(&c, "10.0.0.1:80"), 1).unwrap(),
        b.addr,
    )
    .unwrap();
    assert_eq!(
        recv(&c, SILENCE),
        None,
        "an unauthenticated Register got an answer"
    );

    // Wrong key: silence.
    let wrong = Key::new(b"not the broker's secret");
    c.send_to(
        &sealed(
            &register_msg(&c, "10.0.0.1:80"),
            2,
            &wrong,
            stamp_at(unix_ms()),
        ),
        b.addr,
    )
    .unwrap();
    assert_eq!(
        recv(&c, SILENCE),
        None,
        "a Register under the wrong key got an answer"
    );

    // Two minutes old: silence.
    let old = stamp_at(unix_ms() - 120_000);
    c.send_to(
        &sealed(&register_msg(&c, "10.0.0.1:80"), 3, &key, old),
        b.addr,
    )
    .unwrap();
    assert_eq!(recv(&c, SILENCE), None, "a stale Register got an answer");
    b.expect_line("timestamp");

    let (v, regs) = status(&b, &path);
    assert_eq!(regs, 0, "a refused client registered");
    assert!(counter(&v, "auth_missing") >= 1);
    assert_eq!(counter(&v, "auth_bad_mac"), 1);
    assert_eq!(counter(&v, "auth_stale"), 1);

    // Authenticated: served, and the reply is sealed with the same key.
    let good = sealed(
        &register_msg(&c, "10.0.0.1:80"),
        4,
        &key,
        stamp_at(unix_ms()),
    );
    c.send_to(&good, b.addr).unwrap();
    let reply = recv(&c, WAIT).expect("a reply to a sealed Register");
    assert_eq!(
        gcb::decode(&reply).err(),
        Some(proto::DecodeError::AuthUnsupported)
    );
    let mut guard = ReplayGuard::new(16);
    let opened = auth::open(&reply, &key, unix_ms(), &mut guard).expect("the reply opens");
    let (h, m) = gcb::decode(&opened).unwrap();
    assert_eq!(h.request_id, 4);
    let Message::RegisterOk { proxy, .. } = m else {
        panic!("{m:?}")
    };
    assert!(b.in_range(proxy.port()));

    // The same bytes again from the same socket are a retransmission: the
    // cached reply, byte for byte, and still one registration.
    c.send_to(&good, b.addr).unwrap();
    assert_eq!(recv(&c, WAIT).as_deref(), Some(&reply[..]));
    // From another address they are a replay: silence.
    let replayer = client();
    replayer.send_to(&good, b.addr).unwrap();
    assert_eq!(
        recv(&replayer, SILENCE),
        None,
        "a replayed Register got an answer"
    );

    let (v, regs) = status(&b, &path);
    assert_eq!(regs, 1);
    assert_eq!(counter(&v, "auth_replayed"), 1);
    assert_eq!(counter(&v, "duplicates"), 1);

    // Without the secret, query says what is wrong in one line.
    let (code, _, err) = query(&b, None);
    assert_ne!(code, 0);
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn any_flipped_byte_is_refused() {
    let path = secret_file("flip", SECRET);
    let b = Broker::start(&["--secret-file", &path]);
    let key = Key::new(SECRET);
    let c = client();
    let good = sealed(
        &register_msg(&c, "10.0.0.2:80"),
        9,
        &key,
        stamp_at(unix_ms()),
    );
    // A few positions: header, body, timestamp, nonce, MAC.
    for at in [6, 10, 20, good.len() - 45, good.len() - 35, good.len() - 1] {
        let mut bad = good.clone();
        bad[at] ^= 0x01;
        c.send_to(&bad, b.addr).unwrap();
    }
    assert_eq!(recv(&c, SILENCE), None, "a tampered Register got an answer");
    let (v, regs) = status(&b, &path);
    assert_eq!(regs, 0);
    // Flipping the flag bit makes it unauthenticated; the rest are bad MACs.
    assert_eq!(counter(&v, "auth_bad_mac") + counter(&v, "auth_missing"), 6);
}

/// Sends `msg` sealed from `c` and opens the sealed reply.
#[track_caller]
fn sealed_request(
    b: &Broker,
    c: &UdpSocket,
    key: &Key,
    msg: &Message,
    id: u64,
) -> (Vec<u8>, Message) {
    let bytes = sealed(msg, id, key, stamp_at(unix_ms()));
    c.send_to(&bytes, b.addr).unwrap();
    let reply = recv(c, WAIT).expect("a reply to a sealed request");
    let opened =
        auth::open(&reply, key, unix_ms(), &mut ReplayGuard::new(16)).expect("the reply opens");
    let (h, m) = gcb::decode(&opened).unwrap();
    assert_eq!(h.request_id, id);
    (bytes, m)
}

#[test]
fn replayed_channel_requests_open_and_close_nothing() {
    let path = secret_file("channel", SECRET);
    let b = Broker::start(&["--secret-file", &path]);
    let key = Key::new(SECRET);
    let c = client();
    let app = client();
    let SocketAddr4(mgmt) = SocketAddr4::of(&c);
    let SocketAddr4(local) = SocketAddr4::of(&app);
    let register = Message::Register {
        proto: Proto::Udp,
        local,
        realm: None,
        desired_port: None,
        port_required: false,
        mgmt: MgmtInfo::new(mgmt, std::process::id(), 10, "auth-test"),
    };
    let (_, reply) = sealed_request(&b, &c, &key, &register, 1);
    let Message::RegisterOk {
        proxy,
        udp_token: Some(udp_token),
        ..
    } = reply
    else {
        panic!("{reply:?}")
    };
    // The data path (a sealed Dummy), then a peer writes to the proxy, so a
    // channel to it may be opened.
    let dummy = sealed(
        &Message::Dummy { token: udp_token },
        3,
        &key,
        stamp_at(unix_ms()),
    );
    app.send_to(&dummy, proxy).unwrap();
    // The Dummy is not answered; the data path shows when the broker relays.
    let peer = client();
    peer.send_to(b"hello", proxy).unwrap();
    assert!(recv(&app, WAIT).is_some(), "the relayed hello");
    let SocketAddr4(peer_addr) = SocketAddr4::of(&peer);
    let open = Message::UdpChannel {
        proxy,
        peer: peer_addr,
        udp_token,
        open: true,
    };
    let (open_bytes, first) = sealed_request(&b, &c, &key, &open, 2);
    let Message::UdpChannelOk { channel, .. } = first else {
        panic!("{first:?}")
    };

    // The same bytes from the same socket: the cached reply, no second channel.
    c.send_to(&open_bytes, b.addr).unwrap();
    assert!(recv(&c, WAIT).is_some(), "a retransmission is answered");
    // From elsewhere: a replay, silence.
    let replayer = client();
    replayer.send_to(&open_bytes, b.addr).unwrap();
    assert_eq!(
        recv(&replayer, SILENCE),
        None,
        "a replayed channel request got an answer"
    );

    // Closed by its owner; the close and the open replayed afterwards do
    // nothing, from a new socket or from the owner's.
    let close = Message::UdpChannel {
        proxy,
        peer: peer_addr,
        udp_token,
        open: false,
    };
    let (close_bytes, closed) = sealed_request(&b, &c, &key, &close, 1_000);
    assert_eq!(closed, Message::Ack);
    for bytes in [&open_bytes, &close_bytes] {
        replayer.send_to(bytes, b.addr).unwrap();
    }
    assert_eq!(recv(&replayer, SILENCE), None, "a replay got an answer");
    let (v, _) = status(&b, &path);
    assert_eq!(counter(&v, "auth_replayed"), 3);
    assert_eq!(counter(&v, "udp_channels_opened"), 1);
    assert_eq!(counter(&v, "udp_channels_closed"), 1);
    assert_eq!(
        counter(&v, "udp_channels_active"),
        0,
        "channel {channel} not opened again"
    );
}
