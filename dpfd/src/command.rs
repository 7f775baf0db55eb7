//! The UDP command port: datagrams in, DPF requests to the engine, encoded
//! replies out, with the reply cache of the reliable layer (`proto::rudp`)
//! so a retransmitted request is answered again, never executed twice.
//!
//! Filters, in order, each counted: a source outside the private networks
//! is dropped silently (docs/design.md, "Security": only the private side may
//! open the NAT); with a secret, a request not sealed with it (or stale or
//! replayed) is dropped without an answer (see `auth`); a source past the
//! per-source rate limit is dropped before any decode or reply, as the
//! broker does (one throttled warning names it); input that is not a
//! well-formed DPF request is dropped as malformed, except a request of a
//! newer protocol version, which gets a `VersionMismatch` reply; a
//! retransmission gets the cached reply.

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use daemon_kit::command_port::{self, CommandPort};
use proto::dpf::{self, ErrorCode, Message};
use proto::DecodeError;
use tracing::{debug, warn};

use crate::auth::seal;
use crate::daemon::{unix_now, Daemon};
use crate::handler::code_name;

/// Datagrams read from the command socket per loop turn before other events
/// get their share; the rest waits for the next turn. It also bounds a
/// group commit.
const COMMAND_BUDGET: usize = 1024;

impl CommandPort for Daemon {
    fn recv(&mut self) -> io::Result<(usize, SocketAddr)> {
        self.command.recv_from(&mut self.buf)
    }

    fn on_datagram(&mut self, len: usize, from: SocketAddr) {
        self.counters.received += 1;
        if !self
            .config
            .private_nets
            .iter()
            .any(|n| n.contains(from.ip()))
        {
            self.counters.foreign += 1;
            debug!("command port: dropped {len} bytes from {from}: not in a private network");
            return;
        }
        self.on_request(len, from, Instant::now());
    }

    fn on_receive_error(&mut self, e: io::Error) {
        self.counters.receive_errors += 1;
        debug!("command port {}: receive error: {e}", self.command_addr);
    }
}

impl Daemon {
    /// Drains the command socket up to the budget.
    pub(crate) fn on_command(&mut self) {
        self.command_backlog = command_port::drain(self, COMMAND_BUDGET);
    }

    fn on_request(&mut self, len: usize, from: SocketAddr, now: Instant) {
        let datagram = std::mem::take(&mut self.buf);
        let verified = self.authenticate(&datagram[..len], from);
        // After the MAC check, so datagrams forged in a host's name cannot
        // use up its allowance; before the decode and any reply.
        if verified.is_ok() && !self.gate.admit(&from.ip(), now) {
            self.counters.rate_limited += 1;
            self.buf = datagram;
            return;
        }
        let decoded = match &verified {
            Ok(None) => Some(dpf::decode(&datagram[..len])),
            Ok(Some(v)) => Some(dpf::decode(&v.message)),
            Err(()) => None,
        };
        self.buf = datagram;
        let stamp = verified.ok().flatten().map(|v| v.stamp);
        let Some(decoded) = decoded else { return };
        let (header, msg) = match decoded {
            Ok(decoded) => decoded,
            Err(DecodeError::UnsupportedVersion {
                version,
                request_id,
                ..
            }) => {
                *self
                    .counters
                    .refused
                    .entry(code_name(ErrorCode::VersionMismatch))
                    .or_insert(0) += 1;
                debug!("command port: version {version} request from {from}");
                let reply = Message::error(ErrorCode::VersionMismatch, "dpfd speaks DPF version 1");
                self.send_reply(from, request_id, &reply, now);
                return;
            }
            Err(e) => {
                self.counters.malformed += 1;
                self.counters.malformed_by.count(&e);
                debug!("command port: dropped {len} bytes from {from}: malformed ({e})");
                return;
            }
        };
        if msg.is_response() {
            self.counters.malformed += 1;
            self.counters.malformed_replies += 1;
            debug!(
                "command port: dropped a {:?} from {from}: replies are not requests",
                msg.kind()
            );
            return;
        }
        let id = header.request_id;
        if let Some(cached) = self.replies.lookup(&from, id, now) {
            self.counters.duplicates += 1;
            let cached = cached.to_vec();
            if let Err(e) = self.command.send_to(&cached, from) {
                self.counters.send_errors += 1;
                debug!("command port: resending to {from}: {e}");
            }
            return;
        }
        if !self.in_batch.insert((from, id)) {
            // Its first copy is in this turn's batch and gets the reply.
            self.counters.duplicates += 1;
            return;
        }
        if !self.admit(stamp, from) {
            self.in_batch.remove(&(from, id));
            return;
        }
        match msg {
            Message::Forward { .. } => self.counters.forward += 1,
            Message::Delete { .. } => self.counters.delete += 1,
            _ => self.counters.query += 1,
        }
        self.engine
            .handle(from, id, msg, &mut self.counters.refused, unix_now());
    }

    /// Encodes, sends and caches a reply. A full socket buffer loses the
    /// reply; the client's retransmission then finds it in the cache.
    pub(crate) fn send_reply(
        &mut self,
        to: SocketAddr,
        request_id: u64,
        msg: &Message,
        now: Instant,
    ) {
        let bytes = match seal(self.auth.as_ref(), dpf::encode(msg, request_id)) {
            Ok(b) => b,
            Err(e) => {
                // Only an over-long error detail can fail, and
                // `Message::error` cuts those; never send garbage.
                warn!("cannot encode the reply to {to}: {e:?}");
                return;
            }
        };
        if let Err(e) = self.command.send_to(&bytes, to) {
            self.counters.send_errors += 1;
            debug!("command port: reply to {to}: {e}");
        }
        self.replies.insert(to, request_id, bytes, now);
    }
}
