//! GCB command datagrams as plain data: what each message means, who sends it,
//! and what the receiver does. Encoding lives in `codec`.
//!
//! Roles: a *client* is a shim-loaded process; a *listener* is a client with a
//! registered TCP listening socket or UDP socket; a *connector* is a client
//! about to connect or send to a proxy address; the *broker* is `gcb-broker`,
//! reached over UDP at `proxy_ip:command_port` (default [`COMMAND_PORT`]).
//! Requests are retransmitted by the reliable layer (`rudp`) until a reply
//! with the same request id arrives; the receiver answers duplicates from its
//! reply cache, so handlers run once per request.

use super::features::Features;
use crate::common::{Endpoint, Proto};
use crate::wire::truncate_str;
use std::fmt;
use std::net::SocketAddrV4;

/// Historic GCB's command port: the broker's UDP commands and TCP rendezvous.
pub const COMMAND_PORT: u16 = 65432;
/// Longest realm name (`GCB_REALM`), in bytes.
pub const MAX_REALM_LEN: usize = 64;
/// Longest program name in [`MgmtInfo`], in bytes; clients truncate.
pub const MAX_PROGRAM_LEN: usize = 64;
/// Longest human-readable detail in an error reply, in bytes.
pub const MAX_DETAIL_LEN: usize = 200;
/// Most endpoints in one heartbeat or re-register request. 128 × 7 bytes keeps
/// a heartbeat under 1 KiB, below any path MTU; a client holding more sends
/// several heartbeats.
pub const MAX_ENDPOINTS: usize = 128;
/// Most bytes of status text in one [`Message::StatusReply`]. 32 KiB keeps a
/// reply well inside one UDP datagram, and a status snapshot of a few MiB
/// within a few hundred pages.
pub const MAX_STATUS_CHUNK: usize = 32 * 1024;

/// An unguessable value the broker makes up to pair the two halves of a
/// brokered connection (reversal, relay, UDP hole). Random from the broker's
/// point of view; this crate only carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Token(pub u64);

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// What the broker needs to know about a registering client's management
/// socket, besides the address the request arrived from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MgmtInfo {
    /// The management UDP socket's own address as the client sees it
    /// (`getsockname` after connecting it to the broker, so never 0.0.0.0).
    /// The broker compares its IP with the request's source IP: equal means
    /// the client is public, different means it is behind NAT (docs/design.md,
    /// "Network situation").
    pub mgmt_local: SocketAddrV4,
    /// The client's process id, for the broker's logs.
    pub pid: u32,
    /// The client's heartbeat interval (`GCB_HEARTBEAT_S`), in seconds. The
    /// broker drops the registration after several intervals of silence.
    pub heartbeat_secs: u16,
    /// The client's program name, at most [`MAX_PROGRAM_LEN`] bytes, for logs.
    pub program: String,
    /// What the client's shim can do beyond the paper's protocol; the broker
    /// sends its holders only commands they understand.
    pub features: Features,
}

impl MgmtInfo {
    /// Builds the info, cutting `program` to [`MAX_PROGRAM_LEN`] bytes.
    pub fn new(mgmt_local: SocketAddrV4, pid: u32, heartbeat_secs: u16, program: &str) -> Self {
        let program = truncate_str(program, MAX_PROGRAM_LEN).to_owned();
        Self {
            mgmt_local,
            pid,
            heartbeat_secs,
            program,
            features: Features::NONE,
        }
    }
}

/// The broker's answer to [`Message::Connect`]: who dials whom (paper 4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// The listener is public: connect (or send) straight to `addr`, its real
    /// address.
    Direct { addr: SocketAddrV4 },
    /// Listener and connector share a realm: connect (or send) to the
    /// listener's local address `addr` inside the private network.
    SameRealm { addr: SocketAddrV4 },
    /// The listener is private, the connector public. TCP: the connector
    /// listens on the address it sent as `connector` and accepts a connection
    /// whose [`StreamHello`](crate::gcb::StreamHello) carries `token`. UDP: the
    /// connector waits for a `Dummy{token}` from the listener, answers
    /// `DummyAck{token}`, and from then on sends to the Dummy's source. The
    /// broker has sent the listener `ReverseConnect` or `MakeHole`.
    Reversal { token: Token },
    /// Both are private in different realms. TCP: dial `via` (the broker's
    /// rendezvous, same IP and port number as its command port), send
    /// `StreamHello{token, Connector}`, and treat the connection as
    /// established once `StreamPeer::Paired` arrives. UDP: send datagrams
    /// unchanged to `via`, the listener's proxy socket, like a non-GCB peer;
    /// `token` is zero and unused.
    Relay { via: SocketAddrV4, token: Token },
    /// Nothing is registered at the target: the connect fails (ECONNREFUSED),
    /// since a proxy address on a broker has no other listener behind it.
    NotRegistered,
    /// Both are private in different realms and both can punch (TCP;
    /// docs/hole-punching.md): dial the rendezvous `via` from a reusable
    /// socket, send `PunchHello{token, Connector, local}`, and follow the
    /// broker's `PunchGo` or `PunchVerdict`. Sent only to a connector whose
    /// `Connect` offered [`Features::PUNCH_TCP`].
    ///
    /// With `early` (only to a `Connect` that offered
    /// [`Features::PUNCH_EARLY`]) the broker took the rendezvous connection
    /// the connector opened beside its `Connect` as its side of the meeting:
    /// no new connection, no second hello (one not said yet is said with
    /// `token`); the go follows on it, and the connector uses its punched
    /// connection once the listener's proof checks, reporting `Punched`
    /// and closing the rendezvous connection without waiting for the
    /// verdict.
    PunchTcp { via: SocketAddrV4, token: Token, early: bool },
    /// The UDP counterpart: send to `via` (the listener's proxy socket) as for
    /// `Relay` from the first datagram, and meanwhile send `Dummy{token}` to
    /// `listener_at`, the listener socket's mapping as the broker saw it; a
    /// `Dummy` or `DummyAck` with `token` from `listener_at` opens the direct
    /// path. The listener was sent `PunchHole`. Sent only to a connector
    /// whose `Connect` offered [`Features::PUNCH_UDP`].
    PunchUdp { via: SocketAddrV4, token: Token, listener_at: SocketAddrV4 },
}

/// How the broker renders a status snapshot ([`Message::StatusRequest`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusFormat {
    /// Lines for a person to read.
    Text,
    /// One JSON object, for scripts.
    Json,
}

impl StatusFormat {
    pub const fn wire(self) -> u8 {
        match self {
            StatusFormat::Text => 0,
            StatusFormat::Json => 1,
        }
    }
}

/// Why a request failed. Unknown codes decode as [`ErrorCode::Other`] so an
/// older peer still sees a failure, just a less specific one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The request was well-formed but made no sense (e.g. a zero port).
    BadRequest,
    /// Authentication was required and missing or wrong.
    Unauthorized,
    /// The proxy address named is not registered (to this client).
    NotRegistered,
    /// The broker is at a limit: registrations, relays, or per-client quota.
    LimitReached,
    /// The desired proxy port is taken or outside the broker's range.
    PortUnavailable,
    /// The request's version is not spoken here; the detail names ours.
    VersionMismatch,
    /// A token was unknown or had expired.
    UnknownToken,
    /// The request asks for something this broker does not do (e.g. a
    /// configuration with UDP relaying switched off).
    Unsupported,
    /// The receiver failed for its own reasons (e.g. a socket call failed).
    Internal,
    /// Nobody answered in time: in `ConnectFailed` and a rendezvous
    /// `Rejected`, the listener stayed silent to the broker's command, so
    /// the connector fails with ETIMEDOUT (a refusal is ECONNREFUSED).
    Timeout,
    /// A code newer than this build.
    Other(u8),
}

impl ErrorCode {
    pub const fn wire(self) -> u8 {
        match self {
            ErrorCode::BadRequest => 1,
            ErrorCode::Unauthorized => 2,
            ErrorCode::NotRegistered => 3,
            ErrorCode::LimitReached => 4,
            ErrorCode::PortUnavailable => 5,
            ErrorCode::VersionMismatch => 6,
            ErrorCode::UnknownToken => 7,
            ErrorCode::Unsupported => 8,
            ErrorCode::Internal => 9,
            ErrorCode::Timeout => 10,
            ErrorCode::Other(c) => c,
        }
    }

    pub const fn from_wire(c: u8) -> Self {
        match c {
            1 => ErrorCode::BadRequest,
            2 => ErrorCode::Unauthorized,
            3 => ErrorCode::NotRegistered,
            4 => ErrorCode::LimitReached,
            5 => ErrorCode::PortUnavailable,
            6 => ErrorCode::VersionMismatch,
            7 => ErrorCode::UnknownToken,
            8 => ErrorCode::Unsupported,
            9 => ErrorCode::Internal,
            10 => ErrorCode::Timeout,
            c => ErrorCode::Other(c),
        }
    }
}

/// One GCB datagram body. Requests have the response flag clear in the
/// header; replies ([`Message::is_response`]) have it set.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Message {
    /// Client → broker, when the application listens on a TCP socket or binds
    /// a UDP socket (and again after `ReregisterRequest`). The broker opens a
    /// proxy socket of the same protocol, preferring `desired_port` (the port
    /// the client held before a broker restart), and answers `RegisterOk`, or
    /// `Error{PortUnavailable | LimitReached | ...}`. A repeated Register for
    /// the same `local` from the same client returns the same proxy address.
    Register {
        proto: Proto,
        /// The socket's local address; a socket bound to 0.0.0.0 reports the
        /// IP of `mgmt.mgmt_local`. Peers in the same realm dial this.
        local: SocketAddrV4,
        /// `GCB_REALM`, overriding the broker's guess (the public source IP).
        realm: Option<String>,
        desired_port: Option<u16>,
        /// With `desired_port`: that port or nothing. The application bound
        /// its socket to this proxy address itself (an address it advertised
        /// before a restart), so any other port would be a wrong identity; the
        /// broker answers `Error{PortUnavailable}` instead of picking another.
        /// Meaningless (and not encoded) without `desired_port`.
        port_required: bool,
        mgmt: MgmtInfo,
    },
    /// Broker → client, reply to `Register`.
    RegisterOk {
        /// The address the application now reports as its own.
        proxy: SocketAddrV4,
        /// The request's source as the broker saw it (the client's NAT
        /// mapping): the client's public IP, for its logs and realm.
        observed: SocketAddrV4,
        /// UDP only: the client sends `Dummy{token}` from the registered
        /// socket to `proxy` right away and with every heartbeat, so the
        /// broker learns (and NAT keeps) the path for relayed datagrams; the
        /// broker answers `DummyAck`. `None` for TCP.
        udp_token: Option<Token>,
    },
    /// Client → broker, when the registered socket is closed or made active.
    /// The broker closes the proxy socket and answers `Ack` (or
    /// `Error{NotRegistered}`, which the client may ignore).
    Unregister { proxy: Endpoint },
    /// Client → broker, every heartbeat interval: the proxy endpoints this
    /// client's management socket holds. Keeps the registrations and the
    /// client's NAT mapping alive, so asynchronous commands reach it.
    Heartbeat { held: Vec<Endpoint> },
    /// Broker → client, reply to `Heartbeat` when every endpoint is known.
    HeartbeatAck,
    /// Broker → client, reply to `Heartbeat` naming the endpoints the broker
    /// does not know (it restarted, or expired them). The client sends
    /// `Register` for each with `desired_port` set to its old port.
    ReregisterRequest { unknown: Vec<Endpoint> },
    /// Connector → the broker at `target`'s IP and the command port, before
    /// connecting or first sending to `target`. Answered by `ConnectDecision`
    /// or `Error`. Silence, ECONNREFUSED or a non-protocol reply mean `target`
    /// is not brokered: the connector dials it directly.
    Connect {
        proto: Proto,
        /// The proxy address the application asked for.
        target: SocketAddrV4,
        /// The connector socket's local address (bound to a concrete IP and
        /// port before asking). On `Reversal` a TCP connector listens on it.
        connector: SocketAddrV4,
        /// The connector's own advertised address, when its socket is itself
        /// registered (typical for UDP); the listener reports it as the peer.
        connector_id: Option<SocketAddrV4>,
        /// The connector's `GCB_REALM`, if set.
        realm: Option<String>,
        /// What the connector's shim can do beyond the paper's protocol.
        features: Features,
        /// The local port of the socket this request is sent from, so the
        /// broker can tell whether the connector's NAT kept it (0: not
        /// said). Sent with `features`.
        asked_from_port: u16,
    },
    /// Broker → connector, reply to `Connect`.
    ConnectDecision(Decision),
    /// Broker → listener (TCP reversal). The listener dials `connector`,
    /// sends `StreamHello{token, Listener}`, and queues the connection on the
    /// listening socket for `proxy` with `peer` as its peer address. Answered
    /// by `Ack`, or `Error{NotRegistered}` if the socket is gone.
    ReverseConnect {
        token: Token,
        connector: SocketAddrV4,
        peer: SocketAddrV4,
        proxy: SocketAddrV4,
    },
    /// Broker → listener (TCP relay, and any connection a non-GCB connector
    /// made to the proxy socket). The listener dials `broker`, sends
    /// `StreamHello{token, Listener}`, reads `StreamPeer`, and queues the
    /// connection on `proxy`'s listening socket with `peer` (the original
    /// connector) as peer. Answered by `Ack` or `Error`.
    RelayConnect {
        token: Token,
        broker: SocketAddrV4,
        peer: SocketAddrV4,
        proxy: SocketAddrV4,
    },
    /// Broker → listener (UDP reversal). From the UDP socket registered as
    /// `proxy`, the listener sends `Dummy{token}` to `target` until a
    /// `DummyAck{token}` arrives (bounded), and records `peer` ↔ the
    /// ack's source in its receiver list. Answered by `Ack` or `Error`.
    MakeHole {
        token: Token,
        target: SocketAddrV4,
        peer: SocketAddrV4,
        proxy: SocketAddrV4,
    },
    /// Broker → listener (TCP hole punching, docs/hole-punching.md). Like
    /// `RelayConnect`, but the listener dials `broker` from a reusable socket
    /// and sends `PunchHello{token, Listener, local}`; the broker then says
    /// `PunchGo` (punch, report, await the verdict) or `PunchVerdict` (relay
    /// at once). Either way the connection ends up queued on `proxy`'s
    /// listening socket with `peer` as its peer. Sent only to a holder whose
    /// `Register` offered [`Features::PUNCH_TCP`]. Answered by `Ack` or
    /// `Error`. With `standby` (the connector asked for
    /// [`Features::STANDBY`]) a punched connection is held hidden, not
    /// queued, until the connector's [`STANDBY_CLAIM`](super::punch::STANDBY_CLAIM)
    /// arrives on it; a relay verdict means both sides close it.
    PunchConnect {
        token: Token,
        broker: SocketAddrV4,
        peer: SocketAddrV4,
        proxy: SocketAddrV4,
        standby: bool,
    },
    /// Broker → listener (UDP hole punching). From the UDP socket registered
    /// as `proxy`, the listener sends `Dummy{token}` to `target` (the
    /// connector's mapping) with backoff, for a bound, while its replies to
    /// `peer` keep going through the relay; a `DummyAck{token}` or the
    /// connector's own `Dummy{token}` from `target` opens the direct path:
    /// from then on datagrams to `peer` go to `target`, and those from
    /// `target` are reported as from `peer`. Sent only to a holder whose
    /// `Register` offered [`Features::PUNCH_UDP`]. Answered by `Ack` or
    /// `Error`.
    PunchHole {
        token: Token,
        target: SocketAddrV4,
        peer: SocketAddrV4,
        proxy: SocketAddrV4,
    },
    /// Broker → connector, after a `ConnectDecision(Reversal{token})`: the
    /// listener will not dial (it refused `ReverseConnect`, or did not answer
    /// it within the broker's retry policy), so the connector stops waiting
    /// and fails its `connect`: `Timeout` when the listener stayed silent
    /// (ETIMEDOUT), its own code when it refused (`NotRegistered`,
    /// `LimitReached`: ECONNREFUSED). Only that connection fails; the
    /// registration lives or dies by its heartbeats. Sent to the address the `Connect` came
    /// from, which the connector keeps open while it waits, and answered by
    /// `Ack`. A connector that does not know this kind has closed that socket
    /// and simply times out, as before the kind existed.
    ConnectFailed { token: Token, code: ErrorCode },
    /// Client → broker, from any socket of the client: a registered UDP
    /// socket was `connect`ed to `peer`, a peer the broker relays for the
    /// registration `proxy` (it has a live relay rule there). With `open`,
    /// the broker opens a *channel*: a UDP socket of its own on another
    /// port, through which datagrams between `peer` and the client travel
    /// without a relay header, so the client's kernel delivers them to the
    /// connected socket (its remote address is the channel) and everything
    /// else from the proxy to the registration's other sockets. `udp_token`
    /// (from `RegisterOk`) proves the registration is the sender's. Answered
    /// by `UdpChannelOk`, or `Error{NotRegistered | UnknownToken |
    /// LimitReached}`. Without `open`, the channel for `peer` is closed
    /// (the socket was closed or disconnected); answered by `Ack`.
    UdpChannel {
        proxy: SocketAddrV4,
        peer: SocketAddrV4,
        udp_token: Token,
        open: bool,
    },
    /// Broker → client, reply to `UdpChannel{open}`. The client connects its
    /// socket to `channel` and sends `Dummy{token}` there at once and with
    /// every heartbeat: the broker learns the channel's data path from it
    /// (as for a registration) and closes a channel idle for its UDP rule
    /// idle time. Datagrams the client sends to `channel` go from the proxy
    /// to `peer`; `peer`'s datagrams to the proxy come from `channel`.
    UdpChannelOk { channel: SocketAddrV4, token: Token },
    /// Generic success reply to `Unregister`, `ReverseConnect`,
    /// `RelayConnect`, `MakeHole`, `PunchConnect`, `PunchHole`,
    /// `ConnectFailed` and a closing `UdpChannel`.
    Ack,
    /// Failure reply to any request. `detail` is at most [`MAX_DETAIL_LEN`]
    /// bytes, meant for one clear log or stderr line.
    Error { code: ErrorCode, detail: String },
    /// Sent on an application UDP socket, not the management socket, to open
    /// a NAT hole (paper 4.2): listener → connector after `MakeHole`, and
    /// listener → its own proxy address after `RegisterOk`; both sides of a
    /// UDP hole punch to each other's mapping, and the connector once to the
    /// listener's proxy when its punched path opened (which the broker
    /// counts). A broker channel and a punch's peer answer `DummyAck` with
    /// the same token; no receiver passes either to the application. Not retransmitted by `rudp`; the sender
    /// retries itself.
    Dummy { token: Token },
    /// Reply to `Dummy`, sent back to the Dummy's source address.
    DummyAck { token: Token },
    /// Operator tool → broker (`gcb-broker query`): one page of a status
    /// snapshot. `snapshot` 0 asks the broker to take a new snapshot, rendered
    /// in `format`, and returns page `page` of it (normally 0); later pages
    /// name the snapshot id from the first reply, so every page comes from
    /// the same moment. Answered by `StatusReply`, or `Error{Unauthorized}`
    /// (the broker answers only trusted sources), `Error{UnknownToken}` (the
    /// snapshot expired: start again) or `Error{BadRequest}` (no such page).
    StatusRequest {
        snapshot: u64,
        page: u16,
        format: StatusFormat,
    },
    /// Broker → operator tool, reply to `StatusRequest`: page `page` of
    /// `pages` (at least 1) of snapshot `snapshot`. The text of the snapshot
    /// is the concatenation of the chunks in page order; each chunk is at most
    /// [`MAX_STATUS_CHUNK`] bytes and ends on a character boundary.
    StatusReply {
        snapshot: u64,
        page: u16,
        pages: u16,
        chunk: String,
    },
}

impl Message {
    /// Whether this message is a reply (header response flag set).
    pub const fn is_response(&self) -> bool {
        matches!(
            self,
            Message::RegisterOk { .. }
                | Message::HeartbeatAck
                | Message::ReregisterRequest { .. }
                | Message::ConnectDecision(_)
                | Message::Ack
                | Message::Error { .. }
                | Message::DummyAck { .. }
                | Message::StatusReply { .. }
                | Message::UdpChannelOk { .. }
        )
    }

    /// An error reply; `detail` is cut to [`MAX_DETAIL_LEN`] bytes so the
    /// reply always encodes.
    pub fn error(code: ErrorCode, detail: &str) -> Self {
        let detail = truncate_str(detail, MAX_DETAIL_LEN).to_owned();
        Message::Error { code, detail }
    }
}
