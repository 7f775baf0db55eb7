//! Figures read from /proc about the daemons the bench runs: CPU time and
//! resident memory, by PID (only PIDs of processes the bench started).

/// The PID whose /proc figures we want. `ip netns exec` and `gcb-run` exec the
/// program, so this is normally `pid` itself; if something forked instead, take
/// the child whose name matches.
pub fn exec_pid(pid: u32, comm: &str) -> u32 {
    let name = |p: u32| std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
    if name(pid).trim() == comm {
        return pid;
    }
    let kids =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    kids.split_whitespace()
        .filter_map(|k| k.parse().ok())
        .find(|k| name(*k).trim() == comm)
        .unwrap_or(pid)
}

/// CPU seconds of a process: user + system, plus those of children it reaped
/// (socat forks one per connection).
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the ")" that ends the command name: state is field 3, utime 14.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i - 3).and_then(|v| v.parse::<f64>().ok());
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((tick(14)? + tick(15)? + tick(16)? + tick(17)?) / hz.max(1.0))
}

/// Resident set size of a process in MB (10^6 bytes), from /proc/PID/status.
pub fn rss_mb(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024.0 / 1e6)
}

/// CPU time of a process's main thread in nanoseconds, from
/// /proc/PID/schedstat (the daemons are single-threaded): finer than the
/// clock ticks of [`cpu_secs`], for costs of microseconds.
pub fn cpu_ns(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).ok()?;
    s.split_whitespace().next()?.parse().ok()
}
