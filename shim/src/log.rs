//! The shim's logger: one line per event, `gcb: ...`, to stderr or `GCB_LOG_FILE`.
//!
//! It must work inside any hook of any program, so a line is formatted into a
//! fixed stack buffer (no allocation), written with the real `write` in a single
//! call (lines from several processes sharing a file do not interleave under
//! `O_APPEND`), and `errno` is left as it was. A disabled level costs one relaxed
//! load; the arguments are not even formatted.
//!
//! Info lines carry no level tag, so the registration line has the exact form
//! operators grep for: `gcb: registered tcp 10.0.0.5:9618 as 192.0.2.7:20001`.

use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicI32, AtomicU8, Ordering::Relaxed};

use libc::c_int;

use crate::guard::{errno, ErrnoGuard};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
}

impl Level {
    /// Until `GCB_LOG` says otherwise: problems only, so a pass-through shim is silent.
    pub const DEFAULT: Level = Level::Warn;
    const ALL: [Level; 4] = [Level::Error, Level::Warn, Level::Info, Level::Debug];

    /// `GCB_LOG`'s values, in any letter case.
    pub fn parse(s: &str) -> Option<Level> {
        Level::ALL.into_iter().find(|l| l.name().eq_ignore_ascii_case(s.trim()))
    }

    pub fn name(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Level::Error => "error: ",
            Level::Warn => "warning: ",
            Level::Info => "",
            Level::Debug => "debug: ",
        }
    }
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::DEFAULT as u8);
static FD: AtomicI32 = AtomicI32::new(libc::STDERR_FILENO);

#[inline]
pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Relaxed)
}

pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Relaxed)
}

/// Sends further lines to `fd`, an internal fd the log now owns
/// (`internal::open_log`); returns the fd lines went to before.
pub fn use_fd(fd: c_int) -> c_int {
    FD.swap(fd, Relaxed)
}

/// Moves logging from internal fd `old` to `new`; false if `old` is not the log's.
pub fn replace_fd(old: c_int, new: c_int) -> bool {
    FD.compare_exchange(old, new, Relaxed, Relaxed).is_ok()
}

/// Logs at a level: `log!(Warn, "GCB_LOG={value:?} is not a level")`.
macro_rules! log {
    ($level:ident, $($arg:tt)+) => {
        if $crate::log::enabled($crate::log::Level::$level) {
            $crate::log::emit($crate::log::Level::$level, format_args!($($arg)+))
        }
    };
}

/// Formats and writes one line; prefer the `log!` macro, which checks the level first.
pub fn emit(level: Level, args: fmt::Arguments) {
    let _errno = ErrnoGuard::new();
    let mut line = Line::new();
    let _ = write!(line, "gcb: {}{}", level.tag(), args);
    write_all(FD.load(Relaxed), line.finish());
}

fn write_all(fd: c_int, mut bytes: &[u8]) {
    // Bounded: a descriptor that keeps taking nothing must not hang the caller.
    for _ in 0..16 {
        if bytes.is_empty() {
            return;
        }
        // SAFETY: `bytes` is a live buffer of the given length.
        let n = unsafe { crate::real::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        match usize::try_from(n) {
            Ok(n) => bytes = &bytes[n.min(bytes.len())..],
            Err(_) if errno() == libc::EINTR => {}
            Err(_) => return,
        }
    }
}

/// A line being formatted. Text that does not fit is cut at a character boundary
/// and marked with `...`.
struct Line {
    buf: [u8; Line::CAP],
    len: usize,
    truncated: bool,
}

impl Line {
    const CAP: usize = 512;
    /// Room kept for `...\n`.
    const RESERVE: usize = 4;

    fn new() -> Line {
        Line { buf: [0; Line::CAP], len: 0, truncated: false }
    }

    fn finish(&mut self) -> &[u8] {
        let end: &[u8] = if self.truncated { b"...\n" } else { b"\n" };
        self.buf[self.len..self.len + end.len()].copy_from_slice(end);
        &self.buf[..self.len + end.len()]
    }
}

impl fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.truncated {
            return Ok(());
        }
        let room = Line::CAP - Line::RESERVE - self.len;
        let mut take = s.len().min(room);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        // A line ends at the first line break: one event, one line.
        if let Some(nl) = s[..take].find(['\n', '\r']) {
            take = nl;
            self.truncated = true;
        }
        self.buf[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        self.truncated |= take < s.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(args: fmt::Arguments) -> Vec<u8> {
        let mut line = Line::new();
        let _ = line.write_fmt(args);
        line.finish().to_vec()
    }

    #[test]
    fn levels_parse_and_order() {
        assert_eq!(Level::parse("debug"), Some(Level::Debug));
        assert_eq!(Level::parse(" WARN "), Some(Level::Warn));
        assert_eq!(Level::parse("warning"), None);
        assert_eq!(Level::parse(""), None);
        assert!(Level::Error < Level::Warn && Level::Info < Level::Debug);
    }

    #[test]
    fn short_lines_end_in_newline() {
        assert_eq!(render(format_args!("gcb: {} {}", "registered", 7)), b"gcb: registered 7\n");
    }

    #[test]
    fn long_lines_are_cut_on_a_char_boundary() {
        let long = "é".repeat(600);
        let out = render(format_args!("{long}"));
        assert!(out.len() <= Line::CAP);
        assert!(out.ends_with(b"...\n"));
        assert!(std::str::from_utf8(&out).is_ok());
    }

    #[test]
    fn embedded_newlines_do_not_split_the_line() {
        assert_eq!(render(format_args!("a\nb")), b"a...\n");
        assert_eq!(render(format_args!("{}{}", "a\n", "b")), b"a...\n");
    }
}
