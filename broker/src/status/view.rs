//! The status snapshot as data ([`View`]), taken at one moment by the core
//! (`engine::status`) and rendered as lines (`text`) or JSON (`json`).
//!
//! The types are the JSON document's shape: their serde names and field
//! order are what `gcb-broker query --json` prints, so a field renamed or
//! moved here changes what readers of that output see. Durations are
//! seconds with millisecond precision (`_s` keys), addresses strings.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use proto::Proto;
use serde::{Serialize, Serializer};

use crate::values::PortRange;

/// A duration as seconds (the `json` formatter writes three decimals).
fn secs<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// A value as its `Display` text.
fn shown<T: std::fmt::Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

#[derive(Debug, Clone, Serialize)]
pub struct RegView {
    #[serde(serialize_with = "shown")]
    pub proto: Proto,
    pub proxy: SocketAddrV4,
    pub local: SocketAddrV4,
    pub observed: SocketAddrV4,
    pub public: bool,
    /// The realm's name (`GCB_REALM`), or the client's public IP.
    pub realm: String,
    /// Whether the realm was named by the client rather than guessed.
    pub realm_named: bool,
    pub pid: u32,
    pub program: String,
    #[serde(rename = "age_s", serialize_with = "secs")]
    pub age: Duration,
    #[serde(rename = "last_heartbeat_s", serialize_with = "secs")]
    pub since_heartbeat: Duration,
    #[serde(rename = "heartbeat_s")]
    pub heartbeat_secs: u16,
    /// UDP: where relayed datagrams go (learned from `Dummy`), if known yet.
    pub data_path: Option<SocketAddrV4>,
    /// Every process holding the socket, the freshest first; `observed`,
    /// `pid`, `program` and the heartbeat fields above are the first one's.
    pub holders: Vec<HolderView>,
}

/// One process holding a registered socket.
#[derive(Debug, Clone, Serialize)]
pub struct HolderView {
    pub pid: u32,
    pub program: String,
    /// Its management socket as seen from here (the client's own idea of
    /// its address is not shown: it is a claim, never used).
    pub mgmt: SocketAddrV4,
    #[serde(rename = "heartbeat_s")]
    pub heartbeat_secs: u16,
    #[serde(rename = "last_heartbeat_s", serialize_with = "secs")]
    pub since_heartbeat: Duration,
    /// Since it joined.
    #[serde(rename = "age_s", serialize_with = "secs")]
    pub age: Duration,
}

/// One UDP relay rule: a peer allowed to talk to a UDP registration.
#[derive(Debug, Clone, Serialize)]
pub struct UdpRuleView {
    pub peer: SocketAddrV4,
    pub proxy: SocketAddrV4,
    #[serde(rename = "age_s", serialize_with = "secs")]
    pub age: Duration,
    #[serde(rename = "idle_s", serialize_with = "secs")]
    pub idle: Duration,
    pub datagrams_to_client: u64,
    pub bytes_to_client: u64,
    pub datagrams_to_peer: u64,
    pub bytes_to_peer: u64,
}

/// A protocol between a pair of realms that the hole-punching outcome cache
/// relays at once after a failed punch.
#[derive(Debug, Clone, Serialize)]
pub struct BlockedView {
    #[serde(serialize_with = "shown")]
    pub proto: Proto,
    /// The two realms' public IPs, smaller first.
    pub realms: [Ipv4Addr; 2],
    #[serde(rename = "expires_in_s", serialize_with = "secs")]
    pub expires_in: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct RelayView {
    pub id: u64,
    pub connector: SocketAddrV4,
    pub listener: SocketAddrV4,
    pub proxy: SocketAddrV4,
    pub bytes_to_listener: u64,
    pub bytes_to_connector: u64,
    #[serde(rename = "age_s", serialize_with = "secs")]
    pub age: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct PendingView {
    pub kind: &'static str,
    pub proxy: SocketAddrV4,
    pub peer: SocketAddrV4,
    #[serde(rename = "age_s", serialize_with = "secs")]
    pub age: Duration,
    #[serde(rename = "expires_in_s", serialize_with = "secs")]
    pub expires_in: Duration,
    pub connector_here: bool,
    pub listener_here: bool,
}

/// The limits a status shows.
#[derive(Debug, Clone, Serialize)]
pub struct LimitsView {
    pub max_registrations: u32,
    pub max_relays: u32,
    pub rate_limit: u32,
}

/// The broker itself: what the status says before its lists.
#[derive(Debug, Clone, Serialize)]
pub struct Head {
    pub version: &'static str,
    #[serde(rename = "uptime_s", serialize_with = "secs")]
    pub uptime: Duration,
    pub command: SocketAddr,
    pub rendezvous: SocketAddrV4,
    #[serde(serialize_with = "shown")]
    pub port_range: PortRange,
    pub free_ports: usize,
    pub quarantined_ports: usize,
    pub limits: LimitsView,
}

/// TCP bytes relayed since startup, running and closed relays.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Relayed {
    pub to_listener: u64,
    pub to_connector: u64,
}

/// Everything a status reply shows, taken at one moment.
#[derive(Debug, Clone)]
pub struct View {
    pub head: Head,
    pub registrations: Vec<RegView>,
    pub relays: Vec<RelayView>,
    pub pending: Vec<PendingView>,
    pub udp_rules: Vec<UdpRuleView>,
    pub punch_blocked: Vec<BlockedView>,
    pub bytes_relayed: Relayed,
    pub counters: Vec<(&'static str, u64)>,
}
