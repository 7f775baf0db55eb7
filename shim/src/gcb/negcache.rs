//! The connector's negative cache: IPs that turned out not to be brokered.
//!
//! A GCB connector asks `IP:command_port` before every connect to an address it
//! knows nothing about (docs/design.md, "Non-GCB peers"). When the answer is "no broker
//! here" (ECONNREFUSED, a foreign reply, silence), the IP is remembered for
//! [`TTL`] so only the first connect pays that round trip.
//!
//! Two tables of the same lock-free kind ([`shared::Table`]: one atomic word
//! per entry, bounded, expired or oldest entries make room): the process's own,
//! in its memory, and behind it one [`shared`] by every GCB process of the
//! user on the host, so a short-lived client does not pay the probe that
//! another one already paid; [`known_not_gcb`] and [`remember_not_gcb`]
//! consult both. Neither takes a lock: a connect to a host known to be plain
//! is as cheap as the kernel's, and never waits for the responder holding the
//! client's lock.

pub mod shared;

use std::net::Ipv4Addr;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use shared::{now_secs, Table, SLOTS};

/// Long enough that a client looping over a plain server asks once a minute,
/// short enough that a broker started later is found soon.
pub const TTL: Duration = Duration::from_secs(60);

/// This process's own table (8 KiB of `.bss`; a forked child starts with a copy).
static LOCAL: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];

/// This process's table; the namespace tag is moot in one process.
pub fn local() -> Table<'static> {
    Table::new(&LOCAL, 0)
}

/// Whether `ip` is known not to be brokered, by this process or by any
/// process of this user in this network namespace.
pub fn known_not_gcb(ip: Ipv4Addr) -> bool {
    let (now, ttl) = (now_secs(), TTL.as_secs());
    local().contains(ip, now, ttl) || shared::table().is_some_and(|t| t.contains(ip, now, ttl))
}

/// Remembers that `ip` is not brokered, here and for the other processes.
pub fn remember_not_gcb(ip: Ipv4Addr) {
    let (now, ttl) = (now_secs(), TTL.as_secs());
    local().insert(ip, now, ttl);
    if let Some(t) = shared::table() {
        t.insert(ip, now, ttl);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_table_answers_without_the_shared_one() {
        let ip = Ipv4Addr::new(192, 0, 2, 201);
        let now = now_secs();
        assert!(!local().contains(ip, now, TTL.as_secs()));
        local().insert(ip, now, TTL.as_secs());
        assert!(known_not_gcb(ip));
        assert!(!local().contains(ip, now + TTL.as_secs(), TTL.as_secs()), "expires after the TTL");
    }
}
