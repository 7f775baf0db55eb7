//! A scripted GCB broker for the shim's own end-to-end tests: just enough of the
//! broker side of the protocol (proto crate) to drive every TCP path of the
//! client, with the decision table of docs/design.md ("Network situation").
//! It is not `gcb-broker`: it has no limits, no security and one thread per
//! connection, and it keeps a log of what it did so tests can check which
//! path a connection took.
//!
//! It runs inside the test process, on threads that first join the test bed's
//! broker namespace (`setns` is per thread for network namespaces; sockets stay in
//! the namespace they were made in).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use proto::gcb::{self, Decision, ErrorCode, Frame, Message, Role, StreamHello, StreamPeer, Token};
use proto::Endpoint;

const PORT: u16 = gcb::COMMAND_PORT;

struct Reg {
    local: SocketAddrV4,
    /// Every process holding the socket registers from its own management
    /// socket and joins; commands go to the first still here.
    holders: Vec<SocketAddrV4>,
    public: bool,
    realm: String,
}

/// One side of a brokered connection waiting for the other.
struct Half {
    stream: TcpStream,
    /// Send `StreamPeer` to this side (rendezvous halves; not the proxy side).
    greet: bool,
    addr: SocketAddrV4,
}

struct Shared {
    ip: Ipv4Addr,
    cmd: UdpSocket,
    regs: Mutex<HashMap<SocketAddrV4, Reg>>,
    waiting: Mutex<HashMap<(u64, bool), Half>>,
    acked: Mutex<Vec<u64>>,
    next: AtomicU64,
    stop: AtomicBool,
    log: Mutex<Vec<String>>,
    /// Forget every registration on the next heartbeat (a broker restart).
    amnesia: AtomicBool,
}

pub struct MockBroker {
    shared: Arc<Shared>,
}

fn enter_netns(netns: &str) {
    let path = std::ffi::CString::new(format!("/var/run/netns/{netns}")).unwrap();
    // SAFETY: plain syscalls on a path we own.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        assert!(fd >= 0, "open {netns}");
        assert_eq!(libc::setns(fd, libc::CLONE_NEWNET), 0, "setns {netns}");
        libc::close(fd);
    }
}

fn v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => panic!("IPv6 in the test bed"),
    }
}

impl MockBroker {
    /// Starts the broker on `ip` inside namespace `netns`.
    pub fn start(netns: &str, ip: Ipv4Addr) -> MockBroker {
        let netns = netns.to_string();
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            enter_netns(&netns);
            let cmd = UdpSocket::bind((ip, PORT)).expect("mock broker command port");
            cmd.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
            let rv = TcpListener::bind((ip, PORT)).expect("mock broker rendezvous");
            let shared = Arc::new(Shared {
                ip,
                cmd,
                regs: Mutex::default(),
                waiting: Mutex::default(),
                acked: Mutex::default(),
                next: AtomicU64::new(1),
                stop: AtomicBool::new(false),
                log: Mutex::default(),
                amnesia: AtomicBool::new(false),
            });
            let s = shared.clone();
            thread::spawn(move || rendezvous_loop(s, rv));
            tx.send(shared.clone()).unwrap();
            command_loop(shared);
        });
        MockBroker { shared: rx.recv_timeout(Duration::from_secs(5)).expect("mock broker started") }
    }

    pub fn log(&self) -> Vec<String> {
        self.shared.log.lock().unwrap().clone()
    }

    /// Lines of the log starting with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.log().iter().filter(|l| l.starts_with(prefix)).count()
    }

    /// Whether `proxy` is registered, and how many processes hold it.
    pub fn holders(&self, proxy: &str) -> usize {
        let proxy: SocketAddrV4 = proxy.parse().expect("a proxy address");
        self.shared.regs.lock().unwrap().get(&proxy).map_or(0, |r| r.holders.len())
    }

    /// Behave as if restarted: every registration is forgotten (proxy sockets stay
    /// bound, so a re-registration can get its old port back).
    pub fn forget_registrations(&self) {
        self.shared.amnesia.store(true, Ordering::Relaxed);
    }
}

impl Drop for MockBroker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

fn note(s: &Shared, line: String) {
    s.log.lock().unwrap().push(line);
}

fn reply(s: &Shared, to: SocketAddr, id: u64, msg: &Message) {
    let _ = s.cmd.send_to(&gcb::encode(msg, id).unwrap(), to);
}

fn command_loop(s: Arc<Shared>) {
    let mut buf = [0u8; 2048];
    let mut proxies: HashMap<u16, ()> = HashMap::new();
    let mut next_port = 20000;
    while !s.stop.load(Ordering::Relaxed) {
        let Ok((n, from)) = s.cmd.recv_from(&mut buf) else { continue };
        let Ok((h, msg)) = gcb::decode(&buf[..n]) else { continue };
        let src = v4(from);
        match msg {
            Message::Register { local, realm, desired_port, mgmt, .. } => {
                // The same socket from the same public IP: another holder joins.
                let existing = s.regs.lock().unwrap().iter().find(|(_, r)| r.local == local && r.holders.iter().any(|h| h.ip() == src.ip())).map(|(p, _)| *p);
                let proxy = match existing {
                    Some(p) => p,
                    None => {
                        let port = match desired_port {
                            Some(p) if !s.regs.lock().unwrap().contains_key(&SocketAddrV4::new(s.ip, p)) => p,
                            _ => {
                                next_port += 1;
                                next_port
                            }
                        };
                        let proxy = SocketAddrV4::new(s.ip, port);
                        if proxies.insert(port, ()).is_none() {
                            let l = TcpListener::bind(proxy).expect("proxy socket");
                            let s2 = s.clone();
                            thread::spawn(move || proxy_loop(s2, l, proxy));
                        }
                        proxy
                    }
                };
                let public = *mgmt.mgmt_local.ip() == *src.ip();
                let realm = realm.unwrap_or_else(|| if public { String::new() } else { src.ip().to_string() });
                let mut regs = s.regs.lock().unwrap();
                let r = regs.entry(proxy).or_insert_with(|| Reg { local, holders: Vec::new(), public, realm });
                if !r.holders.contains(&src) {
                    r.holders.push(src);
                }
                drop(regs);
                note(&s, format!("register {local} as {proxy} from {src} desired {desired_port:?}"));
                reply(&s, from, h.request_id, &Message::RegisterOk { proxy, observed: src, udp_token: None });
            }
            Message::Heartbeat { held } => {
                if s.amnesia.swap(false, Ordering::Relaxed) {
                    s.regs.lock().unwrap().clear();
                }
                let regs = s.regs.lock().unwrap();
                let unknown: Vec<Endpoint> = held.into_iter().filter(|e| !regs.contains_key(&e.addr)).collect();
                drop(regs);
                note(&s, format!("heartbeat from {src} unknown {}", unknown.len()));
                let r = if unknown.is_empty() { Message::HeartbeatAck } else { Message::ReregisterRequest { unknown } };
                reply(&s, from, h.request_id, &r);
            }
            Message::Unregister { proxy } => {
                let mut regs = s.regs.lock().unwrap();
                if let Some(r) = regs.get_mut(&proxy.addr) {
                    r.holders.retain(|h| *h != src);
                    if r.holders.is_empty() {
                        regs.remove(&proxy.addr);
                    }
                }
                drop(regs);
                note(&s, format!("unregister {} from {src}", proxy.addr));
                reply(&s, from, h.request_id, &Message::Ack);
            }
            Message::Connect { target, connector, realm, .. } => {
                let d = decide(&s, src, target, connector, realm);
                note(&s, format!("connect {target} from {src}: {}", kind(&d)));
                reply(&s, from, h.request_id, &Message::ConnectDecision(d));
            }
            Message::Ack | Message::Error { .. } => s.acked.lock().unwrap().push(h.request_id),
            _ => {}
        }
    }
}

fn kind(d: &Decision) -> &'static str {
    match d {
        Decision::Direct { .. } => "direct",
        Decision::SameRealm { .. } => "same-realm",
        Decision::Reversal { .. } => "reversal",
        Decision::Relay { .. } => "relay",
        Decision::NotRegistered => "not-registered",
        Decision::PunchTcp { .. } | Decision::PunchUdp { .. } => "punch",
    }
}

fn decide(s: &Arc<Shared>, src: SocketAddrV4, target: SocketAddrV4, connector: SocketAddrV4, realm: Option<String>) -> Decision {
    let regs = s.regs.lock().unwrap();
    let Some(l) = regs.get(&target) else { return Decision::NotRegistered };
    let connector_public = connector.ip() == src.ip();
    let c_realm = realm.unwrap_or_else(|| if connector_public { String::new() } else { src.ip().to_string() });
    let token = Token(s.next.fetch_add(1, Ordering::Relaxed) * 7919);
    let (mgmt, local) = (l.holders[0], l.local);
    if l.public {
        return Decision::Direct { addr: l.local };
    }
    if !l.realm.is_empty() && c_realm == l.realm {
        return Decision::SameRealm { addr: local };
    }
    drop(regs);
    let rv = SocketAddrV4::new(s.ip, PORT);
    if connector_public {
        command(s.clone(), mgmt, Message::ReverseConnect { token, connector, peer: connector, proxy: target });
        Decision::Reversal { token }
    } else {
        command(s.clone(), mgmt, Message::RelayConnect { token, broker: rv, peer: src, proxy: target });
        Decision::Relay { via: rv, token }
    }
}

/// Sends a command to a listener, retransmitting until acknowledged.
fn command(s: Arc<Shared>, to: SocketAddrV4, msg: Message) {
    let id = 1_000_000 + s.next.fetch_add(1, Ordering::Relaxed);
    note(&s, format!("command {:?} to {to}", msg.kind()));
    thread::spawn(move || {
        let bytes = gcb::encode(&msg, id).unwrap();
        for _ in 0..10 {
            let _ = s.cmd.send_to(&bytes, to);
            thread::sleep(Duration::from_millis(200));
            if s.acked.lock().unwrap().contains(&id) {
                return;
            }
        }
        note(&s, format!("command {id} to {to} not acknowledged"));
    });
}

fn proxy_loop(s: Arc<Shared>, l: TcpListener, proxy: SocketAddrV4) {
    l.set_nonblocking(true).unwrap();
    while !s.stop.load(Ordering::Relaxed) {
        match l.accept() {
            Ok((c, from)) => {
                c.set_nonblocking(false).unwrap();
                let from = v4(from);
                let mgmt = s.regs.lock().unwrap().get(&proxy).map(|r| r.holders[0]);
                let Some(mgmt) = mgmt else { continue };
                let token = Token(s.next.fetch_add(1, Ordering::Relaxed) * 104_729);
                note(&s, format!("proxy {proxy} accepted {from}"));
                arrive(&s, token, false, Half { stream: c, greet: false, addr: from });
                command(s.clone(), mgmt, Message::RelayConnect { token, broker: SocketAddrV4::new(s.ip, PORT), peer: from, proxy });
            }
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn rendezvous_loop(s: Arc<Shared>, l: TcpListener) {
    l.set_nonblocking(true).unwrap();
    while !s.stop.load(Ordering::Relaxed) {
        match l.accept() {
            Ok((mut c, from)) => {
                let s = s.clone();
                thread::spawn(move || {
                    c.set_nonblocking(false).unwrap();
                    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let mut hello = [0u8; StreamHello::LEN];
                    if c.read_exact(&mut hello).is_err() {
                        return;
                    }
                    c.set_read_timeout(None).unwrap();
                    let Ok(h) = StreamHello::decode(&hello) else { return };
                    note(&s, format!("rendezvous {:?} token {}", h.role, h.token));
                    arrive(&s, h.token, h.role == Role::Listener, Half { stream: c, greet: true, addr: v4(from) });
                });
            }
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// One half of pair `token` arrived; when both have, greet and relay.
fn arrive(s: &Arc<Shared>, token: Token, listener_side: bool, half: Half) {
    let other = {
        let mut w = s.waiting.lock().unwrap();
        match w.remove(&(token.0, !listener_side)) {
            Some(o) => o,
            None => {
                w.insert((token.0, listener_side), half);
                // Unpaired halves are rejected after a while (longer than the
                // shim waits for a pairing, so the shim's bound is what is tested).
                let s = s.clone();
                thread::spawn(move || {
                    thread::sleep(Duration::from_secs(60));
                    if let Some(mut h) = s.waiting.lock().unwrap().remove(&(token.0, listener_side)) {
                        if h.greet {
                            let _ = h.stream.write_all(&StreamPeer::Rejected { code: ErrorCode::UnknownToken }.to_bytes());
                        }
                    }
                });
                return;
            }
        }
    };
    let (mut l, mut c) = if listener_side { (half, other) } else { (other, half) };
    let proxy = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
    if l.greet {
        let _ = l.stream.write_all(&StreamPeer::Paired { peer: c.addr }.to_bytes());
    }
    if c.greet {
        let _ = c.stream.write_all(&StreamPeer::Paired { peer: proxy }.to_bytes());
    }
    note(s, format!("paired token {} listener {} connector {}", token, l.addr, c.addr));
    relay(l.stream, c.stream);
}

fn relay(a: TcpStream, b: TcpStream) {
    let pump = |mut from: TcpStream, mut to: TcpStream| {
        thread::spawn(move || {
            let mut buf = [0u8; 16384];
            let deadline = Instant::now() + Duration::from_secs(120);
            while Instant::now() < deadline {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = to.shutdown(Shutdown::Write);
        });
    };
    pump(a.try_clone().unwrap(), b.try_clone().unwrap());
    pump(b, a);
}
