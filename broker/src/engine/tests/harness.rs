//! The test bed of the core: a fake [`Host`] that binds nothing, a clock,
//! clients at known places, and the effects the core queued, carried out
//! on plain data (datagrams decoded, sockets closed, streams given their
//! fate) with the checks a real loop could not make: nothing is closed
//! twice, no stream is handed back twice.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use proto::gcb::punch::{BrokerFrame, PunchHello, PunchReport};
use proto::gcb::{self, ErrorCode, Message, Role, StreamHello, Token};
use proto::{Endpoint, Proto};

use crate::config::Limits;
use crate::engine::{Effect, Engine, Host, Opening, RelayStart, SocketId, StreamId};
use crate::engine::{UdpSend, HEADROOM};
use crate::status::RelayView;
use crate::values::PortRange;

pub use super::clients::{config, limits, Proc};

pub fn a(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

/// The broker's address, as a client sees it.
pub const BROKER: &str = "203.0.113.10:65432";
pub const RANGE: PortRange = PortRange {
    lo: 20000,
    hi: 20099,
};

/// A machine that binds nothing: ports in `busy` are held by another
/// program, and with `broken` every bind fails as if out of descriptors.
#[derive(Default)]
pub struct FakeHost {
    pub open: BTreeMap<SocketId, (Opening, SocketAddrV4)>,
    next: usize,
    pub busy: HashSet<u16>,
    pub broken: bool,
    pub own: Vec<Ipv4Addr>,
    pub relays: Vec<RelayView>,
}

impl Host for FakeHost {
    fn open(&mut self, what: Opening, addr: SocketAddrV4) -> io::Result<SocketId> {
        if self.broken {
            return Err(io::Error::from_raw_os_error(libc::EMFILE));
        }
        if self.busy.contains(&addr.port()) {
            return Err(io::ErrorKind::AddrInUse.into());
        }
        let taken = |(w, at): &(Opening, SocketAddrV4)| {
            *at == addr
                && matches!((w, what), (Opening::Proxy(x), Opening::Proxy(y)) if x.proto == y.proto)
        };
        assert!(!self.open.values().any(taken), "{addr} bound twice");
        self.next += 1;
        let id = mio::Token(self.next);
        self.open.insert(id, (what, addr));
        Ok(id)
    }

    fn is_own_address(&self, ip: Ipv4Addr) -> bool {
        self.own.contains(&ip)
    }

    fn relays(&self) -> Vec<RelayView> {
        self.relays.clone()
    }
}

/// What became of a stream handed to the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Rejected(ErrorCode),
    /// A punch's side told `PunchVerdict::Rejected`.
    PunchRejected(ErrorCode),
    Aborted,
    Relayed,
    /// Closed quietly (a punch ended).
    HungUp,
}

/// The core, its fake host and clock, and what came out of it.
pub struct Bed {
    pub engine: Engine,
    pub host: FakeHost,
    pub now: Instant,
    /// Replies to requests, by (to, request id).
    pub replies: Vec<(SocketAddrV4, u64, Message)>,
    /// Commands to clients, retransmissions included: (to, id, command).
    pub commands: Vec<(SocketAddrV4, u64, Message)>,
    /// Datagrams sent sealed (with a secret), as they are.
    pub sealed: Vec<(SocketAddrV4, Vec<u8>)>,
    pub closed: Vec<SocketId>,
    pub fates: BTreeMap<StreamId, Fate>,
    pub relays: Vec<RelayStart>,
    /// Punch frames written, in order, and the streams being read.
    pub frames: Vec<(StreamId, BrokerFrame)>,
    pub watched: BTreeSet<StreamId>,
    /// Streams handed in so far.
    pub streams: u64,
    /// Whether the loop fails to start relays (no pipes).
    pub relay_fails: bool,
    next_id: u64,
}

impl Bed {
    pub fn new() -> Bed {
        Bed::with(limits())
    }

    pub fn with(limits: Limits) -> Bed {
        let now = Instant::now();
        let command = BROKER.parse().unwrap();
        Bed {
            engine: Engine::new(
                config(limits),
                None,
                "203.0.113.10".parse().unwrap(),
                command,
                now,
            ),
            host: FakeHost::default(),
            now,
            replies: Vec::new(),
            commands: Vec::new(),
            sealed: Vec::new(),
            closed: Vec::new(),
            fates: BTreeMap::new(),
            relays: Vec::new(),
            frames: Vec::new(),
            watched: BTreeSet::new(),
            streams: 0,
            relay_fails: false,
            next_id: 1,
        }
    }

    /// Carries out what the core queued.
    pub fn apply(&mut self) {
        for effect in self.engine.take_effects() {
            match effect {
                Effect::Send { to, bytes } => match gcb::decode(&bytes) {
                    Ok((h, msg)) => {
                        let list = match msg.is_response() {
                            true => &mut self.replies,
                            false => &mut self.commands,
                        };
                        list.push((to, h.request_id, msg));
                    }
                    Err(_) => self.sealed.push((to, bytes)),
                },
                Effect::Close(id) => {
                    assert!(
                        self.host.open.remove(&id).is_some(),
                        "{id:?} closed but not open"
                    );
                    self.closed.push(id);
                }
                Effect::Reject { stream, code } => self.fate(stream, Fate::Rejected(code)),
                Effect::Abort(stream) => self.fate(stream, Fate::Aborted),
                Effect::RejectPunch { stream, code } => {
                    self.fate(stream, Fate::PunchRejected(code))
                }
                Effect::Hangup(stream) => self.fate(stream, Fate::HungUp),
                Effect::PunchSend { stream, frame } => {
                    assert!(!self.fates.contains_key(&stream), "{stream:?} written after its fate");
                    self.frames.push((stream, frame));
                }
                Effect::PunchWatch(stream) => {
                    assert!(self.watched.insert(stream), "{stream:?} watched twice");
                }
                Effect::PunchUnwatch(stream) => {
                    self.watched.remove(&stream);
                }
                Effect::Relay(start) => {
                    self.fate(start.connector.stream, Fate::Relayed);
                    self.fate(start.listener.stream, Fate::Relayed);
                    self.relays.push(start);
                    match self.relay_fails {
                        false => self.engine.relay_started(),
                        true => self.engine.relay_ended([0, 0]),
                    }
                }
            }
        }
    }

    fn fate(&mut self, stream: StreamId, fate: Fate) {
        self.watched.remove(&stream);
        assert!(
            stream.0 >= 1 && stream.0 <= self.streams,
            "{stream:?} never handed in"
        );
        let before = self.fates.insert(stream, fate);
        assert_eq!(before, None, "{stream:?} handed back twice");
    }

    /// Sends `msg` to the broker from `from` as a datagram; returns its
    /// reply, if it got one.
    pub fn send(&mut self, from: SocketAddrV4, msg: &Message) -> Option<Message> {
        self.next_id += 1;
        let id = self.next_id;
        let bytes = gcb::encode(msg, id).unwrap();
        self.datagram(from, id, &bytes)
    }

    /// The datagram `bytes` (request `id`) from `from`; its reply, if any.
    pub fn datagram(&mut self, from: SocketAddrV4, id: u64, bytes: &[u8]) -> Option<Message> {
        let before = self.replies.len();
        let now = self.now;
        self.engine
            .on_command_datagram(bytes, from.into(), now, &mut self.host);
        self.apply();
        self.replies[before..]
            .iter()
            .rev()
            .find(|(to, rid, _)| *to == from && *rid == id)
            .map(|(_, _, m)| m.clone())
    }

    /// Like [`send`](Self::send), for a request that must be answered.
    pub fn ask(&mut self, from: SocketAddrV4, msg: Message) -> Message {
        self.send(from, &msg)
            .unwrap_or_else(|| panic!("no reply to {msg:?}"))
    }

    /// Answers command `id` from `from` with `msg` (`Ack`, an error).
    pub fn answer(&mut self, from: SocketAddrV4, id: u64, msg: Message) {
        let bytes = gcb::encode(&msg, id).unwrap();
        self.datagram(from, id, &bytes);
    }

    /// Registers `port` of `p` and returns the proxy address.
    pub fn register(&mut self, p: Proc, proto: Proto, port: u16) -> SocketAddrV4 {
        match self.ask(p.mgmt, p.register(proto, port)) {
            Message::RegisterOk { proxy, .. } => proxy,
            other => panic!("register refused: {other:?}"),
        }
    }

    pub fn heartbeat(&mut self, p: Proc, held: &[Endpoint]) -> Message {
        self.ask(
            p.mgmt,
            Message::Heartbeat {
                held: held.to_vec(),
            },
        )
    }

    /// The last command sent to `to`, with its id.
    pub fn last_command(&self, to: SocketAddrV4) -> Option<(u64, Message)> {
        self.commands
            .iter()
            .rev()
            .find(|(at, ..)| *at == to)
            .map(|(_, id, m)| (*id, m.clone()))
    }

    /// A connection from `addr` says hello with `token` in `role`.
    pub fn hello(&mut self, token: Token, role: Role, addr: SocketAddrV4) -> StreamId {
        let stream = self.new_stream();
        let now = self.now;
        self.engine
            .on_hello(StreamHello { token, role }, stream, addr, now);
        self.apply();
        stream
    }

    /// A punch's side at `addr` says `PunchHello` with `token` in `role`,
    /// its socket's own address `local`; its round trip `rtt_ms`.
    pub fn punch_hello(
        &mut self,
        token: Token,
        role: Role,
        addr: SocketAddrV4,
        local: SocketAddrV4,
        rtt_ms: u64,
    ) -> StreamId {
        let hello = PunchHello::new(token, role, local);
        self.punch_hello_measured(hello, addr, Some(Duration::from_millis(rtt_ms)))
    }

    /// A rendezvous connection from `addr` says `hello`; the round trip the
    /// loop read, if any (none: the hello came in its connection's SYN).
    pub fn punch_hello_measured(
        &mut self,
        hello: PunchHello,
        addr: SocketAddrV4,
        rtt: Option<Duration>,
    ) -> StreamId {
        let stream = self.new_stream();
        let now = self.now;
        self.engine.on_punch_hello(hello, stream, addr, rtt, now);
        self.apply();
        stream
    }

    /// A watched punch connection reports, its round trip measured by then.
    pub fn report_measured(&mut self, stream: StreamId, report: PunchReport, rtt: Duration) {
        assert!(self.watched.remove(&stream), "{stream:?} reports unwatched");
        let now = self.now;
        self.engine.on_punch_report(stream, report, Some(rtt), now);
        self.apply();
    }

    /// A watched punch connection reports.
    pub fn report(&mut self, stream: StreamId, report: PunchReport) {
        assert!(self.watched.remove(&stream), "{stream:?} reports unwatched");
        let now = self.now;
        self.engine.on_punch_report(stream, report, None, now);
        self.apply();
    }

    /// A watched punch connection ends.
    pub fn gone(&mut self, stream: StreamId) {
        assert!(self.watched.remove(&stream), "{stream:?} read unwatched");
        let now = self.now;
        self.engine.on_punch_gone(stream, now);
        self.apply();
    }

    /// The punch frames written on `stream`.
    pub fn frames_to(&self, stream: StreamId) -> Vec<BrokerFrame> {
        self.frames
            .iter()
            .filter(|(s, _)| *s == stream)
            .map(|(_, f)| *f)
            .collect()
    }

    /// A regular connector at `addr` dials the proxy listener `proxy`.
    pub fn regular(&mut self, proxy: SocketAddrV4, addr: SocketAddrV4) -> StreamId {
        let stream = self.new_stream();
        let now = self.now;
        self.engine
            .on_regular(Endpoint::new(Proto::Tcp, proxy), stream, addr, now);
        self.apply();
        stream
    }

    fn new_stream(&mut self) -> StreamId {
        self.streams += 1;
        StreamId(self.streams)
    }

    /// Lets `d` pass as the loop would: the core's deadlines, one by one.
    pub fn advance(&mut self, d: Duration) {
        let until = self.now + d;
        for _ in 0..100_000 {
            match self.engine.next_deadline() {
                Some(at) if at <= until => {
                    self.now = self.now.max(at);
                    self.engine.on_deadlines(self.now);
                    self.apply();
                }
                _ => break,
            }
        }
        self.now = until;
        self.engine.on_deadlines(until);
        self.apply();
    }

    /// The counter `name`.
    pub fn counter(&self, name: &str) -> u64 {
        let fields = self.engine.counter_fields();
        let found = fields.iter().find(|(k, _)| *k == name);
        found.unwrap_or_else(|| panic!("no counter {name}")).1
    }

    /// The sockets open now, by address.
    pub fn open_at(&self, addr: SocketAddrV4) -> Vec<Opening> {
        self.host
            .open
            .values()
            .filter(|(_, at)| *at == addr)
            .map(|(w, _)| *w)
            .collect()
    }

    /// The socket of the registration at `proxy`.
    pub fn proxy_socket(&self, proto: Proto, proxy: SocketAddrV4) -> SocketId {
        let rec = self.engine.registry.get(&Endpoint::new(proto, proxy));
        rec.expect("registered").token
    }

    /// A datagram `payload` from `from` at the proxy UDP socket of `proxy`:
    /// what the loop is to send, and the buffer it sends from.
    pub fn udp_in(
        &mut self,
        proxy: SocketAddrV4,
        from: SocketAddrV4,
        payload: &[u8],
    ) -> (UdpSend, Vec<u8>) {
        let socket = self.proxy_socket(Proto::Udp, proxy);
        let mut buf = vec![0; HEADROOM + payload.len()];
        buf[HEADROOM..].copy_from_slice(payload);
        let now = self.now;
        let send = self
            .engine
            .on_udp_datagram(socket, proxy, from, &mut buf, payload.len(), now);
        self.apply();
        (send, buf)
    }

    /// A datagram `payload` from `from` at the channel socket `channel`.
    pub fn channel_in(
        &mut self,
        channel: SocketAddrV4,
        from: SocketAddrV4,
        payload: &[u8],
    ) -> (UdpSend, Vec<u8>) {
        let mut buf = vec![0; HEADROOM + payload.len()];
        buf[HEADROOM..].copy_from_slice(payload);
        let now = self.now;
        let send = self
            .engine
            .on_channel_datagram(channel, from, &buf, payload.len(), now);
        self.apply();
        (send, buf)
    }
}

/// The bytes a `UdpSend::Relay` sends out of `buf`, and where to.
pub fn relayed(send: &UdpSend, buf: &[u8]) -> Option<(SocketAddrV4, Vec<u8>)> {
    match send {
        UdpSend::Relay { range, to, .. } => Some((*to, buf[range.clone()].to_vec())),
        _ => None,
    }
}
