//! What a `Connect` does (paper 4.2.2, the broker module): look the target
//! up, apply the decision table (`decide`), and for a reversal or relay
//! mint a token and send the listener its command (to the registration's
//! longest-standing live holder; see `cmd_failure` for what happens when it
//! does not answer).
//!
//! TCP and UDP share the table; they differ in the reversal command
//! (`ReverseConnect` vs `MakeHole`: the listener dials, or sends a Dummy
//! through its NAT to the connector) and in the relay: a TCP relay pairs
//! two rendezvous connections and takes a relay slot, while a UDP
//! connector just sends plain datagrams to the listener's proxy socket, so
//! it needs no pairing, only a rule made by its first datagram.
//!
//! A TCP relay between two shims that can punch holes is punched instead
//! (`punch`, docs/hole-punching.md): the connector is told `PunchTcp`, the
//! listener `PunchConnect`, and the pairing waits for their `PunchHello`s
//! just as a relay's waits for its `StreamHello`s; should the punch fail,
//! the same two connections become the relay. A UDP relay between two such
//! shims is punched too (`punch_udp`): `PunchUdp` to the connector,
//! `PunchHole` to the listener, the relay kept meanwhile.
//!
//! A `Connect` asking for a standby connection (`Features::STANDBY`) is
//! punched exactly so, with `standby` in the `PunchConnect`, or refused
//! with `Error{Unsupported}` before anything is sent or minted: a shim
//! asks for one in the background, and wants a punched connection or
//! none. A refusal is counted in `punch_standby_refused` alone, not as a
//! decision or a skip (so those still count the program's own connects),
//! and logged at debug. The one trace it may leave is the outcome cache's
//! entry for a connector whose NAT did not keep its port, which
//! `punch_skip` writes for any connect: it is a fact about the pair.

use std::net::SocketAddrV4;
use std::time::Instant;

use proto::gcb::{Decision, ErrorCode, Features, Message, Token};
use proto::{Endpoint, Proto};
use tracing::{debug, error, info, warn};

use super::punch::Skip;
use super::punch_udp::UdpPunch;
use super::{Engine, StreamId, PAIR_TIMEOUT};
use crate::decide::{self, Path, Situation};
use crate::pairing::{Kind, Pending};

/// The fields of a `Connect` request.
#[derive(Debug, Clone)]
pub struct ConnectReq {
    pub proto: Proto,
    pub target: SocketAddrV4,
    pub connector: SocketAddrV4,
    pub connector_id: Option<SocketAddrV4>,
    pub realm: Option<String>,
    pub features: Features,
    /// The port the `Connect` was sent from (0: not said).
    pub asked_from_port: u16,
    /// The request's id: an early rendezvous names it (`punch_early`).
    pub request_id: u64,
}

impl Engine {
    /// Whether another relay may be set up: running relays and pairings that
    /// will become relays count against `--max-relays`.
    pub(super) fn relay_room(&self) -> bool {
        self.relays + self.pairings.relaying() < self.config.limits.max_relays as usize
    }

    /// Logs (throttled) and counts a relay refused at the limit.
    pub(super) fn relay_refused(&mut self, what: &str, now: Instant) {
        self.counters.refused += 1;
        if let Some(more) = self.throttles.relays.hit(now) {
            warn!(
                "relay limit of {} reached: refusing {what} ({more} more refused since the last such line)",
                self.config.limits.max_relays
            );
        }
    }

    /// Records a pairing and sends the listener its command; on failure the
    /// pairing is undone and the reason returned.
    pub(super) fn start_pairing(
        &mut self,
        token: Token,
        pending: Pending<StreamId>,
        msg: Message,
        now: Instant,
    ) -> Result<(), String> {
        let (listener, proxy) = (pending.listener_mgmt, pending.proxy);
        self.pairings.insert(token, pending);
        let sent = self.send_command(&msg, token, listener, proxy, now);
        if let Err(e) = sent {
            if let Some(p) = self.pairings.cancel(token) {
                self.abandon_pairing(p, ErrorCode::Internal);
            }
            return Err(e);
        }
        Ok(())
    }

    /// A UDP relay punched: the listener's holder at `mgmt` is told
    /// `PunchHole` (a pairing like a UDP reversal's, over at its `Ack`);
    /// should that fail to go out, the connect is relayed as before.
    fn send_punch_hole(
        &mut self,
        proxy: SocketAddrV4,
        mgmt: SocketAddrV4,
        p: UdpPunch,
        now: Instant,
    ) -> Decision {
        let token = self.new_token();
        // The relay names the connector by its mapping, and so does the
        // direct path: the listener's program sees one peer.
        let peer = p.target;
        let pending = Pending::new(Kind::Reversal, proxy, mgmt, peer, now, now + PAIR_TIMEOUT);
        let msg = Message::PunchHole {
            token,
            target: p.target,
            peer,
            proxy,
        };
        if let Err(e) = self.start_pairing(token, pending, msg, now) {
            error!("cannot send PunchHole to {mgmt}: {e}; relaying");
            self.counters.decided_relay += 1;
            return Decision::Relay {
                via: proxy,
                token: Token(0),
            };
        }
        self.udp_punch_started(token, proxy, p, now);
        Decision::PunchUdp {
            via: proxy,
            token,
            listener_at: p.listener_at,
        }
    }

    /// A standby connect that would not be punched: refused, nothing sent
    /// (module docs).
    fn refuse_standby(&mut self, from: SocketAddrV4, req: &ConnectReq, why: &str) -> Message {
        self.counters.punch_standby_refused += 1;
        debug!("connect {} from {from} to {}: no standby: {why}", req.proto, req.target);
        Message::error(ErrorCode::Unsupported, &format!("no standby: {why}"))
    }

    pub(super) fn on_connect(
        &mut self,
        from: SocketAddrV4,
        req: ConnectReq,
        now: Instant,
    ) -> Message {
        self.counters.connects += 1;
        let proto = req.proto;
        let standby = req.features.contains(Features::STANDBY);
        let connector = decide::situation(*req.connector.ip(), *from.ip(), req.realm.as_deref());
        let Some(record) = self.registry.get(&Endpoint::new(proto, req.target)) else {
            if standby {
                return self.refuse_standby(from, &req, "the target is not registered");
            }
            self.counters.decided_not_registered += 1;
            info!(
                "connect {proto} from {from} to {}: not registered",
                req.target
            );
            return Message::ConnectDecision(Decision::NotRegistered);
        };
        // Owned: punching decides with the engine borrowed mutably.
        let record = record.clone();
        let listener = Situation {
            public: record.public,
            realm: record.realm.clone(),
        };
        let (local, mgmt) = (record.local, record.commanded(now).mgmt);
        let path = decide::decide(&listener, &connector);
        if standby && (path, proto) != (Path::Relay, Proto::Tcp) {
            let why = match proto {
                Proto::Udp => "a standby is TCP only".to_string(),
                Proto::Tcp => format!("the pair connects by {path}"),
            };
            return self.refuse_standby(from, &req, &why);
        }
        let punch = match (path, proto) {
            (Path::Relay, Proto::Tcp) => {
                let skip = self.punch_skip(
                    Proto::Tcp,
                    from,
                    req.features,
                    req.asked_from_port,
                    &record,
                    now,
                );
                if let (Err(why), true) = (skip, standby) {
                    return self.refuse_standby(from, &req, &format!("the pair is relayed: {}", skip_words(why)));
                }
                if let Err(why) = skip {
                    self.count_skip(why);
                    debug!("connect tcp from {from} to {}: not punched: {why:?}", req.target);
                }
                skip.is_ok()
            }
            _ => false,
        };
        let udp_punch = match (path, proto) {
            (Path::Relay, Proto::Udp) => self.udp_punch(from, &req, &record, now),
            _ => None,
        };
        let decision = match path {
            Path::Direct => {
                self.counters.decided_direct += 1;
                Decision::Direct { addr: local }
            }
            Path::SameRealm => {
                self.counters.decided_same_realm += 1;
                Decision::SameRealm { addr: local }
            }
            Path::Reversal => {
                let token = self.new_token();
                // A public connector is known by its own address.
                let peer = req.connector_id.unwrap_or(req.connector);
                let mut pending = Pending::new(
                    Kind::Reversal,
                    req.target,
                    mgmt,
                    peer,
                    now,
                    now + PAIR_TIMEOUT,
                );
                pending.connector_cmd = (proto == Proto::Tcp).then_some(from);
                let msg = match proto {
                    Proto::Tcp => Message::ReverseConnect {
                        token,
                        connector: req.connector,
                        peer,
                        proxy: req.target,
                    },
                    Proto::Udp => Message::MakeHole {
                        token,
                        target: req.connector,
                        peer,
                        proxy: req.target,
                    },
                };
                if let Err(e) = self.start_pairing(token, pending, msg, now) {
                    error!("cannot send the {proto} reversal command to {mgmt}: {e}");
                    return Message::error(ErrorCode::Internal, "cannot reach the listener");
                }
                self.counters.decided_reversal += 1;
                Decision::Reversal { token }
            }
            Path::Relay if proto == Proto::Udp => match udp_punch {
                Some(p) => self.send_punch_hole(req.target, mgmt, p, now),
                None => {
                    self.counters.decided_relay += 1;
                    Decision::Relay {
                        via: req.target,
                        token: Token(0),
                    }
                }
            },
            Path::Relay => {
                if !self.relay_room() {
                    if standby {
                        return self.refuse_standby(from, &req, "the relay limit is reached");
                    }
                    self.relay_refused(&format!("a relay from {from} to {}", req.target), now);
                    return Message::error(
                        ErrorCode::LimitReached,
                        "the broker's relay limit is reached",
                    );
                }
                let token = self.new_token();
                // The connector's rendezvous connection is not made yet; its
                // public IP with its local port is the best guess of how it
                // will look (the listener learns the real address from
                // StreamPeer once it arrives).
                let peer = req
                    .connector_id
                    .unwrap_or(SocketAddrV4::new(*from.ip(), req.connector.port()));
                let kind = if punch { Kind::Punch } else { Kind::Relay };
                let early = punch && req.features.contains(Features::PUNCH_EARLY);
                let mut pending = Pending::new(kind, req.target, mgmt, peer, now, now + PAIR_TIMEOUT);
                pending.connector_id = req.connector_id;
                pending.early = early;
                pending.listener_follows = early && record.all_offer(Features::PUNCH_EARLY);
                let via = self.rendezvous;
                let (broker, proxy) = (via, req.target);
                let msg = match punch {
                    true => Message::PunchConnect { token, broker, peer, proxy, standby },
                    false => Message::RelayConnect { token, broker, peer, proxy },
                };
                if let Err(e) = self.start_pairing(token, pending, msg, now) {
                    error!("cannot send {kind:?}Connect to {mgmt}: {e}");
                    return Message::error(ErrorCode::Internal, "cannot reach the listener");
                }
                if punch {
                    self.counters.punch_attempts += 1;
                    self.counters.punch_standby_attempts += u64::from(standby);
                    if early {
                        self.counters.punch_early += 1;
                        self.early_connect(req.request_id, token, now);
                    }
                    Decision::PunchTcp { via, token, early }
                } else {
                    self.counters.decided_relay += 1;
                    Decision::Relay { via, token }
                }
            }
        };
        let punched = punch || matches!(decision, Decision::PunchUdp { .. });
        let path = if standby {
            "punch (standby)".to_string()
        } else if punched {
            "punch".to_string()
        } else {
            path.to_string()
        };
        info!(
            "connect {proto} from {from} (connector {}, {connector}) to {} (listener {local}, {listener}): {path}",
            req.connector, req.target
        );
        Message::ConnectDecision(decision)
    }
}

/// Why a connect is not punched, in words, for a standby's refusal.
fn skip_words(skip: Skip) -> &'static str {
    match skip {
        Skip::NotCapable => "a side's shim cannot punch",
        Skip::Disabled => "punching is off",
        Skip::CachedFailure => "the pair failed to punch recently",
        Skip::UnpredictableMapping => "the connector's NAT did not keep its port",
        Skip::SamePublicIp => "both realms are behind one public IP",
    }
}
