//! The fd bookkeeping both clients share: which application fds hold one of the
//! client's records (a GCB listener, a DPF forward) and which carry names the
//! shim reports instead of the kernel's. A record is held by several fds after
//! `dup` (and, in GCB, by every UDP socket bound to one address), and goes back
//! to its owner when its last fd goes, for the owner to wind it up. Pure data:
//! no system calls, so every rule is unit-tested here once for both modes.
//!
//! # Invariants
//!
//! 1. An fd maps to at most one entry. `Entry::Record(id)` for fd `f` holds
//!    exactly when `f` is in `records[id].fds()`.
//! 2. A record has at least one fd: removing its last fd removes the record and
//!    hands it back ([`Removed::Last`]).
//! 3. No two records share a management socket ([`Record::mgmt_fd`]); a
//!    record without one yet says -1.
//!
//! [`FdRecords::check`] verifies all three; the tests run it after every step.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddrV4;

use libc::c_int;

pub type RecordId = u64;

/// What the table needs of a record.
pub trait Record {
    /// The application's fds that hold this record.
    fn fds(&self) -> &Vec<c_int>;
    fn fds_mut(&mut self) -> &mut Vec<c_int>;
    /// The record's own management socket (an internal fd).
    fn mgmt_fd(&self) -> c_int;
    /// The names reported for every fd of the record.
    fn names(&self) -> Names;
}

/// The names the shim reports for a socket instead of the kernel's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Names {
    /// `getsockname`: the address a peer dials (GCB proxy, DPF public address).
    pub local: Option<SocketAddrV4>,
    /// `getpeername`: the original peer of a brokered connection, or the
    /// address the application dialed when the shim dialed another one.
    pub peer: Option<SocketAddrV4>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    Record(RecordId),
    Named(Names),
}

/// What removing an fd left behind.
#[derive(Debug, PartialEq, Eq)]
pub enum Removed<R> {
    /// The fd was not in the table.
    Nothing,
    /// A named connection's entry is gone.
    Named,
    /// One fd of a record that other fds still hold.
    Alias,
    /// The record's last fd: the record, for the caller to wind up.
    Last(Box<R>),
}

#[derive(Debug)]
pub struct FdRecords<R> {
    records: BTreeMap<RecordId, R>,
    fds: HashMap<c_int, Entry>,
    next_id: RecordId,
}

impl<R> Default for FdRecords<R> {
    fn default() -> Self {
        FdRecords { records: BTreeMap::new(), fds: HashMap::new(), next_id: 1 }
    }
}

impl<R: Record> FdRecords<R> {
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Adds a record under every fd in `record.fds()`; an fd that held something
    /// else before is taken from it first, and what that left is returned.
    pub fn add(&mut self, record: R) -> (RecordId, Vec<Removed<R>>) {
        let removed = record.fds().iter().map(|&fd| self.remove_fd(fd)).collect();
        let id = self.next_id;
        self.next_id += 1;
        for &fd in record.fds() {
            self.fds.insert(fd, Entry::Record(id));
        }
        self.records.insert(id, record);
        (id, removed)
    }

    /// The record `fd` holds, if any.
    pub fn id_of(&self, fd: c_int) -> Option<RecordId> {
        match self.fds.get(&fd)? {
            Entry::Record(id) => Some(*id),
            Entry::Named(_) => None,
        }
    }

    pub fn get(&self, id: RecordId) -> Option<&R> {
        self.records.get(&id)
    }

    pub fn get_mut(&mut self, id: RecordId) -> Option<&mut R> {
        self.records.get_mut(&id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (RecordId, &R)> {
        self.records.iter().map(|(id, r)| (*id, r))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (RecordId, &mut R)> {
        self.records.iter_mut().map(|(id, r)| (*id, r))
    }

    /// Every management fd, for the responder's poll set.
    pub fn mgmt_fds(&self) -> Vec<c_int> {
        self.records.values().map(|r| r.mgmt_fd()).filter(|&fd| fd >= 0).collect()
    }

    /// The names to report for `fd`: its record's, or its own entry's.
    pub fn names(&self, fd: c_int) -> Option<Names> {
        match self.fds.get(&fd)? {
            Entry::Record(id) => Some(self.records.get(id)?.names()),
            Entry::Named(n) => Some(*n),
        }
    }

    /// Records names for `fd`, replacing whatever it held before.
    pub fn set_names(&mut self, fd: c_int, names: Names) -> Removed<R> {
        let removed = self.remove_fd(fd);
        self.fds.insert(fd, Entry::Named(names));
        removed
    }

    /// `new` is a duplicate of `old` (dup, dup2, dup3, F_DUPFD): it holds the
    /// same record or carries the same names. Returns false if `old` has no
    /// entry. Whatever `new` held before must have been removed (and wound up)
    /// by the caller; anything left is dropped here.
    pub fn alias(&mut self, old: c_int, new: c_int) -> bool {
        if old == new {
            return self.fds.contains_key(&old);
        }
        let Some(entry) = self.fds.get(&old).copied() else { return false };
        self.remove_fd(new);
        if let Entry::Record(id) = entry {
            let Some(r) = self.records.get_mut(&id) else { return false };
            r.fds_mut().push(new);
        }
        self.fds.insert(new, entry);
        true
    }

    /// `fd`, a new socket, joins record `id`; false if there is no such record.
    pub fn add_fd(&mut self, id: RecordId, fd: c_int) -> bool {
        if !self.records.contains_key(&id) {
            return false;
        }
        self.remove_fd(fd);
        let Some(r) = self.records.get_mut(&id) else { return false };
        r.fds_mut().push(fd);
        self.fds.insert(fd, Entry::Record(id));
        true
    }

    /// Forgets `fd` (closed, or replaced by a dup onto it).
    pub fn remove_fd(&mut self, fd: c_int) -> Removed<R> {
        match self.fds.remove(&fd) {
            None => Removed::Nothing,
            Some(Entry::Named(_)) => Removed::Named,
            Some(Entry::Record(id)) => {
                let Some(r) = self.records.get_mut(&id) else { return Removed::Nothing };
                r.fds_mut().retain(|&f| f != fd);
                if !r.fds().is_empty() {
                    return Removed::Alias;
                }
                self.records.remove(&id).map_or(Removed::Nothing, |r| Removed::Last(Box::new(r)))
            }
        }
    }

    /// Removes record `id` with all its fds.
    pub fn take(&mut self, id: RecordId) -> Option<R> {
        let r = self.records.remove(&id)?;
        for fd in r.fds() {
            self.fds.remove(fd);
        }
        Some(r)
    }

    /// Checks the invariants of the module docs; a description of the first broken one.
    pub fn check(&self) -> Result<(), String> {
        for (&fd, entry) in &self.fds {
            if let Entry::Record(id) = entry {
                let r = self.records.get(id).ok_or(format!("fd {fd} names missing record {id}"))?;
                if !r.fds().contains(&fd) {
                    return Err(format!("fd {fd} names record {id}, which does not list it"));
                }
            }
        }
        let mut mgmt = HashSet::new();
        for (id, r) in &self.records {
            if r.fds().is_empty() {
                return Err(format!("record {id} has no fd"));
            }
            if let Some(fd) = r.fds().iter().find(|fd| self.fds.get(fd) != Some(&Entry::Record(*id))) {
                return Err(format!("record {id} lists fd {fd}, which names something else"));
            }
            if r.mgmt_fd() >= 0 && !mgmt.insert(r.mgmt_fd()) {
                return Err(format!("management fd {} is shared", r.mgmt_fd()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "records_tests.rs"]
mod tests;
