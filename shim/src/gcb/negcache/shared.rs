//! The part of the negative cache that every GCB process of one user on one host
//! sees: a small table in a shared memory file, `/dev/shm/gcb-negcache-UID`.
//!
//! Why: a pool runs many short-lived clients (Condor's tools, scripts, workers
//! spawned per job). With a per-process cache every one of them probes a plain
//! public server's command port again, and Linux rate-limits the ICMP
//! port-unreachable answers per destination (about one per second after a small
//! burst), so most of those probes end in the probe timeout instead of one round
//! trip. One process learning "no broker at IP" now spares the others for the TTL.
//!
//! Layout: [`SLOTS`] 64-bit words, each either 0 (empty) or one entry packed as
//! `IP (32 bits) | network namespace tag (12) | expiry (20)`, updated with single
//! atomic loads and stores, so no process ever waits for another and a process
//! killed mid-update cannot leave a lock behind. Readers probe [`PROBES`] slots
//! from the IP's hash. Races between writers can lose an entry, which costs one
//! extra probe later: the table is advisory, never authoritative.
//!
//! * The namespace tag keeps the views of different network namespaces apart
//!   (containers and the test bed's hosts share `/dev/shm`, but not what an IP
//!   means). A tag collision (1 in 4096) at worst sends one connect direct.
//! * Expiry is seconds of `CLOCK_MONOTONIC`, which all processes of a boot share,
//!   modulo 2^20 (12 days); an entry is live while its expiry lies at most the TTL
//!   ahead, so wrap-around is harmless.
//! * The file is created 0600 with `O_NOFOLLOW` and used only if it is a regular
//!   file owned by the effective user: another user can neither read what this
//!   user talks to nor plant entries that steer its connects. If that fails (no
//!   `/dev/shm`, a squatter), the process keeps its private cache only.

use std::ffi::CString;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};

use once_cell::race::OnceBox;

use crate::real;

/// 8 KiB: room for far more non-GCB hosts than a pool talks to in a minute.
pub const SLOTS: usize = 1024;
/// Slots examined per lookup: a short linear probe from the hash.
pub const PROBES: usize = 8;
const EXPIRY_BITS: u32 = 20;
const EXPIRY_MASK: u64 = (1 << EXPIRY_BITS) - 1;
const TAG_BITS: u32 = 12;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;

/// A view of the table: the mapping in a process, a plain array in tests.
pub struct Table<'a> {
    slots: &'a [AtomicU64],
    /// This process's network namespace tag.
    tag: u64,
}

fn pack(ip: Ipv4Addr, tag: u64, expiry: u64) -> u64 {
    (u64::from(u32::from(ip)) << 32) | ((tag & TAG_MASK) << EXPIRY_BITS) | (expiry & EXPIRY_MASK)
}

/// Seconds from `now` until `word`'s expiry, in the wrapped clock; 0 for an
/// entry that has expired (or lies implausibly far ahead, i.e. long expired).
fn remaining(word: u64, now: u64, ttl: u64) -> u64 {
    let left = (word & EXPIRY_MASK).wrapping_sub(now & EXPIRY_MASK) & EXPIRY_MASK;
    if left == 0 || left > ttl {
        0
    } else {
        left
    }
}

impl<'a> Table<'a> {
    pub fn new(slots: &'a [AtomicU64], tag: u64) -> Table<'a> {
        Table { slots, tag: tag & TAG_MASK }
    }

    fn home(&self, ip: Ipv4Addr) -> usize {
        // Fibonacci hashing: consecutive IPs land far apart.
        let h = u64::from(u32::from(ip) ^ (self.tag as u32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (h >> 32) as usize % self.slots.len()
    }

    fn key_matches(&self, word: u64, ip: Ipv4Addr) -> bool {
        word != 0 && (word >> 32) as u32 == u32::from(ip) && (word >> EXPIRY_BITS) & TAG_MASK == self.tag
    }

    fn probe(&self, ip: Ipv4Addr) -> impl Iterator<Item = &AtomicU64> + '_ {
        let home = self.home(ip);
        (0..PROBES.min(self.slots.len())).map(move |i| &self.slots[(home + i) % self.slots.len()])
    }

    /// Whether `ip` is known not to be brokered at `now` (seconds).
    pub fn contains(&self, ip: Ipv4Addr, now: u64, ttl: u64) -> bool {
        self.probe(ip).any(|slot| {
            let w = slot.load(Ordering::Relaxed);
            self.key_matches(w, ip) && remaining(w, now, ttl) > 0
        })
    }

    /// Remembers `ip` as not brokered from `now` for `ttl` seconds: in its own
    /// slot if it has one, else an empty or expired slot, else the one closest
    /// to expiry.
    pub fn insert(&self, ip: Ipv4Addr, now: u64, ttl: u64) {
        if ip.is_unspecified() || ttl == 0 || ttl >= EXPIRY_MASK {
            return;
        }
        let word = pack(ip, self.tag, now + ttl);
        let mut victim: Option<(&AtomicU64, u64)> = None;
        for slot in self.probe(ip) {
            let w = slot.load(Ordering::Relaxed);
            if self.key_matches(w, ip) {
                slot.store(word, Ordering::Relaxed);
                return;
            }
            let left = if w == 0 { 0 } else { remaining(w, now, ttl) };
            if victim.map_or(true, |(_, best)| left < best) {
                victim = Some((slot, left));
            }
        }
        if let Some((slot, _)) = victim {
            slot.store(word, Ordering::Relaxed);
        }
    }
}

/// The process's mapping of the shared file; `None` when it could not be set up.
struct Mapping {
    base: Option<*mut libc::c_void>,
    tag: u64,
}

// SAFETY: the mapping is only ever read and written through atomics.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    /// Runs only for a mapping that lost the race to be published.
    fn drop(&mut self) {
        if let Some(base) = self.base {
            // SAFETY: our own mapping of SLOTS words, referenced by nobody.
            unsafe { libc::munmap(base, SLOTS * 8) };
        }
    }
}

static MAPPING: OnceBox<Mapping> = OnceBox::new();

/// The shared table, mapped on first use (several threads may race to map it;
/// one mapping wins, the others are unmapped, nobody waits). Survives `fork`;
/// an `exec`ed image maps it again.
pub fn table() -> Option<Table<'static>> {
    let m = MAPPING.get_or_init(|| Box::new(map()));
    let base = m.base?;
    // SAFETY: SLOTS naturally aligned words, mapped for the life of the process
    // (a published mapping is never unmapped).
    let slots = unsafe { std::slice::from_raw_parts(base as *const AtomicU64, SLOTS) };
    Some(Table::new(slots, m.tag))
}

pub use crate::client::sys::now_secs;

fn map() -> Mapping {
    let failed = Mapping { base: None, tag: 0 };
    let Some(tag) = netns_tag() else { return failed };
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    let Ok(path) = CString::new(format!("/dev/shm/gcb-negcache-{uid}")) else { return failed };
    match map_file(&path, uid) {
        Some(base) => Mapping { base: Some(base), tag },
        None => {
            log!(Debug, "no shared negative cache at {}; keeping a private one", path.to_string_lossy());
            failed
        }
    }
}

/// A 12-bit tag of this process's network namespace (its inode number).
fn netns_tag() -> Option<u64> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid path and stat buffer.
    if unsafe { libc::stat(c"/proc/self/ns/net".as_ptr(), &mut st) } != 0 {
        return None;
    }
    let ino = st.st_ino as u64;
    Some((ino ^ (ino >> 12) ^ (ino >> 24)) & TAG_MASK)
}

/// Opens (creating if needed) and maps the table file, if it is safe to use.
fn map_file(path: &CString, uid: libc::uid_t) -> Option<*mut libc::c_void> {
    let len = SLOTS * 8;
    let flags = libc::O_RDWR | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: a valid C string; the fd is closed below on every path.
    let fd = unsafe { libc::open(path.as_ptr(), flags, 0o600 as libc::c_uint) };
    if fd < 0 {
        return None;
    }
    let mapped = (|| {
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: our fd and a stat buffer.
        if unsafe { libc::fstat(fd, &mut st) } != 0 {
            return None;
        }
        let private = st.st_mode & 0o077 == 0;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_uid != uid || !private || st.st_nlink != 1 {
            return None;
        }
        // Growing an existing table is harmless; never shrink one.
        if (st.st_size as usize) < len && unsafe { libc::ftruncate(fd, len as libc::off_t) } != 0 {
            return None;
        }
        // SAFETY: a fresh shared mapping of a file at least `len` long.
        let base = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0) };
        (base != libc::MAP_FAILED).then_some(base)
    })();
    // SAFETY: our fd; the mapping outlives it.
    unsafe { real::close(fd) };
    mapped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(n: usize) -> Vec<AtomicU64> {
        (0..n).map(|_| AtomicU64::new(0)).collect()
    }

    fn ip(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(203, 0, 113, n)
    }

    #[test]
    fn entries_live_for_the_ttl_then_expire() {
        let s = slots(64);
        let t = Table::new(&s, 7);
        assert!(!t.contains(ip(1), 100, 60));
        t.insert(ip(1), 100, 60);
        assert!(t.contains(ip(1), 100, 60));
        assert!(t.contains(ip(1), 159, 60));
        assert!(!t.contains(ip(1), 160, 60));
        assert!(!t.contains(ip(2), 100, 60));
    }

    #[test]
    fn expiry_survives_the_clock_wrapping() {
        let s = slots(64);
        let t = Table::new(&s, 1);
        let now = EXPIRY_MASK - 10; // expiry wraps past zero
        t.insert(ip(1), now, 60);
        assert!(t.contains(ip(1), now + 30, 60));
        assert!(!t.contains(ip(1), now + 60, 60));
        // Long after, the same wrapped value must not count as live again
        // unless it is within one TTL ahead.
        assert!(!t.contains(ip(1), now + 60 + 1000, 60));
    }

    #[test]
    fn namespaces_do_not_see_each_other() {
        let s = slots(64);
        let a = Table::new(&s, 1);
        let b = Table::new(&s, 2);
        a.insert(ip(1), 10, 60);
        assert!(a.contains(ip(1), 10, 60));
        assert!(!b.contains(ip(1), 10, 60));
    }

    #[test]
    fn a_full_neighbourhood_evicts_the_entry_closest_to_expiry() {
        let s = slots(PROBES); // every IP probes the same PROBES slots
        let t = Table::new(&s, 0);
        for n in 0..PROBES as u8 {
            t.insert(ip(n + 1), 100 + u64::from(n), 60);
        }
        for n in 0..PROBES as u8 {
            assert!(t.contains(ip(n + 1), 110, 60), "ip {n}");
        }
        t.insert(ip(200), 110, 60);
        assert!(t.contains(ip(200), 110, 60));
        assert!(!t.contains(ip(1), 110, 60), "the oldest entry made room");
        assert!(t.contains(ip(2), 110, 60));
        // Refreshing an existing entry takes no other slot.
        t.insert(ip(2), 120, 60);
        assert!(t.contains(ip(3), 120, 60) && t.contains(ip(2), 175, 60));
    }

    #[test]
    fn the_file_is_shared_between_mappings_and_kept_private() {
        let dir = std::env::temp_dir().join(format!("gcb-negcache-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = CString::new(dir.join("table").to_str().unwrap()).unwrap();
        // SAFETY: geteuid cannot fail.
        let uid = unsafe { libc::geteuid() };
        let a = map_file(&path, uid).expect("first mapping");
        let b = map_file(&path, uid).expect("second mapping");
        // SAFETY: two live mappings of SLOTS words each.
        let (sa, sb) = unsafe {
            (
                std::slice::from_raw_parts(a as *const AtomicU64, SLOTS),
                std::slice::from_raw_parts(b as *const AtomicU64, SLOTS),
            )
        };
        Table::new(sa, 3).insert(ip(9), 50, 60);
        assert!(Table::new(sb, 3).contains(ip(9), 50, 60), "one process's entry is another's");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("table")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(map_file(&path, uid.wrapping_add(1)).is_none(), "a file owned by someone else is refused");
        std::os::unix::fs::symlink(dir.join("table"), dir.join("link")).unwrap();
        let link = CString::new(dir.join("link").to_str().unwrap()).unwrap();
        assert!(map_file(&link, uid).is_none(), "a symlink is refused");
        // SAFETY: our mappings.
        unsafe {
            libc::munmap(a, SLOTS * 8);
            libc::munmap(b, SLOTS * 8);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
