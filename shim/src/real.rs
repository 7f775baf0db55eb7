//! Typed access to the definitions our hooks shadow: `real::close(fd)` is libc's
//! `close`, never ours.
//!
//! Each function is found on first use with `dlsym(RTLD_NEXT, name)`, the next
//! definition after this library in lookup order, and cached in an atomic. Racing
//! first calls resolve twice and store the same address: no lock, no allocation.
//! A function the C library lacks (`epoll_pwait2` before glibc 2.35, say) fails with
//! `ENOSYS` and the type's failure value, as an old kernel would answer.

use std::sync::atomic::{AtomicUsize, Ordering};

use libc::{
    c_char, c_int, c_uint, c_ulong, c_void, epoll_event, fd_set, iovec, mmsghdr, msghdr,
    nfds_t, pid_t, pollfd, size_t, sigset_t, sockaddr, socklen_t, ssize_t, timespec, timeval,
};

use crate::guard::{set_errno, Failure};

const UNRESOLVED: usize = 0;
const MISSING: usize = 1;

/// A lazily resolved libc symbol. `name` must end in a NUL byte.
pub struct Slot {
    name: &'static [u8],
    addr: AtomicUsize,
}

impl Slot {
    pub const fn new(name: &'static [u8]) -> Slot {
        Slot { name, addr: AtomicUsize::new(UNRESOLVED) }
    }

    /// The symbol's address, or `None` if the next objects do not define it.
    #[inline]
    pub fn get(&self) -> Option<usize> {
        match self.addr.load(Ordering::Acquire) {
            UNRESOLVED => self.resolve(),
            MISSING => None,
            addr => Some(addr),
        }
    }

    #[cold]
    fn resolve(&self) -> Option<usize> {
        // A failed lookup builds a dlerror message, which allocates and can set
        // errno; the application's errno must survive that.
        let _errno = crate::guard::ErrnoGuard::new();
        // SAFETY: `name` is NUL-terminated (checked by `names_are_terminated`).
        let addr = unsafe { libc::dlsym(libc::RTLD_NEXT, self.name.as_ptr().cast::<c_char>()) };
        let addr = if addr.is_null() { MISSING } else { addr as usize };
        self.addr.store(addr, Ordering::Release);
        (addr != MISSING).then_some(addr)
    }
}

#[cold]
fn missing<R: Failure>() -> R {
    set_errno(libc::ENOSYS);
    R::FAILED
}

/// Declares `pub unsafe fn NAME(ARGS) -> RET` calling the next definition of NAME.
macro_rules! real_fns {
    ($( fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty; )*) => {
        $(
            /// Calls the next definition of the function of this name (libc's).
            ///
            /// # Safety
            ///
            /// The C contract of the libc function of the same name.
            #[inline]
            pub unsafe fn $name($($arg: $ty),*) -> $ret {
                static SLOT: Slot = Slot::new(concat!(stringify!($name), "\0").as_bytes());
                match SLOT.get() {
                    Some(addr) => {
                        let f = std::mem::transmute::<usize, unsafe extern "C" fn($($ty),*) -> $ret>(addr);
                        f($($arg),*)
                    }
                    None => missing(),
                }
            }
        )*

        #[cfg(test)]
        const NAMES: &[&str] = &[$(stringify!($name)),*];
    };
}

real_fns! {
    // hooks/socket.rs
    fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int;
    fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int;
    fn listen(fd: c_int, backlog: c_int) -> c_int;
    fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
    fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
    fn setsockopt(fd: c_int, level: c_int, name: c_int, value: *const c_void, len: socklen_t) -> c_int;
    fn getsockopt(fd: c_int, level: c_int, name: c_int, value: *mut c_void, len: *mut socklen_t) -> c_int;
    fn shutdown(fd: c_int, how: c_int) -> c_int;
    // hooks/connect.rs
    fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int;
    // hooks/accept.rs
    fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
    fn accept4(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int;
    // hooks/readiness.rs
    fn select(nfds: c_int, readfds: *mut fd_set, writefds: *mut fd_set, exceptfds: *mut fd_set, timeout: *mut timeval) -> c_int;
    fn pselect(nfds: c_int, readfds: *mut fd_set, writefds: *mut fd_set, exceptfds: *mut fd_set, timeout: *const timespec, sigmask: *const sigset_t) -> c_int;
    fn poll(fds: *mut pollfd, nfds: nfds_t, timeout: c_int) -> c_int;
    fn ppoll(fds: *mut pollfd, nfds: nfds_t, timeout: *const timespec, sigmask: *const sigset_t) -> c_int;
    fn __poll_chk(fds: *mut pollfd, nfds: nfds_t, timeout: c_int, fdslen: size_t) -> c_int;
    fn __ppoll_chk(fds: *mut pollfd, nfds: nfds_t, timeout: *const timespec, sigmask: *const sigset_t, fdslen: size_t) -> c_int;
    fn epoll_create(size: c_int) -> c_int;
    fn epoll_create1(flags: c_int) -> c_int;
    fn epoll_ctl(epfd: c_int, op: c_int, fd: c_int, event: *mut epoll_event) -> c_int;
    fn epoll_wait(epfd: c_int, events: *mut epoll_event, maxevents: c_int, timeout: c_int) -> c_int;
    fn epoll_pwait(epfd: c_int, events: *mut epoll_event, maxevents: c_int, timeout: c_int, sigmask: *const sigset_t) -> c_int;
    fn epoll_pwait2(epfd: c_int, events: *mut epoll_event, maxevents: c_int, timeout: *const timespec, sigmask: *const sigset_t) -> c_int;
    // hooks/data.rs
    fn recv(fd: c_int, buf: *mut c_void, len: size_t, flags: c_int) -> ssize_t;
    fn recvfrom(fd: c_int, buf: *mut c_void, len: size_t, flags: c_int, addr: *mut sockaddr, addrlen: *mut socklen_t) -> ssize_t;
    fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t;
    fn recvmmsg(fd: c_int, msgvec: *mut mmsghdr, vlen: c_uint, flags: c_int, timeout: *mut timespec) -> c_int;
    fn read(fd: c_int, buf: *mut c_void, count: size_t) -> ssize_t;
    fn readv(fd: c_int, iov: *const iovec, iovcnt: c_int) -> ssize_t;
    fn send(fd: c_int, buf: *const c_void, len: size_t, flags: c_int) -> ssize_t;
    fn sendto(fd: c_int, buf: *const c_void, len: size_t, flags: c_int, addr: *const sockaddr, addrlen: socklen_t) -> ssize_t;
    fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t;
    fn sendmmsg(fd: c_int, msgvec: *mut mmsghdr, vlen: c_uint, flags: c_int) -> c_int;
    fn write(fd: c_int, buf: *const c_void, count: size_t) -> ssize_t;
    fn writev(fd: c_int, iov: *const iovec, iovcnt: c_int) -> ssize_t;
    fn __recv_chk(fd: c_int, buf: *mut c_void, len: size_t, buflen: size_t, flags: c_int) -> ssize_t;
    fn __recvfrom_chk(fd: c_int, buf: *mut c_void, len: size_t, buflen: size_t, flags: c_int, addr: *mut sockaddr, addrlen: *mut socklen_t) -> ssize_t;
    fn __read_chk(fd: c_int, buf: *mut c_void, nbytes: size_t, buflen: size_t) -> ssize_t;
    // hooks/lifetime.rs (fcntl and fcntl64 are variadic, below)
    fn close(fd: c_int) -> c_int;
    fn dup(fd: c_int) -> c_int;
    fn dup2(oldfd: c_int, newfd: c_int) -> c_int;
    fn dup3(oldfd: c_int, newfd: c_int, flags: c_int) -> c_int;
    fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int;
    fn closefrom(lowfd: c_int) -> ();
    fn fork() -> pid_t;
    fn execve(path: *const c_char, argv: *const *const c_char, envp: *const *const c_char) -> c_int;
    fn execv(path: *const c_char, argv: *const *const c_char) -> c_int;
    fn execvp(file: *const c_char, argv: *const *const c_char) -> c_int;
    fn execvpe(file: *const c_char, argv: *const *const c_char, envp: *const *const c_char) -> c_int;
    fn fexecve(fd: c_int, argv: *const *const c_char, envp: *const *const c_char) -> c_int;
    fn execveat(dirfd: c_int, path: *const c_char, argv: *const *const c_char, envp: *const *const c_char, flags: c_int) -> c_int;
}

type Variadic = unsafe extern "C" fn(c_int, c_int, ...) -> c_int;

/// Calls a variadic `(int, int, ...)` function with one integer-register argument,
/// the way a C caller of `fcntl` does.
#[inline]
unsafe fn call_variadic(slot: &Slot, fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    match slot.get() {
        Some(addr) => std::mem::transmute::<usize, Variadic>(addr)(fd, cmd, arg),
        None => missing(),
    }
}

/// libc's `fcntl`, called as the variadic function it is.
///
/// # Safety
///
/// The C contract of `fcntl`; `arg` is the third argument as the caller passed it.
#[inline]
pub unsafe fn fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    static SLOT: Slot = Slot::new(b"fcntl\0");
    call_variadic(&SLOT, fd, cmd, arg)
}

/// libc's `fcntl64` (the same function as `fcntl` on 64-bit glibc).
///
/// # Safety
///
/// As for [`fcntl`].
#[inline]
pub unsafe fn fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    static SLOT: Slot = Slot::new(b"fcntl64\0");
    call_variadic(&SLOT, fd, cmd, arg)
}

/// Ends the process the way glibc's fortified functions do on a buffer overflow
/// ("*** buffer overflow detected ***", SIGABRT).
pub fn chk_fail() -> ! {
    static SLOT: Slot = Slot::new(b"__chk_fail\0");
    if let Some(addr) = SLOT.get() {
        // SAFETY: glibc's __chk_fail takes nothing and does not return.
        unsafe { std::mem::transmute::<usize, unsafe extern "C" fn() -> !>(addr)() }
    }
    std::process::abort()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_libc_and_reports_missing() {
        let slot = Slot::new(b"getpid\0");
        assert!(slot.get().is_some());
        assert_eq!(slot.get(), slot.get(), "cached");
        let slot = Slot::new(b"gcb_no_such_function\0");
        crate::guard::set_errno(0);
        assert_eq!(slot.get(), None);
        assert_eq!(crate::guard::errno(), 0, "resolution leaves errno alone");
    }

    #[test]
    fn every_real_function_resolves() {
        // glibc 2.35 or newer defines all of them; this catches typos in names.
        for name in NAMES.iter().chain(&["fcntl", "fcntl64", "__chk_fail"]) {
            let cname = std::ffi::CString::new(*name).unwrap();
            let slot = Slot::new(Box::leak(cname.into_bytes_with_nul().into_boxed_slice()));
            assert!(slot.get().is_some(), "{name} not found in libc");
        }
    }

    #[test]
    fn real_calls_reach_libc() {
        // A bad fd: the real close answers EBADF, with errno set by it.
        crate::guard::set_errno(0);
        assert_eq!(unsafe { close(-1) }, -1);
        assert_eq!(crate::guard::errno(), libc::EBADF);
        assert_eq!(unsafe { fcntl(-1, libc::F_GETFD, 0) }, -1);
        assert_eq!(crate::guard::errno(), libc::EBADF);
    }
}
