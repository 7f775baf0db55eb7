//! `dpfd status`: the daemon's side (a status socket in the event loop) and
//! the client's (connect, read one JSON document, print it).
//!
//! Transport: a Unix stream socket in the *abstract* namespace, named
//! `dpfd-status-PORT` after the command port. Chosen over a status request
//! on the UDP command port because
//! * only local processes can connect at all, and the daemon checks the
//!   caller's credentials (root, or dpfd's own user) with SO_PEERCRED, so
//!   the forwards of the private network are not shown to the network;
//! * a stream has no size limit: 100,000 forwards need no paging;
//! * abstract names belong to the network namespace, like the command port
//!   itself, so test beds and containers each see their own dpfd, and
//!   nothing is left on disk after `kill -9`;
//! * the wire protocol shared with the shim needs no change.
//!
//! The daemon writes the document as soon as it accepts, then closes; the
//! write is non-blocking and continues on writable events, so a slow
//! reader never stalls the loop. Text output is rendered by the client from
//! the same JSON, so `--json` and text always agree.

use std::io::{self, Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::SocketAddr as UnixAddr;
use std::time::Duration;

use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Token};
use nix::sys::socket::{getsockopt, sockopt};
use serde_json::{json, Value};
use tracing::{debug, warn};

use crate::config::DEFAULT_COMMAND_PORT;
use crate::daemon::{unix_now, Daemon, Dynamic};
use crate::handler::code_name;
use crate::values::parse_listen;
use proto::dpf::ErrorCode;
use proto::Proto;

/// The status socket's fixed token (below the slab's first dynamic token).
pub const STATUS: Token = Token(2);
/// How long the client waits for the whole document.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

fn socket_name(port: u16) -> String {
    format!("dpfd-status-{port}")
}

/// Binds the status socket for the dpfd on command port `port`.
pub fn listen(port: u16) -> Result<UnixListener, String> {
    let name = socket_name(port);
    let addr = UnixAddr::from_abstract_name(name.as_bytes())
        .map_err(|e| format!("status socket @{name}: {e}"))?;
    let std = std::os::unix::net::UnixListener::bind_addr(&addr)
        .map_err(|e| format!("status socket @{name}: {e}"))?;
    std.set_nonblocking(true)
        .map_err(|e| format!("status socket @{name}: {e}"))?;
    Ok(UnixListener::from_std(std))
}

/// A status document being written to one caller.
pub struct StatusConn {
    stream: UnixStream,
    data: Vec<u8>,
    sent: usize,
}

impl StatusConn {
    /// Writes what the socket takes; true when done (or failed).
    fn pump(&mut self) -> bool {
        while self.sent < self.data.len() {
            match self.stream.write(&self.data[self.sent..]) {
                Ok(0) => return true,
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
        true
    }
}

const REFUSAL_CODES: [ErrorCode; 9] = [
    ErrorCode::Refused,
    ErrorCode::NotLocal,
    ErrorCode::PortOutOfRange,
    ErrorCode::Quota,
    ErrorCode::Exists,
    ErrorCode::NotFound,
    ErrorCode::BadRequest,
    ErrorCode::Unauthorized,
    ErrorCode::VersionMismatch,
];

impl Daemon {
    pub(crate) fn on_status_accept(&mut self) {
        loop {
            let Some(listener) = &self.status_listener else {
                return;
            };
            let (stream, _) = match listener.accept() {
                Ok(conn) => conn,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!("status socket: accept: {e}");
                    return;
                }
            };
            let uid = getsockopt(&stream, sockopt::PeerCredentials)
                .map(|c| c.uid())
                .ok();
            let data = if uid.is_some_and(|u| u == 0 || u == nix::unistd::geteuid().as_raw()) {
                let mut d = self.status_json().to_string().into_bytes();
                d.push(b'\n');
                d
            } else {
                debug!("status socket: refused a caller with uid {uid:?}");
                b"{\"error\":\"permission denied: only root or dpfd's user may ask\"}\n".to_vec()
            };
            let mut conn = StatusConn {
                stream,
                data,
                sent: 0,
            };
            // Most documents fit the socket buffer and are done here.
            if conn.pump() {
                continue;
            }
            let token = self.dynamic.insert(Dynamic::Status(conn));
            let Some(Dynamic::Status(conn)) = self.dynamic.get_mut(token) else {
                unreachable!()
            };
            if self
                .poll
                .registry()
                .register(&mut conn.stream, token, Interest::WRITABLE)
                .is_err()
            {
                self.dynamic.remove(token);
            }
        }
    }

    pub(crate) fn on_status_writable(&mut self, token: Token) {
        let Some(Dynamic::Status(conn)) = self.dynamic.get_mut(token) else {
            return;
        };
        if conn.pump() {
            if let Some(Dynamic::Status(mut conn)) = self.dynamic.remove(token) {
                let _ = self.poll.registry().deregister(&mut conn.stream);
            }
        }
    }

    /// The whole status as one JSON document.
    pub(crate) fn status_json(&self) -> Value {
        let now = unix_now();
        let mut entries: Vec<_> = self.engine.table.entries().collect();
        entries.sort_by_key(|e| e.fwd.key());
        let forwards: Vec<Value> = entries
            .iter()
            .map(|e| {
                json!({
                    "proto": e.fwd.proto.to_string(),
                    "public": e.fwd.public.to_string(),
                    "local": e.fwd.local.to_string(),
                    "via": e.fwd.via_name(),
                    "mgmt_port": e.fwd.mgmt_port,
                    "age_s": now.saturating_sub(e.fwd.created),
                    "lifetime_s": e.fwd.lease.map(|l| l.expires.saturating_sub(now)),
                    "last_probe": e.probe.last.map(|r| r.name()),
                    "timeouts": e.probe.timeouts,
                })
            })
            .collect();
        let r = &self.recovery;
        let mut doc = json!({
            "dpfd": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "uptime_s": self.started.elapsed().as_secs(),
            "listen": self.command_addr.to_string(),
            "public_ips": self.config.public_ips.iter().map(|ip| ip.to_string()).collect::<Vec<_>>(),
            "port_range": self.config.port_range.to_string(),
            "nft_table": self.config.nft_table,
            "mirror": self.config.mirror.display().to_string(),
            "probe_interval_s": self.config.probe_interval_s,
            "per_host_quota": self.config.per_host_quota,
            "rate_limit": self.config.rate_limit,
            "free_ports": {
                "tcp": self.engine.table.free_ports(Proto::Tcp),
                "udp": self.engine.table.free_ports(Proto::Udp),
            },
            "forwards": forwards,
            "recovery": {
                "forwards": r.live, "records": r.records, "corrupt": r.corrupt,
                "torn": r.torn, "dropped": r.dropped, "ms": r.millis as u64,
                "leases_ended": r.expired, "epoch_kept": r.epoch_kept,
            },
            "last_sync": self.last_sync.as_ref().map(|(at, rep)| json!({
                "ago_s": at.elapsed().as_secs(), "forwards": rep.live, "records": rep.records,
                "kernel_changes": rep.kernel_ops, "table_fixes": rep.table_fixes, "ms": rep.millis as u64,
            })),
            "standard": self.std_status(),
        });
        if let (Value::Object(doc), Value::Object(counts)) = (&mut doc, self.counter_tree()) {
            doc.extend(counts);
        }
        doc
    }

    /// The counters of the status document (`counters`, `probes`,
    /// `changes`), which `/metrics` shows too (see `metrics`): one place
    /// for both, so a counter added here is a metric as well.
    pub(crate) fn counter_tree(&self) -> Value {
        let c = &self.counters;
        let mut refused = serde_json::Map::new();
        for code in REFUSAL_CODES {
            let name = code_name(code);
            refused.insert(
                name.into(),
                json!(c.refused.get(name).copied().unwrap_or(0)),
            );
        }
        let s = &self.engine.stats;
        let p = &self.probes;
        json!({
            "counters": {
                "received": c.received,
                "foreign": c.foreign,
                "rate_limited": c.rate_limited,
                "malformed": c.malformed,
                "malformed_by": {
                    "not_dpf": c.malformed_by.not_protocol, "truncated": c.malformed_by.truncated,
                    "oversize": c.malformed_by.oversize, "invalid": c.malformed_by.invalid,
                    "reply": c.malformed_replies,
                },
                "duplicates": c.duplicates,
                "requests": { "forward": c.forward, "delete": c.delete, "query": c.query },
                "refused": refused,
                "auth": self.auth_counters(),
                "standard": self.std_counters.json(),
                "receive_errors": c.receive_errors,
                "send_errors": c.send_errors,
            },
            "probes": {
                "ok": p.ok, "refused": p.refused, "unreachable": p.unreachable,
                "timeout": p.timeout, "error": p.error,
                "round_in_progress": self.round.is_some(),
            },
            "changes": {
                "added": s.added, "reused": s.reused, "updated": s.updated, "moved": s.moved,
                "deleted_by_client": s.deleted_by_client, "deleted_by_probe": s.deleted_by_probe,
                "leased": s.leased, "renewed": s.renewed, "expired": s.expired,
                "commits": s.commits, "kernel_batches": s.kernel_batches,
                "kernel_errors": s.kernel_errors, "mirror_errors": s.mirror_errors, "syncs": s.syncs,
            },
        })
    }
}

/// The command port `dpfd status --listen` names: `IP:PORT`, `IP` or `PORT`.
pub fn parse_target(listen: Option<&str>) -> Result<u16, String> {
    match listen {
        None => Ok(DEFAULT_COMMAND_PORT),
        Some(s) => match s.trim().parse::<u16>() {
            Ok(port) => Ok(port),
            Err(_) => parse_listen(s, DEFAULT_COMMAND_PORT)
                .map(|a| a.port())
                .map_err(|e| format!("status --listen: {e}")),
        },
    }
}

/// The client: fetches the document and returns what to print.
pub fn fetch(port: u16) -> Result<Value, String> {
    let name = socket_name(port);
    let addr = UnixAddr::from_abstract_name(name.as_bytes()).map_err(|e| format!("status: {e}"))?;
    let mut stream = std::os::unix::net::UnixStream::connect_addr(&addr).map_err(|e| {
        format!("status: no dpfd with command port {port} runs in this network namespace (@{name}: {e})")
    })?;
    stream
        .set_read_timeout(Some(CLIENT_TIMEOUT))
        .map_err(|e| format!("status: {e}"))?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .map_err(|e| format!("status: reading the answer: {e}"))?;
    let v: Value =
        serde_json::from_str(&text).map_err(|e| format!("status: the answer is not JSON: {e}"))?;
    if let Some(err) = v.get("error").and_then(Value::as_str) {
        return Err(format!("status: {err}"));
    }
    Ok(v)
}

mod text;
pub use text::render_text;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_targets() {
        assert_eq!(parse_target(None), Ok(65433));
        assert_eq!(parse_target(Some("7000")), Ok(7000));
        assert_eq!(parse_target(Some("192.0.2.1:7001")), Ok(7001));
        assert_eq!(parse_target(Some("192.0.2.1")), Ok(65433));
        assert!(parse_target(Some("nowhere")).is_err());
    }
}
