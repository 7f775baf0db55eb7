//! The life of fds and processes: `close`, `dup`, `dup2`, `dup3`, `fcntl`, `fcntl64`,
//! `close_range`, `closefrom`, `fork` and the `exec` family.
//!
//! Management sockets share the fate of their listening socket: created,
//! duplicated, inherited and closed with it (docs/design.md, "Management sockets and the
//! shim's own fds"). The shim's own fds are protected here ([`crate::reclaim`], [`crate::internal`]).
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

use crate::detour::{self, Detour};
use crate::client::inherit::{self, ExecEnv};
use crate::guard;
use crate::{internal, managed, real, reclaim};

hook! {
    fn close(fd: c_int) -> c_int {
        match detour::close(fd) {
            Err(_) => real::close(fd),
            Ok(Detour::Own) => internal::refuse_close(),
            Ok(_) => managed::close(fd),
        }
    }
}

hook! {
    fn dup(fd: c_int) -> c_int {
        detour_or_real!(detour::dup(fd) => dup(fd))
    }
}

hook! {
    fn dup2(oldfd: c_int, newfd: c_int) -> c_int {
        if detour::dup_onto(oldfd, newfd).is_err() {
            return real::dup2(oldfd, newfd);
        }
        reclaim::dup_onto(oldfd, newfd, || real::dup2(oldfd, newfd))
    }
}

hook! {
    fn dup3(oldfd: c_int, newfd: c_int, flags: c_int) -> c_int {
        if detour::dup_onto(oldfd, newfd).is_err() {
            return real::dup3(oldfd, newfd, flags);
        }
        reclaim::dup_onto(oldfd, newfd, || real::dup3(oldfd, newfd, flags))
    }
}

hook! {
    /// Variadic in C; see the module documentation for the fixed third argument.
    fn fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
        detour_or_real!(detour::dup(fd) => fcntl(fd, cmd, arg))
    }
}

hook! {
    /// `fcntl` under its large-file name (the same function on 64-bit glibc).
    fn fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
        detour_or_real!(detour::dup(fd) => fcntl64(fd, cmd, arg))
    }
}

hook! {
    fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
        if detour::range().is_err() {
            return real::close_range(first, last, flags);
        }
        reclaim::close_range(first, last, flags)
    }
}

hook! {
    fn closefrom(lowfd: c_int) -> () {
        if detour::range().is_err() {
            return real::closefrom(lowfd);
        }
        reclaim::closefrom(lowfd)
    }
}

hook! {
    /// The child starts its own responder before `fork` returns in it, so a
    /// child that serves a listener it inherited answers at once.
    fn fork() -> pid_t {
        let pid = real::fork();
        if pid == 0 {
            // Init contains its own panics: the child is born either way.
            let _errno = guard::ErrnoGuard::new();
            crate::init::ensure();
        }
        pid
    }
}

extern "C" {
    static environ: *const *const c_char;
}

/// The exec hooks' shape: prepare the hand-over guarded (no lazy init, `errno`
/// kept), release the guard, make the real call, undo if it returned.
macro_rules! exec_hook {
    (
        fn $name:ident($($arg:ident: $ty:ty),*) envp = $envp:expr;
        plain = $plain:expr;
        with_env($env:ident) = $with_env:expr;
    ) => {
        /// Hands managed listeners to the new image (module documentation).
        ///
        /// # Safety
        ///
        /// The C contract of the libc function of the same name.
        #[no_mangle]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> c_int {
            guard::prepare(|| {
                crate::gcb::lifecycle::before_exec();
                crate::dpf::lifecycle::before_exec();
            });
            let prepared = guard::prepare_value(|| inherit::prepare($envp));
            match prepared {
                None => $plain,
                Some(prepared) => {
                    let $env = prepared.envp();
                    let r = $with_env;
                    guard::prepare(|| ExecEnv::undo(prepared));
                    r
                }
            }
        }
    };
}

exec_hook! {
    fn execve(path: *const c_char, argv: *const *const c_char, envp: *const *const c_char) envp = envp;
    plain = real::execve(path, argv, envp);
    with_env(env) = real::execve(path, argv, env);
}

exec_hook! {
    fn execv(path: *const c_char, argv: *const *const c_char) envp = environ;
    plain = real::execv(path, argv);
    with_env(env) = real::execve(path, argv, env);
}

exec_hook! {
    fn execvp(file: *const c_char, argv: *const *const c_char) envp = environ;
    plain = real::execvp(file, argv);
    with_env(env) = real::execvpe(file, argv, env);
}

exec_hook! {
    fn execvpe(file: *const c_char, argv: *const *const c_char, envp: *const *const c_char) envp = envp;
    plain = real::execvpe(file, argv, envp);
    with_env(env) = real::execvpe(file, argv, env);
}

exec_hook! {
    fn fexecve(fd: c_int, argv: *const *const c_char, envp: *const *const c_char) envp = envp;
    plain = real::fexecve(fd, argv, envp);
    with_env(env) = real::fexecve(fd, argv, env);
}

exec_hook! {
    fn execveat(dirfd: c_int, path: *const c_char, argv: *const *const c_char, envp: *const *const c_char, flags: c_int) envp = envp;
    plain = real::execveat(dirfd, path, argv, envp, flags);
    with_env(env) = real::execveat(dirfd, path, argv, env, flags);
}
