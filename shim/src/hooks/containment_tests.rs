//! Panics in shim logic are contained as `hook`'s contract says: a call whose
//! logic panics fails with EIO and is not made raw; bookkeeping that panics
//! after the real operation leaves its result standing; a closed fd is left
//! plain; a fork whose prepare handler panics still forks, and the child works.
//! The panics are injected at the shim's `fault_point!`s, on the test's thread.

use std::time::{Duration, Instant};

use libc::c_int;

use crate::fdtable::{self, Kind};
use crate::guard::{errno, fault, set_errno};
use crate::real;

fn socketpair() -> (c_int, c_int) {
    let mut sv = [0; 2];
    // SAFETY: socketpair writes two fds into `sv`.
    assert_eq!(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0, sv.as_mut_ptr()) }, 0);
    (sv[0], sv[1])
}

fn is_open(fd: c_int) -> bool {
    // SAFETY: F_GETFD only asks.
    unsafe { real::fcntl(fd, libc::F_GETFD, 0) >= 0 }
}

fn inode(fd: c_int) -> u64 {
    // SAFETY: a stat buffer for fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::fstat(fd, &mut st) }, 0);
    st.st_ino
}

/// Closes through the hook, as the program would.
fn close(fd: c_int) -> c_int {
    // SAFETY: our fd.
    unsafe { super::lifetime::close(fd) }
}

#[test]
fn a_close_whose_bookkeeping_panics_still_closes_and_leaves_the_fd_plain() {
    for kind in [Kind::Managed, Kind::Named, Kind::Connecting] {
        let (a, b) = socketpair();
        fdtable::set(b, kind);
        fault::arm("forget");
        set_errno(libc::EAGAIN);
        assert_eq!(close(b), 0, "{kind:?}: the close succeeds");
        assert_eq!(errno(), libc::EAGAIN, "{kind:?}: errno is the real close's (untouched)");
        assert!(!is_open(b), "{kind:?}: the fd is closed");
        assert_eq!(fdtable::kind(b), Kind::Plain, "{kind:?}: the table no longer marks it");
        assert!(!fault::armed(), "the fault did fire");
        close(a);
    }
}

#[test]
fn a_dup_whose_bookkeeping_panics_returns_the_real_dup_once() {
    let (a, b) = socketpair();
    fdtable::set(b, Kind::Managed);
    fault::arm("duplicated");
    // SAFETY: our fd.
    let new = unsafe { super::lifetime::dup(b) };
    assert!(new >= 0 && !fault::armed(), "the dup stands: {new}");
    assert_eq!(inode(new), inode(b), "a duplicate of the listener");
    assert_eq!(fdtable::kind(new), Kind::Managed, "marked as the fd it duplicates, so its calls leave the fast path");

    // dup2 onto a plain fd: replaced, and the target is marked as the source.
    let (c, d) = socketpair();
    fault::arm("duplicated");
    // SAFETY: our fds.
    assert_eq!(unsafe { super::lifetime::dup2(b, d) }, d);
    assert!(!fault::armed());
    assert_eq!((inode(d), fdtable::kind(d)), (inode(b), Kind::Managed));
    for fd in [a, b, new, c, d] {
        assert_eq!(close(fd), 0);
        assert_eq!(fdtable::kind(fd), Kind::Plain);
    }
}

#[test]
fn an_accept_whose_logic_panics_fails_with_eio_and_takes_nothing() {
    let l = crate::client::sys::socket(libc::SOCK_STREAM, true, true).unwrap().into_raw();
    crate::client::sys::bind(l, "127.0.0.1:0".parse().unwrap()).unwrap();
    // SAFETY: our socket.
    assert_eq!(unsafe { real::listen(l, 4) }, 0);
    let at = crate::client::sys::local_addr(l).unwrap();
    let client = crate::client::sys::socket(libc::SOCK_STREAM, true, false).unwrap();
    crate::client::sys::connect(client.raw(), at, Instant::now() + Duration::from_secs(5)).unwrap();
    fdtable::set(l, Kind::Managed);

    fault::arm("accept");
    set_errno(0);
    // SAFETY: no address wanted.
    let r = unsafe { super::accept::accept(l, std::ptr::null_mut(), std::ptr::null_mut()) };
    assert_eq!((r, errno()), (-1, libc::EIO), "the call fails with EIO");
    // Not handed to the raw accept: the connection still waits in the queue.
    let deadline = Instant::now() + Duration::from_secs(5);
    assert!(crate::client::sys::wait_fd(l, libc::POLLIN, deadline).is_ok());
    // SAFETY: as above.
    let n = unsafe { real::accept4(l, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC) };
    assert!(n >= 0, "the connection was still queued");
    assert_eq!(crate::client::sys::peer_addr(n).unwrap(), crate::client::sys::local_addr(client.raw()).unwrap());
    close(n);
    close(l);
}

/// Waits for `pid` with a bound; its exit status, or a kill and a panic.
fn wait_child(pid: libc::pid_t) -> c_int {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut status = 0;
        // SAFETY: our child.
        match unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } {
            0 if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            0 => {
                // SAFETY: our child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                panic!("the child {pid} hung (a lock held across the fork?)");
            }
            p if p == pid => return status,
            r => panic!("waitpid: {r} {}", std::io::Error::last_os_error()),
        }
    }
}

/// In the child: hooks still contain panics, the client's lock is free, and
/// a marked fd closes. Exit code 0 when all hold, else the number of the check.
fn child_checks(marked: c_int) -> c_int {
    if crate::hook::dispatch(|| -> c_int { panic!("in the child") }, || 0) != -1 || errno() != libc::EIO {
        return 1;
    }
    crate::gcb::state::with(|_| ());
    if close(marked) != 0 || is_open(marked) || fdtable::kind(marked) != Kind::Plain {
        return 2;
    }
    0
}

#[test]
fn a_fork_whose_prepare_handler_panics_forks_and_the_child_works() {
    // Init registers the fork handlers; another test's thread may be running it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !crate::init::done() {
        crate::init::ensure();
        assert!(Instant::now() < deadline, "init did not complete");
        std::thread::sleep(Duration::from_millis(1));
    }
    // A panic in a hook before the fork changes nothing for the fork.
    assert_eq!(crate::hook::dispatch(|| -> c_int { panic!("before the fork") }, || 0), -1);
    let (a, b) = socketpair();
    fdtable::set(b, Kind::Managed);

    fault::arm("prepare_fork");
    // SAFETY: the child runs only the checks above and `_exit`s.
    let pid = unsafe { super::lifetime::fork() };
    if pid == 0 {
        let code = crate::guard::contain("", || child_checks(b)).unwrap_or(9);
        // SAFETY: leaves the child without running the test harness's exit.
        unsafe { libc::_exit(code) };
    }
    assert!(pid > 0, "fork failed: {}", std::io::Error::last_os_error());
    assert!(!fault::armed(), "the prepare handler passed the fault point");
    crate::gcb::state::with(|_| ());
    let status = wait_child(pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "the child's checks: status {status:#x}");
    close(a);
    close(b);
}
