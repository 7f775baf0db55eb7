//! The privilege check: dpfd changes the kernel's NAT rule set, which takes
//! root or CAP_NET_ADMIN. Checking at startup turns a late, obscure failure
//! of the first `nft` call into one clear line before anything is bound.

use std::fs;

/// Bit of CAP_NET_ADMIN in the capability sets (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;

/// Whether the process may change the NAT rule set.
pub fn can_admin_network() -> bool {
    nix::unistd::geteuid().is_root()
        || fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| effective_caps(&status))
            .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}

/// The effective capability set from the text of /proc/self/status.
fn effective_caps(status: &str) -> Option<u64> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_effective_set() {
        let status = "Name:\tdpfd\nCapInh:\t0000000000000000\nCapEff:\t0000000000001000\n";
        assert_eq!(effective_caps(status), Some(1 << CAP_NET_ADMIN));
        assert_eq!(effective_caps("Name:\tx\n"), None);
    }
}
