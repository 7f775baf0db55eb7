//! `libgcb.so`, the GCB/DPF client that unmodified programs load with `LD_PRELOAD`.
//!
//! # Design note
//!
//! The shim defines C symbols (`connect`, `recv`, `close`, ...) that the dynamic
//! linker binds ahead of libc's. Without configuration every hook passes through:
//! a program runs exactly as it would without the shim. With `GCB_INAGENT` set,
//! the GCB client ([`gcb`]) registers listeners, brokers connects and runs the
//! asynchronous event handler inside the program's blocking calls; with
//! `DPF_INAGENT` set, the DPF client ([`dpf`]) has its sockets forwarded.
//!
//! # Layers
//!
//! The modules form layers. A module uses its own layer and the ones below,
//! never one above, and no chain of imports between module files comes back
//! to where it started; `tests/layers.rs` reads the sources and fails on an
//! upward import or a cycle, with each module's layer in one table there.
//! From the top down:
//!
//! 1. **Hooks.** `hooks/` holds the exported functions, one module per call
//!    family, each a thin shell; [`hook`] is the machinery they are built
//!    from: the `hook!` macro and [`hook::dispatch`], which runs lazy init and
//!    contains panics.
//! 2. **Dispatch.** [`detour`] is the one place that decides whether a call
//!    goes through the shim (`Detour`) or straight to libc (`Bypass`, with the
//!    reason), from the fd table ([`fdtable`], one relaxed atomic load) and the
//!    mode. [`managed`] then hands a detoured call to the client of this
//!    process's mode, [`reclaim`] handles the application's closes and dups
//!    that meet the shim's own fds, and [`init`] does the one-time work on the
//!    first hooked call and the `fork` and `exit` handlers.
//! 3. **Clients.** [`gcb`] is the GCB client (listener registry, management
//!    sockets, responder duties, doorbells, connector, UDP, the fork/exec
//!    hand-over); [`dpf`] is the DPF client (forwards from `dpfd` or a
//!    standard gateway). Each decides its mode in `mode`, keeps its state behind
//!    `state::with`, and takes the process's lifetime events in `lifecycle`,
//!    at its top; its `mod.rs` only declares. Lower modules start the
//!    responder through `state::ensure_responder`, whose duties are
//!    implemented at the top of the client.
//! 4. **Client core.** What both clients build on: [`client`] (socket
//!    plumbing, families, the fork-safe lock, the exchange with a daemon,
//!    fd-keyed records), [`fdtable`], the shim's own fds ([`internal`]), the
//!    responder thread ([`responder`]) and process identity ([`process`]).
//! 5. **Base.** Needs nothing of the shim: [`guard`] (re-entrancy guard,
//!    `errno`, panic containment), [`real`] (libc's definitions through
//!    `dlsym(RTLD_NEXT)`, so shim code can call `real::close(fd)` without
//!    landing in its own hook), [`log`] (lines without allocating), and
//!    [`config`] and [`route`], which read the environment once.
//!
//! Below them all lies the `proto` crate: the wire formats and state machines,
//! sans I/O.
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
