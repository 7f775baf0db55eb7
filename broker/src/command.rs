//! The command socket's I/O, and the effects the core asks for.
//!
//! * The command port is drained up to a budget per loop turn; each
//!   datagram goes to the core (`engine::command` decides what it is).
//! * With `IP_RECVERR` (see `icmp`), a failed receive is an error queued on
//!   the socket, reported once: the error queue is read (bounded per turn)
//!   and its reports go to the core (`engine::icmp`).
//! * [`Daemon::carry_out`] does what the core queued, in order: datagrams
//!   from the command socket, sockets closed, parked streams rejected,
//!   reset, relayed or closed, and a punch's frames written and its
//!   rendezvous connections read.

use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::Instant;

use daemon_kit::command_port::{self, CommandPort};
use mio::net::UdpSocket;
use tracing::{debug, warn};

use crate::counters::Counters;
use crate::daemon::Daemon;
use crate::engine::Effect;
use crate::icmp::errqueue;
use crate::relay::{abort, reject, reject_punch};

/// Datagrams read from the command socket per loop turn before other events
/// get their share; the rest waits for the next turn.
const COMMAND_BUDGET: usize = 1024;
/// Error-queue entries read per loop turn, likewise.
const ERROR_BUDGET: usize = 256;
/// Rounds of effects one `carry_out` runs: each round's effects can queue
/// more only by a punch frame that failed, which ends that punch, so two
/// rounds suffice; the bound only keeps a mistake from spinning the loop.
const CARRY_ROUNDS: usize = 8;
/// Attempts at sending one datagram (see [`send_datagram`]).
const SEND_TRIES: u32 = 3;

impl CommandPort for Daemon {
    fn recv(&mut self) -> io::Result<(usize, SocketAddr)> {
        self.command.recv_from(&mut self.buf)
    }

    fn on_datagram(&mut self, len: usize, from: SocketAddr) {
        let now = Instant::now();
        self.engine
            .on_command_datagram(&self.buf[..len], from, now, &mut self.io);
        self.carry_out();
    }

    /// With `IP_RECVERR` (see `icmp`), a failed receive is an error
    /// queued on the socket, reported once: its details are in the error
    /// queue, read next.
    fn on_receive_error(&mut self, e: io::Error) {
        debug!("command port {}: receive error: {e}", self.command_addr);
        self.command_errors = true;
    }
}

/// Sends one datagram from the command socket. A full socket buffer drops
/// it: requests are retransmitted by their senders, and so are the broker's
/// own commands.
///
/// With `IP_RECVERR` (see `icmp`) an ICMP error for an earlier datagram,
/// to anyone, makes the socket's next send fail once with its errno
/// without sending: that send is made again, a bounded number of times.
fn send_datagram(sock: &UdpSocket, counters: &mut Counters, to: SocketAddrV4, bytes: &[u8]) {
    let mut tries = 1;
    loop {
        let e = match sock.send_to(bytes, SocketAddr::V4(to)) {
            Ok(_) => return,
            Err(e) => e,
        };
        if tries < SEND_TRIES && e.kind() != io::ErrorKind::WouldBlock {
            debug!("command port: send to {to} failed ({e}), an earlier error; again");
            tries += 1;
            continue;
        }
        counters.send_errors += 1;
        debug!(
            "command port: cannot send {} bytes to {to}: {e}",
            bytes.len()
        );
        return;
    }
}

impl Daemon {
    /// Reads the command socket's error queue, then drains its datagrams,
    /// each up to its budget.
    pub(crate) fn on_command(&mut self) {
        self.on_command_errors();
        let more = command_port::drain(self, COMMAND_BUDGET);
        if self.command_errors {
            // An error arrived while draining: read it in this turn.
            self.on_command_errors();
        }
        self.command_backlog = more || self.command_errors;
    }

    /// Reads the command socket's error queue and hands it to the core.
    /// Leaves `command_errors` set when entries may be left.
    fn on_command_errors(&mut self) {
        let mut reports = Vec::new();
        self.command_errors = match errqueue::read(&self.command, ERROR_BUDGET, &mut reports) {
            Ok(more) => more,
            Err(e) => {
                self.engine.count().receive_errors += 1;
                debug!(
                    "command port {}: cannot read its error queue: {e}",
                    self.command_addr
                );
                false
            }
        };
        if !reports.is_empty() {
            self.engine.on_icmp(&reports, Instant::now());
            self.carry_out();
        }
    }

    /// Carries out what the core queued, in order.
    pub(crate) fn carry_out(&mut self) {
        // Carrying one out may tell the core something (a punch frame that
        // could not be sent), which queues more: until none is left.
        for _ in 0..CARRY_ROUNDS {
            let effects = self.engine.take_effects();
            if effects.is_empty() {
                self.engine.give_back(effects);
                return;
            }
            self.carry_out_batch(effects);
        }
    }

    fn carry_out_batch(&mut self, mut effects: Vec<Effect>) {
        for effect in effects.drain(..) {
            match effect {
                Effect::Send { to, bytes } => {
                    send_datagram(&self.command, self.engine.count(), to, &bytes)
                }
                Effect::Close(token) => {
                    self.io.close(token);
                }
                Effect::Reject { stream, code } => {
                    if let Some(s) = self.io.unpark(stream) {
                        reject(s, code);
                    }
                }
                Effect::Abort(stream) => {
                    if let Some(s) = self.io.unpark(stream) {
                        abort(s);
                    }
                }
                Effect::RejectPunch { stream, code } => {
                    if let Some(s) = self.io.unpark(stream) {
                        reject_punch(s, code);
                    }
                }
                Effect::Hangup(stream) => drop(self.io.unpark(stream)),
                Effect::PunchSend { stream, frame } => {
                    if let Err(e) = self.io.send_parked(stream, &frame.to_bytes()) {
                        debug!("punch: cannot send {frame:?}: {e}");
                        self.engine.on_punch_gone(stream, Instant::now());
                    }
                }
                Effect::PunchWatch(stream) => {
                    if let Err(e) = self.io.watch_parked(stream) {
                        warn!("punch: cannot watch a rendezvous connection: {e}");
                        self.engine.on_punch_gone(stream, Instant::now());
                    }
                }
                Effect::PunchUnwatch(stream) => self.io.unwatch_parked(stream),
                Effect::Relay(start) => {
                    if self.io.start_relay(start, Instant::now()) {
                        self.engine.relay_started();
                    } else {
                        self.engine.relay_ended([0, 0]);
                    }
                }
            }
        }
        self.engine.give_back(effects);
    }
}
