//! The TCP side of the event loop (paper 4.2.2, the relay module): the
//! connections that reach the broker, and the relays between them. What
//! becomes of each connection is the core's decision (`engine::streams`);
//! this is the I/O.
//!
//! * `proxy`: a regular (non-GCB) connector dials a proxy listener; the
//!   connection is accepted and handed to the core, parked unread.
//! * `rendezvous`: clients dial the rendezvous port (`public_ip:command
//!   port`, TCP) and say `StreamHello{token, role}`, read here without a
//!   byte past it; the complete hello goes to the core.
//! * this file: the effects on streams: a rejection (`StreamPeer::Rejected`,
//!   then close), a reset, and a relay: each side is told its peer
//!   (`StreamPeer::Paired`) and a [`Relay`] pumps bytes between them until
//!   both directions have ended or one side fails.
//! * `punch`: a hole punch's rendezvous connections, between the hello and
//!   the verdict: the frames the core sends and the one report each side
//!   sends back. A punch that falls back becomes a relay here, told nothing
//!   more (its relay verdict said it).
//! * `pump`: the splice-based data pump of one relay.

pub(crate) mod fast_open;
mod proxy;
mod pump;
mod punch;
mod rendezvous;

pub(crate) use pump::Relay;
pub(crate) use punch::reject_punch;
pub(crate) use rendezvous::{Hello, RENDEZVOUS};

use std::collections::HashMap;
use std::io::{self, Write};
use std::time::Instant;

use mio::net::TcpStream;
use mio::Interest;
use proto::gcb::{ErrorCode, StreamPeer};
use tracing::{debug, info, warn};

use crate::daemon::Daemon;
use crate::engine::RelayStart;
use crate::io::{Dynamic, Io};
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

    /// Bytes the running relays moved so far, in each direction.
    pub fn bytes_running(&self) -> [u64; 2] {
        self.map.values().fold([0, 0], |acc, r| {
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

impl Io {
    /// Starts the relay the core asked for: tells each side its peer and
    /// watches both. False if it could not (the streams are then closed).
    pub(crate) fn start_relay(&mut self, s: RelayStart, now: Instant) -> bool {
        let (Some(c), Some(l)) = (
            self.unpark(s.connector.stream),
            self.unpark(s.listener.stream),
        ) else {
            return false;
        };
        let (caddr, laddr) = (s.connector.addr, s.listener.addr);
        // Pipes first: if they cannot be had, neither side has been told
        // it is paired.
        let mut relay = match Relay::new([c, l], [caddr, laddr], s.proxy, now) {
            Ok(relay) => relay,
            Err(e) => {
                warn!("cannot relay {caddr} to {laddr} for {}: {e}", s.proxy);
                return false;
            }
        };
        // The listener reports the connector as its peer; the GCB connector
        // reports the address it dialed, the proxy. The connector is told
        // first: its `connect` waits for this, while the listener's `accept`
        // has its own doorbell to answer, and on a busy machine the first side
        // woken may run before the broker gets to tell the second.
        let mut told = Ok(());
        if s.punched {
            // Each side's relay verdict said it all.
        } else if s.gcb {
            told = send_frame(&mut relay.streams[0], &StreamPeer::Paired { peer: s.proxy });
        }
        if told.is_ok() && !s.punched {
            let peer = s.connector_id;
            told = send_frame(&mut relay.streams[1], &StreamPeer::Paired { peer });
        }
        if let Err(e) = told {
            debug!("relay {caddr} to {laddr}: cannot tell the sides they are paired: {e}");
            return false;
        }
        let id = self.relays.next_id + 1;
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
                return false;
            }
        }
        self.relays.next_id = id;
        self.relays.map.insert(id, relay);
        info!(
            "relay #{id} open: {} {caddr} -> proxy {} -> listener {laddr} (token {})",
            match (s.punched, s.gcb) {
                (true, _) => "punch fallback, gcb connector",
                (_, true) => "gcb connector",
                _ => "connector",
            },
            s.proxy,
            s.token
        );
        // No pump now: registering reports what is ready already (bytes a
        // regular connector sent ahead, an EOF), and empty splices cost the
        // connect that waits for this pairing.
        true
    }

    /// Closes relay `id`; returns the bytes it moved each way.
    fn close_relay(&mut self, id: u64, why: String, failed: Option<usize>) -> Option<[u64; 2]> {
        let mut relay = self.relays.map.remove(&id)?;
        for side in 0..2 {
            self.slab.remove(relay.tokens[side]);
            let _ = self.poll.registry().deregister(&mut relay.streams[side]);
        }
        let bytes = relay.bytes();
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
        Some(bytes)
    }

    /// On shutdown: resets every relayed connection and every parked one, so
    /// both ends see the relay break (docs/design.md, "Broker restart and
    /// several brokers") instead of a clean end of stream that would pass
    /// for a complete transfer.
    pub(crate) fn abort_relays(&mut self) {
        if self.relays.len() > 0 {
            info!("resetting {} relayed connections", self.relays.len());
        }
        for (_, relay) in self.relays.map.drain() {
            let [c, l] = relay.streams;
            abort(c);
            abort(l);
        }
        for stream in self.unpark_all() {
            abort(stream);
        }
    }
}

impl Daemon {
    /// An event on relay `id`'s socket `token`; `writable_only` if it says
    /// nothing but "room to write" (see [`Relay::waits_for_room`]).
    pub(crate) fn on_relay_event(&mut self, id: u64, token: mio::Token, writable_only: bool) {
        let idle = |r: &Relay| writable_only && !r.waits_for_room(token);
        if self.io.relays.map.get(&id).is_some_and(idle) {
            return;
        }
        self.pump_relay(id);
    }

    /// Runs a relay's pump after an event on either of its sockets.
    pub(crate) fn pump_relay(&mut self, id: u64) {
        let Some(relay) = self.io.relays.map.get_mut(&id) else {
            return;
        };
        let closed = match relay.pump(PUMP_BUDGET) {
            Pumped::Blocked => None,
            Pumped::Budget => {
                self.rerun.push_back(relay.tokens[0]);
                None
            }
            Pumped::Finished => self.io.close_relay(id, "both sides closed".into(), None),
            Pumped::Failed { side, error } => {
                let why = format!("{} side failed: {error}", SIDES[side]);
                self.io.close_relay(id, why, Some(side))
            }
        };
        if let Some(bytes) = closed {
            self.engine.relay_ended(bytes);
        }
    }
}
