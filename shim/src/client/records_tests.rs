//! Unit tests of the shared fd bookkeeping, on a minimal record.

use super::*;

#[derive(Debug, PartialEq, Eq)]
struct Rec {
    fds: Vec<c_int>,
    mgmt: c_int,
    local: Option<SocketAddrV4>,
}

impl Record for Rec {
    fn fds(&self) -> &Vec<c_int> {
        &self.fds
    }
    fn fds_mut(&mut self) -> &mut Vec<c_int> {
        &mut self.fds
    }
    fn mgmt_fd(&self) -> c_int {
        self.mgmt
    }
    fn names(&self) -> Names {
        Names { local: self.local, peer: None }
    }
}

fn addr(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

fn rec(fds: &[c_int], mgmt: c_int) -> Rec {
    Rec { fds: fds.to_vec(), mgmt, local: None }
}

#[test]
fn dups_share_a_record_until_the_last_close() {
    let mut t = FdRecords::default();
    let (id, _) = t.add(rec(&[5], 900));
    t.check().unwrap();
    assert_eq!(t.id_of(5), Some(id));
    assert_eq!(t.names(5), Some(Names::default()));
    t.get_mut(id).unwrap().local = Some(addr("203.0.113.10:20001"));
    assert_eq!(t.names(5).unwrap().local, Some(addr("203.0.113.10:20001")));
    assert!(t.alias(5, 6));
    assert!(t.alias(6, 7));
    assert!(t.alias(7, 7), "an fd is its own duplicate");
    assert!(!t.alias(3, 4), "nothing to copy");
    t.check().unwrap();
    assert_eq!(t.get(id).unwrap().fds, vec![5, 6, 7]);
    assert_eq!(t.remove_fd(5), Removed::Alias);
    assert_eq!(t.remove_fd(7), Removed::Alias);
    t.check().unwrap();
    match t.remove_fd(6) {
        Removed::Last(r) => assert_eq!(r.mgmt, 900),
        other => panic!("{other:?}"),
    }
    assert_eq!(t.remove_fd(6), Removed::Nothing);
    assert!(t.is_empty());
    assert!(t.mgmt_fds().is_empty());
    t.check().unwrap();
}

#[test]
fn names_replace_and_dup_onto_a_record_fd() {
    let mut t = FdRecords::default();
    let (id, _) = t.add(rec(&[5], 900));
    let n = Names { local: Some(addr("203.0.113.10:20001")), peer: Some(addr("198.51.100.9:5555")) };
    assert_eq!(t.set_names(8, n), Removed::Nothing);
    assert_eq!(t.names(8), Some(n));
    // dup2(8, 5): the caller removes 5 first (its record's last fd), then aliases.
    assert!(matches!(t.remove_fd(5), Removed::Last(_)));
    assert!(t.alias(8, 5));
    assert_eq!(t.names(5), Some(n));
    assert!(t.get(id).is_none());
    t.check().unwrap();
    // Naming a record's fd takes it from the record.
    let (id2, _) = t.add(rec(&[10, 11], 901));
    assert_eq!(t.set_names(10, n), Removed::Alias);
    assert_eq!(t.get(id2).unwrap().fds, vec![11]);
    // A duplicate onto an fd of another record leaves both consistent.
    assert!(t.alias(11, 8));
    assert_eq!(t.get(id2).unwrap().fds, vec![11, 8]);
    t.check().unwrap();
}

#[test]
fn add_takes_fds_from_old_entries() {
    let mut t = FdRecords::default();
    t.set_names(5, Names::default());
    let (a, removed) = t.add(rec(&[5], 900));
    assert!(matches!(removed[..], [Removed::Named]));
    let (b, removed) = t.add(rec(&[5, 6], 901));
    assert_ne!(a, b);
    assert!(matches!(&removed[..], [Removed::Last(r), Removed::Nothing] if r.mgmt == 900));
    let mut m = t.mgmt_fds();
    m.sort();
    assert_eq!(m, vec![901]);
    t.check().unwrap();
    t.add(rec(&[7], 901));
    assert!(t.check().unwrap_err().contains("shared"));
}

#[test]
fn a_second_socket_joins_a_record_and_take_removes_all() {
    let mut t = FdRecords::default();
    let (id, _) = t.add(rec(&[5], 900));
    assert!(t.add_fd(id, 8));
    assert!(!t.add_fd(id + 1, 9), "no such record");
    t.check().unwrap();
    assert_eq!(t.id_of(8), Some(id));
    assert_eq!(t.remove_fd(5), Removed::Alias, "the first socket closed: still there");
    assert!(t.alias(8, 9));
    let r = t.take(id).unwrap();
    assert_eq!(r.fds, vec![8, 9]);
    assert_eq!(t.id_of(8), None);
    assert_eq!(t.names(9), None);
    assert!(t.is_empty());
    t.check().unwrap();
}
