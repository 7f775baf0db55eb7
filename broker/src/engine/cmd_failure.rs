//! What the broker does when a command it sent a listener for a connection
//! (`ReverseConnect`, `RelayConnect`, `MakeHole`) fails: it went to the
//! registration's holder heard from last, which stayed silent through every
//! retransmission or answered with an error.
//!
//! * Silent, or `NotRegistered` (that holder does not hold the socket any
//!   more, and leaves the registration): the command goes once more to the
//!   freshest other holder, if there is one. Gone (an ICMP port unreachable
//!   came back, and the holder has left, see `icmp`): likewise, and again
//!   after a command sent once more, since that costs no wait and each time
//!   one holder fewer is left. A refusal for the socket's own
//!   reasons (`LimitReached`: its accept queue is full) is not retried,
//!   since every holder shares that socket.
//! * Otherwise that connection alone fails. A TCP reversal's connector,
//!   which waits for the listener's connection rather than talking to the
//!   broker, is told with `ConnectFailed` on the address its `Connect` came
//!   from (retransmitted until it answers `Ack` or its socket is found
//!   gone; an older connector has closed that socket and times out as it
//!   always did). A relayed
//!   connector's rendezvous connection is rejected, now or when it arrives;
//!   a plain connector's parked connection is reset. The code says why:
//!   `Timeout` for silence (ETIMEDOUT), the listener's own code for a
//!   refusal, `NotRegistered` for a listener gone (ECONNREFUSED).
//!
//! The registration is never dropped here: it lives or dies by its
//! holders' heartbeats (`holders`). A busy or briefly unreachable listener
//! loses one connection, not its address.

use std::time::Instant;

use proto::gcb::{self, ErrorCode, Message, Token};
use proto::{Endpoint, Proto};
use tracing::{info, warn};

use super::holders::Gone;
use super::{Engine, StreamId};
use crate::async_cmd::{Failure, Purpose};
use crate::pairing::{Kind, Pending};

impl Engine {
    /// The command `msg` for the pairing `p.token` failed at `p.listener`.
    pub(super) fn on_command_failed(
        &mut self,
        p: Purpose,
        why: Failure,
        msg: Message,
        now: Instant,
    ) {
        let proto = match p.kind {
            gcb::Kind::MakeHole | gcb::Kind::PunchHole => Proto::Udp,
            _ => Proto::Tcp,
        };
        let ep = Endpoint::new(proto, p.proxy);
        let (removed, next) = self
            .registry
            .command_failed(&ep, p.listener, why.disowned(), now);
        if let Some(removed) = removed {
            self.holder_gone(ep, removed, Gone::Disowned, now);
        }
        let again = !p.resent || why == Failure::Unreachable;
        if why.try_another() && again && self.pairings.get(p.token).is_some() {
            if let Some(next) = next {
                let again = Purpose {
                    listener: next,
                    resent: true,
                    ..p
                };
                match self.send_purpose(&msg, again, now) {
                    Ok(()) => {
                        self.counters.commands_resent += 1;
                        if let Some(pending) = self.pairings.get_mut(p.token) {
                            pending.listener_mgmt = next;
                        }
                        info!(
                            "{:?} for {} failed at holder {}: {why}; sent once more to holder {next}",
                            p.kind, p.proxy, p.listener
                        );
                        return;
                    }
                    Err(e) => warn!(
                        "cannot send {:?} for {} to holder {next}: {e}",
                        p.kind, p.proxy
                    ),
                }
            }
        }
        let c = &mut self.counters;
        c.commands_failed += 1;
        *match why.code() {
            ErrorCode::Timeout => &mut c.commands_failed_timeout,
            ErrorCode::NotRegistered => &mut c.commands_failed_not_registered,
            ErrorCode::LimitReached => &mut c.commands_failed_full,
            _ => &mut c.commands_failed_other,
        } += 1;
        info!(
            "{:?} to listener {} for {} failed: {why}; that connection fails ({:?}), the registration stays",
            p.kind,
            p.listener,
            p.proxy,
            why.code()
        );
        self.fail_connection(p.token, why.code(), now);
    }

    /// The listener will not make the connection of `token`: its connector
    /// learns it with `code`, and whatever the pairing holds is closed.
    fn fail_connection(&mut self, token: Token, code: ErrorCode, now: Instant) {
        let Some(mut pending) = self.pairings.cancel(token) else {
            return;
        };
        if pending.kind == Kind::Punch {
            // Decided and counted as an attempt, it ends here: the
            // listener's side will never come to the rendezvous.
            self.counters.punch_vanished += 1;
        }
        self.tell_connector(token, &pending, code, now);
        let rendezvous = matches!(pending.kind, Kind::Relay | Kind::Punch);
        if rendezvous && pending.connector.is_none() {
            // Its rendezvous connection is on its way: it is told then. A
            // listener half already here is told now, so the pairing kept
            // for the connector holds no stream.
            if let Some(l) = pending.listener.take() {
                self.reject_half(l, code);
            }
            pending.failed = Some(code);
            self.pairings.insert(token, pending);
            return;
        }
        self.abandon_pairing(pending, code);
    }

    /// Tells the connector of a failed TCP reversal that no connection is
    /// coming, so its `connect` fails now rather than at its own timeout.
    fn tell_connector(
        &mut self,
        token: Token,
        pending: &Pending<StreamId>,
        code: ErrorCode,
        now: Instant,
    ) {
        let Some(to) = pending
            .connector_cmd
            .filter(|_| pending.kind == Kind::Reversal)
        else {
            return;
        };
        let msg = Message::ConnectFailed { token, code };
        if let Err(e) = self.send_command(&msg, token, to, pending.proxy, now) {
            warn!(
                "cannot tell connector {to} that {} will not dial: {e}",
                pending.proxy
            );
        }
    }
}
