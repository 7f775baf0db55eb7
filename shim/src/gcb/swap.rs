//! Putting a connection the shim made on the application's fd number, as if
//! the application's own socket had connected: a reversed connect's accepted
//! socket (`connector`), and every non-blocking brokered connect
//! (`connecting`).
//!
//! `dup3` keeps the number and replaces the file behind it. What the
//! application set up on its socket goes with it: O_NONBLOCK and FD_CLOEXEC,
//! the options it set (`options`), and its epoll registrations, which the
//! kernel drops from every set with the old file (`interest`).

use libc::c_int;

use super::interest::Registration;
use crate::client::options::Options;
use crate::client::sys::{self, Errno, Sock};
use crate::guard::errno;
use crate::real;

/// What a replacement takes over from the application's socket.
pub struct AppSocket {
    pub nonblocking: bool,
    pub cloexec: bool,
    /// A watched socket was made in this image: only the options set matter.
    pub options: Options,
}

impl AppSocket {
    pub fn read(fd: c_int) -> Result<AppSocket, Errno> {
        let nonblocking = sys::get_fl(fd)? & libc::O_NONBLOCK != 0;
        // SAFETY: F_GETFD takes no argument.
        let fd_flags = unsafe { real::fcntl(fd, libc::F_GETFD, 0) };
        let cloexec = fd_flags >= 0 && fd_flags & libc::FD_CLOEXEC != 0;
        Ok(AppSocket { nonblocking, cloexec, options: Options::read_noted(fd) })
    }
}

/// Puts connection `c` (non-blocking if `c_nonblocking`) on fd number `fd`,
/// as the application's socket `app` was, and re-adds `fd` to the epoll sets
/// of `regs` that it is confirmed to be in (`interest`). Only non-blocking
/// calls: callers may hold the registry lock.
pub fn put_on(fd: c_int, c: Sock, c_nonblocking: bool, app: &AppSocket, regs: Vec<Registration>) -> Result<(), Errno> {
    app.options.apply(c.raw());
    if c_nonblocking != app.nonblocking {
        sys::set_nonblock(c.raw(), app.nonblocking)?;
    }
    let event = |r: &Registration| libc::epoll_event { events: r.events, u64: r.data };
    // Re-add only where the old registration is confirmed live (module docs of `interest`).
    let live: Vec<_> = regs
        .into_iter()
        // SAFETY: a valid event struct; MOD on a set without `fd` just fails.
        .filter(|r| unsafe { real::epoll_ctl(r.epfd, libc::EPOLL_CTL_MOD, fd, &mut event(r)) } == 0)
        .collect();
    let cloexec = if app.cloexec { libc::O_CLOEXEC } else { 0 };
    // SAFETY: both fds are valid; `fd` is replaced atomically.
    if unsafe { real::dup3(c.raw(), fd, cloexec) } < 0 {
        return Err(errno());
    }
    for r in &live {
        // SAFETY: as above.
        if unsafe { real::epoll_ctl(r.epfd, libc::EPOLL_CTL_ADD, fd, &mut event(r)) } < 0 {
            log!(Warn, "fd {fd} not re-added to epoll fd {} after a brokered connect: {}", r.epfd, std::io::Error::last_os_error());
        }
    }
    Ok(())
}
