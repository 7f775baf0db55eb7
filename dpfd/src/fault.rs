//! Fault points for crash tests: `DPFD_FAULT=NAME` makes dpfd abort at the
//! step called NAME, as a `kill -9` would stop it there, so a test can check
//! that recovery from the mirror file is right at every step of the write
//! orders.
//!
//! Only builds with the `fault-injection` feature (off by default) read the
//! variable; in a normal build `point` is an empty inline function and
//! `armed` a constant false, so the shipped daemon has no hidden switch.
//!
//! Points: `after-table` (request applied to the mapping table only),
//! `after-mirror` (add records durable, kernel untouched), `after-kernel`
//! (kernel updated, delete records not yet written), `before-reply`,
//! `mirror-torn` (half of a group commit written), `compact-before-rename`,
//! `after-recovery-mirror` (startup: mirror compacted, kernel not yet
//! installed).

/// Aborts the process if `DPFD_FAULT` names this point.
#[cfg(feature = "fault-injection")]
pub fn point(name: &str) {
    if armed(name) {
        eprintln!("dpfd: fault injection: aborting at {name}");
        std::process::abort();
    }
}

/// Whether `DPFD_FAULT` names this point (read once).
#[cfg(feature = "fault-injection")]
pub fn armed(name: &str) -> bool {
    use std::sync::OnceLock;
    static FAULT: OnceLock<Option<String>> = OnceLock::new();
    FAULT
        .get_or_init(|| std::env::var("DPFD_FAULT").ok())
        .as_deref()
        == Some(name)
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point(_name: &str) {}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn armed(_name: &str) -> bool {
    false
}
