//! The configuration checks that involve several settings at once: the
//! command and public addresses must fit together, and the proxy port range
//! must be bindable and must not swallow the command port.

use std::net::{IpAddr, SocketAddr};

use crate::values::PortRange;
use daemon_kit::settings::{place, Origin};

pub(super) fn addresses(
    listen: SocketAddr,
    public_ip: IpAddr,
    origin: Origin,
) -> Result<(), String> {
    if public_ip.is_unspecified() {
        return Err(match origin {
            Origin::Default => format!(
                "--listen {listen} is a wildcard address, so --public-ip must name the concrete \
                 address proxy sockets are bound on"
            ),
            _ => format!(
                "{} is {public_ip}; proxy addresses are handed to clients, so it must be a \
                 concrete address",
                place("public_ip", origin)
            ),
        });
    }
    if public_ip.is_multicast() {
        return Err(format!(
            "{} is {public_ip}, a multicast address",
            place("public_ip", origin)
        ));
    }
    if listen.is_ipv4() != public_ip.is_ipv4() {
        return Err(format!(
            "--listen {listen} and --public-ip {public_ip} are of different address families"
        ));
    }
    // Connectors find the broker at PROXY_IP:COMMAND_PORT (docs/design.md,
    // "The daemons' command lines"), so the command socket must be
    // reachable on the public IP.
    if !listen.ip().is_unspecified() && listen.ip() != public_ip {
        return Err(format!(
            "--listen {listen} is not on --public-ip {public_ip}; connectors reach the broker at \
             PUBLIC_IP:COMMAND_PORT, so listen on {public_ip} or on the wildcard address"
        ));
    }
    Ok(())
}

pub(super) fn port_range(
    listen: SocketAddr,
    range: PortRange,
    origin: Origin,
    is_root: bool,
) -> Result<(), String> {
    if range.lo < 1024 && !is_root {
        return Err(format!(
            "{} {range} includes ports below 1024, which only root may bind",
            place("port_range", origin)
        ));
    }
    if range.contains(listen.port()) {
        return Err(format!(
            "{} {range} contains the command port {}; proxy sockets would collide with it",
            place("port_range", origin),
            listen.port()
        ));
    }
    Ok(())
}
