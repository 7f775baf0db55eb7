//! Which process the shim's memory belongs to, and whether the caller is a
//! child that only borrows it.
//!
//! A `vfork` child, and the child `posix_spawn` makes with
//! `clone(CLONE_VM | CLONE_VFORK)`, runs on its parent's memory until it calls
//! `exec` or `_exit`. Python's `subprocess` does real work there: it closes
//! the inherited fds (`close_range`) and `dup2`s the child's stdio, and those
//! calls reach the shim's hooks. Whatever the shim writes in such a child it
//! writes into its parent: a close taken for the program closing its listener
//! would unregister the parent's listener. So the hooks that change the shim's
//! state ask [`borrowed`] first, and in a borrowing child they only make the
//! real call, which acts on the child's own fd table.
//!
//! The test is `getpid() != owner`, where the owner is the process that ran
//! the shim's init, updated in every forked child (a real fork copies memory,
//! and the child owns its copy). `getpid` is a system call, so [`borrowed`] is
//! asked only on paths that change state (closes and dups of tracked fds),
//! never on a fast path.

use std::sync::atomic::{AtomicI32, Ordering::Relaxed};

/// The pid whose memory this is; 0 until init.
static OWNER: AtomicI32 = AtomicI32::new(0);

fn getpid() -> i32 {
    // SAFETY: getpid has no preconditions and is async-signal-safe.
    unsafe { libc::getpid() }
}

/// Called by init and by every forked child (from its `pthread_atfork`
/// handler: async-signal-safe work only).
pub fn claim() {
    OWNER.store(getpid(), Relaxed);
}

/// The owner's pid (this process, unless the caller is a borrowing child).
pub fn owner() -> i32 {
    OWNER.load(Relaxed)
}

/// Whether the caller runs on memory another process owns (a `vfork` or
/// `CLONE_VM` child): it must not change any shim state.
pub fn borrowed() -> bool {
    let owner = OWNER.load(Relaxed);
    owner != 0 && owner != getpid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_is_not_borrowing() {
        claim();
        assert!(!borrowed());
        assert_eq!(owner(), getpid());
    }

    /// A vfork child sees memory whose owner is its parent.
    #[test]
    fn a_vfork_child_borrows() {
        claim();
        static SEEN: AtomicI32 = AtomicI32::new(-1);
        // SAFETY: the child only reads an atomic, stores one, and _exits (the
        // use libc's deprecation warns about, a vfork child doing more, is
        // not made here).
        #[allow(deprecated)]
        let pid = unsafe { libc::vfork() };
        if pid == 0 {
            SEEN.store(i32::from(borrowed()), Relaxed);
            // SAFETY: leaves the child without running anything of the parent's.
            unsafe { libc::_exit(0) };
        }
        assert!(pid > 0);
        let mut status = 0;
        // SAFETY: our child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(SEEN.load(Relaxed), 1, "the child saw it borrows");
        assert!(!borrowed(), "the parent owns its memory");
    }
}
