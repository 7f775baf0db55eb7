//! Broker → client commands (`ReverseConnect`, `RelayConnect`): sent from the
//! command socket to a listener's management address, so they travel back
//! through the UDP hole the client's own heartbeats keep open in its NAT
//! (paper 4.2.1), and retransmitted by the proto [`Requester`] until the
//! listener answers `Ack` or the retry policy gives up.
//!
//! The client answers on the command socket, where its replies are told
//! apart from requests by the header's response flag and handed to
//! [`AsyncCommands::on_reply`]. Each command carries the pairing token it
//! serves, so the daemon can cancel that pairing when the command fails.

use std::collections::HashMap;
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
}

impl Failure {
    /// Whether the registration the command was for has no owner any more:
    /// the client is silent (killed, or its host gone) or says the socket is
    /// not registered. Other refusals (e.g. out of descriptors) are passing.
    pub fn owner_gone(&self) -> bool {
        matches!(
            self,
            Failure::Silent(_) | Failure::Refused(ErrorCode::NotRegistered, _)
        )
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Silent(total) => write!(f, "no answer within {total:?}"),
            Failure::Refused(code, detail) => write!(f, "refused: {code:?} {detail}"),
            Failure::Unexpected(kind) => write!(f, "unexpected reply {kind:?}"),
        }
    }
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Acked(Purpose),
    /// Refused by the client, or not answered.
    Failed(Purpose, Failure),
}

#[derive(Debug)]
pub struct AsyncCommands {
    requester: Requester<SocketAddrV4>,
    purposes: HashMap<u64, Purpose>,
}

impl AsyncCommands {
    /// `first_id` should be random, so a restarted broker does not reuse the
    /// ids whose replies a client may still cache.
    pub fn new(first_id: u64) -> Self {
        AsyncCommands {
            requester: Requester::new(RetryPolicy::default(), first_id, MAX_OUTSTANDING),
            purposes: HashMap::new(),
        }
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
                crate::auth::seal(auth, gcb::encode(msg, id))
            })
            .map_err(|e| e.to_string())?;
        send(purpose.listener, bytes);
        self.purposes.insert(id, purpose);
        Ok(())
    }

    /// Whether `id` is a command in flight to `from`: its answer is one the
    /// broker asked for, so it is not charged to the source's rate limit.
    pub fn awaits(&self, id: u64, from: SocketAddrV4) -> bool {
        self.purposes.get(&id).is_some_and(|p| p.listener == from)
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
        let purpose = self.purposes.remove(&id)?;
        Some(match msg {
            Message::Ack => Outcome::Acked(purpose),
            Message::Error { code, detail } => {
                Outcome::Failed(purpose, Failure::Refused(*code, detail.clone()))
            }
            other => Outcome::Failed(purpose, Failure::Unexpected(other.kind())),
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
                    if let Some(p) = self.purposes.remove(&id) {
                        let total = self.requester.policy().total;
                        failed.push(Outcome::Failed(p, Failure::Silent(total)));
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
    fn error_reply_and_silence_fail_the_command() {
        let t = Instant::now();
        let mut c = AsyncCommands::new(1);
        c.send(&command(), purpose(), t, None, |_, _| {}).unwrap();
        let refusal = Message::error(gcb::ErrorCode::NotRegistered, "gone");
        match c.on_reply(1, purpose().listener, &refusal, t) {
            Some(Outcome::Failed(p, why)) => {
                assert!(p == purpose() && why.owner_gone());
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
        assert!(
            matches!(&failed[0], Outcome::Failed(_, why) if why.owner_gone() && why.to_string().contains("no answer"))
        );
        let busy = Failure::Refused(gcb::ErrorCode::Internal, "EMFILE".into());
        assert!(
            !busy.owner_gone(),
            "a passing refusal keeps the registration"
        );
    }
}
