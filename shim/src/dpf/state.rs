//! What the DPF client knows about this process's sockets: the forwarded ones
//! (a UDP socket after `bind`, a TCP socket after `listen`) with their public
//! address and management socket, and the names it reports for connections
//! (accepted from a forwarded listener, or dialed through a `Query`). Pure data,
//! kept in the fd-keyed table the GCB registry uses too (`client::records`), so
//! every rule is unit-tested; `dpf::ops` does the I/O and keeps the fd table in
//! step.
//!
//! # Invariants
//!
//! Those of `client::records`: an fd holds at most one forward or names entry;
//! a forward has at least one fd (removing its last fd hands it back as
//! [`Removed::Last`], to be deleted at `dpfd` and its management socket
//! closed); no two forwards share a management socket.
//!
//! Also here, since every module takes the state through it: the one lock
//! ([`with`], which gives a forked child's first use its own share, and the
//! `fork` handlers' part), and the marker through which the modules below
//! start the responder ([`ensure_responder`]).

use std::net::SocketAddrV4;

use libc::c_int;
use proto::Proto;

use super::cache::QueryCache;
use crate::client::lock::{self, Lock};
use crate::client::records::{self, FdRecords, Record, RecordId};

pub use crate::client::records::Names;

pub type ForwardId = RecordId;

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
    /// delete the forward; `dpfd`'s probe does once the last holder is gone
    /// (a standard gateway's mapping: see `pcp::wind`).
    pub shared: bool,
    /// The port-mapping client when a standard gateway made the forward; its
    /// `mgmt_fd` is then the UDP socket to the gateway (-1 until one is needed).
    pub pcp: Option<Box<super::pcp::side::Mapping>>,
}

impl Record for Forward {
    fn fds(&self) -> &Vec<c_int> {
        &self.fds
    }
    fn fds_mut(&mut self) -> &mut Vec<c_int> {
        &mut self.fds
    }
    fn mgmt_fd(&self) -> c_int {
        self.mgmt_fd
    }
    /// The public address a peer dials.
    fn names(&self) -> Names {
        Names { local: Some(self.public), peer: None }
    }
}

/// What removing an fd left behind; `Last` carries the forward to delete.
pub type Removed = records::Removed<Forward>;

#[derive(Debug, Default)]
pub struct State {
    /// Forwards by id and what each fd holds (see `client::records`).
    forwards: FdRecords<Forward>,
    /// `Query` answers (see `query`).
    pub cache: QueryCache,
    /// Public addresses of closed forwards, for re-listens (see `client::released`).
    pub released: crate::client::released::Released<(Proto, SocketAddrV4)>,
    /// The fork generation this state was last used in (see `client::lock`).
    pub generation: u32,
    /// A standard gateway's announcements and the mappings being wound up.
    pub pcp: super::pcp::side::Side,
}

impl State {
    pub fn is_empty(&self) -> bool {
        self.forwards.is_empty()
    }

    /// Adds a forward under every fd in `f.fds`, taking them from older entries.
    pub fn add(&mut self, f: Forward) -> ForwardId {
        self.forwards.add(f).0
    }

    pub fn forward_of(&self, fd: c_int) -> Option<ForwardId> {
        self.forwards.id_of(fd)
    }

    pub fn forward(&self, id: ForwardId) -> Option<&Forward> {
        self.forwards.get(id)
    }

    pub fn forwards(&self) -> impl Iterator<Item = &Forward> {
        self.forwards.iter().map(|(_, f)| f)
    }

    pub fn forwards_mut(&mut self) -> impl Iterator<Item = &mut Forward> {
        self.forwards.iter_mut().map(|(_, f)| f)
    }

    pub fn mgmt_fds(&self) -> Vec<c_int> {
        self.forwards.mgmt_fds()
    }

    /// The names to report for `fd`: a forward's public address, or a record.
    pub fn names(&self, fd: c_int) -> Option<Names> {
        self.forwards.names(fd)
    }

    pub fn set_names(&mut self, fd: c_int, names: Names) -> Removed {
        self.forwards.set_names(fd, names)
    }

    /// `new` duplicates `old`; false if `old` has no entry. `new`'s old entry
    /// must have been removed by the caller.
    pub fn alias(&mut self, old: c_int, new: c_int) -> bool {
        self.forwards.alias(old, new)
    }

    pub fn remove_fd(&mut self, fd: c_int) -> Removed {
        self.forwards.remove_fd(fd)
    }

    /// Removes forward `id` with all its fds (the socket turned active).
    pub fn take(&mut self, id: ForwardId) -> Option<Forward> {
        self.forwards.take(id)
    }

    pub fn mark_all_shared(&mut self) {
        self.forwards.iter_mut().for_each(|(_, f)| f.shared = true);
    }

    /// A management fd moved to another number; false if not ours.
    pub fn replace_mgmt_fd(&mut self, old: c_int, new: c_int) -> bool {
        match self.forwards.iter_mut().find(|(_, f)| f.mgmt_fd == old) {
            Some((_, f)) => {
                f.mgmt_fd = new;
                true
            }
            None => false,
        }
    }

    /// The invariants of the module docs; the first broken one.
    pub fn check(&self) -> Result<(), String> {
        self.forwards.check()
    }
}

static STATE: Lock<Option<State>> = Lock::new(None);

/// Runs `f` on the state, locked. `f` must not block and must not call `with`.
pub fn with<R>(f: impl FnOnce(&mut State) -> R) -> R {
    let mut guard = STATE.lock();
    let st = guard.get_or_insert_with(State::default);
    let generation = lock::fork_generation();
    if st.generation != generation {
        // First use in a forked child: the parent holds every socket too,
        // and the sockets that talk to a standard gateway are its own.
        st.generation = generation;
        st.mark_all_shared();
        forked(st);
    }
    let r = f(st);
    super::mode::set_active(!st.is_empty());
    r
}

/// `pthread_atfork` prepare handler (DPF mode).
pub fn prepare_fork() {
    lock::prepare_fork(&STATE, |st| {
        if let Some(st) = st {
            st.mark_all_shared();
        }
    });
}

/// `pthread_atfork` parent and child handlers (DPF mode).
pub fn after_fork(in_child: bool) {
    if in_child {
        lock::note_fork_in_child();
    }
    lock::after_fork(&STATE);
}

/// A forked child's first use of the state: the parent's sockets to the
/// gateway are the parent's (an answer read here would be lost to it); the
/// child opens its own when it has something to send, and leaves the
/// parent's deletes to the parent.
fn forked(st: &mut State) {
    for f in st.forwards_mut().filter(|f| f.pcp.is_some() && f.mgmt_fd >= 0) {
        crate::internal::release(f.mgmt_fd);
        f.mgmt_fd = -1;
    }
    if let Some(fd) = st.pcp.announce_fd.take() {
        crate::internal::release(fd);
    }
    st.pcp.announce_tried = false;
    for w in st.pcp.winding.drain(..) {
        if w.sock >= 0 {
            crate::internal::release(w.sock);
        }
    }
}

/// The DPF client's work on the responder thread. Its `Duties` are
/// implemented in [`super::serve`], at the top of the client, so the modules below
/// start the thread through [`ensure_responder`] without importing the code
/// it runs there.
pub struct Duty;

/// Starts this process's responder if needed, and wakes it for new work.
pub fn ensure_responder() {
    crate::responder::ensure::<Duty>();
    crate::responder::wake();
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
            pcp: None,
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
