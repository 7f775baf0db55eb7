//! `Connect{proto: Udp}`: the decision table of DESIGN.md for datagrams.
//!
//! * listener public → `Direct{its local address}`;
//! * same realm → `SameRealm{its local address}`;
//! * listener private, connector public → `Reversal{token}`, and the
//!   listener gets `MakeHole{token, target: connector, peer, proxy}`: it
//!   sends `Dummy{token}` from its data socket to the connector, which
//!   answers `DummyAck`, and both then talk directly through the hole;
//! * otherwise → `Relay{via: the listener's proxy socket, token 0}`: the
//!   connector sends plain datagrams to the proxy like any regular peer, so
//!   it needs no pairing and no relay slot, only a rule (made by its first
//!   datagram, under the registration's rule cap).
//!
//! A reversal is tracked as a `Reversal` pairing, exactly like TCP's: the
//! entry lives until the listener acknowledges `MakeHole`, so a failure is
//! logged against the decision and shows in the status.

use std::net::SocketAddrV4;
use std::time::Instant;

use proto::gcb::{Decision, ErrorCode, Message, Token};
use proto::{Endpoint, Proto};
use tracing::{error, info};

use crate::daemon::Daemon;
use crate::decide::{self, Path, Situation};
use crate::handlers::{ConnectReq, PAIR_TIMEOUT};
use crate::pairing::{Kind, Pending};

impl Daemon {
    pub(crate) fn on_connect_udp(
        &mut self,
        from: SocketAddrV4,
        req: ConnectReq,
        now: Instant,
    ) -> Message {
        let connector = decide::situation(*req.connector.ip(), *from.ip(), req.realm.as_deref());
        let Some(record) = self.registry.get(&Endpoint::new(Proto::Udp, req.target)) else {
            self.counters.decided_not_registered += 1;
            info!("connect udp from {from} to {}: not registered", req.target);
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
                let peer = req.connector_id.unwrap_or(req.connector);
                let pending = Pending::new(
                    Kind::Reversal,
                    req.target,
                    mgmt,
                    peer,
                    now,
                    now + PAIR_TIMEOUT,
                );
                let msg = Message::MakeHole {
                    token,
                    target: req.connector,
                    peer,
                    proxy: req.target,
                };
                if let Err(e) = self.start_pairing(token, pending, msg, now) {
                    error!("cannot send MakeHole to {mgmt}: {e}");
                    return Message::error(ErrorCode::Internal, "cannot reach the listener");
                }
                self.counters.decided_reversal += 1;
                Decision::Reversal { token }
            }
            Path::Relay => {
                self.counters.decided_relay += 1;
                Decision::Relay {
                    via: req.target,
                    token: Token(0),
                }
            }
        };
        info!(
            "connect udp from {from} (connector {}, {connector}) to {} (listener {local}, {listener}): {path}",
            req.connector, req.target
        );
        Message::ConnectDecision(decision)
    }
}
