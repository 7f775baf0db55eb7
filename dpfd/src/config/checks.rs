//! The checks of dpfd's configuration that look at several settings at
//! once or at the host: the mirror file's directory, the derived private
//! network, the public addresses and the command port against the range.

use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use crate::net::{self, Cidr, IfAddr};
use crate::values::PortRange;
use daemon_kit::settings::{place, Origin};

/// The mirror file is created and rewritten in place, so its directory must
/// exist, and the path must not be something other than a file.
pub(super) fn check_mirror(path: &Path) -> Result<(), String> {
    let shown = path.display();
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(format!(
                "mirror file {shown}: {} is not a directory",
                dir.display()
            ))
        }
        Err(e) => {
            return Err(format!(
                "mirror file {shown}: directory {}: {e}",
                dir.display()
            ))
        }
    }
    match fs::metadata(path) {
        Ok(meta) if !meta.is_file() => Err(format!("mirror file {shown} is not a regular file")),
        _ => Ok(()),
    }
}

/// The default private network: the subnet of the interface holding the
/// --listen address (see net.rs for why not a fixed /24).
pub(super) fn derive_private_net(listen: SocketAddr, addresses: &[IfAddr]) -> Result<Cidr, String> {
    if listen.ip().is_unspecified() {
        return Err(format!(
            "--listen {listen} is a wildcard address, so --private-net must name the networks \
             requests are accepted from"
        ));
    }
    net::subnet_of(listen.ip(), addresses).ok_or_else(|| {
        format!(
            "cannot derive --private-net: {} is not an address of this host; give --private-net",
            listen.ip()
        )
    })
}

pub(super) fn check_public_ips(
    ips: &[IpAddr],
    origin: Origin,
    private: &[Cidr],
) -> Result<(), String> {
    let name = place("public_ip", origin);
    for (i, ip) in ips.iter().enumerate() {
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(format!(
                "{name} {ip}: forwards need a concrete unicast address"
            ));
        }
        if ips[..i].contains(ip) {
            return Err(format!("{name} lists {ip} twice"));
        }
        if let Some(net) = private.iter().find(|n| n.contains(*ip)) {
            return Err(format!(
                "{name} {ip} is inside the private network {net}; the public side must be \
                 outside the networks requests are accepted from"
            ));
        }
    }
    Ok(())
}

/// A DNAT forward on the command port would capture dpfd's own requests
/// before they reach it, if the command socket listens on a public IP.
pub(super) fn check_port_range(
    listen: SocketAddr,
    public_ips: &[IpAddr],
    range: PortRange,
    origin: Origin,
) -> Result<(), String> {
    let exposed = listen.ip().is_unspecified() || public_ips.contains(&listen.ip());
    if exposed && range.contains(listen.port()) {
        return Err(format!(
            "{} {range} contains the command port {} on a public address; forwards would \
             capture it",
            place("port_range", origin),
            listen.port()
        ));
    }
    Ok(())
}
