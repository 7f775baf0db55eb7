//! DPF's part of a `bind` to a reported address (`client::pinned` has the
//! steps): which IPs are dpfd's public ones, and the forward from exactly the
//! address the program bound.
//!
//! dpfd's public IPs are not configured in the client (`DPF_INAGENT` names the
//! gateway's private side), so they are learned: from every `ForwardOk` of this
//! process, and, the first time a bind names an IP not learned yet, from
//! dpfd's answer to `Info` (its whole list, kept for the life of the process:
//! a gateway's public addresses do not come and go). A process restarted with
//! an advertised address pays that one exchange, and a program binding some
//! other foreign address by mistake pays it once too; no answer is not kept,
//! so the next such bind asks again.
//!
//! The socket is bound to this host's IP towards dpfd (the address behind the
//! public one) and forwarded at `bind`, TCP included (a TCP socket is otherwise
//! forwarded at `listen`), so a public port that cannot be had fails the
//! `bind`. `listen` finds the forward made and asks for nothing more; a socket
//! that connects instead loses its forward, as any forwarded socket does.

use std::net::{Ipv4Addr, SocketAddrV4};

use libc::c_int;
use proto::dpf::{Message, MAX_PUBLIC_IPS};
use proto::rudp::RetryPolicy;

use super::forward::{self, NotForwarded};
use super::query::CODEC;
use crate::client::exchange;
use crate::client::pinned::{self, Pinned};
use crate::gcb::mgmt;

/// What this process knows of dpfd's public IPs.
#[derive(Debug, Default)]
pub struct KnownPublic {
    ips: Vec<Ipv4Addr>,
    /// `ips` is dpfd's own list (`InfoOk`), not only what forwards showed.
    complete: bool,
}

impl KnownPublic {
    /// A forward was made from `ip`.
    pub fn learn(&mut self, ip: Ipv4Addr) {
        if !self.ips.contains(&ip) && self.ips.len() < MAX_PUBLIC_IPS {
            self.ips.push(ip);
        }
    }

    /// dpfd's whole list.
    pub fn learn_all(&mut self, ips: Vec<Ipv4Addr>) {
        self.ips = ips;
        self.ips.truncate(MAX_PUBLIC_IPS);
        self.complete = true;
    }

    /// `Some(answer)` when known without asking dpfd.
    pub fn is_public(&self, ip: Ipv4Addr) -> Option<bool> {
        if self.ips.contains(&ip) {
            Some(true)
        } else {
            self.complete.then_some(false)
        }
    }
}

/// Whether `ip` is one of dpfd's public IPs, asking dpfd if this process does
/// not know yet. `false` when dpfd cannot be asked.
fn is_public(ip: Ipv4Addr) -> bool {
    if let Some(known) = super::with(|st| st.public.is_public(ip)) {
        return known;
    }
    let Some(dpfd) = super::server() else { return false };
    let answer = mgmt::open(dpfd).map_err(|_| None).and_then(|(sock, _)| {
        exchange::exchange(sock.raw(), dpfd, RetryPolicy::default(), &CODEC, &Message::Info).map_err(Some)
    });
    match answer {
        Ok(Message::InfoOk { public_ips }) => {
            log!(Debug, "dpfd {dpfd} forwards from {public_ips:?}");
            super::with(|st| {
                st.public.learn_all(public_ips);
                st.public.is_public(ip) == Some(true)
            })
        }
        Ok(other) => {
            log!(Warn, "dpfd {dpfd} answered Info with {:?}; a bind to {ip} fails as the kernel says", other.kind());
            false
        }
        Err(e) => {
            let why = e.map_or("cannot reach it".to_string(), |e| e.describe());
            log!(Warn, "dpfd {dpfd} did not say its public addresses ({why}); a bind to {ip} fails as the kernel says");
            false
        }
    }
}

/// Makes `fd`'s bind to `want` good if `want`'s IP is one of dpfd's (module docs).
pub fn pin(fd: c_int, want: SocketAddrV4) -> Pinned {
    let Some(proto) = super::ops::proto_of(fd) else { return Pinned::NotOurs };
    if !is_public(*want.ip()) {
        return Pinned::NotOurs;
    }
    // The local address behind the public one: this host's IP towards dpfd,
    // the one dpfd forwards to.
    let Some(dpfd) = super::server() else { return Pinned::NotOurs };
    let towards = match mgmt::open(dpfd) {
        Ok((_, towards)) => towards,
        Err(e) => return Pinned::Failed(if crate::gcb::connector::out_of_resources(e) { e } else { libc::EADDRNOTAVAIL }),
    };
    if let Err(e) = pinned::bind_local(fd, *towards.ip()) {
        return Pinned::Failed(e);
    }
    match forward::request(fd, proto, Some(want)) {
        Ok(_) => Pinned::Done,
        Err(why) => {
            pinned::unbind(fd);
            Pinned::Failed(match why {
                NotForwarded::PortUnavailable => pinned::refusal_errno(true),
                NotForwarded::Other(e) => e,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_ips_are_known_from_forwards_and_only_dpfd_says_no() {
        let (gw, other): (Ipv4Addr, Ipv4Addr) = ("203.0.113.1".parse().unwrap(), "203.0.113.3".parse().unwrap());
        let mut k = KnownPublic::default();
        assert_eq!(k.is_public(gw), None, "nothing known: ask");
        k.learn(gw);
        k.learn(gw);
        assert_eq!((k.is_public(gw), k.is_public(other)), (Some(true), None), "a forward proves only its own IP");
        k.learn_all(vec![gw]);
        assert_eq!(k.is_public(other), Some(false), "dpfd's own list is the whole truth");
        k.learn_all(vec![gw; MAX_PUBLIC_IPS + 5]);
        assert_eq!(k.ips.len(), MAX_PUBLIC_IPS, "bounded");
    }
}
