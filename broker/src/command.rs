//! The command port: every datagram is decoded, rate-limited, answered from
//! the reply cache if it is a retransmission, and otherwise handed to its
//! handler, whose reply is sent and cached.
//!
//! Order of the checks, and why:
//! 0. with a secret, MAC and time window (see `auth`): an unauthenticated
//!    datagram is dropped before it can cost anything else or get an answer;
//!    the replay guard comes after the reply cache, in steps 4 and 5;
//! 1. decode first (cheap, no allocation beyond the datagram's own strings),
//!    so a status request from a trusted source can skip the rate limit: an
//!    operator's `query` fetches many pages back to back;
//! 2. the per-source-IP rate limit, before any work or reply, so a flood
//!    costs one hash lookup per datagram and produces no traffic. An answer
//!    to a command the broker has in flight to that address is exempt: the
//!    broker asked for it, there is at most one per command, and dropping it
//!    would make a busy NAT site's servers look dead and lose their
//!    registrations (many servers share one public IP);
//! 3. malformed input is dropped and counted; a newer protocol version is
//!    answered `VersionMismatch` so the peer learns why, not just silence;
//! 4. replies (response flag set) are clients answering the broker's own
//!    commands and go to the command requester;
//! 5. a request already answered is answered again from the cache, never
//!    executed twice (a retransmitted `Connect` must not mint a second
//!    token, a retransmitted `Register` must not log twice).

use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::Instant;

use daemon_kit::command_port::{self, CommandPort};
use mio::net::UdpSocket;
use proto::gcb::{self, ErrorCode, Message};
use proto::DecodeError;
use tracing::{debug, warn};

use crate::async_cmd::Outcome;
use crate::auth::{seal, Inbound};
use crate::counters::Counters;
use crate::daemon::Daemon;
use crate::handlers::ConnectReq;
use crate::pairing::Kind as PairingKind;
use crate::register::RegisterReq;
use crate::udp::channel_io::ChannelReq;

/// Datagrams read from the command socket per loop turn before other events
/// get their share; the rest waits for the next turn.
const COMMAND_BUDGET: usize = 1024;

/// Attempts at sending one datagram (see [`send_datagram`]).
const SEND_TRIES: u32 = 3;

impl CommandPort for Daemon {
    fn recv(&mut self) -> io::Result<(usize, SocketAddr)> {
        self.command.recv_from(&mut self.buf)
    }

    fn on_datagram(&mut self, len: usize, from: SocketAddr) {
        self.counters.received += 1;
        self.on_command_datagram(len, from);
    }

    /// With `IP_RECVERR` (see `icmp`), a failed receive is an error
    /// queued on the socket, reported once: its details are in the error
    /// queue, read next.
    fn on_receive_error(&mut self, e: io::Error) {
        debug!("command port {}: receive error: {e}", self.command_addr);
        self.command_errors = true;
    }
}

/// Sends one datagram from the command socket. A full socket buffer drops
/// it: requests are retransmitted by their senders, and so are the broker's
/// own commands.
///
/// With `IP_RECVERR` (see `icmp`) an ICMP error for an earlier datagram,
/// to anyone, makes the socket's next send fail once with its errno
/// without sending: that send is made again, a bounded number of times.
pub(crate) fn send_datagram(
    sock: &UdpSocket,
    counters: &mut Counters,
    to: SocketAddrV4,
    bytes: &[u8],
) {
    let mut tries = 1;
    loop {
        let e = match sock.send_to(bytes, SocketAddr::V4(to)) {
            Ok(_) => return,
            Err(e) => e,
        };
        if tries < SEND_TRIES && e.kind() != io::ErrorKind::WouldBlock {
            debug!("command port: send to {to} failed ({e}), an earlier error; again");
            tries += 1;
            continue;
        }
        counters.send_errors += 1;
        debug!(
            "command port: cannot send {} bytes to {to}: {e}",
            bytes.len()
        );
        return;
    }
}

impl Daemon {
    /// Reads the command socket's error queue, then drains its datagrams,
    /// each up to its budget.
    pub(crate) fn on_command(&mut self) {
        self.on_command_errors();
        let more = command_port::drain(self, COMMAND_BUDGET);
        if self.command_errors {
            // An error arrived while draining: read it in this turn.
            self.on_command_errors();
        }
        self.command_backlog = more || self.command_errors;
    }

    fn on_command_datagram(&mut self, len: usize, from: SocketAddr) {
        let now = Instant::now();
        let SocketAddr::V4(from) = from else {
            self.counters.malformed += 1;
            debug!("command port: dropped {len} bytes from {from}: GCB speaks IPv4 only");
            return;
        };
        // Everything is authenticated before anything else reads it.
        let datagram = std::mem::take(&mut self.buf);
        let inbound = self.authenticate(&datagram[..len], from, "command port");
        let stamp = match &inbound {
            Inbound::Verified(v) => Some(v.stamp),
            _ => None,
        };
        let decoded = match &inbound {
            Inbound::Plain => Some(gcb::decode(&datagram[..len])),
            Inbound::Verified(v) => Some(gcb::decode(&v.message)),
            Inbound::Refused => None,
        };
        self.buf = datagram;
        let Some(decoded) = decoded else { return };
        let trusted_status = matches!(decoded, Ok((_, Message::StatusRequest { .. })))
            && self.status_allowed(*from.ip());
        let awaited = matches!(&decoded, Ok((h, m)) if m.is_response() && self.asyncs.awaits(h.request_id, from));
        if !trusted_status && !awaited && !self.gate.admit(from.ip(), now) {
            self.counters.rate_limited += 1;
            return;
        }
        let (header, msg) = match decoded {
            Ok(decoded) => decoded,
            Err(DecodeError::UnsupportedVersion {
                version,
                request_id,
                ..
            }) => {
                self.counters.version_mismatch += 1;
                debug!("command port: version {version} request from {from}");
                let detail = format!(
                    "this broker speaks GCB protocol version {}",
                    proto::header::VERSION
                );
                let reply = Message::error(ErrorCode::VersionMismatch, &detail);
                if let Ok(bytes) = seal(self.auth.as_ref(), gcb::encode(&reply, request_id)) {
                    send_datagram(&self.command, &mut self.counters, from, &bytes);
                }
                return;
            }
            Err(e) => {
                self.counters.malformed += 1;
                self.counters.malformed_why.count(&e);
                debug!("command port: dropped {len} bytes from {from}: {e}");
                return;
            }
        };
        if msg.is_response() {
            if !self.admit(stamp, from, "command port") {
                return;
            }
            self.on_command_reply(header.request_id, from, &msg, now);
            return;
        }
        if let Some(cached) = self.replies.lookup(&from, header.request_id, now) {
            self.counters.duplicates += 1;
            debug!(
                "command port: request {} from {from} again; same reply",
                header.request_id
            );
            let cached = cached.to_vec();
            send_datagram(&self.command, &mut self.counters, from, &cached);
            return;
        }
        // Later status pages are served again from their snapshot as they
        // are, and are large: caching them would only push out other
        // replies. The first page is cached, since a retransmission of it
        // must not take a second snapshot.
        if !self.admit(stamp, from, "command port") {
            return;
        }
        let cache = !matches!(msg, Message::StatusRequest { snapshot, .. } if snapshot != 0);
        let reply = self.handle(msg, from, now);
        match seal(self.auth.as_ref(), gcb::encode(&reply, header.request_id)) {
            Ok(bytes) => {
                send_datagram(&self.command, &mut self.counters, from, &bytes);
                if cache {
                    self.replies.insert(from, header.request_id, bytes, now);
                }
            }
            Err(e) => warn!("cannot encode the reply to {from}: {e}"),
        }
    }

    /// Runs the handler of one request and returns its reply.
    fn handle(&mut self, msg: Message, from: SocketAddrV4, now: Instant) -> Message {
        match msg {
            Message::Register {
                proto,
                local,
                realm,
                desired_port,
                port_required,
                mgmt,
            } => {
                let req = RegisterReq {
                    proto,
                    local,
                    realm,
                    desired_port,
                    port_required,
                    mgmt,
                };
                self.on_register(from, req, now)
            }
            Message::Heartbeat { held } => self.on_heartbeat(from, held, now),
            Message::Unregister { proxy } => self.on_unregister(from, proxy, now),
            Message::Connect {
                proto,
                target,
                connector,
                connector_id,
                realm,
                ..
            } => {
                let req = ConnectReq {
                    proto,
                    target,
                    connector,
                    connector_id,
                    realm,
                };
                let started = Instant::now();
                let reply = self.on_connect(from, req, now);
                self.metrics.decided(started.elapsed());
                reply
            }
            Message::StatusRequest {
                snapshot,
                page,
                format,
            } => self.on_status(from, snapshot, page, format, now),
            Message::UdpChannel {
                proxy,
                peer,
                udp_token,
                open,
            } => {
                let req = ChannelReq {
                    proxy,
                    peer,
                    udp_token,
                    open,
                };
                self.on_udp_channel(from, req, now)
            }
            other => {
                self.counters.unsupported += 1;
                debug!(
                    "command port: {:?} from {from} is not a broker request",
                    other.kind()
                );
                Message::error(ErrorCode::Unsupported, "not a request this broker serves")
            }
        }
    }

    /// A client answered one of the broker's commands.
    fn on_command_reply(&mut self, id: u64, from: SocketAddrV4, msg: &Message, now: Instant) {
        match self.asyncs.on_reply(id, from, msg, now) {
            Some(outcome) => self.on_command_outcome(outcome, now),
            None => {
                self.counters.stray_replies += 1;
                debug!(
                    "command port: stray {:?} reply {id} from {from}",
                    msg.kind()
                )
            }
        }
    }

    /// Retransmits due commands and handles those given up.
    pub(crate) fn poll_commands(&mut self, now: Instant) {
        let (sock, counters) = (&self.command, &mut self.counters);
        let failed = self
            .asyncs
            .poll(now, |to, bytes| send_datagram(sock, counters, to, bytes));
        for outcome in failed {
            self.on_command_outcome(outcome, now);
        }
    }

    pub(crate) fn on_command_outcome(&mut self, outcome: Outcome, now: Instant) {
        match outcome {
            Outcome::Acked(p) if p.kind == gcb::Kind::ConnectFailed => {
                debug!(
                    "connector {} told that {} will not dial",
                    p.listener, p.proxy
                )
            }
            // An older connector closed the socket its Connect came from.
            Outcome::Failed(p, why, _) if p.kind == gcb::Kind::ConnectFailed => {
                debug!(
                    "connector {} not told that {} will not dial: {why}",
                    p.listener, p.proxy
                )
            }
            Outcome::Acked(p) => {
                debug!(
                    "{:?} for {} acknowledged by {}",
                    p.kind, p.proxy, p.listener
                );
                // A reversal needs nothing more from the broker.
                if self
                    .pairings
                    .get(p.token)
                    .is_some_and(|e| e.kind == PairingKind::Reversal)
                {
                    self.pairings.cancel(p.token);
                }
            }
            Outcome::Failed(p, why, msg) => self.on_command_failed(p, why, msg, now),
        }
    }
}
