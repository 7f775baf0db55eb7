//! dpfd as a standard port-mapping server: NAT-PMP (RFC 6886) and PCP MAP
//! (RFC 6887) on UDP port `--pcp-port` (5351) of the `--listen` address,
//! beside dpfd's own protocol, for clients that know nothing of DPF
//! (`natpmpc`, libnatpmp, libp2p, Tailscale, the shim with `pcp://`).
//!
//! The socket is one more source in the event loop. Filters, in order,
//! each counted: a source outside the private networks is dropped (only
//! the private side may open the NAT); past the per-source rate limit,
//! shared with the command port, dropped; then the first byte routes the
//! datagram to NAT-PMP (version 0) or PCP (anything else, which answers
//! UNSUPP_VERSION for what it does not speak). The answers are queued in
//! the engine (`handler.rs`) and sent after the turn's group commit.
//!
//! Leased mappings end at their lease unless renewed: a timer fires at the
//! earliest expiry and the engine deletes what has ended, in the delete
//! order. When recovery could not keep the epoch (see `sync.rs`), dpfd
//! announces the new one once at startup, as a PCP ANNOUNCE and a NAT-PMP
//! public-address response to 224.0.0.1:5350, so listening clients map
//! again at once; those that do not listen notice at their next renewal.
//!
//! With `--secret-file` these protocols cannot be authenticated, so every
//! request is refused (NOT_AUTHORIZED) unless `--allow-unauthenticated-pcp`
//! says otherwise (see the threat model in the README).

pub mod handler;

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use daemon_kit::command_port::{self, CommandPort};
use mio::net::UdpSocket;
use mio::{Interest, Token};
use proto::drops::DecodeDrops;
use proto::{natpmp, pcp, DecodeError};
use serde_json::{json, Value};
use tracing::{debug, info};

use crate::daemon::{unix_now, Daemon, Timer};
use handler::Policy;

/// The standard socket's fixed token.
pub const STD: Token = Token(3);
/// Datagrams read per loop turn, as for the command port.
const BUDGET: usize = 1024;
/// Where restarts are announced (RFC 6887 §14.1.3, RFC 6886 §3.2.1).
const ANNOUNCE_TO: SocketAddrV4 =
    SocketAddrV4::new(Ipv4Addr::new(224, 0, 0, 1), natpmp::ANNOUNCE_PORT);

/// What happened on the standard socket since startup.
#[derive(Debug, Clone)]
pub struct Counters {
    pub received: u64,
    pub foreign: u64,
    pub rate_limited: u64,
    /// Dropped without an answer, by class.
    pub malformed: u64,
    pub malformed_by: DecodeDrops,
    pub pcp_map: u64,
    pub pcp_announce: u64,
    pub natpmp_map: u64,
    pub natpmp_address: u64,
    /// Answered with an error, by `pcp.CODE` or `natpmp.code`.
    pub refused: BTreeMap<String, u64>,
    pub receive_errors: u64,
    pub send_errors: u64,
    pub announcements: u64,
}

impl Default for Counters {
    fn default() -> Self {
        let mut refused = BTreeMap::new();
        for code in pcp::ResultCode::ALL.into_iter().skip(1) {
            refused.insert(format!("pcp.{}", code.name()), 0);
        }
        for code in 1..=5 {
            refused.insert(
                format!("natpmp.{}", natpmp::ResultCode::from_wire(code).name()),
                0,
            );
        }
        Counters {
            received: 0,
            foreign: 0,
            rate_limited: 0,
            malformed: 0,
            malformed_by: DecodeDrops::default(),
            pcp_map: 0,
            pcp_announce: 0,
            natpmp_map: 0,
            natpmp_address: 0,
            refused,
            receive_errors: 0,
            send_errors: 0,
            announcements: 0,
        }
    }
}

impl Counters {
    pub fn refuse(&mut self, name: String) {
        *self.refused.entry(name).or_insert(0) += 1;
    }

    pub fn malformed(&mut self, e: &DecodeError) {
        self.malformed += 1;
        self.malformed_by.count(e);
    }

    pub fn json(&self) -> Value {
        let refused: serde_json::Map<String, Value> = self
            .refused
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        let m = &self.malformed_by;
        json!({
            "received": self.received, "foreign": self.foreign, "rate_limited": self.rate_limited,
            "malformed": self.malformed,
            "malformed_by": { "truncated": m.truncated, "oversize": m.oversize, "invalid": m.invalid },
            "requests": {
                "pcp_map": self.pcp_map, "pcp_announce": self.pcp_announce,
                "natpmp_map": self.natpmp_map, "natpmp_address": self.natpmp_address,
            },
            "refused": refused,
            "receive_errors": self.receive_errors, "send_errors": self.send_errors,
            "announcements": self.announcements,
        })
    }
}

/// The bound socket.
pub struct StdSocket {
    pub socket: UdpSocket,
    pub addr: SocketAddr,
    /// Stopped at its budget with datagrams left.
    pub backlog: bool,
}

/// Binds `ip:port` and watches it; `port` 0 means the protocols are off.
pub fn bind(ip: IpAddr, port: u16, registry: &mio::Registry) -> Result<Option<StdSocket>, String> {
    if port == 0 {
        return Ok(None);
    }
    let addr = SocketAddr::new(ip, port);
    let mut socket = UdpSocket::bind(addr)
        .map_err(|e| format!("cannot bind the NAT-PMP/PCP port udp {addr}: {e}"))?;
    let addr = socket
        .local_addr()
        .map_err(|e| format!("NAT-PMP/PCP socket: {e}"))?;
    registry
        .register(&mut socket, STD, Interest::READABLE)
        .map_err(|e| format!("cannot watch the NAT-PMP/PCP socket: {e}"))?;
    Ok(Some(StdSocket {
        socket,
        addr,
        backlog: false,
    }))
}

/// The command-port drain, pointed at the standard socket.
struct Port<'a>(&'a mut Daemon);

impl CommandPort for Port<'_> {
    fn recv(&mut self) -> io::Result<(usize, SocketAddr)> {
        let d = &mut *self.0;
        match &d.std {
            Some(s) => s.socket.recv_from(&mut d.buf),
            None => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn on_datagram(&mut self, len: usize, from: SocketAddr) {
        self.0.on_std_datagram(len, from);
    }

    fn on_receive_error(&mut self, e: io::Error) {
        self.0.std_counters.receive_errors += 1;
        debug!("NAT-PMP/PCP port: receive error: {e}");
    }
}

impl Daemon {
    /// Drains the standard socket up to the budget.
    pub(crate) fn on_std(&mut self) {
        let backlog = command_port::drain(&mut Port(self), BUDGET);
        if let Some(s) = &mut self.std {
            s.backlog = backlog;
        }
    }

    pub(crate) fn std_policy(&self) -> Policy {
        Policy {
            min_lifetime: self.config.pcp_min_lifetime_s,
            max_lifetime: self.config.pcp_max_lifetime_s,
            allowed: self.secret.is_none() || self.config.allow_unauthenticated_pcp,
        }
    }

    fn on_std_datagram(&mut self, len: usize, from: SocketAddr) {
        let c = &mut self.std_counters;
        c.received += 1;
        let v4 = match from {
            SocketAddr::V4(a) => Some(a),
            SocketAddr::V6(a) => a
                .ip()
                .to_ipv4_mapped()
                .map(|ip| SocketAddrV4::new(ip, a.port())),
        };
        let private = self
            .config
            .private_nets
            .iter()
            .any(|n| n.contains(from.ip()));
        let Some(from4) = v4.filter(|_| private) else {
            c.foreign += 1;
            debug!("NAT-PMP/PCP port: dropped {len} bytes from {from}: not in a private network");
            return;
        };
        if !self.gate.admit(&from.ip(), Instant::now()) {
            self.std_counters.rate_limited += 1;
            return;
        }
        let policy = self.std_policy();
        let datagram = std::mem::take(&mut self.buf);
        let bytes = &datagram[..len];
        let now = unix_now();
        match bytes.first() {
            Some(&natpmp::VERSION) => {
                self.engine
                    .handle_natpmp(from4, bytes, &policy, &mut self.std_counters, now)
            }
            _ => self
                .engine
                .handle_pcp(from4, bytes, &policy, &mut self.std_counters, now),
        }
        self.buf = datagram;
    }

    /// Sends the answers of the turn's commit.
    pub(crate) fn send_std_replies(&mut self) {
        let replies = self.engine.take_std_replies();
        let Some(s) = &self.std else { return };
        for r in replies {
            if let Err(e) = s.socket.send_to(&r.bytes, r.to) {
                self.std_counters.send_errors += 1;
                debug!("NAT-PMP/PCP port: answer to {}: {e}", r.to);
            }
        }
    }

    /// Keeps one timer at the earliest lease expiry.
    pub(crate) fn schedule_expiry(&mut self) {
        let want = self.engine.table.next_expiry();
        if self.expiry.map(|(at, _)| at) == want {
            return;
        }
        if let Some((_, id)) = self.expiry.take() {
            self.timers.cancel(id);
        }
        if let Some(at) = want {
            let wait = Duration::from_secs(at.saturating_sub(unix_now()));
            let id = self.timers.schedule(Instant::now() + wait, Timer::Expiry);
            self.expiry = Some((at, id));
        }
    }

    pub(crate) fn on_expiry(&mut self) {
        self.expiry = None;
        let n = self.engine.expire(unix_now());
        debug!("expiry: {n} leased mappings ended");
    }

    /// Tells clients listening on 224.0.0.1:5350 that the epoch started
    /// again (once; best effort: a gateway without a multicast route logs
    /// it and goes on).
    pub(crate) fn announce(&mut self) {
        let Some(s) = &self.std else { return };
        let epoch = self.engine.epoch(unix_now());
        let pcp = pcp::encode_response(&pcp::Response {
            version: pcp::VERSION,
            opcode: pcp::OP_ANNOUNCE,
            result: pcp::ResultCode::Success,
            lifetime: 0,
            epoch,
            map: None,
            options: Vec::new(),
        });
        let natpmp = natpmp::encode_response(&natpmp::Response {
            opcode: natpmp::OP_PUBLIC_ADDRESS,
            result: natpmp::ResultCode::Success,
            epoch,
            body: natpmp::Body::PublicAddress(self.engine.table.public_ips()[0]),
        });
        for bytes in [pcp, natpmp] {
            match s.socket.send_to(&bytes, ANNOUNCE_TO.into()) {
                Ok(_) => self.std_counters.announcements += 1,
                Err(e) => {
                    self.std_counters.send_errors += 1;
                    debug!("NAT-PMP/PCP: announcing the new epoch to {ANNOUNCE_TO}: {e}");
                }
            }
        }
        info!("NAT-PMP/PCP: a new epoch began; announced to {ANNOUNCE_TO}");
    }

    /// The status section of the standard protocols.
    pub(crate) fn std_status(&self) -> Value {
        let auth = match (self.secret.is_some(), self.config.allow_unauthenticated_pcp) {
            (false, _) => "none",
            (true, false) => "refused (--secret-file)",
            (true, true) => "allowed without authentication",
        };
        json!({
            "listen": self.std.as_ref().map(|s| s.addr.to_string()),
            "epoch_s": self.engine.epoch(unix_now()),
            "epoch_kept": self.recovery.epoch_kept,
            "lifetime_s": format!("{}-{}", self.config.pcp_min_lifetime_s, self.config.pcp_max_lifetime_s),
            "unauthenticated": auth,
        })
    }
}

#[cfg(test)]
mod tests;
