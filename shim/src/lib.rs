//! `libgcb.so`, the GCB/DPF client that unmodified programs load with `LD_PRELOAD`.
//!
//! # Design note
//!
//! The shim defines C symbols (`connect`, `recv`, `close`, ...) that the dynamic
//! linker binds ahead of libc's. Without configuration every hook passes through:
//! a program runs exactly as it would without the shim. With `GCB_INAGENT` set,
//! the GCB client ([`gcb`]) registers listeners, brokers connects and runs the
//! asynchronous event handler inside the program's blocking calls. The parts:
//!
//! * [`hook`] is the machinery every interposed function is built from: the
//!   `hook!` macro, the re-entrancy guard, `errno` handling and panic containment.
//! * `hooks/` holds the exported functions, one module per call family. Each hook is
//!   a thin shell: a fast-path test, then either the real function or the logic
//!   for fds the shim owns or manages ([`managed`], [`internal`]).
//! * [`real`] resolves libc's definitions with `dlsym(RTLD_NEXT)`, so shim code
//!   can call `real::close(fd)` without landing in its own hook.
//! * [`fdtable`] says, per fd, whether the shim has any business with it. Testing it
//!   is one relaxed atomic load, which keeps unmanaged fds on a fast path with no
//!   extra system call.
//! * [`dpf`] is the DPF client: forwards for bound UDP and listening TCP sockets,
//!   their management sockets, and `dpfd` queries for connects; [`client`] holds
//!   what it shares with GCB.
//! * [`gcb`] is the GCB client: listener registry, management sockets, AEH,
//!   doorbells, connector, and the fork/exec hand-over.
//! * [`config`] and [`route`] read the environment once; [`log`] writes lines without
//!   allocating; [`init`] does the one-time work lazily on the first hooked call.
//!
//! Rules every part keeps, because the shim runs inside programs it knows nothing
//! about:
//!
//! * No work at load time: no constructor, no threads. Init is lazy, never blocks and
//!   never waits for another thread, so a child forked mid-init cannot deadlock.
//! * The hot path takes no locks and allocates nothing. Shim state is atomics, or
//!   values published once with a compare-and-swap, and the GCB registry's one lock,
//!   taken only for fds the client tracks and handled across `fork` (see [`init`]).
//! * `errno` after a hook is what the real call set; shim-internal work in between
//!   runs under [`guard::ErrnoGuard`].
//! * Nothing unwinds into C, and a fault in the shim never hands the application
//!   what the shim keeps from it: a panic in a hook's logic is caught and fails
//!   that call with `EIO`; bookkeeping after the real operation is contained on
//!   its own, so the real result stands; a closed fd is never left marked
//!   (the contract is in [`hook`]). This needs unwinding: a build with
//!   `panic = "abort"` is refused below.
//! * Only the hooks are exported. rustc already links a cdylib with a version script
//!   that exports its `#[no_mangle] extern "C"` functions and makes everything else
//!   local, so there is no script of our own: one with a named version node would
//!   even break interposition, since the loader does not bind a program's
//!   `recv@GLIBC_2.2.5` to a `recv` of another version. The hooks stay unversioned,
//!   and the test `exports_only_hooks` in `tests/passthrough.rs` checks the list.

#[cfg(not(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64"))))]
compile_error!(
    "libgcb.so supports Linux on x86_64 and aarch64 only: the variadic fcntl hooks rely \
     on those ABIs passing variadic integer arguments like fixed ones (hooks/lifetime.rs)"
);

// Containment catches panics with `catch_unwind` (hook.rs). With panic=abort
// it catches nothing, and a bug in the shim's bookkeeping for one socket would
// kill whatever program it is loaded into, instead of failing one call.
#[cfg(panic = "abort")]
compile_error!(
    "libgcb.so must be built with panic = \"unwind\": it runs inside other people's \
     programs, and contains its own panics (hook.rs) so that a shim bug fails one call \
     with EIO instead of aborting the program; panic = \"abort\" would turn every such \
     bug into a crash of the application"
);

#[macro_use]
pub mod guard;
#[macro_use]
pub mod hook;
#[macro_use]
pub mod log;

pub mod client;
pub mod config;
pub mod detour;
pub mod fdtable;
pub mod dpf;
pub mod gcb;
pub mod init;
pub mod internal;
pub mod managed;
pub mod process;
pub mod real;
pub mod reclaim;
pub mod responder;
pub mod route;

mod hooks;
