//! dpfd's public IPs, as far as this process knows them: read without a lock,
//! so that a `connect` in DPF mode costs nothing beyond the kernel's unless its
//! destination may be one of them.
//!
//! `DPF_INAGENT` names the gateway's private side; its public IPs are learned:
//! from every `ForwardOk` of this process (each proves its own IP), and from
//! dpfd's answer to `Info`, its whole list, asked once and kept for the life
//! of the process (a gateway's public addresses do not come and go). Two
//! callers need them:
//!
//! * `connect` ([`may_be_public`]): only a destination on one of dpfd's public
//!   IPs is worth a `Query` (`query`), which needs the DPF lock for its cache.
//!   Every other destination goes straight to the kernel after one scan of the
//!   list here. The first connect of a process that does not know the list
//!   yet asks `Info` (one round trip to dpfd, as the `Query` it replaces
//!   cost); no answer sends connects straight to the kernel for [`RETRY`], as
//!   a silent `Query` did, and is then asked again.
//! * a `bind` to an address that is not local (`reported`): asks `Info` on
//!   every such bind until dpfd has answered once.
//!
//! The list is a fixed array of atomic words filled front to back with
//! compare-and-swap, so readers never wait and writers never lock: a writer
//! claims the first empty slot, hence the filled slots are always a prefix.
//! Two writers racing with the same IP may both store it, which costs one
//! slot. `complete` is set, with release ordering, after dpfd's whole list is
//! in, so a reader that sees it sees every IP of the list.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use proto::dpf::{Message, MAX_PUBLIC_IPS};
use proto::rudp::RetryPolicy;

use super::query::CODEC;
use crate::client::exchange;
use crate::client::sys::now_secs;

/// How long a process whose `Info` went unanswered connects without asking.
pub const RETRY: Duration = super::cache::TTL;

/// Room for dpfd's whole list and as many IPs learned from forwards besides
/// (a gateway restarted with other addresses).
const SLOTS: usize = 2 * MAX_PUBLIC_IPS;

/// The list (module docs). An empty slot is 0: 0.0.0.0 is never public.
pub struct PublicIps {
    slots: [AtomicU32; SLOTS],
    complete: AtomicBool,
    /// `now_secs()` before which [`may_be_public`] does not ask `Info` again.
    quiet_until: AtomicU64,
}

impl PublicIps {
    #[allow(clippy::new_without_default)] // a static's constructor
    pub const fn new() -> PublicIps {
        PublicIps {
            slots: [const { AtomicU32::new(0) }; SLOTS],
            complete: AtomicBool::new(false),
            quiet_until: AtomicU64::new(0),
        }
    }

    /// A forward was made from `ip`, or dpfd listed it.
    pub fn learn(&self, ip: Ipv4Addr) {
        let word = u32::from(ip);
        if word == 0 {
            return;
        }
        for slot in &self.slots {
            match slot.compare_exchange(0, word, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(held) if held == word => return,
                Err(_) => {}
            }
        }
        // Full: only a gateway that changed its addresses many times over gets
        // here, and its new ones are then not known; their connects hairpin.
    }

    /// dpfd's whole list.
    pub fn learn_all(&self, ips: &[Ipv4Addr]) {
        ips.iter().for_each(|&ip| self.learn(ip));
        self.complete.store(true, Ordering::Release);
    }

    /// `Some(answer)` when known without asking dpfd.
    pub fn is_public(&self, ip: Ipv4Addr) -> Option<bool> {
        // Acquire before the scan: after dpfd's list is complete, every IP of
        // it is in the slots this thread reads.
        let complete = self.complete.load(Ordering::Acquire);
        let word = u32::from(ip);
        let known = self.slots.iter().map(|s| s.load(Ordering::Acquire)).take_while(|&w| w != 0).any(|w| w == word);
        if known {
            Some(true)
        } else {
            complete.then_some(false)
        }
    }
}

/// This process's list.
pub static KNOWN: PublicIps = PublicIps::new();

/// Asks dpfd for its public IPs (`Info`) and learns them; why not, if it did
/// not say.
pub fn ask(policy: RetryPolicy) -> Result<(), String> {
    let Some(dpfd) = super::mode::server() else { return Err("DPF is off".into()) };
    let (sock, _) = crate::client::exchange::open(dpfd).map_err(|e| format!("cannot reach it: {}", std::io::Error::from_raw_os_error(e)))?;
    match exchange::exchange(sock.raw(), dpfd, policy, &CODEC, &Message::Info) {
        Ok(Message::InfoOk { public_ips }) => {
            log!(Debug, "dpfd {dpfd} forwards from {public_ips:?}");
            KNOWN.learn_all(&public_ips);
            Ok(())
        }
        Ok(other) => Err(format!("it answered Info with {:?}", other.kind())),
        Err(e) => Err(e.describe()),
    }
}

/// Whether a connect to `ip` may be to one of dpfd's public IPs, and so is
/// worth a `Query` (module docs). No lock; no system call once the list is known.
pub fn may_be_public(ip: Ipv4Addr) -> bool {
    if let Some(known) = KNOWN.is_public(ip) {
        return known;
    }
    let now = now_secs();
    if now < KNOWN.quiet_until.load(Ordering::Relaxed) {
        return false;
    }
    match ask(RetryPolicy::probe()) {
        Ok(()) => KNOWN.is_public(ip) == Some(true),
        Err(why) => {
            log!(Debug, "dpfd did not say its public addresses ({why}); connects go as dialed for {} s", RETRY.as_secs());
            KNOWN.quiet_until.store(now + RETRY.as_secs(), Ordering::Relaxed);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(203, 0, 113, n)
    }

    #[test]
    fn forwards_prove_their_own_ip_and_only_dpfd_says_no() {
        let k = PublicIps::new();
        assert_eq!(k.is_public(ip(1)), None, "nothing known: ask");
        k.learn(ip(1));
        k.learn(ip(1));
        assert_eq!((k.is_public(ip(1)), k.is_public(ip(3))), (Some(true), None), "a forward proves only its own IP");
        k.learn_all(&[ip(1), ip(2)]);
        assert_eq!(k.is_public(ip(2)), Some(true));
        assert_eq!(k.is_public(ip(3)), Some(false), "dpfd's own list is the whole truth");
        assert_eq!(k.slots.iter().filter(|s| s.load(Ordering::Relaxed) != 0).count(), 2, "no duplicates");
        k.learn(Ipv4Addr::UNSPECIFIED);
        assert_eq!(k.is_public(Ipv4Addr::UNSPECIFIED), Some(false));
    }

    #[test]
    fn bounded_and_concurrent_writers_keep_a_prefix() {
        let k: &'static PublicIps = Box::leak(Box::new(PublicIps::new()));
        let writers: Vec<_> = (0..4u8)
            .map(|t| std::thread::spawn(move || (0..100u8).for_each(|n| k.learn(Ipv4Addr::new(198, 51, t, n)))))
            .collect();
        writers.into_iter().for_each(|w| w.join().unwrap());
        let mut words: Vec<u32> = k.slots.iter().map(|s| s.load(Ordering::Relaxed)).collect();
        assert!(words.iter().all(|&w| w != 0), "full, with no hole");
        assert!(words.iter().all(|&w| k.is_public(Ipv4Addr::from(w)) == Some(true)), "every one stored is found");
        words.sort();
        words.dedup();
        assert_eq!(words.len(), SLOTS, "distinct IPs each took one slot");
        assert_eq!(k.is_public(Ipv4Addr::new(198, 51, 9, 9)), None, "one never learned is not known");
    }
}
