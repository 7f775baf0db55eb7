//! What a `Register` does (paper 4.2.2, "client socket records"), one
//! step per function: [`classify`] the client, find what the request is to
//! the records ([`Engine::on_register`]), then either renew a holder, let
//! another process holding the socket join ([`Engine::join`]), or make a
//! new registration: check the limit, take a proxy port and have its
//! socket opened ([`Engine::take_port`]), and record it
//! ([`Engine::record`]).
//!
//! * A holder registering again renews its entry.
//! * Another process holding a registered socket (same protocol, public IP
//!   and local address) joins the record as a holder and gets the same
//!   proxy address and `udp_token`.
//! * A socket nobody registered gets a proxy socket (a TCP listener, or a
//!   UDP socket with its `udp_token`) on a port from the pool.
//!
//! A `Register` that requires its port (`port_required`) gets that port or
//! `PortUnavailable`: the application bound that address, so a proxy
//! elsewhere would be a lie. That includes a socket registered on another
//! port already: one socket has one proxy address.

use std::net::SocketAddrV4;
use std::time::Instant;

use proto::gcb::{ErrorCode, Message, MgmtInfo, Token};
use proto::{Endpoint, Proto};
use tracing::{debug, error, info, warn};

use super::{Engine, Host, Opening, SocketId};
use crate::decide::{self, Situation};
use crate::ports::{AllocError, Owner};
use crate::registry::{Claim, Client, MAX_HOLDERS};

/// The fields of a `Register` request.
#[derive(Debug, Clone)]
pub struct RegisterReq {
    pub proto: Proto,
    pub local: SocketAddrV4,
    pub realm: Option<String>,
    pub desired_port: Option<u16>,
    /// `desired_port` or nothing (`Register::port_required`).
    pub port_required: bool,
    pub mgmt: MgmtInfo,
}

impl RegisterReq {
    /// Whether the request cannot have `port`: it requires another.
    fn refuses(&self, port: u16) -> bool {
        self.port_required && self.desired_port != Some(port)
    }
}

/// Where the registering process sits and what it says of itself: public
/// when its management socket's own address is the one its request came
/// from (see `decide`).
pub fn classify(from: SocketAddrV4, req: &RegisterReq) -> (Client, Situation) {
    let situation = decide::situation(*req.mgmt.mgmt_local.ip(), *from.ip(), req.realm.as_deref());
    let client = Client {
        mgmt: from,
        mgmt_local: req.mgmt.mgmt_local,
        public: situation.public,
        realm: situation.realm.clone(),
        pid: req.mgmt.pid,
        program: req.mgmt.program.clone(),
        heartbeat_secs: req.mgmt.heartbeat_secs,
        features: req.mgmt.features,
    };
    (client, situation)
}

/// The refusal of a `Register` whose required port cannot be had: the
/// client's application sees EADDRINUSE from its `bind`.
fn port_unavailable(req: &RegisterReq, from: SocketAddrV4, why: &str) -> Message {
    let (proto, local) = (req.proto, req.local);
    let port = req.desired_port.unwrap_or(0);
    info!("refused {proto} {local} from {from}: it requires proxy port {port}, and {why}");
    Message::error(ErrorCode::PortUnavailable, &format!("port {port}: {why}"))
}

/// The reply to a `Register` that got `proxy`.
fn ok(from: SocketAddrV4, proxy: SocketAddrV4, udp_token: Option<Token>) -> Message {
    Message::RegisterOk {
        proxy,
        observed: from,
        udp_token,
    }
}

impl Engine {
    pub(super) fn on_register(
        &mut self,
        from: SocketAddrV4,
        req: RegisterReq,
        now: Instant,
        host: &mut impl Host,
    ) -> Message {
        if req.local.port() == 0 || req.local.ip().is_unspecified() {
            return Message::error(ErrorCode::BadRequest, "the local address must be concrete");
        }
        let (client, situation) = classify(from, &req);
        let ep = match self.registry.find_for_register(req.proto, from, req.local) {
            Claim::New => return self.register_new(from, req, client, situation, now, host),
            Claim::Again(ep) | Claim::Join(ep) if req.refuses(ep.addr.port()) => {
                return port_unavailable(&req, from, "this socket is registered on another port");
            }
            Claim::Again(ep) => {
                debug!(
                    "register again: {} {} from {from} keeps {}",
                    req.proto, req.local, ep.addr
                );
                self.registry.renew(&ep, client, now);
                ep
            }
            Claim::Join(ep) => {
                if let Err(refusal) = self.join(from, &req, client, ep, now) {
                    return refusal;
                }
                ep
            }
        };
        let udp_token = self.udp.table.get(&ep.addr).map(|r| r.udp_token);
        ok(from, ep.addr, udp_token)
    }

    /// Counts a registration refused at a limit, with one warning line per
    /// throttle period (every client retries each heartbeat).
    fn refuse_registration(&mut self, now: Instant, line: impl FnOnce(u64) -> String) {
        self.counters.refused += 1;
        if let Some(more) = self.throttles.registrations.hit(now) {
            warn!("{}", line(more));
        }
    }

    /// Another process holding the socket of `ep` joins its registration.
    fn join(
        &mut self,
        from: SocketAddrV4,
        req: &RegisterReq,
        client: Client,
        ep: Endpoint,
        now: Instant,
    ) -> Result<(), Message> {
        let (program, pid) = (client.program.clone(), client.pid);
        let Ok(gone) = self.registry.join(&ep, client, now) else {
            self.refuse_registration(now, |more| {
                format!(
                    "{} {} has {MAX_HOLDERS} holders: refusing {program}[{pid}] (mgmt {from}) \
                     ({more} more refused since the last such line)",
                    ep.proto, ep.addr
                )
            });
            return Err(Message::error(
                ErrorCode::LimitReached,
                &format!("the registration has its most holders ({MAX_HOLDERS})"),
            ));
        };
        self.counters.holders_joined += 1;
        let holders = self.registry.get(&ep).map_or(0, |r| r.holders().len());
        info!(
            "{} {} of {program}[{pid}] (mgmt {from}) joins {}: {holders} holders",
            req.proto, req.local, ep.addr
        );
        for h in gone {
            self.counters.holders_replaced += 1;
            info!(
                "{} {}: holder {}[{}] (mgmt {}) replaced by the one joining: {}",
                ep.proto,
                ep.addr,
                h.program,
                h.pid,
                h.mgmt,
                if h.mgmt_local == req.mgmt.mgmt_local {
                    "the same management socket behind a new NAT mapping"
                } else {
                    "silent for two of its heartbeat intervals"
                }
            );
        }
        Ok(())
    }

    /// A socket nobody registered: a proxy socket on a port of the pool.
    fn register_new(
        &mut self,
        from: SocketAddrV4,
        req: RegisterReq,
        client: Client,
        situation: Situation,
        now: Instant,
        host: &mut impl Host,
    ) -> Message {
        let max = self.config.limits.max_registrations as usize;
        if self.registry.len() >= max {
            self.refuse_registration(now, |more| {
                format!(
                    "registration limit of {max} reached: refusing {} {} from {from} \
                     ({more} more refused since the last such line)",
                    req.proto, req.local
                )
            });
            return Message::error(
                ErrorCode::LimitReached,
                "the broker's registration limit is reached",
            );
        }
        match self.take_port(from, &req, now, host) {
            Ok((port, socket)) => self.record(from, &req, client, situation, port, socket, now),
            Err(refusal) => refusal,
        }
    }

    /// Takes a proxy port by the pool's policy (`ports`) and has the loop
    /// open the proxy socket there, of the registered socket's protocol
    /// (TCP and UDP ports come from separate pools, so both may have one
    /// number). The refusal, when none can be had, is the reply.
    fn take_port(
        &mut self,
        from: SocketAddrV4,
        req: &RegisterReq,
        now: Instant,
        host: &mut impl Host,
    ) -> Result<(u16, SocketId), Message> {
        let owner = Owner {
            local: req.local,
            ip: *from.ip(),
        };
        let (ip, proto) = (self.public_ip, req.proto);
        let open = |port| {
            let addr = SocketAddrV4::new(ip, port);
            host.open(Opening::Proxy(Endpoint::new(proto, addr)), addr)
        };
        let pool = self.registry.pool_mut(proto);
        let allocated = match (req.desired_port, req.port_required) {
            (Some(port), true) => match pool.allocate_exact(port, &owner, now, open) {
                Ok(socket) => Ok((port, socket)),
                Err(AllocError::Exhausted) => {
                    return Err(port_unavailable(
                        req,
                        from,
                        "the port is taken or outside the range",
                    ));
                }
                Err(e) => Err(e),
            },
            _ => pool.allocate(req.desired_port, &owner, now, &mut self.rng, open),
        };
        match allocated {
            Ok(got) => Ok(got),
            // A full range is a limit like the registration limit. Not
            // PortUnavailable: that means "not the port you asked for",
            // and a desired port is never refused on its own here (the
            // pool falls back to another port).
            Err(AllocError::Exhausted) => {
                let range = self.config.port_range;
                self.refuse_registration(now, |more| {
                    format!(
                        "no free proxy port in {range}: refusing {} {} from {from} \
                         ({more} more refused since the last such line)",
                        req.proto, req.local
                    )
                });
                Err(Message::error(
                    ErrorCode::LimitReached,
                    "no free proxy port",
                ))
            }
            Err(AllocError::Bind(e)) => {
                // Typically EMFILE, and every client retries each heartbeat:
                // one line per throttle period, not one per retry.
                self.counters.refused += 1;
                if let Some(more) = self.throttles.registrations.hit(now) {
                    error!(
                        "cannot open a proxy socket on {ip}: {e}: refusing {} {} from {from} \
                         ({more} more refused since the last such line)",
                        req.proto, req.local
                    );
                }
                Err(Message::error(
                    ErrorCode::Internal,
                    &format!("cannot open a proxy socket: {e}"),
                ))
            }
        }
    }

    /// Records the new registration of `req` on `port`, whose proxy socket
    /// is `socket`.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        from: SocketAddrV4,
        req: &RegisterReq,
        client: Client,
        situation: Situation,
        port: u16,
        socket: SocketId,
        now: Instant,
    ) -> Message {
        let proxy = Endpoint::new(req.proto, SocketAddrV4::new(self.public_ip, port));
        let (program, pid) = (client.program.clone(), client.pid);
        self.registry.insert(proxy, req.local, client, socket, now);
        // The client proves it owns the data path with this token (Dummy).
        let udp_token = (req.proto == Proto::Udp).then(|| {
            let t = Token(daemon_kit::random::random_u64() | 1);
            self.udp.table.add(proxy.addr, t)
        });
        self.counters.registered += 1;
        info!(
            "registered {} {} of {program}[{pid}] ({situation}, mgmt {from}) as {}",
            req.proto, req.local, proxy.addr
        );
        ok(from, proxy.addr, udp_token)
    }
}
