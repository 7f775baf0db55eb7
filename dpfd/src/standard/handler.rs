//! NAT-PMP and PCP requests to answers, in the engine like DPF requests
//! (`handler.rs`): the same rules (only for the sender's own address,
//! inside the port range, within the per-host quota), the table rules of
//! `table/standard.rs`, and answers queued for the next group commit, so a
//! mapping is in the mirror file and the kernel before it is announced.
//!
//! PCP MAP is refused when it cannot be what dpfd does: THIRD_PARTY
//! (mapping for another host) is NOT_AUTHORIZED; a client address other
//! than the sender's is ADDRESS_MISMATCH (a NAT between them); FILTER is
//! UNSUPP_OPTION (the forward is open to every peer); protocols other than
//! TCP and UDP are UNSUPP_PROTOCOL. Lifetimes are clamped to the
//! configured bounds. Errors carry a lifetime (§7.4): 30 s for the
//! short-lived ones, 30 minutes for the others.

use std::net::{Ipv4Addr, SocketAddrV4};

use proto::natpmp::{self, Body};
use proto::pcp::{self, Opt, RequestError, ResultCode};
use proto::Proto;

use super::Counters;
use crate::engine::{Engine, Kernel, Mirror, StdPending};
use crate::table::standard::{StdGrant, StdRefusal, StdRequest};
use crate::table::{Change, Via};

/// Lifetime of a short-lived PCP error: when to try again.
pub const SHORT_ERROR_S: u32 = 30;
/// Lifetime of a long-lived one.
pub const LONG_ERROR_S: u32 = 1800;

/// The settings the answers depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub min_lifetime: u32,
    pub max_lifetime: u32,
    /// False with `--secret-file` unless `--allow-unauthenticated-pcp`:
    /// everything is then NOT_AUTHORIZED.
    pub allowed: bool,
}

impl Policy {
    fn clamp(&self, lifetime: u32) -> u32 {
        lifetime.clamp(self.min_lifetime, self.max_lifetime)
    }
}

fn pcp_code(r: StdRefusal) -> ResultCode {
    match r {
        StdRefusal::NotAuthorized => ResultCode::NotAuthorized,
        StdRefusal::Quota => ResultCode::UserExQuota,
        StdRefusal::NoResources => ResultCode::NoResources,
        StdRefusal::CannotProvide => ResultCode::CannotProvideExternal,
    }
}

fn natpmp_code(r: StdRefusal) -> natpmp::ResultCode {
    match r {
        StdRefusal::NotAuthorized | StdRefusal::CannotProvide => natpmp::ResultCode::NotAuthorized,
        StdRefusal::Quota | StdRefusal::NoResources => natpmp::ResultCode::OutOfResources,
    }
}

fn error_lifetime(code: ResultCode) -> u32 {
    if code.is_short_lived() {
        SHORT_ERROR_S
    } else {
        LONG_ERROR_S
    }
}

/// A checked PCP MAP request, or the code to refuse it with.
fn check_map(
    req: &pcp::Request,
    from: Ipv4Addr,
    policy: &Policy,
) -> Result<(StdRequest, pcp::MapData), ResultCode> {
    let map = req.map.expect("a MAP request has MAP data");
    if pcp::unmapped(req.client) != Some(from) {
        return Err(ResultCode::AddressMismatch);
    }
    let mut prefer_failure = false;
    for o in &req.options {
        match o {
            Opt::ThirdParty(_) => return Err(ResultCode::NotAuthorized),
            Opt::Filter { .. } => return Err(ResultCode::UnsuppOption),
            Opt::PreferFailure => prefer_failure = true,
            Opt::Other { .. } => {}
        }
    }
    let proto = Proto::from_wire(map.protocol).map_err(|_| ResultCode::UnsuppProtocol)?;
    let suggested_ip = match pcp::is_unspecified(map.external_ip) {
        true => None,
        false => match pcp::unmapped(map.external_ip) {
            Some(ip) => Some(ip),
            None if prefer_failure => return Err(ResultCode::CannotProvideExternal),
            None => None,
        },
    };
    if prefer_failure && suggested_ip.is_none() && map.external_port == 0 {
        return Err(ResultCode::MalformedOption);
    }
    if map.internal_port == 0 && req.lifetime != 0 {
        return Err(ResultCode::MalformedRequest);
    }
    let std = StdRequest {
        proto,
        local: SocketAddrV4::new(from, map.internal_port),
        via: Via::Pcp,
        nonce: map.nonce,
        suggested_ip,
        suggested_port: map.external_port,
        prefer_failure,
        only_ip: None,
        lifetime: policy.clamp(req.lifetime),
    };
    Ok((std, map))
}

impl<M: Mirror, K: Kernel> Engine<M, K> {
    fn queue_std(&mut self, to: SocketAddrV4, ok: Vec<u8>, failed: Vec<u8>, changed: bool) {
        let to = to.into();
        self.batch.std.push(StdPending {
            to,
            ok,
            failed,
            changed,
        });
    }

    /// Queues an answer that changed nothing, so the commit cannot fail it.
    fn answer_only(&mut self, to: SocketAddrV4, bytes: Vec<u8>) {
        self.queue_std(to, bytes.clone(), bytes, false);
    }

    /// Records a granted mapping's change and its log line.
    fn granted(&mut self, g: &StdGrant, std: &StdRequest, from: SocketAddrV4) {
        if g.renewed {
            self.stats.renewed += 1;
        } else {
            self.stats.leased += 1;
            self.batch.events.push(format!(
                "mapping added ({}): {} {} -> {} for {} s, requested by {from}",
                std.via.name(),
                std.proto,
                g.public,
                std.local,
                std.lifetime
            ));
        }
        self.batch.changes.extend(g.change);
    }

    /// Records deletes asked for by a client.
    fn deleted(&mut self, changes: Vec<Change>, via: Via, from: SocketAddrV4) {
        for c in changes {
            if let Change::Removed(f) = c {
                self.stats.deleted_by_client += 1;
                self.batch.events.push(format!(
                    "mapping deleted ({}): {} {} -> {} (client request from {from})",
                    via.name(),
                    f.proto,
                    f.public,
                    f.local
                ));
            }
            self.batch.changes.push(c);
        }
    }

    /// One datagram whose first byte is not 0 (so not NAT-PMP).
    pub fn handle_pcp(
        &mut self,
        from: SocketAddrV4,
        datagram: &[u8],
        policy: &Policy,
        c: &mut Counters,
        now: u64,
    ) {
        let epoch = self.epoch(now);
        let refuse = |c: &mut Counters, code: ResultCode| {
            c.refuse(format!("pcp.{}", code.name()));
            pcp::encode_error_response(datagram, code, error_lifetime(code), epoch)
        };
        let req = match pcp::decode_request(datagram) {
            Ok(r) => r,
            Err(RequestError::Drop(e)) => return c.malformed(&e),
            Err(RequestError::Answer(code)) => {
                let bytes = refuse(c, code);
                return self.answer_only(from, bytes);
            }
        };
        if req.opcode == pcp::OP_ANNOUNCE {
            c.pcp_announce += 1;
            let resp = pcp::Response {
                version: pcp::VERSION,
                opcode: pcp::OP_ANNOUNCE,
                result: ResultCode::Success,
                lifetime: 0,
                epoch,
                map: None,
                options: Vec::new(),
            };
            let bytes = pcp::encode_response(&resp);
            return self.answer_only(from, bytes);
        }
        c.pcp_map += 1;
        let checked = match policy.allowed {
            true => check_map(&req, *from.ip(), policy),
            false => Err(ResultCode::NotAuthorized),
        };
        let (std, map) = match checked {
            Ok(v) => v,
            Err(code) => {
                let bytes = refuse(c, code);
                return self.answer_only(from, bytes);
            }
        };
        let outcome = match (req.lifetime, std.local.port()) {
            (0, 0) => {
                let gone = self
                    .table
                    .std_delete_all(std.proto, *from.ip(), Via::Pcp, std.nonce);
                Ok((SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0), 0, gone))
            }
            (0, _) => self
                .table
                .std_delete(std.proto, std.local, Via::Pcp, std.nonce)
                .map(|c| {
                    let public = match c {
                        Some(Change::Removed(f)) => f.public,
                        _ => SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
                    };
                    (public, 0, c.into_iter().collect())
                }),
            _ => self.table.std_map(std, now).map(|g| {
                self.granted(&g, &std, from);
                (g.public, std.lifetime, Vec::new())
            }),
        };
        let (public, lifetime, gone) = match outcome {
            Ok(v) => v,
            Err(r) => {
                let bytes = refuse(c, pcp_code(r));
                return self.answer_only(from, bytes);
            }
        };
        let changed = lifetime == 0 && !gone.is_empty() || self.batch_touches(std.local, std.proto);
        self.deleted(gone, Via::Pcp, from);
        let mut options = Vec::new();
        if std.prefer_failure {
            options.push(Opt::PreferFailure);
        }
        let resp = pcp::Response {
            version: pcp::VERSION,
            opcode: pcp::OP_MAP,
            result: ResultCode::Success,
            lifetime,
            epoch,
            map: Some(pcp::MapData {
                external_port: public.port(),
                external_ip: pcp::mapped(*public.ip()),
                ..map
            }),
            options,
        };
        let failed =
            pcp::encode_error_response(datagram, ResultCode::NoResources, SHORT_ERROR_S, epoch);
        self.queue_std(from, pcp::encode_response(&resp), failed, changed);
    }

    /// Whether this turn's batch changes the forward of `local`, so its
    /// answer depends on the commit.
    fn batch_touches(&self, local: SocketAddrV4, proto: Proto) -> bool {
        self.batch.changes.iter().any(|c| match c {
            Change::Added(f) | Change::Removed(f) | Change::Updated { new: f, .. } => {
                f.local == local && f.proto == proto
            }
        })
    }

    /// One datagram whose first byte is 0: NAT-PMP.
    pub fn handle_natpmp(
        &mut self,
        from: SocketAddrV4,
        datagram: &[u8],
        policy: &Policy,
        c: &mut Counters,
        now: u64,
    ) {
        let epoch = self.epoch(now);
        let answer = |opcode, result, body| {
            natpmp::encode_response(&natpmp::Response {
                opcode,
                result,
                epoch,
                body,
            })
        };
        let req = match natpmp::decode_request(datagram) {
            Ok(r) => r,
            Err(natpmp::RequestError::Drop(e)) => return c.malformed(&e),
            Err(natpmp::RequestError::Answer { opcode, result }) => {
                c.refuse(format!("natpmp.{}", result.name()));
                let bytes = answer(opcode, result, Body::None);
                return self.answer_only(from, bytes);
            }
        };
        let first_ip = self.table.public_ips()[0];
        let (proto, internal_port, suggested_port, lifetime) = match req {
            natpmp::Request::PublicAddress => {
                c.natpmp_address += 1;
                let (result, ip) = match policy.allowed {
                    true => (natpmp::ResultCode::Success, first_ip),
                    false => (natpmp::ResultCode::NotAuthorized, Ipv4Addr::UNSPECIFIED),
                };
                if !policy.allowed {
                    c.refuse(format!("natpmp.{}", result.name()));
                }
                let bytes = answer(natpmp::OP_PUBLIC_ADDRESS, result, Body::PublicAddress(ip));
                return self.answer_only(from, bytes);
            }
            natpmp::Request::Map {
                proto,
                internal_port,
                suggested_port,
                lifetime,
            } => (proto, internal_port, suggested_port, lifetime),
        };
        c.natpmp_map += 1;
        let opcode = natpmp::map_opcode(proto);
        let map_body = |external_port, lifetime| Body::Map {
            internal_port,
            external_port,
            lifetime,
        };
        let local = SocketAddrV4::new(*from.ip(), internal_port);
        let zero = [0u8; 12];
        let outcome = match (policy.allowed, lifetime, internal_port) {
            (false, _, _) | (_, 1.., 0) => Err(StdRefusal::NotAuthorized),
            (true, 0, 0) => Ok((
                0,
                0,
                self.table
                    .std_delete_all(proto, *from.ip(), Via::NatPmp, zero),
            )),
            (true, 0, _) => self
                .table
                .std_delete(proto, local, Via::NatPmp, zero)
                .map(|c| (0, 0, c.into_iter().collect())),
            (true, _, _) => {
                let std = StdRequest {
                    proto,
                    local,
                    via: Via::NatPmp,
                    nonce: zero,
                    suggested_ip: None,
                    suggested_port,
                    prefer_failure: false,
                    only_ip: Some(first_ip),
                    lifetime: policy.clamp(lifetime),
                };
                self.table.std_map(std, now).map(|g| {
                    self.granted(&g, &std, from);
                    (g.public.port(), std.lifetime, Vec::new())
                })
            }
        };
        let (port, granted, gone) = match outcome {
            Ok(v) => v,
            Err(r) => {
                let code = natpmp_code(r);
                c.refuse(format!("natpmp.{}", code.name()));
                let bytes = answer(opcode, code, map_body(0, 0));
                return self.answer_only(from, bytes);
            }
        };
        let changed = !gone.is_empty() || self.batch_touches(local, proto);
        self.deleted(gone, Via::NatPmp, from);
        let ok = answer(opcode, natpmp::ResultCode::Success, map_body(port, granted));
        let failed = answer(opcode, natpmp::ResultCode::OutOfResources, map_body(0, 0));
        self.queue_std(from, ok, failed, changed);
    }

    /// Deletes the leased mappings whose lease ended by `now`; returns how
    /// many.
    pub fn expire(&mut self, now: u64) -> usize {
        let ended = self.table.expired(now);
        for f in &ended {
            let change = Change::Removed(*f);
            self.table.apply(change);
            self.stats.expired += 1;
            self.batch.events.push(format!(
                "mapping expired ({}): {} {} -> {}",
                f.via_name(),
                f.proto,
                f.public,
                f.local
            ));
            self.batch.changes.push(change);
        }
        ended.len()
    }
}
