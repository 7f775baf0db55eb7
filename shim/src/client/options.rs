//! Socket options the shim carries from a socket the application configured to
//! the one that replaces it (a reversed connect's accepted socket, a doorbell's
//! dialed connection), so the replacement behaves as the application set it up.
//!
//! Reading all of them costs a `getsockopt` each, on every brokered connection
//! and on both sides. So the `setsockopt` hook notes which of them the
//! application has set on a socket the shim watches or manages ([`note`]), and
//! [`Options::read_noted`] reads only those: the others are still as on a fresh
//! socket. That holds for sockets whose every `setsockopt` this process image
//! saw: ones it made while GCB was on, and listeners no other process holds.
//! Across `fork` the other process's calls are not seen, so from the first
//! fork on every option counts as noted; listeners inherited across `exec` or
//! shared after `fork` are read in full ([`copy_options`]).

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

use libc::{c_int, socklen_t};
use once_cell::race::OnceBox;

use crate::real;

/// Socket options an application commonly sets on a socket that the shim later
/// replaces with another (a reversed connect, a doorbell turned into a dialed
/// connection): without them a `recv` bounded by `SO_RCVTIMEO`, say, would block
/// for ever on the replacement. Buffer sizes are left out on purpose: `getsockopt`
/// reports the kernel's doubled value, and setting it back would double it again.
const CARRIED_OPTIONS: &[(c_int, c_int)] = &[
    (libc::SOL_SOCKET, libc::SO_RCVTIMEO),
    (libc::SOL_SOCKET, libc::SO_SNDTIMEO),
    (libc::SOL_SOCKET, libc::SO_KEEPALIVE),
    (libc::SOL_SOCKET, libc::SO_LINGER),
    (libc::SOL_SOCKET, libc::SO_OOBINLINE),
    (libc::SOL_SOCKET, libc::SO_PRIORITY),
    (libc::SOL_SOCKET, libc::SO_RCVLOWAT),
    (libc::IPPROTO_IP, libc::IP_TOS),
    (libc::IPPROTO_TCP, libc::TCP_NODELAY),
    (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE),
    (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL),
    (libc::IPPROTO_TCP, libc::TCP_KEEPCNT),
    (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT),
];

/// Bit `i`: the application set `CARRIED_OPTIONS[i]` on a watched or managed socket.
static NOTED: AtomicU32 = AtomicU32::new(0);
const OPTION_COUNT: usize = CARRIED_OPTIONS.len();
const _: () = assert!(OPTION_COUNT <= 32, "one bit of NOTED per option");

/// `SO_RCVTIMEO_NEW` and `SO_SNDTIMEO_NEW` (64-bit `time_t` on 32-bit ABIs): the
/// same options as the old names for this purpose.
const SO_RCVTIMEO_NEW: c_int = 66;
const SO_SNDTIMEO_NEW: c_int = 67;

/// The `setsockopt` hook saw option `(level, name)` set on a watched or managed socket.
pub fn note(level: c_int, name: c_int) {
    let name = match (level, name) {
        (libc::SOL_SOCKET, SO_RCVTIMEO_NEW) => libc::SO_RCVTIMEO,
        (libc::SOL_SOCKET, SO_SNDTIMEO_NEW) => libc::SO_SNDTIMEO,
        _ => name,
    };
    if let Some(i) = CARRIED_OPTIONS.iter().position(|&o| o == (level, name)) {
        NOTED.fetch_or(1 << i, Relaxed);
    }
}

/// Every option counts as set from now on (the process forks: the other
/// process's `setsockopt`s on shared sockets are not seen here).
pub fn note_all() {
    NOTED.store(u32::MAX, Relaxed);
}

/// One option's value as `getsockopt` reported it.
type OptionValue = Option<([u8; 32], socklen_t)>;

fn read_option(fd: c_int, level: c_int, name: c_int) -> OptionValue {
    let mut buf = [0u8; 32];
    let mut len = buf.len() as socklen_t;
    // SAFETY: a buffer of `len` bytes; the kernel writes at most that.
    let r = unsafe { real::getsockopt(fd, level, name, buf.as_mut_ptr().cast(), &mut len) };
    (r == 0).then_some((buf, len))
}

/// [`CARRIED_OPTIONS`] as a fresh TCP socket of this process has them, each
/// read once, the first time a socket with that option in `mask` is read: the
/// sockets `copy_options` writes to are always fresh (dialed, or accepted on a
/// fresh temporary listener), so only values that differ from these need a
/// `setsockopt`. That saves a dozen system calls per brokered connection for
/// the usual application that sets few or no options; reading only the masked
/// ones keeps a process's first brokered connect from paying a dozen
/// `getsockopt`s for options it never set.
fn fresh_defaults(mask: u32) -> &'static [OnceBox<OptionValue>; OPTION_COUNT] {
    static DEFAULTS: [OnceBox<OptionValue>; OPTION_COUNT] = [const { OnceBox::new() }; OPTION_COUNT];
    let missing = |i: usize| mask & (1 << i) != 0 && DEFAULTS[i].get().is_none();
    if (0..OPTION_COUNT).any(missing) {
        // SAFETY: plain socket creation; closed below.
        let fd = unsafe { real::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        for (i, &(level, name)) in CARRIED_OPTIONS.iter().enumerate().filter(|&(i, _)| missing(i)) {
            // Without a socket to compare with, every value counts as changed.
            let value = if fd >= 0 { read_option(fd, level, name) } else { None };
            // A racing thread read the same value; either one will do.
            let _ = DEFAULTS[i].set(Box::new(value));
        }
        if fd >= 0 {
            // SAFETY: our own socket.
            unsafe { real::close(fd) };
        }
    }
    &DEFAULTS
}

/// The [`CARRIED_OPTIONS`] of a socket that differ from a fresh socket's, read
/// at one moment and applied later: a reversed connect reads the application's
/// socket while it waits for the listener's connection, so only the few
/// `setsockopt`s are left once the connection is in.
#[derive(Debug, Default)]
pub struct Options(Vec<(c_int, c_int, [u8; 32], socklen_t)>);

impl Options {
    /// Reads `from`'s carried options.
    pub fn read(from: c_int) -> Options {
        Options::read_these(from, u32::MAX)
    }

    /// Reads those of `from`'s carried options the application has set on some
    /// socket ([`note`]); for a socket whose every `setsockopt` this process
    /// image saw (module docs).
    pub fn read_noted(from: c_int) -> Options {
        Options::read_these(from, NOTED.load(Relaxed))
    }

    fn read_these(from: c_int, mask: u32) -> Options {
        let defaults = fresh_defaults(mask);
        let mut set = Vec::new();
        for (i, &(level, name)) in CARRIED_OPTIONS.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0) {
            let Some((buf, len)) = read_option(from, level, name) else { continue };
            if let Some(Some((dbuf, dlen))) = defaults[i].get() {
                if *dlen == len && dbuf[..len as usize] == buf[..len as usize] {
                    continue;
                }
            }
            set.push((level, name, buf, len));
        }
        Options(set)
    }

    /// Sets them on the fresh socket `to`, best effort.
    pub fn apply(&self, to: c_int) {
        for (level, name, buf, len) in &self.0 {
            // SAFETY: the bytes read, of the length the kernel reported.
            unsafe { real::setsockopt(to, *level, *name, buf.as_ptr().cast(), *len) };
        }
    }
}

/// Copies [`CARRIED_OPTIONS`] from `from` to the fresh socket `to`, best effort,
/// setting only those that differ from a fresh socket's.
pub fn copy_options(from: c_int, to: c_int) {
    Options::read(from).apply(to);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::sys;

    #[test]
    fn only_options_that_differ_are_carried() {
        let app = sys::socket(libc::SOCK_STREAM, true, false).unwrap();
        assert!(Options::read(app.raw()).0.is_empty(), "a fresh socket has nothing to carry");
        sys::set_int_opt(app.raw(), libc::IPPROTO_TCP, libc::TCP_NODELAY, 1).unwrap();
        sys::set_int_opt(app.raw(), libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 33).unwrap();
        let opts = Options::read(app.raw());
        assert_eq!(opts.0.len(), 2);
        let bit = |name| 1u32 << CARRIED_OPTIONS.iter().position(|&o| o == (libc::IPPROTO_TCP, name)).unwrap();
        assert!(Options::read_these(app.raw(), 0).0.is_empty(), "nothing noted, nothing read");
        let nodelay_only = Options::read_these(app.raw(), bit(libc::TCP_NODELAY));
        assert_eq!(nodelay_only.0.iter().map(|o| o.1).collect::<Vec<_>>(), vec![libc::TCP_NODELAY]);
        note(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE);
        assert!(Options::read_noted(app.raw()).0.iter().any(|o| o.1 == libc::TCP_KEEPIDLE), "noted, so read");
        let to = sys::socket(libc::SOCK_STREAM, true, false).unwrap();
        opts.apply(to.raw());
        assert_eq!(sys::get_int_opt(to.raw(), libc::IPPROTO_TCP, libc::TCP_NODELAY), Ok(1));
        assert_eq!(sys::get_int_opt(to.raw(), libc::IPPROTO_TCP, libc::TCP_KEEPIDLE), Ok(33));
    }
}
