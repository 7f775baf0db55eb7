//! What the broker does once a listener fails to answer a command it sent
//! for a connection (`ReverseConnect`, `RelayConnect`, `MakeHole`):
//!
//! * the registration the command was for is dropped when its owner is gone
//!   (silent, or says the socket is not registered), so the next `Connect`
//!   gets `NotRegistered` at once instead of another wait. A client that is
//!   alive after all learns it from its next heartbeat (`ReregisterRequest`)
//!   and gets its old port back, which stays reserved for it;
//! * a TCP reversal's connector, which waits for the listener's connection
//!   rather than talking to the broker, is told with `ConnectFailed` on the
//!   address its `Connect` came from, retransmitted like any command until
//!   it answers `Ack`. An older connector has closed that socket: it never
//!   answers and times out as it always did.

use std::net::SocketAddrV4;
use std::time::Instant;

use proto::gcb::{ErrorCode, Message, Token};
use proto::{Endpoint, Proto};
use tracing::{info, warn};

use crate::async_cmd::Purpose;
use crate::command::send_datagram;
use crate::daemon::Daemon;
use crate::pairing::{Kind, Pending};

impl Daemon {
    /// Drops the registration `p` was for, if the client commanded still
    /// holds it (it may have re-registered from elsewhere since).
    pub(crate) fn drop_ownerless(&mut self, p: &Purpose, now: Instant) {
        let proto = match p.kind {
            proto::gcb::Kind::MakeHole => Proto::Udp,
            _ => Proto::Tcp,
        };
        let ep = Endpoint::new(proto, p.proxy);
        if self.registry.get(&ep).is_none_or(|r| r.client.mgmt != p.listener) {
            return;
        }
        let Some(record) = self.registry.remove(&ep, now) else { return };
        self.close_proxy(record.token);
        self.counters.expired += 1;
        info!(
            "dropped {proto} {} of {}[{}] (local {}, mgmt {}): it did not answer {:?}",
            p.proxy, record.client.program, record.client.pid, record.local, p.listener, p.kind
        );
    }

    /// Tells the connector of a failed TCP reversal that no connection is
    /// coming, so its `connect` fails now rather than at its own timeout.
    pub(crate) fn tell_connector(&mut self, token: Token, pending: &Pending<mio::net::TcpStream>, now: Instant) {
        let Some(to) = pending.connector_cmd.filter(|_| pending.kind == Kind::Reversal) else {
            return;
        };
        let msg = Message::ConnectFailed { token, code: ErrorCode::NotRegistered };
        if let Err(e) = self.send_command(&msg, token, to, pending.proxy, now) {
            warn!("cannot tell connector {to} that {} will not dial: {e}", pending.proxy);
        }
    }

    /// Sends a broker → client command, retransmitted until answered.
    pub(crate) fn send_command(
        &mut self,
        msg: &Message,
        token: Token,
        to: SocketAddrV4,
        proxy: SocketAddrV4,
        now: Instant,
    ) -> Result<(), String> {
        let purpose = Purpose { token, kind: msg.kind(), listener: to, proxy };
        let (sock, counters) = (&self.command, &mut self.counters);
        self.asyncs.send(msg, purpose, now, self.auth.as_ref(), |to, bytes| {
            send_datagram(sock, counters, to, bytes)
        })
    }
}
