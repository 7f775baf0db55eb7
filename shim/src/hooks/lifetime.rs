//! The life of fds and processes: `close`, `dup`, `dup2`, `dup3`, `fcntl`, `fcntl64`,
//! `close_range`, `closefrom`, `fork` and the `exec` family.
//!
//! Management sockets share the fate of their listening socket: created,
//! duplicated, inherited and closed with it (DESIGN.md, "Management sockets"). The
//! shim's own fds are protected here ([`crate::internal`]).
//!
//! # fcntl is variadic
//!
//! `int fcntl(int fd, int cmd, ...)` takes one optional argument, an `int` or a
//! pointer. Stable Rust cannot define a C-variadic function, so the hooks take a
//! fixed third `c_ulong`. On x86_64 (System V) and aarch64 Linux (AAPCS64) an
//! integer or pointer variadic argument travels in the same register as a fixed one
//! would, so reading a third integer argument is what a variadic callee does with
//! `va_arg` (glibc's own `fcntl` reads one unconditionally, even for `F_GETFD`). The
//! value is passed on, again as a variadic argument, to the real `fcntl`. Targets
//! where this does not hold (Apple's arm64 passes variadics on the stack) are
//! refused by a `compile_error!` in `lib.rs`. When the shim interprets `arg` for an
//! `int` command (`F_DUPFD`), only its low 32 bits are defined.
//!
//! # fork and vfork
//!
//! `fork` is hooked so lazy init (and with it the `pthread_atfork` handlers, see
//! [`crate::init`]) has run before the first fork of the process. What the child
//! needs is done in those handlers rather than here, because they also run for
//! forks this hook never sees (libc-internal ones, as in `daemon`).
//!
//! `vfork` must not be hooked. Its child borrows the parent's stack and memory until
//! it calls `exec` or `_exit`: a wrapper would return in the child, through a frame
//! the parent later returns through again, and the parent would find that frame
//! clobbered. The child can do nothing but `exec` or `_exit`, and `exec` reaches the
//! hooks below, which are written to be safe in a vfork child.
//!
//! # The exec family
//!
//! The syscall-level entry point is `execve`, but glibc's `execv`, `execvp`,
//! `execvpe` and `fexecve` call its internal `__execve`, not the exported symbol, so
//! each is hooked on its own, as is `execveat`. `execl`, `execle` and `execlp` are
//! variadic with an open-ended argument list, which stable Rust cannot define; they
//! reach the kernel without passing a hook. So do `posix_spawn` (and `system` and
//! `popen`, built on it), whose child runs in a `clone(CLONE_VM | CLONE_VFORK)`
//! and calls `__execve` directly. Anything the new image must learn therefore has to
//! reach it by a route that does not depend on these hooks alone, for instance an
//! environment variable kept current as managed fds come and go.

use libc::{c_char, c_int, c_uint, c_ulong, pid_t};

use crate::fdtable::{self, Kind};
use crate::{internal, managed, real};

hook! {
    fn close(fd: c_int) -> c_int {
        match fdtable::kind(fd) {
            Kind::Plain => real::close(fd),
            Kind::Internal => internal::refuse_close(),
            Kind::Managed => managed::close(fd),
        }
    }
}

hook! {
    fn dup(fd: c_int) -> c_int {
        real_unless!(fdtable::is_managed(fd) => dup(fd))
    }
}

hook! {
    fn dup2(oldfd: c_int, newfd: c_int) -> c_int {
        if fdtable::kind(newfd) == Kind::Plain {
            return real::dup2(oldfd, newfd);
        }
        internal::dup_onto(oldfd, newfd, || real::dup2(oldfd, newfd))
    }
}

hook! {
    fn dup3(oldfd: c_int, newfd: c_int, flags: c_int) -> c_int {
        if fdtable::kind(newfd) == Kind::Plain {
            return real::dup3(oldfd, newfd, flags);
        }
        internal::dup_onto(oldfd, newfd, || real::dup3(oldfd, newfd, flags))
    }
}

hook! {
    /// Variadic in C; see the module documentation for the fixed third argument.
    fn fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
        real_unless!(fdtable::is_managed(fd) => fcntl(fd, cmd, arg))
    }
}

hook! {
    /// `fcntl` under its large-file name (the same function on 64-bit glibc).
    fn fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
        real_unless!(fdtable::is_managed(fd) => fcntl64(fd, cmd, arg))
    }
}

hook! {
    fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
        if !fdtable::any_marked() {
            return real::close_range(first, last, flags);
        }
        internal::close_range(first, last, flags)
    }
}

hook! {
    fn closefrom(lowfd: c_int) -> () {
        if !fdtable::any_marked() {
            return real::closefrom(lowfd);
        }
        internal::closefrom(lowfd)
    }
}

hook! {
    fn fork() -> pid_t {
        real::fork()
    }
}

// The exec hooks are `tail` hooks: their body runs guarded, then the guard is
// released and the real call made, so a vfork child that execs leaves nothing set in
// the memory it shares with its parent. They skip lazy init for the same reason:
// with nothing initialised there is nothing managed to pass on.

hook! {
    tail fn execve(path: *const c_char, argv: *const *const c_char, envp: *const *const c_char) -> c_int {
        managed::before_exec()
    }
}

hook! {
    tail fn execv(path: *const c_char, argv: *const *const c_char) -> c_int {
        managed::before_exec()
    }
}

hook! {
    tail fn execvp(file: *const c_char, argv: *const *const c_char) -> c_int {
        managed::before_exec()
    }
}

hook! {
    tail fn execvpe(file: *const c_char, argv: *const *const c_char, envp: *const *const c_char) -> c_int {
        managed::before_exec()
    }
}

hook! {
    tail fn fexecve(fd: c_int, argv: *const *const c_char, envp: *const *const c_char) -> c_int {
        managed::before_exec()
    }
}

hook! {
    tail fn execveat(dirfd: c_int, path: *const c_char, argv: *const *const c_char, envp: *const *const c_char, flags: c_int) -> c_int {
        managed::before_exec()
    }
}
