//! The open-files limit. A daemon that holds a socket per client (and, for a
//! relay, two sockets and two pipes per connection) needs far more than the
//! usual soft limit of 1024, while the hard limit is typically generous;
//! raising the soft limit to the hard one at startup is what administrators
//! expect of such a daemon, and needs no privilege.

use std::io;

/// The soft and hard `RLIMIT_NOFILE` after raising the soft limit to the
/// hard one (capped at `cap`, since some systems report "unlimited" and a
/// huge limit slows down code that iterates over all fds).
pub fn raise_nofile(cap: u64) -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let want = lim.rlim_max.min(cap as libc::rlim_t);
    if lim.rlim_cur < want {
        let new = libc::rlimit {
            rlim_cur: want,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `new` is a valid rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
            return Err(io::Error::last_os_error());
        }
        lim.rlim_cur = want;
    }
    // rlim_t is 32 bits on some 32-bit targets; the cast is for them.
    #[allow(clippy::unnecessary_cast)]
    Ok((lim.rlim_cur as u64, lim.rlim_max as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_is_idempotent_and_never_lowers() {
        let (soft, hard) = raise_nofile(1 << 20).unwrap();
        assert!(soft <= hard);
        let (again, _) = raise_nofile(1 << 20).unwrap();
        assert_eq!(again, soft);
        let (capped, _) = raise_nofile(16).unwrap();
        assert_eq!(capped, soft, "a lower cap does not lower the limit");
    }
}
