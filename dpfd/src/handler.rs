//! Requests to replies: the safety checks of docs/design.md ("Security"), then the
//! mapping table, then a reply queued for the engine's next commit (see
//! `engine.rs` for the write orders). Also the probe's verdicts, which
//! delete forwards in the same delete order.
//!
//! Every refusal is decided before the table is touched, so a refused
//! request changes no state. Refusals are counted by reason; those that
//! point at a misconfigured or misbehaving client are logged at warn.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use proto::dpf::{ErrorCode, Message};
use tracing::{debug, warn};

use crate::engine::{Engine, Kernel, Mirror};
use crate::table::{Change, ForwardKind, ForwardRequest, Key, ProbeResult};

/// Consecutive probe timeouts after which a forward is deleted: the host
/// may be busy once or twice, but three intervals (90 s at the default
/// 30 s) without even a SYN-ACK means nobody is there to use the forward.
pub const PROBE_TIMEOUT_LIMIT: u32 = 3;

/// Refusals by reason, for status.
pub type Refusals = HashMap<&'static str, u64>;

/// The name a refusal is counted and shown under.
pub fn code_name(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::Refused => "refused",
        ErrorCode::NotLocal => "not_local",
        ErrorCode::PortOutOfRange => "port_out_of_range",
        ErrorCode::Quota => "quota",
        ErrorCode::Exists => "exists",
        ErrorCode::NotFound => "not_found",
        ErrorCode::BadRequest => "bad_request",
        ErrorCode::Unauthorized => "unauthorized",
        ErrorCode::VersionMismatch => "version_mismatch",
        ErrorCode::Internal => "internal",
        ErrorCode::Other(_) => "other",
    }
}

/// The requester's IPv4 address; a dual-stack socket reports IPv4 peers
/// as mapped IPv6 addresses.
fn source_ip(from: SocketAddr) -> Option<Ipv4Addr> {
    match from.ip() {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(ip) => ip.to_ipv4_mapped(),
    }
}

impl<M: Mirror, K: Kernel> Engine<M, K> {
    /// Handles one decoded request from `from`; its reply is queued.
    /// `now` is Unix seconds, stored as the creation time of new forwards.
    pub fn handle(
        &mut self,
        from: SocketAddr,
        request_id: u64,
        msg: Message,
        refusals: &mut Refusals,
        now: u64,
    ) {
        let result = self.decide(from, msg, now);
        let (reply, changed) = match result {
            Ok(reply) => reply,
            Err((code, detail)) => {
                *refusals.entry(code_name(code)).or_insert(0) += 1;
                let line = format!(
                    "refused request from {from}: {} ({detail})",
                    code_name(code)
                );
                match code {
                    ErrorCode::NotFound | ErrorCode::Exists => debug!("{line}"),
                    _ => warn!("{line}"),
                }
                (Message::error(code, &detail), false)
            }
        };
        self.queue_reply(from, request_id, reply, changed);
    }

    /// The reply and whether the table changed, or a refusal.
    fn decide(
        &mut self,
        from: SocketAddr,
        msg: Message,
        now: u64,
    ) -> Result<(Message, bool), (ErrorCode, String)> {
        let src =
            source_ip(from).ok_or((ErrorCode::Refused, "not an IPv4 requester".to_string()))?;
        match msg {
            Message::Forward {
                proto,
                local,
                mgmt_port,
                desired,
            } => {
                if *local.ip() != src {
                    return Err((
                        ErrorCode::NotLocal,
                        format!("forward to {local} asked by {src}"),
                    ));
                }
                if local.port() == 0 || mgmt_port == 0 {
                    return Err((ErrorCode::BadRequest, "port 0".to_string()));
                }
                let req = ForwardRequest {
                    proto,
                    local,
                    mgmt_port,
                    desired,
                };
                let outcome = self.table.forward(req, now).map_err(|code| {
                    let want = desired.map_or("any".to_string(), |d| d.to_string());
                    (code, format!("{proto} {local} wanted {want}"))
                })?;
                let (verb, counter) = match outcome.kind {
                    ForwardKind::Reused => ("reused", &mut self.stats.reused),
                    ForwardKind::Updated => ("updated", &mut self.stats.updated),
                    ForwardKind::Added => ("added", &mut self.stats.added),
                    ForwardKind::Moved => ("moved", &mut self.stats.moved),
                };
                *counter += 1;
                self.batch.events.push(format!(
                    "forward {verb}: {proto} {} -> {local} (mgmt port {mgmt_port}, requested by {from})",
                    outcome.public
                ));
                for c in &outcome.changes {
                    if let Change::Removed(f) = c {
                        self.batch.events.push(format!(
                            "forward deleted: {} {} -> {} (replaced by a request of the same host)",
                            f.proto, f.public, f.local
                        ));
                    }
                }
                let changed = !outcome.changes.is_empty();
                self.batch.changes.extend(outcome.changes);
                Ok((
                    Message::ForwardOk {
                        public: outcome.public,
                    },
                    changed,
                ))
            }
            Message::Delete { proto, key } => {
                let change = self
                    .table
                    .delete(proto, key, src)
                    .map_err(|code| (code, format!("{proto} {key:?}")))?;
                if let Change::Removed(f) = change {
                    self.stats.deleted_by_client += 1;
                    self.batch.events.push(format!(
                        "forward deleted: {proto} {} -> {} (client request from {from})",
                        f.public, f.local
                    ));
                }
                self.batch.changes.push(change);
                Ok((Message::DeleteOk, true))
            }
            Message::Query { proto, public } => {
                let reply = match self.table.get(&Key { proto, public }) {
                    Some(e) => Message::QueryOk { local: e.fwd.local },
                    None => Message::QueryNak,
                };
                debug!("query from {from}: {proto} {public}: {reply:?}");
                Ok((reply, false))
            }
            Message::Info => Ok((
                Message::InfoOk {
                    public_ips: self.table.public_ips().to_vec(),
                },
                false,
            )),
            // The caller drops replies before they get here.
            other => Err((
                ErrorCode::BadRequest,
                format!("{:?} is not a request", other.kind()),
            )),
        }
    }

    /// Applies the probe's verdict on forward `key` of generation `gen`.
    /// A forward replaced since the probe started is left alone.
    pub fn probe_result(&mut self, key: Key, gen: u64, result: ProbeResult) {
        let Some(entry) = self.table.get_mut(&key).filter(|e| e.fwd.gen == gen) else {
            return;
        };
        entry.probe.last = Some(result);
        let reason = match result {
            ProbeResult::Ok | ProbeResult::Error => {
                if result == ProbeResult::Ok {
                    entry.probe.timeouts = 0;
                }
                return;
            }
            ProbeResult::Timeout => {
                entry.probe.timeouts += 1;
                if entry.probe.timeouts < PROBE_TIMEOUT_LIMIT {
                    debug!(
                        "probe of {} timed out ({} in a row)",
                        entry.fwd.mgmt(),
                        entry.probe.timeouts
                    );
                    return;
                }
                format!("probe timed out {PROBE_TIMEOUT_LIMIT} times in a row")
            }
            ProbeResult::Refused => "probe refused: the management socket is closed".to_string(),
            ProbeResult::Unreachable => "probe: host unreachable".to_string(),
        };
        let mgmt = entry.fwd.mgmt();
        if let Some(Change::Removed(f)) = self.table.remove_if(key, gen) {
            self.stats.deleted_by_probe += 1;
            self.batch.events.push(format!(
                "forward deleted: {} {} -> {} ({reason}, {mgmt})",
                f.proto, f.public, f.local
            ));
            self.batch.changes.push(Change::Removed(f));
        }
    }
}
