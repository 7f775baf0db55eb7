//! The broker module of paper 4.2.2: what each GCB request does to the
//! broker's state, and the reply. `command` calls these once per request
//! (retransmissions are answered from its reply cache).
//!
//! * `Register`: classify the client (decide::situation), find its existing
//!   registration or open a proxy socket (a TCP listener, or a UDP socket
//!   with its `udp_token`) on a port from the pool, record it.
//! * `Heartbeat`: refresh what the client holds; name what is unknown.
//! * `Unregister`: only the owner may.
//! * `Connect`: look the target up, apply the decision table, and for a
//!   reversal or relay mint a token and send the listener its command. TCP
//!   and UDP share the table; they differ in the reversal command
//!   (`ReverseConnect` vs `MakeHole`: the listener dials, or sends a Dummy
//!   through its NAT to the connector) and in the relay: a TCP relay pairs
//!   two rendezvous connections and takes a relay slot, while a UDP
//!   connector just sends plain datagrams to the listener's proxy socket, so
//!   it needs no pairing, only a rule made by its first datagram.

use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, UdpSocket};
use mio::Interest;
use proto::gcb::{Decision, ErrorCode, Message, MgmtInfo, Token};
use proto::{Endpoint, Proto};
use tracing::{debug, error, info, warn};

use crate::daemon::{Daemon, Dynamic};
use crate::decide::{self, Path, Situation};
use crate::pairing::{Kind, Pending};
use crate::ports::{AllocError, Owner};
use crate::registry::{Claim, Client, Refresh};

/// How long a token waits for both halves of its connection. The shim
/// waits as long (its PAIR_TIMEOUT) before giving up on its side.
pub(crate) const PAIR_TIMEOUT: Duration = Duration::from_secs(10);

/// The fields of a `Register` request.
pub(crate) struct RegisterReq {
    pub proto: Proto,
    pub local: SocketAddrV4,
    pub realm: Option<String>,
    pub desired_port: Option<u16>,
    /// `desired_port` or nothing (`Register::port_required`).
    pub port_required: bool,
    pub mgmt: MgmtInfo,
}

/// The fields of a `Connect` request.
pub(crate) struct ConnectReq {
    pub proto: Proto,
    pub target: SocketAddrV4,
    pub connector: SocketAddrV4,
    pub connector_id: Option<SocketAddrV4>,
    pub realm: Option<String>,
}

/// The refusal of a `Register` whose required port cannot be had: the
/// client's application sees EADDRINUSE from its `bind`.
fn port_unavailable(
    (proto, local, port): (Proto, SocketAddrV4, Option<u16>),
    from: SocketAddrV4,
    why: &str,
) -> Message {
    let port = port.unwrap_or(0);
    info!("refused {proto} {local} from {from}: it requires proxy port {port}, and {why}");
    Message::error(ErrorCode::PortUnavailable, &format!("port {port}: {why}"))
}

impl Daemon {
    pub(crate) fn on_register(
        &mut self,
        from: SocketAddrV4,
        req: RegisterReq,
        now: Instant,
    ) -> Message {
        if req.local.port() == 0 || req.local.ip().is_unspecified() {
            return Message::error(ErrorCode::BadRequest, "the local address must be concrete");
        }
        let situation =
            decide::situation(*req.mgmt.mgmt_local.ip(), *from.ip(), req.realm.as_deref());
        let client = Client {
            mgmt: from,
            mgmt_local: req.mgmt.mgmt_local,
            public: situation.public,
            realm: situation.realm.clone(),
            pid: req.mgmt.pid,
            program: req.mgmt.program,
            heartbeat_secs: req.mgmt.heartbeat_secs,
        };
        let ok = |proxy: SocketAddrV4, udp_token| Message::RegisterOk {
            proxy,
            observed: from,
            udp_token,
        };
        let (proto, pid) = (req.proto, client.pid);
        match self.registry.find_for_register(proto, from, req.local, req.desired_port, pid, now) {
            Claim::Again(ep) => {
                if req.port_required && req.desired_port != Some(ep.addr.port()) {
                    return port_unavailable((req.proto, req.local, req.desired_port), from, "this socket is registered on another port");
                }
                debug!(
                    "register again: {} {} from {from} keeps {}",
                    req.proto, req.local, ep.addr
                );
                self.registry.renew(&ep, client, now);
                let udp_token = self.udp.table.get(&ep.addr).map(|r| r.udp_token);
                return ok(ep.addr, udp_token);
            }
            Claim::HeldByOther { proxy, pid: holder } => {
                if req.port_required {
                    return port_unavailable((req.proto, req.local, req.desired_port), from, "another live process holds this port");
                }
                info!(
                    "{} {} from {from} (pid {pid}) asks for {}, which pid {holder} holds for the same address and is alive: registered on its own",
                    req.proto, req.local, proxy.addr
                )
            }
            Claim::New => {}
        }
        let max = self.config.limits.max_registrations as usize;
        if self.registry.len() >= max {
            self.counters.refused += 1;
            if let Some(more) = self.throttles.registrations.hit(now) {
                warn!(
                    "registration limit of {max} reached: refusing {} {} from {from} \
                     ({more} more refused since the last such line)",
                    req.proto, req.local
                );
            }
            return Message::error(
                ErrorCode::LimitReached,
                "the broker's registration limit is reached",
            );
        }
        let owner = Owner {
            local: req.local,
            ip: *from.ip(),
        };
        let (ip, proto) = (self.public_ip, req.proto);
        // The proxy socket has the registered socket's protocol; TCP and
        // UDP ports come from separate pools, so both may have one number.
        let bind = |port| {
            let addr = SocketAddrV4::new(ip, port);
            let proxy = Endpoint::new(proto, addr);
            match proto {
                Proto::Tcp => TcpListener::bind(SocketAddr::V4(addr))
                    .map(|listener| Dynamic::Proxy { proxy, listener }),
                Proto::Udp => UdpSocket::bind(SocketAddr::V4(addr))
                    .map(|socket| Dynamic::UdpProxy { proxy, socket }),
            }
        };
        let pool = self.registry.pool_mut(req.proto);
        let allocated = match (req.desired_port, req.port_required) {
            (Some(port), true) => match pool.allocate_exact(port, &owner, now, bind) {
                Ok(source) => Ok((port, source)),
                Err(AllocError::Exhausted) => {
                    return port_unavailable((req.proto, req.local, req.desired_port), from, "the port is taken or outside the range");
                }
                Err(e) => Err(e),
            },
            _ => pool.allocate(req.desired_port, &owner, now, &mut self.rng, bind),
        };
        let (port, source) = match allocated {
            Ok(got) => got,
            // A full range is a limit like the registration limit. Not
            // PortUnavailable: that means "not the port you asked for",
            // and a desired port is never refused on its own here (the
            // pool falls back to another port).
            Err(AllocError::Exhausted) => {
                self.counters.refused += 1;
                if let Some(more) = self.throttles.registrations.hit(now) {
                    warn!(
                        "no free proxy port in {}: refusing {} {} from {from} \
                             ({more} more refused since the last such line)",
                        self.config.port_range, req.proto, req.local
                    );
                }
                return Message::error(ErrorCode::LimitReached, "no free proxy port");
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
                return Message::error(
                    ErrorCode::Internal,
                    &format!("cannot open a proxy socket: {e}"),
                );
            }
        };
        let proxy = Endpoint::new(req.proto, SocketAddrV4::new(ip, port));
        let token = self.slab.insert(source);
        let registry = self.poll.registry();
        let registered = match self.slab.get_mut(token) {
            Some(Dynamic::Proxy { listener, .. }) => {
                registry.register(listener, token, Interest::READABLE)
            }
            Some(Dynamic::UdpProxy { socket, .. }) => {
                registry.register(socket, token, Interest::READABLE)
            }
            _ => Err(std::io::ErrorKind::NotFound.into()),
        };
        if let Err(e) = registered {
            self.slab.remove(token);
            self.registry.pool_mut(req.proto).abandon(port);
            error!("cannot watch proxy socket {}: {e}", proxy.addr);
            return Message::error(ErrorCode::Internal, "cannot watch the proxy socket");
        }
        self.registry
            .insert(proxy, req.local, client.clone(), token, now);
        // The client proves it owns the data path with this token (Dummy).
        let udp_token = (proto == Proto::Udp).then(|| {
            let t = Token(daemon_kit::random::random_u64() | 1);
            self.udp.table.add(proxy.addr, t)
        });
        self.counters.registered += 1;
        info!(
            "registered {} {} of {}[{}] ({situation}, mgmt {from}) as {}",
            req.proto, req.local, client.program, client.pid, proxy.addr
        );
        ok(proxy.addr, udp_token)
    }

    pub(crate) fn on_heartbeat(
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
                    "{ep}: the client's management address moved from {old} to {from} \
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

    pub(crate) fn on_unregister(
        &mut self,
        from: SocketAddrV4,
        proxy: Endpoint,
        now: Instant,
    ) -> Message {
        let owned = self
            .registry
            .get(&proxy)
            .is_some_and(|r| r.client.mgmt == from);
        let removed = if owned {
            self.registry.remove(&proxy, now)
        } else {
            None
        };
        let Some(record) = removed else {
            return Message::error(ErrorCode::NotRegistered, "not registered by this client");
        };
        self.close_proxy(record.token);
        self.counters.unregistered += 1;
        info!(
            "unregistered {} {} of {}[{}] (local {}, mgmt {from})",
            proxy.proto, proxy.addr, record.client.program, record.client.pid, record.local
        );
        Message::Ack
    }

    /// A fresh random token no pending pairing uses.
    pub(crate) fn new_token(&mut self) -> Token {
        loop {
            let t = Token(daemon_kit::random::random_u64());
            if t.0 != 0 && self.pairings.get(t).is_none() {
                return t;
            }
        }
    }

    /// Whether another relay may be set up: running relays and pairings that
    /// will become relays count against `--max-relays`.
    pub(crate) fn relay_room(&self) -> bool {
        self.relays.len() + self.pairings.relaying() < self.config.limits.max_relays as usize
    }

    /// Logs (throttled) and counts a relay refused at the limit.
    pub(crate) fn relay_refused(&mut self, what: &str, now: Instant) {
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
    pub(crate) fn start_pairing(
        &mut self,
        token: Token,
        pending: Pending<mio::net::TcpStream>,
        msg: Message,
        now: Instant,
    ) -> Result<(), String> {
        let (listener, proxy) = (pending.listener_mgmt, pending.proxy);
        self.pairings.insert(token, pending);
        let sent = self.send_command(&msg, token, listener, proxy, now);
        if let Err(e) = sent {
            if let Some(p) = self.pairings.cancel(token) {
                self.abandon_pairing(p);
            }
            return Err(e);
        }
        Ok(())
    }

    pub(crate) fn on_connect(
        &mut self,
        from: SocketAddrV4,
        req: ConnectReq,
        now: Instant,
    ) -> Message {
        self.counters.connects += 1;
        let proto = req.proto;
        let connector = decide::situation(*req.connector.ip(), *from.ip(), req.realm.as_deref());
        let Some(record) = self.registry.get(&Endpoint::new(proto, req.target)) else {
            self.counters.decided_not_registered += 1;
            info!(
                "connect {proto} from {from} to {}: not registered",
                req.target
            );
            return Message::ConnectDecision(Decision::NotRegistered);
        };
        let listener = Situation {
            public: record.client.public,
            realm: record.client.realm.clone(),
        };
        let (local, mgmt) = (record.local, record.client.mgmt);
        let path = decide::decide(&listener, &connector);
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
            Path::Relay if proto == Proto::Udp => {
                self.counters.decided_relay += 1;
                Decision::Relay {
                    via: req.target,
                    token: Token(0),
                }
            }
            Path::Relay => {
                if !self.relay_room() {
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
                let mut pending =
                    Pending::new(Kind::Relay, req.target, mgmt, peer, now, now + PAIR_TIMEOUT);
                pending.connector_id = req.connector_id;
                let via = self.rendezvous_addr;
                let msg = Message::RelayConnect {
                    token,
                    broker: via,
                    peer,
                    proxy: req.target,
                };
                if let Err(e) = self.start_pairing(token, pending, msg, now) {
                    error!("cannot send RelayConnect to {mgmt}: {e}");
                    return Message::error(ErrorCode::Internal, "cannot reach the listener");
                }
                self.counters.decided_relay += 1;
                Decision::Relay { via, token }
            }
        };
        info!(
            "connect {proto} from {from} (connector {}, {connector}) to {} (listener {local}, {listener}): {path}",
            req.connector, req.target
        );
        Message::ConnectDecision(decision)
    }
}
