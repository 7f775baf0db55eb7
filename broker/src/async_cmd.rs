//! Broker → client commands (`ReverseConnect`, `RelayConnect`): sent from the
//! command socket to a listener's management address, so they travel back
//! through the UDP hole the client's own heartbeats keep open in its NAT
//! (paper 4.2.1), and retransmitted by the proto [`Requester`] until the
//! listener answers `Ack` or the retry policy gives up.
//!
//! The client answers on the command socket, where its replies are told
//! apart from requests by the header's response flag and handed to
//! [`AsyncCommands::on_reply`]. Each command carries the pairing token it
//! serves, so the daemon can fail that pairing alone when the command fails,
//! and a failed command comes back with its message, so the daemon can send
//! it once more to another holder of the registration. Commands are also
//! counted by destination: an ICMP error is believed only for an address a
//! command is in flight to, and fails those commands at once (`icmp`).

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use proto::auth::Authenticator;
use proto::gcb::{self, ErrorCode, Message, Token};
use proto::rudp::{Requester, RetryPolicy, Timeout};

/// Commands in flight at once; each belongs to a pending pairing, which are
/// bounded by the relay limit, so this only guards against a runaway.
const MAX_OUTSTANDING: usize = 65_536;

/// What a command was sent for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Purpose {
    pub token: Token,
    pub kind: gcb::Kind,
    /// The client the command went to: the listener's management address,
    /// or for `ConnectFailed` the connector's.
    pub listener: SocketAddrV4,
    pub proxy: SocketAddrV4,
    /// This is the command sent once more, to another holder, after the
    /// first one failed it: it is not sent again.
    pub resent: bool,
}

/// Why a command failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No answer within the retry policy's total time.
    Silent(Duration),
    /// The client answered `Error`.
    Refused(ErrorCode, String),
    /// The client answered something that is not an answer to a command.
    Unexpected(gcb::Kind),
    /// An ICMP port unreachable came back: no socket is there any more.
    Unreachable,
}

impl Failure {
    /// What the connector of the failed connection is told: `Timeout` for
    /// a silent listener (ETIMEDOUT), the listener's own code for a refusal
    /// (ECONNREFUSED).
    pub fn code(&self) -> ErrorCode {
        match self {
            Failure::Silent(_) => ErrorCode::Timeout,
            Failure::Refused(code, _) => *code,
            Failure::Unexpected(_) => ErrorCode::Internal,
            // The process holding the socket there is gone: as far as that
            // holder goes, nothing is registered (ECONNREFUSED).
            Failure::Unreachable => ErrorCode::NotRegistered,
        }
    }

    /// The holder commanded says it does not hold the registration (any
    /// more): it is no holder of it.
    pub fn disowned(&self) -> bool {
        matches!(self, Failure::Refused(ErrorCode::NotRegistered, _))
    }

    /// Another holder may do better: this one was silent (busy, killed,
    /// its NAT mapping lost), does not hold the socket, or is gone. A
    /// refusal for its own reasons (a full accept queue, no descriptors) is
    /// the socket's, which every holder shares.
    pub fn try_another(&self) -> bool {
        matches!(self, Failure::Silent(_) | Failure::Unreachable) || self.disowned()
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Silent(total) => write!(f, "no answer within {total:?}"),
            Failure::Refused(code, detail) => write!(f, "refused: {code:?} {detail}"),
            Failure::Unexpected(kind) => write!(f, "unexpected reply {kind:?}"),
            Failure::Unreachable => write!(f, "its socket is gone (ICMP port unreachable)"),
        }
    }
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Acked(Purpose),
    /// Refused by the client, or not answered; with the command.
    Failed(Purpose, Failure, Message),
}

#[derive(Debug)]
pub struct AsyncCommands {
    requester: Requester<SocketAddrV4>,
    purposes: HashMap<u64, (Purpose, Message)>,
    /// The ids of the commands in flight by destination; no empty sets.
    to: HashMap<SocketAddrV4, BTreeSet<u64>>,
}

impl AsyncCommands {
    /// `first_id` should be random, so a restarted broker does not reuse the
    /// ids whose replies a client may still cache.
    pub fn new(first_id: u64) -> Self {
        AsyncCommands {
            requester: Requester::new(RetryPolicy::default(), first_id, MAX_OUTSTANDING),
            purposes: HashMap::new(),
            to: HashMap::new(),
        }
    }

    /// The command `id` is over: forgets it.
    fn end(&mut self, id: u64) -> Option<(Purpose, Message)> {
        let (purpose, msg) = self.purposes.remove(&id)?;
        if let Entry::Occupied(mut e) = self.to.entry(purpose.listener) {
            e.get_mut().remove(&id);
            if e.get().is_empty() {
                e.remove();
            }
        }
        Some((purpose, msg))
    }

    /// Whether a command is in flight to `to`.
    pub fn in_flight_to(&self, to: SocketAddrV4) -> bool {
        self.to.contains_key(&to)
    }

    /// The socket at `to` is gone: every command to it fails now, with its
    /// message, in the order they were sent.
    pub fn fail_to(&mut self, to: SocketAddrV4) -> Vec<Outcome> {
        let ids = self.to.get(&to).cloned().unwrap_or_default();
        ids.into_iter()
            .filter_map(|id| {
                self.requester.cancel(id);
                self.end(id)
            })
            .map(|(p, msg)| Outcome::Failed(p, Failure::Unreachable, msg))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.purposes.len()
    }

    /// Starts a command; `send` transmits the datagram now. Fails when too
    /// many are in flight or the message does not encode.
    pub fn send(
        &mut self,
        msg: &Message,
        purpose: Purpose,
        now: Instant,
        auth: Option<&Authenticator>,
        send: impl FnOnce(SocketAddrV4, &[u8]),
    ) -> Result<(), String> {
        let (id, bytes) = self
            .requester
            .send(purpose.listener, now, |id| {
                daemon_kit::auth::seal(auth, gcb::encode(msg, id))
            })
            .map_err(|e| e.to_string())?;
        send(purpose.listener, bytes);
        self.purposes.insert(id, (purpose, msg.clone()));
        self.to.entry(purpose.listener).or_default().insert(id);
        Ok(())
    }

    /// Whether `id` is a command in flight to `from`: its answer is one the
    /// broker asked for, so it is not charged to the source's rate limit.
    pub fn awaits(&self, id: u64, from: SocketAddrV4) -> bool {
        self.purposes
            .get(&id)
            .is_some_and(|(p, _)| p.listener == from)
    }

    /// A reply arrived on the command socket. `None` if it answers nothing
    /// in flight from that address (late, duplicate or forged).
    pub fn on_reply(
        &mut self,
        id: u64,
        from: SocketAddrV4,
        msg: &Message,
        now: Instant,
    ) -> Option<Outcome> {
        self.requester.on_response(id, &from, now)?;
        let (purpose, sent) = self.end(id)?;
        Some(match msg {
            Message::Ack => Outcome::Acked(purpose),
            Message::Error { code, detail } => {
                Outcome::Failed(purpose, Failure::Refused(*code, detail.clone()), sent)
            }
            other => Outcome::Failed(purpose, Failure::Unexpected(other.kind()), sent),
        })
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.requester.next_deadline()
    }

    /// Retransmits what is due through `send`; returns the commands given up.
    pub fn poll(
        &mut self,
        now: Instant,
        mut send: impl FnMut(SocketAddrV4, &[u8]),
    ) -> Vec<Outcome> {
        let mut failed = Vec::new();
        for t in self.requester.poll_timeout(now) {
            match t {
                Timeout::Retransmit { peer, bytes, .. } => send(peer, &bytes),
                Timeout::GaveUp { id, .. } => {
                    if let Some((p, sent)) = self.end(id) {
                        let total = self.requester.policy().total;
                        failed.push(Outcome::Failed(p, Failure::Silent(total), sent));
                    }
                }
            }
        }
        failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn purpose() -> Purpose {
        Purpose {
            token: Token(5),
            kind: gcb::Kind::RelayConnect,
            listener: "198.51.100.1:5000".parse().unwrap(),
            proxy: "203.0.113.1:20000".parse().unwrap(),
            resent: false,
        }
    }

    fn command() -> Message {
        let p = purpose();
        Message::RelayConnect {
            token: p.token,
            broker: "203.0.113.1:65432".parse().unwrap(),
            peer: "198.51.100.2:4000".parse().unwrap(),
            proxy: p.proxy,
        }
    }

    #[test]
    fn only_a_command_in_flight_to_that_address_is_awaited() {
        let t = Instant::now();
        let mut c = AsyncCommands::new(100);
        c.send(&command(), purpose(), t, None, |_, _| {}).unwrap();
        let listener = purpose().listener;
        assert!(c.awaits(100, listener));
        assert!(!c.awaits(101, listener), "no such command");
        assert!(
            !c.awaits(100, "198.51.100.9:5000".parse().unwrap()),
            "wrong peer"
        );
        c.on_reply(100, listener, &Message::Ack, t).unwrap();
        assert!(!c.awaits(100, listener), "answered already");
    }

    #[test]
    fn a_gone_socket_fails_every_command_to_it_and_nothing_else() {
        let t = Instant::now();
        let mut c = AsyncCommands::new(1);
        let other = Purpose {
            listener: "198.51.100.2:5000".parse().unwrap(),
            ..purpose()
        };
        let failed = Purpose {
            kind: gcb::Kind::ConnectFailed,
            ..purpose()
        };
        let told = Message::ConnectFailed {
            token: Token(5),
            code: gcb::ErrorCode::Timeout,
        };
        c.send(&command(), purpose(), t, None, |_, _| {}).unwrap();
        c.send(&command(), other, t, None, |_, _| {}).unwrap();
        c.send(&told, failed, t, None, |_, _| {}).unwrap();
        let gone = purpose().listener;
        assert!(c.in_flight_to(gone) && c.in_flight_to(other.listener));
        let outcomes = c.fail_to(gone);
        assert_eq!(
            outcomes,
            [
                Outcome::Failed(purpose(), Failure::Unreachable, command()),
                Outcome::Failed(failed, Failure::Unreachable, told),
            ]
        );
        let why = Failure::Unreachable;
        assert!(why.try_another() && !why.disowned());
        assert_eq!(why.code(), gcb::ErrorCode::NotRegistered);
        assert!(!c.in_flight_to(gone) && c.fail_to(gone).is_empty());
        assert_eq!(c.len(), 1);
        // Nothing more is sent to it; the other command goes on to its end.
        let mut sent_to = Vec::new();
        let mut ended = Vec::new();
        while let Some(at) = c.next_deadline() {
            ended.extend(c.poll(at, |to, _| sent_to.push(to)));
        }
        assert!(!sent_to.is_empty() && sent_to.iter().all(|to| *to == other.listener));
        assert!(matches!(&ended[..], [Outcome::Failed(p, Failure::Silent(_), _)] if *p == other));
        assert!(!c.in_flight_to(other.listener));
        // An answer from the gone address is late: nothing is waiting.
        assert_eq!(c.on_reply(1, gone, &Message::Ack, t), None);
    }

    #[test]
    fn ack_completes_and_duplicates_are_ignored() {
        let t = Instant::now();
        let mut c = AsyncCommands::new(100);
        let mut sent = Vec::new();
        c.send(&command(), purpose(), t, None, |to, b| {
            sent.push((to, b.to_vec()))
        })
        .unwrap();
        let (to, bytes) = &sent[0];
        assert_eq!(*to, purpose().listener);
        let (h, m) = gcb::decode(bytes).unwrap();
        assert_eq!((h.request_id, m), (100, command()));
        let stranger = "198.51.100.9:5000".parse().unwrap();
        assert_eq!(
            c.on_reply(100, stranger, &Message::Ack, t),
            None,
            "wrong peer"
        );
        assert_eq!(
            c.on_reply(100, *to, &Message::Ack, t),
            Some(Outcome::Acked(purpose()))
        );
        assert_eq!(c.on_reply(100, *to, &Message::Ack, t), None, "duplicate");
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn error_reply_and_silence_fail_the_command_with_its_message() {
        let t = Instant::now();
        let mut c = AsyncCommands::new(1);
        c.send(&command(), purpose(), t, None, |_, _| {}).unwrap();
        let refusal = Message::error(gcb::ErrorCode::NotRegistered, "gone");
        match c.on_reply(1, purpose().listener, &refusal, t) {
            Some(Outcome::Failed(p, why, sent)) => {
                assert!(p == purpose() && sent == command());
                assert!(why.disowned() && why.try_another());
                assert_eq!(why.code(), gcb::ErrorCode::NotRegistered);
                assert!(why.to_string().contains("NotRegistered"));
            }
            other => panic!("{other:?}"),
        }
        c.send(&command(), purpose(), t, None, |_, _| {}).unwrap();
        let mut resent = 0;
        let mut failed = Vec::new();
        let end = t + Duration::from_secs(10);
        while let Some(at) = c.next_deadline() {
            assert!(at <= end, "retries must end");
            failed.extend(c.poll(at, |_, _| resent += 1));
        }
        assert!(resent >= 3);
        assert_eq!(failed.len(), 1);
        match &failed[0] {
            Outcome::Failed(_, why, sent) => {
                assert!(why.try_another() && !why.disowned() && *sent == command());
                assert_eq!(why.code(), gcb::ErrorCode::Timeout, "silence is a timeout");
                assert!(why.to_string().contains("no answer"));
            }
            other => panic!("{other:?}"),
        }
        // A full accept queue is the socket's, whichever process holds it.
        let full = Failure::Refused(gcb::ErrorCode::LimitReached, "backlog".into());
        assert!(!full.try_another() && !full.disowned());
        assert_eq!(full.code(), gcb::ErrorCode::LimitReached);
        assert_eq!(
            Failure::Unexpected(gcb::Kind::Ack).code(),
            gcb::ErrorCode::Internal
        );
    }
}
