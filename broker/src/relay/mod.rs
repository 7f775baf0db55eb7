//! The relay module of paper 4.2.2, for TCP: how the two halves of a relayed
//! connection reach the broker, and the relays themselves.
//!
//! * `proxy`: a regular (non-GCB) connector dials a proxy listener; the
//!   broker parks the connection and asks the listener to come to the
//!   rendezvous.
//! * `rendezvous`: clients dial the rendezvous port (`public_ip:command
//!   port`, TCP) and say `StreamHello{token, role}`; the pairing table
//!   matches halves by token.
//! * this file: once both halves are there, each is told its peer
//!   (`StreamPeer::Paired`) and a [`Relay`] pumps bytes between them until
//!   both directions have ended or one side fails.
//! * `pump`: the splice-based data pump of one relay.

mod proxy;
mod pump;
mod rendezvous;

pub(crate) use pump::Relay;
pub(crate) use rendezvous::{Hello, RENDEZVOUS};

use std::collections::HashMap;
use std::io::{self, Write};
use std::time::Instant;

use mio::net::TcpStream;
use mio::Interest;
use proto::gcb::{ErrorCode, StreamPeer, Token};
use tracing::{debug, info, warn};

use crate::counters::Counters;
use crate::daemon::{Daemon, Dynamic};
use crate::pairing::{Kind, Pending};
use pump::{Pumped, SIDES};

/// Pump rounds per event before other sources get their turn; a round moves
/// at most 64 KiB each way.
const PUMP_BUDGET: usize = 16;

/// The running relays.
#[derive(Debug, Default)]
pub struct Relays {
    map: HashMap<u64, Relay>,
    next_id: u64,
}

impl Relays {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&u64, &Relay)> {
        self.map.iter()
    }

    /// Bytes relayed since startup in each direction, closed relays included.
    pub fn bytes_total(&self, counters: &Counters) -> [u64; 2] {
        self.map.values().fold(counters.bytes_closed, |acc, r| {
            let b = r.bytes();
            [acc[0] + b[0], acc[1] + b[1]]
        })
    }
}

/// Writes a fixed-size frame to a freshly connected socket. Its send buffer
/// is empty, so 12 bytes always fit at once; anything less is a failure.
fn send_frame(stream: &mut TcpStream, frame: &StreamPeer) -> io::Result<()> {
    let bytes = frame.to_bytes();
    match stream.write(&bytes)? {
        n if n == bytes.len() => Ok(()),
        _ => Err(io::ErrorKind::WriteZero.into()),
    }
}

/// A time after every deadline, to drain a deadline-ordered table.
fn far_future() -> Instant {
    Instant::now() + std::time::Duration::from_secs(86_400 * 365)
}

/// Tells a rendezvous connection it will not be paired, then closes it.
pub(crate) fn reject(mut stream: TcpStream, code: ErrorCode) {
    let _ = send_frame(&mut stream, &StreamPeer::Rejected { code });
}

/// Closes a connection with a reset, so its peer sees a failure rather than
/// a clean, empty end of stream.
pub(crate) fn abort(stream: TcpStream) {
    // SO_LINGER with a zero timeout makes close() send RST.
    let linger = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ = nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::Linger, &linger);
}

impl Daemon {
    /// Both halves arrived: tell each its peer and start relaying.
    pub(crate) fn start_relay(&mut self, token: Token, p: Pending<TcpStream>, now: Instant) {
        let (Some(c), Some(l)) = (p.connector, p.listener) else {
            return;
        };
        if self.relays.len() >= self.config.limits.max_relays as usize {
            self.relay_refused(&format!("the pairing of {} and {}", c.addr, l.addr), now);
            reject(l.stream, ErrorCode::LimitReached);
            match p.kind {
                Kind::Relay => reject(c.stream, ErrorCode::LimitReached),
                _ => abort(c.stream),
            }
            return;
        }
        let is_gcb = p.kind == Kind::Relay;
        let (caddr, laddr) = (c.addr, l.addr);
        // Pipes first: if they cannot be had, neither side has been told
        // it is paired.
        let mut relay = match Relay::new([c.stream, l.stream], [caddr, laddr], p.proxy, now) {
            Ok(relay) => relay,
            Err(e) => {
                warn!("cannot relay {caddr} to {laddr} for {}: {e}", p.proxy);
                return;
            }
        };
        // The listener reports the connector as its peer; the GCB connector
        // reports the address it dialed, the proxy. The connector is told
        // first: its `connect` waits for this, while the listener's `accept`
        // has its own doorbell to answer, and on a busy machine the first side
        // woken may run before the broker gets to tell the second.
        let connector_id = p.connector_id.unwrap_or(caddr);
        let mut told = Ok(());
        if is_gcb {
            told = send_frame(&mut relay.streams[0], &StreamPeer::Paired { peer: p.proxy });
        }
        if told.is_ok() {
            told = send_frame(
                &mut relay.streams[1],
                &StreamPeer::Paired { peer: connector_id },
            );
        }
        if let Err(e) = told {
            debug!("relay {caddr} to {laddr}: cannot tell the sides they are paired: {e}");
            return;
        }
        self.relays.next_id += 1;
        let id = self.relays.next_id;
        for side in 0..2 {
            let t = self.slab.insert(Dynamic::Relay(id));
            relay.tokens[side] = t;
            let interest = Interest::READABLE | Interest::WRITABLE;
            if let Err(e) = self
                .poll
                .registry()
                .register(&mut relay.streams[side], t, interest)
            {
                warn!("cannot watch relay #{id}: {e}");
                for t in &relay.tokens[..=side] {
                    self.slab.remove(*t);
                }
                return;
            }
        }
        self.relays.map.insert(id, relay);
        self.counters.relays_opened += 1;
        info!(
            "relay #{id} open: {} {caddr} -> proxy {} -> listener {laddr} (token {token})",
            if is_gcb { "gcb connector" } else { "connector" },
            p.proxy,
        );
        // No pump now: registering reports what is ready already (bytes a
        // regular connector sent ahead, an EOF), and empty splices cost the
        // connect that waits for this pairing.
    }

    /// An event on relay `id`'s socket `token`; `writable_only` if it says
    /// nothing but "room to write" (see [`Relay::waits_for_room`]).
    pub(crate) fn on_relay_event(&mut self, id: u64, token: mio::Token, writable_only: bool) {
        let idle = |r: &Relay| writable_only && !r.waits_for_room(token);
        if self.relays.map.get(&id).is_some_and(idle) {
            return;
        }
        self.pump_relay(id);
    }

    /// Runs a relay's pump after an event on either of its sockets.
    pub(crate) fn pump_relay(&mut self, id: u64) {
        let Some(relay) = self.relays.map.get_mut(&id) else {
            return;
        };
        match relay.pump(PUMP_BUDGET) {
            Pumped::Blocked => {}
            Pumped::Budget => self.rerun.push_back(relay.tokens[0]),
            Pumped::Finished => self.close_relay(id, "both sides closed".into(), None),
            Pumped::Failed { side, error } => {
                let why = format!("{} side failed: {error}", SIDES[side]);
                self.close_relay(id, why, Some(side));
            }
        }
    }

    fn close_relay(&mut self, id: u64, why: String, failed: Option<usize>) {
        let Some(mut relay) = self.relays.map.remove(&id) else {
            return;
        };
        for side in 0..2 {
            self.slab.remove(relay.tokens[side]);
            let _ = self.poll.registry().deregister(&mut relay.streams[side]);
        }
        let bytes = relay.bytes();
        self.counters.bytes_closed[0] += bytes[0];
        self.counters.bytes_closed[1] += bytes[1];
        let [c, l] = relay.streams;
        if let Some(side) = failed {
            // Pass the failure on as a reset to the side still standing.
            abort(if side == 0 { l } else { c });
        }
        info!(
            "relay #{id} closed ({why}): {} bytes connector {} -> listener {}, {} bytes back, {:.1?}",
            bytes[0],
            relay.addrs[0],
            relay.addrs[1],
            bytes[1],
            relay.started.elapsed()
        );
    }

    /// On shutdown: resets every relayed connection and every parked one, so
    /// both ends see the relay break (docs/design.md, "Broker restart and
    /// several brokers") instead of a clean end of stream that would pass
    /// for a complete transfer.
    pub(crate) fn abort_relays(&mut self) {
        let ids: Vec<u64> = self.relays.map.keys().copied().collect();
        if !ids.is_empty() {
            info!("resetting {} relayed connections", ids.len());
        }
        for id in ids {
            if let Some(relay) = self.relays.map.remove(&id) {
                let [c, l] = relay.streams;
                abort(c);
                abort(l);
            }
        }
        for (_, p) in self.pairings.expire(far_future()) {
            for half in [p.connector, p.listener].into_iter().flatten() {
                abort(half.stream);
            }
        }
    }

    /// Closes what a failed or expired pairing holds: rendezvous halves
    /// are rejected with `code` (why the connection will not be made); a
    /// parked regular connection is reset.
    pub(crate) fn abandon_pairing(&mut self, p: Pending<TcpStream>, code: ErrorCode) {
        if let Some(l) = p.listener {
            reject(l.stream, code);
        }
        if let Some(c) = p.connector {
            match p.kind {
                Kind::Regular => abort(c.stream),
                _ => reject(c.stream, code),
            }
        }
    }

    pub(crate) fn expire_pairings(&mut self, now: Instant) {
        for (token, p) in self.pairings.expire(now) {
            if let Some(code) = p.failed {
                debug!(
                    "failed pairing {token} for {} ({code:?}): its connector never came",
                    p.proxy
                );
                continue;
            }
            self.counters.pairings_expired += 1;
            let missing = match (p.kind, p.connector.is_some(), p.listener.is_some()) {
                (Kind::Reversal, ..) => "the listener did not acknowledge",
                (_, true, false) => "the listener never came",
                (_, false, true) => "the connector never came",
                _ => "neither side came",
            };
            info!(
                "pairing for {} (peer {}, listener mgmt {}) expired: {missing}",
                p.proxy, p.peer, p.listener_mgmt
            );
            debug!("expired token {token}");
            self.abandon_pairing(p, ErrorCode::UnknownToken);
        }
    }
}
