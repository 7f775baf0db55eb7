//! What the core makes of the command socket's error queue (the loop reads
//! it, `icmp::errqueue`): each error is judged (`icmp::judge`), and for a
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

use std::net::SocketAddrV4;
use std::time::Instant;

use tracing::debug;

use super::holders::Gone;
use super::Engine;
use crate::icmp::{judge, Report, Verdict};

impl Engine {
    /// Errors read from the command socket's error queue.
    pub fn on_icmp(&mut self, reports: &[Report], now: Instant) {
        for r in reports {
            match judge(r, |to| self.asyncs.in_flight_to(to)) {
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
    fn socket_gone(&mut self, at: SocketAddrV4, now: Instant) {
        for (proxy, removed) in self.registry.remove_mgmt(at, now) {
            self.holder_gone(proxy, removed, Gone::Unreachable, now);
        }
        for outcome in self.asyncs.fail_to(at) {
            self.on_command_outcome(outcome, now);
        }
    }
}
