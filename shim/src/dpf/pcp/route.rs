//! The default route's gateway, for `DPF_INAGENT=pcp://` without an address:
//! the NAT gateway a PCP client talks to is, on the hosts this is for, the
//! next hop of the default route (RFC 6887 §8.1). Read from
//! `/proc/net/route`, the kernel's IPv4 table of this network namespace, so
//! no netlink code and no `ip` command are needed; parsed by a pure function.

use std::net::Ipv4Addr;

const RTF_UP: u32 = 0x1;
const RTF_GATEWAY: u32 = 0x2;

/// The gateway of the default route with the lowest metric, or why there is none.
pub fn default_gateway() -> Result<Ipv4Addr, String> {
    let text = std::fs::read_to_string("/proc/net/route").map_err(|e| format!("/proc/net/route cannot be read ({e})"))?;
    parse(&text).ok_or_else(|| "there is no default route".to_string())
}

/// The lowest-metric default route's gateway in `/proc/net/route`'s text.
/// Addresses there are the kernel's network-order words printed as native
/// integers, so their bytes in memory order are the address.
pub fn parse(text: &str) -> Option<Ipv4Addr> {
    let hex = |s: &str| u32::from_str_radix(s, 16).ok();
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (dest, gw, flags, metric, mask) = (hex(f.get(1)?)?, hex(f.get(2)?)?, hex(f.get(3)?)?, f.get(6)?.parse::<u32>().ok()?, hex(f.get(7)?)?);
            let default = dest == 0 && mask == 0 && flags & (RTF_UP | RTF_GATEWAY) == RTF_UP | RTF_GATEWAY && gw != 0;
            default.then(|| (metric, Ipv4Addr::from(gw.to_ne_bytes())))
        })
        .min_by_key(|(metric, _)| *metric)
        .map(|(_, ip)| ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n";

    /// A line as the kernel prints it for an address given in dotted form.
    fn line(dest: &str, gw: &str, flags: u32, metric: u32, mask: &str) -> String {
        let word = |s: &str| u32::from_ne_bytes(s.parse::<Ipv4Addr>().unwrap().octets());
        format!("eth0\t{:08X}\t{:08X}\t{flags:04X}\t0\t0\t{metric}\t{:08X}\t0\t0\t0\n", word(dest), word(gw), word(mask))
    }

    #[test]
    fn the_lowest_metric_default_route_wins() {
        let text = HEADER.to_string()
            + &line("0.0.0.0", "192.0.2.254", 3, 200, "0.0.0.0")
            + &line("192.0.2.0", "0.0.0.0", 1, 0, "255.255.255.0")
            + &line("0.0.0.0", "192.0.2.1", 3, 100, "0.0.0.0");
        assert_eq!(parse(&text), Some("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn no_default_route_no_gateway() {
        let down = line("0.0.0.0", "192.0.2.1", RTF_GATEWAY, 0, "0.0.0.0");
        let onlink = line("0.0.0.0", "0.0.0.0", RTF_UP, 0, "0.0.0.0");
        let subnet = line("192.0.2.0", "192.0.2.1", 3, 0, "255.255.255.0");
        assert_eq!(parse(&(HEADER.to_string() + &down + &onlink + &subnet)), None);
        assert_eq!(parse(""), None);
        assert_eq!(parse(&(HEADER.to_string() + "eth0 junk\n")), None);
    }

}
