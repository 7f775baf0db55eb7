//! `connect` in DPF mode asks `dpfd` whether the destination is one of its own
//! public addresses (`Query`). If it is, the application's socket connects to the
//! private address behind it instead: no hairpin through the gateway's NAT, and
//! the peer sees the real source. Answers, negative ones and silence included,
//! are cached per (proto, address) for [`super::cache::TTL`] so only the first connect to an
//! address pays the round trip; the cache is bounded ([`super::cache::CAPACITY`]).
//!
//! The TTL is short because a public port can be given to another socket once
//! its forward is gone; a stale positive answer costs one refused connect.

use std::net::SocketAddrV4;
use std::time::Instant;

use proto::dpf::Message;
use proto::rudp::RetryPolicy;
use proto::Proto;

use crate::client::exchange::NoAnswer;

/// The DPF codec for the shared exchange.
pub const CODEC: crate::client::exchange::Codec<Message> = crate::client::exchange::Codec {
    encode: crate::client::seal::dpf_encode,
    decode: crate::client::seal::dpf_decode,
    is_response: Message::is_response,
};

/// Whether a connect to `dest` is worth a `Query`: not loopback or otherwise local.
pub fn worth_asking(dest: SocketAddrV4) -> bool {
    let ip = dest.ip();
    !(ip.is_loopback() || ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || dest.port() == 0)
}

/// The private address behind `public`, if `dpfd` forwards it; cached.
pub fn resolve(proto: Proto, public: SocketAddrV4) -> Option<SocketAddrV4> {
    let now = Instant::now();
    if let Some(answer) = super::state::with(|st| st.cache.get(proto, public, now)) {
        return answer;
    }
    let dpfd = super::mode::server()?;
    let answer = match crate::client::exchange::open(dpfd) {
        Ok((sock, _)) => match crate::client::exchange::exchange(sock.raw(), dpfd, RetryPolicy::probe(), &CODEC, &Message::Query { proto, public }) {
            Ok(Message::QueryOk { local }) => {
                // One line per fresh answer (cached ones repeat it silently), so
                // an operator can see why a peer sees a private source address.
                log!(Info, "dpfd forwards {proto} {public} to {local}; connecting there directly");
                Some(local)
            }
            Ok(Message::QueryNak) => None,
            Ok(other) => {
                log!(Debug, "dpfd {dpfd} answered a Query for {proto} {public} with {:?}", other.kind());
                None
            }
            Err(e) => {
                log!(Debug, "dpfd {dpfd} gave no answer to a Query for {proto} {public}: {}", NoAnswer::describe(e));
                None
            }
        },
        Err(e) => {
            log!(Debug, "cannot reach dpfd {dpfd}: {}", std::io::Error::from_raw_os_error(e));
            None
        }
    };
    super::state::with(|st| st.cache.insert(proto, public, answer, Instant::now()));
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn loopback_and_wildcards_are_not_asked() {
        assert!(!worth_asking(a("127.0.0.1:80")));
        assert!(!worth_asking(a("0.0.0.0:80")));
        assert!(!worth_asking(a("203.0.113.1:0")));
        assert!(!worth_asking(a("224.0.0.1:80")));
        assert!(worth_asking(a("203.0.113.1:40000")));
        assert!(worth_asking(a("192.0.2.10:7000")));
    }
}
