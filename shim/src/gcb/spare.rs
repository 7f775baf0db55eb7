//! The spare listener for reversed connections: one kept in the registry
//! between connects, so a connect that needs one seldom opens it
//! (`reversal_listener`). Taking it and giving it back lock the registry.

use std::net::Ipv4Addr;

use super::reversal_listener::{open, TempListener};
use crate::client::family::Family;
use crate::client::sys::Errno;

/// A listener on `ip` of `family` (the application socket's, since the
/// connection it accepts takes that socket's place): the spare if it fits and
/// no other connect has it, else a new one.
pub fn take(ip: Ipv4Addr, family: Family) -> Result<TempListener, Errno> {
    let spare = super::state::with(|reg| match &reg.spare_listener {
        Some(t) if t.fits(ip, family) => reg.spare_listener.take(),
        _ => None,
    });
    match spare {
        Some(t) => {
            t.lend();
            Ok(t)
        }
        None => open(ip, family),
    }
}

/// Keeps `t` as the spare, after a connect that left nothing queued on it
/// (a spare already there, given back by a concurrent connect, is closed).
pub fn give_back(mut t: TempListener) {
    t.keep();
    // Dropped (closed) outside the lock if the slot is taken.
    let _other = super::state::with(|reg| reg.spare_listener.replace(t));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fdtable::{self, Kind};
    use crate::gcb::reversal_listener::{forget_in_child, DEFERRED_HELLO_WAIT};

    #[test]
    fn a_spare_is_lent_to_one_connect_at_a_time_and_kept_once() {
        let ip = Ipv4Addr::LOCALHOST;
        super::super::state::with(|reg| reg.spare_listener = None);
        let first = take(ip, Family::V4).unwrap();
        let second = take(ip, Family::V4).unwrap();
        assert_ne!(
            first.at, second.at,
            "a concurrent connect gets a listener of its own"
        );
        let second_at = second.at;
        give_back(first);
        let spare_fd =
            super::super::state::with(|reg| reg.spare_listener.as_ref().map(TempListener::raw)).unwrap();
        assert_eq!(
            fdtable::kind(spare_fd),
            Kind::Internal,
            "a spare is hidden from the application"
        );
        give_back(second);
        let again = take(ip, Family::V4).unwrap();
        assert_eq!(
            again.at, second_at,
            "the spare, the one given back last, is lent out again"
        );
        assert_eq!(fdtable::kind(again.raw()), Kind::Plain);
        assert_ne!(
            take(ip, Family::Mapped).unwrap().at,
            again.at,
            "another family gets its own"
        );
        assert!(
            again.hello_wait() <= DEFERRED_HELLO_WAIT,
            "this kernel defers accepting"
        );
        drop(again);
        super::super::state::with(|reg| forget_in_child(&mut reg.spare_listener));
        assert!(super::super::state::with(|reg| reg.spare_listener.is_none()));
    }
}
