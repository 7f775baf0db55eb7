//! Public addresses this process gave up when it closed a registered listener
//! (GCB proxy addresses) or a forwarded socket (DPF forwards), by local address.
//!
//! Some programs close their listener and open a new one on the same local
//! port between sessions (iperf3 does after every test). The new listener must
//! keep the address clients already know, so its registration asks the broker
//! for the old proxy port (`desired_port`), or dpfd for the old public address
//! (`desired`); the broker keeps a released port for its previous owner (broker
//! `ports`), so it is normally granted. Only recent releases are kept: enough
//! for a program's own re-listen. `K` is the key: the local address, with the
//! protocol in DPF mode.

use std::collections::VecDeque;
use std::net::SocketAddrV4;

/// Releases remembered at most; the oldest is forgotten first.
const KEPT: usize = 32;

#[derive(Debug)]
pub struct Released<K = SocketAddrV4> {
    /// (registered local address, public address), oldest first.
    entries: VecDeque<(K, SocketAddrV4)>,
}

impl<K> Default for Released<K> {
    fn default() -> Self {
        Released { entries: VecDeque::new() }
    }
}

impl<K: PartialEq> Released<K> {
    /// The listener registered as `local` had `proxy` and is gone.
    pub fn remember(&mut self, local: K, proxy: SocketAddrV4) {
        self.entries.retain(|(l, _)| *l != local);
        if self.entries.len() == KEPT {
            self.entries.pop_front();
        }
        self.entries.push_back((local, proxy));
    }

    /// The proxy a listener on `local` had, for a new listener there to ask for.
    pub fn take(&mut self, local: K) -> Option<SocketAddrV4> {
        let at = self.entries.iter().position(|(l, _)| *l == local)?;
        self.entries.remove(at).map(|(_, proxy)| proxy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_listener_gets_the_last_proxy_of_its_local_address_once() {
        let mut r: Released = Released::default();
        let (a, b): (SocketAddrV4, SocketAddrV4) = ("192.0.2.10:5201".parse().unwrap(), "192.0.2.10:5202".parse().unwrap());
        r.remember(a, "203.0.113.10:20001".parse().unwrap());
        r.remember(a, "203.0.113.10:20002".parse().unwrap());
        r.remember(b, "203.0.113.10:20003".parse().unwrap());
        assert_eq!(r.take(a), Some("203.0.113.10:20002".parse().unwrap()), "the latest release wins");
        assert_eq!(r.take(a), None, "taken once");
        for port in 0..KEPT as u16 * 2 {
            r.remember(SocketAddrV4::new([192, 0, 2, 11].into(), port), "203.0.113.10:1".parse().unwrap());
        }
        assert_eq!(r.entries.len(), KEPT, "bounded");
        assert_eq!(r.take(b), None, "the oldest went first");
    }
}
