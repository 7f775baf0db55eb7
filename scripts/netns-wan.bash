# scripts/netns-wan.bash: the router between GB and the public network for
# scripts/netns (up --wan-hop), and the WAN latency it can add (--wan-delay-us),
# sourced by netns (it is not a command). Kept apart as netns-gateway.bash is:
# netns was long enough.

# The router of "up --wan-hop" and GB's side of its link. GB's address is a /32 and
# the rest of the public network is a route through wan ("onlink": wan's gb0 has no
# address of its own, and answers GB's ARP for 203.0.113.254 from sw0's). On the
# switch, wan answers ARP for 203.0.113.2 (proxy ARP: its route to it leaves by
# another interface), so the other public hosts keep their /24 and see no change
# but the hop. Strict reverse-path filtering still holds: every route is symmetric.
wan_router() {
    local P=$1
    step "links wan" ip -n "$P-wan" -batch - <<EOF
link set lo up
link set sw0 up
link set gb0 up
addr add 203.0.113.254/24 dev sw0
route add 203.0.113.2/32 dev gb0
EOF
    # A proxy ARP answer is delayed by up to proxy_delay (0.8 s by default), which
    # would hold a host's first packets to GB in its ARP queue: no router does
    # that to a datagram on the Internet.
    step "proxy_arp wan" ip netns exec "$P-wan" sysctl -q -w net.ipv4.conf.sw0.proxy_arp=1 \
        net.ipv4.neigh.sw0.proxy_delay=0
    step "links gb" ip -n "$P-gb" -batch - <<EOF
link set lo up
link set pub0 up
link set priv0 up
addr add 203.0.113.2/32 dev pub0
route add 203.0.113.0/24 via 203.0.113.254 dev pub0 onlink src 203.0.113.2
addr add 198.51.100.1/24 dev priv0
EOF
}

# The wan-delay program (testbed/src/bin/wan-delay.rs): GCB_WAN_DELAY, else the
# workspace's build (CARGO_TARGET_DIR, relative to the workspace if relative),
# release first, then debug.
wan_delay_bin() {
    local root target p
    [[ -z ${GCB_WAN_DELAY:-} ]] || { printf '%s\n' "$GCB_WAN_DELAY"; return; }
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    target=${CARGO_TARGET_DIR:-$root/target}
    [[ $target == /* ]] || target=$root/$target
    for p in "$target/release/wan-delay" "$target/debug/wan-delay"; do
        [[ -x $p ]] && { printf '%s\n' "$p"; return; }
    done
    printf '%s\n' "$target/release/wan-delay"
}

# "up --wan-delay-us N": the wan router holds every packet it forwards for N us,
# both ways. This kernel has no netem qdisc, so everything to GB arriving on sw0,
# and everything arriving on gb0, is routed (table 100) into a TUN device, dly0,
# where wan-delay reads it, holds it and writes it back; the kernel then routes it
# on from dly0 by the main table. The rule on sw0 names GB's address alone: proxy
# ARP answers for every address whose route leaves by another interface, so a rule
# for all of sw0's traffic would draw the switch's other hosts' traffic into wan.
# A packet is thus forwarded twice inside wan, and its TTL goes down by two there.
# Reverse-path filtering stays strict on sw0 and gb0 (all.rp_filter would be a
# floor for every interface, so it is lowered) and is off on dly0, where packets
# from everywhere come back in. wan-delay runs in the wan namespace, so "down"
# ends it with the rest there; it also exits by itself once that namespace is gone.
wan_delay() {
    local P=$1 us=$2 bin=$3 log i pid
    step "tun wan" ip -n "$P-wan" -batch - <<EOF
tuntap add dev dly0 mode tun
link set dly0 up
route add default dev dly0 table 100
rule add iif sw0 to 203.0.113.2/32 lookup 100 pref 100
rule add iif gb0 lookup 100 pref 101
EOF
    step "rp_filter wan" ip netns exec "$P-wan" sysctl -q -w net.ipv4.conf.all.rp_filter=0 \
        net.ipv4.conf.sw0.rp_filter=1 net.ipv4.conf.gb0.rp_filter=1 net.ipv4.conf.dly0.rp_filter=0 \
        net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.dly0.send_redirects=0
    log=$(mktemp "${TMPDIR:-/tmp}/gcb-wan-delay.XXXXXX")
    UP_DELAY_LOG=$log
    ip netns exec "$P-wan" setsid "$bin" --tun dly0 --delay-us "$us" --netns "$P-wan" \
        </dev/null >"$log" 2>&1 &
    pid=$!
    # Bounded: 100 x 50 ms = 5 s for it to hold the device.
    for ((i = 0; i < 100; i++)); do
        grep -q '^READY' "$log" && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    if ! grep -q '^READY' "$log"; then
        local why
        why=$(tail -n 1 "$log")
        die "up: wan-delay did not start within 5 s: ${why:-no output}"
    fi
    rm -f "$log"
    UP_DELAY_LOG=""
}
