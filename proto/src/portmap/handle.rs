//! The client's datagrams: the requests of the current exchange, and what
//! each answer or announcement from the gateway does to the state.
//!
//! Only answers to the exchange under way count: a late duplicate of an
//! earlier answer would carry an old epoch and look like a restart. PCP
//! answers are matched on nonce, protocol and internal port (error answers
//! copy the request, so they match too); NAT-PMP ones on opcode and
//! internal port, NAT-PMP having nothing better.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use super::{Event, Exchange, MapClient, Mapping, Output, Phase, Refusal, Via, ANNOUNCE_JITTER};
use crate::{natpmp, pcp};

impl MapClient {
    /// The datagrams of the current exchange: a MAP (PCP) or a mapping
    /// request (NAT-PMP, preceded by the public-address request until the
    /// address is known); lifetime 0 when deleting.
    pub(super) fn requests(&self, deleting: bool) -> Vec<Vec<u8>> {
        let cfg = &self.cfg;
        let lifetime = if deleting { 0 } else { cfg.lifetime };
        // Renewals and re-maps ask for the address held, so a restarted
        // gateway hands the same one back if it can.
        let (ip, port) = match self.mapping {
            Some(m) => (Some(*m.external.ip()), m.external.port()),
            None => (cfg.suggested_ip, cfg.suggested_port),
        };
        match self.via {
            Via::Pcp => {
                let suggested = ip.is_some() || port != 0;
                let options = match cfg.prefer_failure && suggested && !deleting {
                    true => vec![pcp::Opt::PreferFailure],
                    false => Vec::new(),
                };
                let req = pcp::Request {
                    opcode: pcp::OP_MAP,
                    lifetime,
                    client: pcp::mapped(*cfg.internal.ip()),
                    map: Some(pcp::MapData {
                        nonce: cfg.nonce,
                        protocol: cfg.proto.wire(),
                        internal_port: cfg.internal.port(),
                        external_port: port,
                        external_ip: pcp::mapped(ip.unwrap_or(Ipv4Addr::UNSPECIFIED)),
                    }),
                    options,
                };
                vec![pcp::encode_request(&req)]
            }
            Via::NatPmp => {
                let mut out = Vec::with_capacity(2);
                if self.public_ip.is_none() && !deleting {
                    out.push(natpmp::encode_request(&natpmp::Request::PublicAddress));
                }
                out.push(natpmp::encode_request(&natpmp::Request::Map {
                    proto: cfg.proto,
                    internal_port: cfg.internal.port(),
                    // RFC 6886 §3.4: a delete suggests nothing.
                    suggested_port: if deleting { 0 } else { port },
                    lifetime,
                }));
                out
            }
        }
    }

    /// A datagram from the gateway: an answer or an announcement.
    pub fn on_datagram(&mut self, bytes: &[u8], now: Instant) -> Output {
        match (&self.phase, bytes.first()) {
            (Phase::Idle | Phase::Done, _) | (_, None) => Output::default(),
            (_, Some(&natpmp::VERSION)) => self.on_natpmp(bytes, now),
            (_, Some(_)) => self.on_pcp(bytes, now),
        }
    }

    fn exchanging(&self) -> bool {
        matches!(self.phase, Phase::Mapping(_) | Phase::Deleting(_))
    }

    fn deleting(&self) -> bool {
        matches!(self.phase, Phase::Deleting(_))
    }

    fn on_pcp(&mut self, bytes: &[u8], now: Instant) -> Output {
        let Ok(resp) = pcp::decode_response(bytes) else {
            return Output::default();
        };
        if self.via != Via::Pcp {
            return Output::default();
        }
        if resp.opcode == pcp::OP_ANNOUNCE {
            if resp.result == pcp::ResultCode::Success && !self.exchanging() {
                self.announced(resp.epoch, now);
            }
            return Output::default();
        }
        let cfg = &self.cfg;
        let ours = resp.map.is_some_and(|m| {
            m.nonce == cfg.nonce
                && m.protocol == cfg.proto.wire()
                && m.internal_port == cfg.internal.port()
        });
        if resp.opcode != pcp::OP_MAP || !ours || !self.exchanging() {
            return Output::default();
        }
        if resp.result == pcp::ResultCode::UnsuppVersion && resp.version < pcp::VERSION {
            return self.fall_back(now);
        }
        // A lost state is not acted on here: this very answer (re)made the
        // mapping.
        self.epoch.observe(Via::Pcp, resp.epoch, now);
        if resp.result != pcp::ResultCode::Success {
            return self.finish(Event::Refused {
                code: Refusal::Pcp(resp.result),
                retry_after_s: resp.lifetime,
            });
        }
        if self.deleting() {
            return self.finish(Event::Deleted);
        }
        let map = resp.map.expect("matched above");
        match pcp::unmapped(map.external_ip) {
            Some(ip) if resp.lifetime > 0 && map.external_port != 0 => {
                self.mapped(SocketAddrV4::new(ip, map.external_port), resp.lifetime, now)
            }
            // Nothing usable (an IPv6 address, no port): keep waiting.
            _ => Output::default(),
        }
    }

    fn on_natpmp(&mut self, bytes: &[u8], now: Instant) -> Output {
        let Ok(resp) = natpmp::decode_response(bytes) else {
            return Output::default();
        };
        if self.via == Via::Pcp {
            // A gateway that speaks only NAT-PMP answers a PCP request so.
            let unsupported = resp.result == natpmp::ResultCode::UnsupportedVersion;
            return match unsupported && self.exchanging() {
                true => self.fall_back(now),
                false => Output::default(),
            };
        }
        let refused = |code| Event::Refused {
            code: Refusal::NatPmp(code),
            retry_after_s: 0,
        };
        match resp.body {
            natpmp::Body::PublicAddress(ip) if !self.exchanging() => {
                // Unsolicited: the gateway restarted or its address changed.
                if resp.result != natpmp::ResultCode::Success {
                    return Output::default();
                }
                self.announced(resp.epoch, now);
                self.public_ip = Some(ip);
                match (self.mapping, &self.phase) {
                    (Some(m), Phase::Holding(_)) if *m.external.ip() != ip => {
                        let external = SocketAddrV4::new(ip, m.external.port());
                        self.mapping = Some(Mapping { external, ..m });
                        let event = Event::Mapped {
                            external,
                            lifetime: m.lifetime,
                            via: Via::NatPmp,
                        };
                        Output {
                            send: Vec::new(),
                            events: vec![event],
                        }
                    }
                    _ => Output::default(),
                }
            }
            natpmp::Body::PublicAddress(ip) if !self.deleting() => {
                self.epoch.observe(Via::NatPmp, resp.epoch, now);
                if resp.result != natpmp::ResultCode::Success {
                    return self.finish(refused(resp.result));
                }
                self.public_ip = Some(ip);
                self.natpmp_complete(now)
            }
            natpmp::Body::Map { internal_port, .. }
                if internal_port != self.cfg.internal.port() =>
            {
                Output::default()
            }
            natpmp::Body::Map {
                external_port,
                lifetime,
                ..
            } if self.exchanging() && resp.proto() == Some(self.cfg.proto) => {
                self.epoch.observe(Via::NatPmp, resp.epoch, now);
                if resp.result != natpmp::ResultCode::Success {
                    return self.finish(refused(resp.result));
                }
                if self.deleting() {
                    return self.finish(Event::Deleted);
                }
                self.natpmp_port = Some((external_port, lifetime));
                self.natpmp_complete(now)
            }
            _ => Output::default(),
        }
    }

    /// NAT-PMP's answer comes in two parts; the mapping is known when both
    /// have arrived.
    fn natpmp_complete(&mut self, now: Instant) -> Output {
        match (self.public_ip, self.natpmp_port) {
            (Some(ip), Some((port, lifetime))) if lifetime > 0 && port != 0 => {
                self.natpmp_port = None;
                self.mapped(SocketAddrV4::new(ip, port), lifetime, now)
            }
            _ => Output::default(),
        }
    }

    /// Records a granted mapping and schedules its renewal between 1/2 and
    /// 5/8 of its lifetime (RFC 6887 §11.2.1).
    fn mapped(&mut self, external: SocketAddrV4, lifetime: u32, now: Instant) -> Output {
        let life = Duration::from_secs(u64::from(lifetime));
        self.mapping = Some(Mapping {
            external,
            lifetime,
            expires: now + life,
            via: self.via,
        });
        let renew = self.rng.scale(life, 0.5, 0.625);
        self.phase = Phase::Holding(now + renew);
        Output {
            send: Vec::new(),
            events: vec![Event::Mapped {
                external,
                lifetime,
                via: self.via,
            }],
        }
    }

    /// An announcement outside an exchange: if it shows the gateway lost
    /// its state, map again after a random wait (so a restarted gateway is
    /// not hit by every client at once).
    fn announced(&mut self, epoch: u32, now: Instant) {
        if self.epoch.observe(self.via, epoch, now) {
            let wait = self.rng.scale(ANNOUNCE_JITTER, 0.0, 1.0);
            self.phase = Phase::RemapAt(now + wait);
        }
    }

    /// The gateway speaks only NAT-PMP: redo the exchange under way in it.
    fn fall_back(&mut self, now: Instant) -> Output {
        self.via = Via::NatPmp;
        self.epoch.reset();
        let retry = self.cfg.natpmp_retry;
        self.phase = match self.phase {
            Phase::Deleting(_) => Phase::Deleting(Exchange::new(retry, now, None)),
            _ => Phase::Mapping(Exchange::new(retry, now, None)),
        };
        self.fire(now)
    }
}
