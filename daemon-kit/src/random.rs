//! Randomness for daemons, in two strengths.
//!
//! * [`random_u64`]: unguessable values straight from the kernel
//!   (`getrandom(2)`), for anything a peer must not predict: pairing tokens,
//!   snapshot ids, the first request id after a restart (so a new life does
//!   not reuse ids a peer still caches replies for).
//! * [`SplitMix64`]: a fast, seeded, *predictable* generator for choices
//!   where spreading matters and secrecy does not, such as picking a port.
//!   Seed it from [`random_u64`].
//!
//! No crate is needed: `getrandom(2)` is one system call, and SplitMix64 is a
//! few lines with good statistical quality for this purpose.

use std::io;

/// 8 random bytes from the kernel's CSPRNG. Blocks only before the kernel's
/// pool is initialised at boot, which a daemon never sees in practice.
pub fn random_u64() -> u64 {
    try_random_u64().unwrap_or_else(|_| fallback())
}

/// Like [`random_u64`], reporting a failure of the system call instead of
/// falling back.
pub fn try_random_u64() -> io::Result<u64> {
    let mut buf = [0u8; 8];
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: the pointer and length describe `rest`, which is writable.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(u64::from_ne_bytes(buf))
}

/// `/dev/urandom`, for kernels without `getrandom(2)` (before 3.17) or
/// seccomp profiles that forbid it. If that fails too, the values are at
/// least unlikely to repeat: time and pid mixed, not secret.
fn fallback() -> u64 {
    use std::io::Read;
    let mut buf = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_ok()
    {
        return u64::from_ne_bytes(buf);
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    SplitMix64::new(nanos ^ u64::from(std::process::id()).rotate_left(32)).next_u64()
}

/// Sebastiano Vigna's SplitMix64: one add and three xor-shift-multiplies per
/// value; every seed gives a full-period sequence. Not for secrets.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// Seeded from the kernel, for production use.
    pub fn from_entropy() -> Self {
        SplitMix64::new(random_u64())
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (`n` > 0). Lemire's multiply-shift: the bias is at
    /// most n / 2^64, far below anything a port choice could notice.
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_values_differ() {
        let a = try_random_u64().unwrap();
        let b = try_random_u64().unwrap();
        assert_ne!(a, b, "two 64-bit draws collided");
        assert_ne!(fallback(), fallback());
    }

    #[test]
    fn splitmix_reference_values() {
        // First outputs for seed 0, as published with the algorithm.
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(r.next_u64(), 0x6e78_9e6a_a1b9_65f4);
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut r = SplitMix64::new(42);
        let mut seen = [false; 10];
        for _ in 0..1000 {
            let v = r.below(10);
            assert!(v < 10);
            seen[v as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
        assert_eq!(r.below(1), 0);
    }
}
