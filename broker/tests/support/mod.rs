//! Shared harness of the broker's end-to-end tests: a running `gcb-broker`
//! on loopback whose log lines arrive on a channel (`daemon_kit::testing`,
//! shared with dpfd's tests), and a fake GCB client speaking the proto crate
//! over a UDP socket. Every wait is bounded, and a broker is killed when its
//! guard drops, also when an assertion fails.

#![allow(dead_code)] // each test binary uses a different part

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddrV4, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::thread;
use std::time::{Duration, Instant};

pub mod udp;

pub use daemon_kit::testing::free_port;
use daemon_kit::testing::{clean_command, Running};

use proto::gcb::{self, Frame, Message, MgmtInfo, Role, StreamHello, StreamPeer, Token};
use proto::Proto;

pub const BIN: &str = env!("CARGO_BIN_EXE_gcb-broker");
/// How long any single expected event may take.
pub const WAIT: Duration = daemon_kit::testing::LINE_WAIT;

pub fn a(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

/// A proxy port range of 50 ports no other broker of this test binary
/// uses; far from the kernel's ephemeral range.
pub fn range() -> (u16, u16) {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let lo = 22000 + 50 * NEXT.fetch_add(1, Ordering::Relaxed);
    (lo, lo + 49)
}

pub struct Broker {
    daemon: Running,
    pub addr: SocketAddrV4,
    pub range: (u16, u16),
}

impl Broker {
    pub fn start(extra: &[&str]) -> Broker {
        Broker::start_on(free_port(), range(), extra)
    }

    pub fn start_on(port: u16, range: (u16, u16), extra: &[&str]) -> Broker {
        let addr = SocketAddrV4::new([127, 0, 0, 1].into(), port);
        let (listen, port_range) = (addr.to_string(), format!("{}-{}", range.0, range.1));
        let mut args = vec!["--listen", &listen, "--port-range", &port_range];
        args.extend(["--log", "debug"]);
        args.extend(extra);
        let mut b = Broker {
            daemon: Running::spawn(clean_command(BIN, "GCB_BROKER_", &args)),
            addr,
            range,
        };
        b.expect_line("started:");
        b
    }

    /// A log line containing `needle`, already seen or within [`WAIT`].
    pub fn expect_line(&mut self, needle: &str) -> String {
        self.daemon.expect_line(needle)
    }

    /// Sends `signal` to the broker and waits (bounded) for it to exit.
    pub fn stop_with(&mut self, signal: i32) -> Option<i32> {
        self.daemon.signal(signal);
        self.daemon.wait_exit(WAIT).code()
    }

    pub fn in_range(&self, port: u16) -> bool {
        self.range.0 <= port && port <= self.range.1
    }

    /// The registrations in `query --json`.
    pub fn registrations(&self) -> Vec<testbed::json::Value> {
        let (code, out, err) = self.query(true);
        assert_eq!(code, 0, "{err}");
        let v = testbed::json::parse(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        let regs = v.get("registrations").and_then(|r| r.as_array());
        regs.expect("registrations").to_vec()
    }

    /// Runs `gcb-broker query` against this broker: (exit code, stdout, stderr).
    pub fn query(&self, json: bool) -> (i32, String, String) {
        let mut cmd = Command::new(BIN);
        cmd.args(["query", &self.addr.to_string()]);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.stdin(Stdio::null()).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    }
}

impl Drop for Broker {
    /// Kills the broker; prints its log if the test failed (or if
    /// BROKER_TEST_LOG is set), since the log says what the broker saw.
    fn drop(&mut self) {
        self.daemon.kill();
        if thread::panicking() || std::env::var_os("BROKER_TEST_LOG").is_some() {
            eprintln!("--- gcb-broker {} log ---", self.addr);
            for line in self.daemon.log() {
                eprintln!("{line}");
            }
        }
    }
}

/// A fake client's management socket.
pub struct Mgmt {
    pub sock: UdpSocket,
    pub broker: SocketAddrV4,
    next_id: u64,
    /// Broker commands that arrived while waiting for a reply.
    commands: VecDeque<(u64, Message)>,
}

impl Mgmt {
    pub fn new(broker: SocketAddrV4) -> Mgmt {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        Mgmt {
            sock,
            broker,
            next_id: 1000,
            commands: VecDeque::new(),
        }
    }

    pub fn addr(&self) -> SocketAddrV4 {
        match self.sock.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            other => panic!("{other}"),
        }
    }

    pub fn send_raw(&self, bytes: &[u8]) {
        self.sock.send_to(bytes, self.broker).unwrap();
    }

    /// Next datagram from the broker within `within`: (request id, message, bytes).
    pub fn recv(&self, within: Duration) -> Option<(u64, Message, Vec<u8>)> {
        let deadline = Instant::now() + within;
        let mut buf = vec![0u8; 65_536];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            self.sock
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            if let Ok((n, _)) = self.sock.recv_from(&mut buf) {
                let (h, m) = gcb::decode(&buf[..n]).expect("the broker speaks the protocol");
                return Some((h.request_id, m, buf[..n].to_vec()));
            }
        }
        None
    }

    /// Sends a request with id `id` and returns the reply's bytes and message.
    pub fn request_with_id(&mut self, msg: &Message, id: u64) -> (Vec<u8>, Message) {
        self.send_raw(&gcb::encode(msg, id).unwrap());
        let deadline = Instant::now() + WAIT;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Some((got, m, bytes)) = self.recv(left) else {
                break;
            };
            if !m.is_response() {
                self.commands.push_back((got, m));
            } else if got == id {
                return (bytes, m);
            }
        }
        panic!("no reply to {msg:?} within {WAIT:?}");
    }

    pub fn request(&mut self, msg: &Message) -> Message {
        self.next_id += 1;
        let id = self.next_id;
        self.request_with_id(msg, id).1
    }

    /// A command from the broker (ReverseConnect, RelayConnect), answered Ack.
    pub fn command(&mut self) -> Message {
        let (id, m) = self.take_command(WAIT);
        self.answer(id, &Message::Ack);
        m
    }

    /// The next command from the broker within `within`, not answered:
    /// (request id, command). Retransmissions come again.
    pub fn take_command(&mut self, within: Duration) -> (u64, Message) {
        if let Some(c) = self.commands.pop_front() {
            return c;
        }
        let deadline = Instant::now() + within;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.recv(left) {
                Some((id, m, _)) if !m.is_response() => return (id, m),
                Some(_) => {}
                None => break,
            }
        }
        panic!("no command from the broker within {within:?}");
    }

    /// Answers the broker's command `id` with `reply` (Ack or an Error).
    pub fn answer(&self, id: u64, reply: &Message) {
        self.sock
            .send_to(&gcb::encode(reply, id).unwrap(), self.broker)
            .unwrap();
    }

    /// Registers `local` reporting `mgmt_ip` as the management socket's own
    /// IP (127.0.0.1 makes the client public, anything else private).
    pub fn register(
        &mut self,
        local: &str,
        mgmt_ip: &str,
        realm: Option<&str>,
        desired: Option<u16>,
        heartbeat_secs: u16,
    ) -> Message {
        self.register_proto(Proto::Tcp, local, mgmt_ip, realm, desired, heartbeat_secs)
    }

    /// [`register`](Self::register) for either protocol.
    pub fn register_proto(
        &mut self,
        proto: Proto,
        local: &str,
        mgmt_ip: &str,
        realm: Option<&str>,
        desired: Option<u16>,
        heartbeat_secs: u16,
    ) -> Message {
        let mgmt_local = SocketAddrV4::new(mgmt_ip.parse().unwrap(), self.addr().port());
        self.request(&Message::Register {
            proto,
            local: a(local),
            realm: realm.map(str::to_string),
            desired_port: desired,
            port_required: false,
            mgmt: MgmtInfo::new(
                mgmt_local,
                std::process::id(),
                heartbeat_secs,
                "broker-test",
            ),
        })
    }

    pub fn register_ok(&mut self, local: &str, mgmt_ip: &str) -> SocketAddrV4 {
        match self.register(local, mgmt_ip, None, None, 10) {
            Message::RegisterOk {
                proxy,
                observed,
                udp_token,
            } => {
                assert_eq!((observed, udp_token), (self.addr(), None));
                proxy
            }
            other => panic!("register refused: {other:?}"),
        }
    }
}

/// Dials the rendezvous and says hello; returns the stream and the verdict.
pub fn rendezvous(via: SocketAddrV4, token: Token, role: Role) -> (TcpStream, StreamPeer) {
    let mut s = TcpStream::connect_timeout(&via.into(), WAIT).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(&StreamHello { token, role }.to_bytes())
        .unwrap();
    let mut buf = [0u8; StreamPeer::LEN];
    s.read_exact(&mut buf).unwrap();
    (s, StreamPeer::decode(&buf).unwrap())
}

/// The listener side of a relay: takes the RelayConnect, dials the
/// rendezvous, and returns the stream with the peer the broker named.
pub fn listener_side(m: &mut Mgmt, proxy: SocketAddrV4) -> (TcpStream, SocketAddrV4, SocketAddrV4) {
    let Message::RelayConnect {
        token,
        broker,
        peer,
        proxy: p,
    } = m.command()
    else {
        panic!("not a RelayConnect")
    };
    assert_eq!(p, proxy);
    let (s, verdict) = rendezvous(broker, token, Role::Listener);
    let StreamPeer::Paired { peer: paired } = verdict else {
        panic!("{verdict:?}")
    };
    (s, peer, paired)
}

/// `len` bytes of a pattern that shows misordering and loss.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
}

/// Writes `data` then half-closes, on a thread; reads to EOF meanwhile.
/// Returns what was read.
pub fn exchange(mut s: TcpStream, data: Vec<u8>) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = thread::spawn(move || {
        w.write_all(&data).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    writer.join().unwrap();
    got
}

pub fn local_v4(s: &TcpStream) -> SocketAddrV4 {
    match s.local_addr().unwrap() {
        std::net::SocketAddr::V4(a) => a,
        other => panic!("{other}"),
    }
}
