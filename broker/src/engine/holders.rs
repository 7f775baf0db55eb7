//! The life of a registration's holders after they joined (see `registry`
//! for the rules, `register` for joining):
//!
//! * `Heartbeat`: refreshes the holder it comes from, for each endpoint it
//!   names; what the sender does not hold is named back in
//!   `ReregisterRequest`, and registering again joins the registration when
//!   the socket is registered by other processes.
//! * `Unregister`: the holder it comes from leaves; the registration goes
//!   (proxy socket closed, port quarantined) when that was its last holder.
//! * Expiry: a holder whose heartbeats stopped leaves in the same way.
//! * A holder that answers a command `NotRegistered` leaves too (it does
//!   not hold the socket any more), see `cmd_failure`.
//! * So does a holder whose management socket is gone: a command to it drew
//!   an ICMP port unreachable (`icmp`).
//!
//! Nothing else ends a registration: a command that goes unanswered fails
//! its connection alone.

use std::net::SocketAddrV4;
use std::time::Instant;

use proto::gcb::{ErrorCode, Message};
use proto::{Endpoint, Proto};
use tracing::{debug, info};

use super::{Effect, Engine, SocketId};
use crate::registry::{Refresh, Removed};

const GONE: &str = "its socket is gone (ICMP port unreachable)";

/// Why a holder left its registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Gone {
    Unregistered,
    Expired,
    /// It answered a command `NotRegistered`.
    Disowned,
    /// Its management socket is gone (ICMP port unreachable).
    Unreachable,
}

impl Engine {
    pub(super) fn on_heartbeat(
        &mut self,
        from: SocketAddrV4,
        held: Vec<Endpoint>,
        now: Instant,
    ) -> Message {
        let mut unknown = Vec::new();
        for ep in held {
            match self.registry.refresh(&ep, from, now) {
                Refresh::Refreshed => {}
                Refresh::Moved(old) => info!(
                    "{ep}: the holder's management address moved from {old} to {from} \
                     (its NAT mapping changed)"
                ),
                Refresh::Unknown => unknown.push(ep),
            }
        }
        if unknown.is_empty() {
            return Message::HeartbeatAck;
        }
        debug!(
            "heartbeat from {from}: {} unknown endpoints, asking to register again",
            unknown.len()
        );
        Message::ReregisterRequest { unknown }
    }

    pub(super) fn on_unregister(
        &mut self,
        from: SocketAddrV4,
        proxy: Endpoint,
        now: Instant,
    ) -> Message {
        match self.registry.remove_holder(&proxy, from, now) {
            Some(removed) => {
                self.holder_gone(proxy, removed, Gone::Unregistered, now);
                Message::Ack
            }
            None => Message::error(ErrorCode::NotRegistered, "not registered by this client"),
        }
    }

    /// Removes the holders whose heartbeats stopped.
    pub(super) fn expire_holders(&mut self, now: Instant) {
        for (proxy, removed) in self.registry.expire(now) {
            self.holder_gone(proxy, removed, Gone::Expired, now);
        }
    }

    /// Counts and logs a holder's leaving, and closes the proxy socket of a
    /// registration that went with its last holder.
    pub(super) fn holder_gone(
        &mut self,
        proxy: Endpoint,
        removed: Removed,
        why: Gone,
        now: Instant,
    ) {
        let c = &mut self.counters;
        *match why {
            Gone::Unregistered => &mut c.holders_left,
            Gone::Expired => &mut c.holders_expired,
            Gone::Disowned => &mut c.holders_disowned,
            Gone::Unreachable => &mut c.holders_gone,
        } += 1;
        let record = match removed {
            Removed::Holder(h) => {
                let silent = now.saturating_duration_since(h.last_heartbeat);
                let left = self.registry.get(&proxy).map_or(0, |r| r.holders().len());
                let how = match why {
                    Gone::Unregistered => "unregistered".to_string(),
                    Gone::Expired => format!("expired, no heartbeat for {silent:.0?}"),
                    Gone::Disowned => "does not hold it any more".to_string(),
                    Gone::Unreachable => GONE.to_string(),
                };
                info!(
                    "{} {}: holder {}[{}] (mgmt {}) {how}; {left} holders left",
                    proxy.proto, proxy.addr, h.program, h.pid, h.mgmt
                );
                return;
            }
            Removed::Record(r) => r,
        };
        self.close_proxy(record.proxy, record.token);
        let h = record.freshest();
        let silent = now.saturating_duration_since(h.last_heartbeat);
        let (verb, why) = match why {
            Gone::Expired => ("expired", format!(": no heartbeat for {silent:.0?}")),
            Gone::Unregistered => ("unregistered", String::new()),
            Gone::Disowned => ("unregistered", ": it does not hold it any more".to_string()),
            Gone::Unreachable => ("unregistered", format!(": {GONE}")),
        };
        if verb == "expired" {
            self.counters.expired += 1;
        } else {
            self.counters.unregistered += 1;
        }
        info!(
            "{verb} {} {} of {}[{}] (local {}, mgmt {}){why}",
            proxy.proto, proxy.addr, h.program, h.pid, record.local, h.mgmt
        );
    }

    /// Closes the proxy socket of a registration that went; a UDP one takes
    /// its relay rules and channels with it.
    fn close_proxy(&mut self, proxy: Endpoint, socket: SocketId) {
        self.emit(Effect::Close(socket));
        if proxy.proto == Proto::Udp {
            self.udp.table.remove(&proxy.addr);
            self.close_channels_of(proxy.addr);
        }
    }
}
