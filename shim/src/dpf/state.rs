//! What the DPF client knows about this process's sockets: the forwarded ones
//! (a UDP socket after `bind`, a TCP socket after `listen`) with their public
//! address and management socket, and the names it reports for connections
//! (accepted from a forwarded listener, or dialed through a `Query`). Pure data,
//! the same shape as the GCB registry (`gcb::registry`), so every rule is
//! unit-tested; `dpf::ops` does the I/O and keeps the fd table in step.
//!
//! # Invariants
//!
//! 1. An fd maps to at most one entry; `Entry::Forward(id)` for fd `f` holds
//!    exactly when `f` is in `forwards[id].fds`.
//! 2. A forward has at least one fd: removing its last fd removes the forward and
//!    hands it back ([`Removed::Last`]) to be deleted at `dpfd` and its
//!    management socket closed.
//! 3. No two forwards share a management socket.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddrV4;

use libc::c_int;
use proto::Proto;

use super::query::QueryCache;

pub type ForwardId = u64;

/// A socket `dpfd` forwards a public address to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// The application's fds for this socket: several after `dup`.
    pub fds: Vec<c_int>,
    pub proto: Proto,
    /// The socket's real bound address; may be 0.0.0.0.
    pub bound: SocketAddrV4,
    /// The address `dpfd` forwards to (0.0.0.0 replaced by the IP towards `dpfd`).
    pub local: SocketAddrV4,
    /// What `getsockname` reports.
    pub public: SocketAddrV4,
    /// The passive TCP socket `dpfd` probes (internal fd).
    pub mgmt_fd: c_int,
    /// Another process holds the socket too (fork, exec): closing it here must not
    /// delete the forward; `dpfd`'s probe does once the last holder is gone.
    pub shared: bool,
}

/// Names the shim reports instead of the kernel's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Names {
    /// `getsockname`: the public address a peer dialed (accepted connections).
    pub local: Option<SocketAddrV4>,
    /// `getpeername`: the public address the application dialed (hairpin-free connects).
    pub peer: Option<SocketAddrV4>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    Forward(ForwardId),
    Named(Names),
}

/// What removing an fd left behind.
#[derive(Debug, PartialEq, Eq)]
pub enum Removed {
    Nothing,
    Named,
    /// One fd of a forward that other fds still hold.
    Alias,
    /// The forward's last fd in this process.
    Last(Box<Forward>),
}

#[derive(Debug, Default)]
pub struct State {
    forwards: BTreeMap<ForwardId, Forward>,
    fds: HashMap<c_int, Entry>,
    next_id: ForwardId,
    /// `Query` answers (see `query`).
    pub cache: QueryCache,
    /// Public addresses of closed forwards, for re-listens (see `gcb::released`).
    pub released: crate::gcb::released::Released<(Proto, SocketAddrV4)>,
    /// The fork generation this state was last used in (see `gcb::lock`).
    pub generation: u32,
    /// dpfd's public IPs as far as this process knows them (see `reported`).
    pub public: super::reported::KnownPublic,
}

impl State {
    pub fn is_empty(&self) -> bool {
        self.forwards.is_empty()
    }

    /// Adds a forward under every fd in `f.fds`, taking them from older entries.
    pub fn add(&mut self, f: Forward) -> ForwardId {
        for &fd in &f.fds {
            self.remove_fd(fd);
        }
        self.next_id += 1;
        let id = self.next_id;
        for &fd in &f.fds {
            self.fds.insert(fd, Entry::Forward(id));
        }
        self.forwards.insert(id, f);
        id
    }

    pub fn forward_of(&self, fd: c_int) -> Option<ForwardId> {
        match self.fds.get(&fd)? {
            Entry::Forward(id) => Some(*id),
            Entry::Named(_) => None,
        }
    }

    pub fn forward(&self, id: ForwardId) -> Option<&Forward> {
        self.forwards.get(&id)
    }

    pub fn forwards(&self) -> impl Iterator<Item = &Forward> {
        self.forwards.values()
    }

    pub fn mgmt_fds(&self) -> Vec<c_int> {
        self.forwards.values().map(|f| f.mgmt_fd).collect()
    }

    /// The names to report for `fd`: a forward's public address, or a record.
    pub fn names(&self, fd: c_int) -> Option<Names> {
        match self.fds.get(&fd)? {
            Entry::Forward(id) => Some(Names { local: Some(self.forwards.get(id)?.public), peer: None }),
            Entry::Named(n) => Some(*n),
        }
    }

    pub fn set_names(&mut self, fd: c_int, names: Names) -> Removed {
        let removed = self.remove_fd(fd);
        self.fds.insert(fd, Entry::Named(names));
        removed
    }

    /// `new` duplicates `old`; false if `old` has no entry. `new`'s old entry
    /// must have been removed by the caller.
    pub fn alias(&mut self, old: c_int, new: c_int) -> bool {
        if old == new {
            return self.fds.contains_key(&old);
        }
        let Some(entry) = self.fds.get(&old).copied() else { return false };
        if let Entry::Forward(id) = entry {
            let Some(f) = self.forwards.get_mut(&id) else { return false };
            if !f.fds.contains(&new) {
                f.fds.push(new);
            }
        }
        self.fds.insert(new, entry);
        true
    }

    pub fn remove_fd(&mut self, fd: c_int) -> Removed {
        match self.fds.remove(&fd) {
            None => Removed::Nothing,
            Some(Entry::Named(_)) => Removed::Named,
            Some(Entry::Forward(id)) => {
                let Some(f) = self.forwards.get_mut(&id) else { return Removed::Nothing };
                f.fds.retain(|&x| x != fd);
                if !f.fds.is_empty() {
                    return Removed::Alias;
                }
                self.forwards.remove(&id).map_or(Removed::Nothing, |f| Removed::Last(Box::new(f)))
            }
        }
    }

    /// Removes forward `id` with all its fds (the socket turned active).
    pub fn take(&mut self, id: ForwardId) -> Option<Forward> {
        let f = self.forwards.remove(&id)?;
        for fd in &f.fds {
            self.fds.remove(fd);
        }
        Some(f)
    }

    pub fn mark_all_shared(&mut self) {
        self.forwards.values_mut().for_each(|f| f.shared = true);
    }

    /// A management fd moved to another number; false if not ours.
    pub fn replace_mgmt_fd(&mut self, old: c_int, new: c_int) -> bool {
        match self.forwards.values_mut().find(|f| f.mgmt_fd == old) {
            Some(f) => {
                f.mgmt_fd = new;
                true
            }
            None => false,
        }
    }

    /// The invariants of the module docs; the first broken one.
    pub fn check(&self) -> Result<(), String> {
        for (&fd, e) in &self.fds {
            if let Entry::Forward(id) = e {
                let f = self.forwards.get(id).ok_or(format!("fd {fd} names missing forward {id}"))?;
                if !f.fds.contains(&fd) {
                    return Err(format!("fd {fd} names forward {id}, which does not list it"));
                }
            }
        }
        let mut mgmt = std::collections::HashSet::new();
        for (id, f) in &self.forwards {
            if f.fds.is_empty() {
                return Err(format!("forward {id} has no fd"));
            }
            if f.fds.iter().any(|fd| self.fds.get(fd) != Some(&Entry::Forward(*id))) {
                return Err(format!("forward {id} lists an fd that names something else"));
            }
            if !mgmt.insert(f.mgmt_fd) {
                return Err(format!("management fd {} shared", f.mgmt_fd));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    fn fwd(fds: &[c_int], mgmt: c_int) -> Forward {
        Forward {
            fds: fds.to_vec(),
            proto: Proto::Udp,
            bound: addr("0.0.0.0:7000"),
            local: addr("192.0.2.10:7000"),
            public: addr("203.0.113.1:40001"),
            mgmt_fd: mgmt,
            shared: false,
        }
    }

    #[test]
    fn dups_share_a_forward_until_the_last_close() {
        let mut s = State::default();
        let id = s.add(fwd(&[5], 900));
        assert!(s.alias(5, 6));
        assert!(!s.alias(7, 8), "unknown fd");
        s.check().unwrap();
        assert_eq!(s.names(6).unwrap().local, Some(addr("203.0.113.1:40001")));
        assert_eq!(s.forward_of(6), Some(id));
        assert_eq!(s.remove_fd(5), Removed::Alias);
        match s.remove_fd(6) {
            Removed::Last(f) => assert_eq!(f.mgmt_fd, 900),
            other => panic!("{other:?}"),
        }
        assert!(s.is_empty());
        assert_eq!(s.remove_fd(6), Removed::Nothing);
        s.check().unwrap();
    }

    #[test]
    fn named_entries_and_take() {
        let mut s = State::default();
        let n = Names { local: None, peer: Some(addr("203.0.113.1:40002")) };
        assert_eq!(s.set_names(9, n), Removed::Nothing);
        assert!(s.alias(9, 10));
        assert_eq!(s.names(10), Some(n));
        let id = s.add(fwd(&[3, 4], 901));
        assert_eq!(s.set_names(4, n), Removed::Alias, "naming a forward's fd takes it over");
        s.check().unwrap();
        let f = s.take(id).unwrap();
        assert_eq!(f.fds, vec![3]);
        assert_eq!(s.forward_of(3), None);
        assert!(s.is_empty());
        s.check().unwrap();
    }

    #[test]
    fn fork_shares_and_mgmt_moves() {
        let mut s = State::default();
        s.add(fwd(&[3], 901));
        s.add(fwd(&[4], 902));
        s.mark_all_shared();
        assert!(s.forwards().all(|f| f.shared));
        assert!(s.replace_mgmt_fd(901, 950));
        assert!(!s.replace_mgmt_fd(901, 951));
        let mut m = s.mgmt_fds();
        m.sort();
        assert_eq!(m, vec![902, 950]);
        s.check().unwrap();
    }
}
