//! What the broker does about its command socket's error queue: reads it
//! (bounded per loop turn), judges each error (`icmp::judge`), and for a
//! socket that is gone at address A:
//!
//! * every holder whose management address is A leaves its registrations,
//!   as if it had unregistered; a registration goes with its last holder,
//!   its port quarantined as always (`holders`);
//! * every command in flight to A fails now instead of after its
//!   retransmissions: a command for a connection goes to another holder of
//!   the registration if one is left, or fails that connection with
//!   `NotRegistered` (`cmd_failure`); a `ConnectFailed` to a connector
//!   that has gone is simply not sent again.

use std::time::Instant;

use tracing::debug;

use super::{errqueue, judge, Verdict};
use crate::daemon::Daemon;
use crate::holders::Gone;

/// Error-queue entries read per loop turn before other events get their
/// share; the rest waits for the next turn.
const ERROR_BUDGET: usize = 256;

impl Daemon {
    /// Reads the command socket's error queue and acts on it. Leaves
    /// `command_errors` set when entries may be left.
    pub(crate) fn on_command_errors(&mut self) {
        let mut reports = Vec::new();
        self.command_errors = match errqueue::read(&self.command, ERROR_BUDGET, &mut reports) {
            Ok(more) => more,
            Err(e) => {
                self.counters.receive_errors += 1;
                debug!(
                    "command port {}: cannot read its error queue: {e}",
                    self.command_addr
                );
                false
            }
        };
        let now = Instant::now();
        for r in reports {
            match judge(&r, |to| self.asyncs.in_flight_to(to)) {
                Verdict::Gone(at) => {
                    self.counters.icmp_port_unreachable += 1;
                    debug!("command port: port unreachable from {at}: its socket is gone");
                    self.socket_gone(at, now);
                }
                Verdict::Untrusted(why) => {
                    self.counters.icmp_untrusted += 1;
                    debug!(
                        "command port: port unreachable for {:?} ignored: {why}",
                        r.dest
                    );
                }
                Verdict::Other => {
                    self.counters.icmp_other += 1;
                    debug!("command port: error {r:?} ignored");
                }
            }
        }
    }

    /// No socket is at `at` any more.
    fn socket_gone(&mut self, at: std::net::SocketAddrV4, now: Instant) {
        for (proxy, removed) in self.registry.remove_mgmt(at, now) {
            self.holder_gone(proxy, removed, Gone::Unreachable, now);
        }
        for outcome in self.asyncs.fail_to(at) {
            self.on_command_outcome(outcome, now);
        }
    }
}
