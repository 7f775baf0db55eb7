# scripts/netns-gateway.bash: the gateways' NAT and firewall for scripts/netns,
# which sources this file (it is not a command). Kept apart because the kinds of
# NAT below are the part of the test bed that tests vary, and netns was long enough.
#
# Each gateway has one kind (scripts/netns up --nat-a KIND --nat-b KIND):
#
#   preserve      masquerade; the kernel keeps the private source port when it is
#                 free on the public address (the default, and the bed before kinds
#                 existed). Unsolicited packets to the gateway's public address reach
#                 its own stack, which answers a closed TCP port with RST and a
#                 closed UDP port with ICMP port unreachable, as Linux does.
#   random        "masquerade fully-random": every new mapping gets a random port,
#                 so a mapping cannot be predicted, and each destination gets its
#                 own (a symmetric NAT, where hole punching must fail).
#   drop          preserve, and packets arriving on pub0 that start no known
#                 connection (ct state new) and were not DNAT'd are dropped without
#                 a word (no RST, no ICMP), like a stealth home router. Replies to
#                 mappings and port forwards (dpfd's, or static DNAT rules in
#                 "ip nat pre") pass as before, since they are established or DNAT'd
#                 and go through the forward chain; a forward to the gateway itself
#                 passes too. Pings to the public address get no answer either.
#                 Packets conntrack calls invalid are not "new" and still reach the
#                 stack.
#   invalid-drop  preserve, and "ct state invalid drop" in the forward and input
#                 chains, a rule many firewall guides recommend. Conntrack's TCP
#                 tracking then decides what passes: for example a SYN arriving in
#                 the reply direction of an entry a RST has closed is invalid, so it
#                 is dropped instead of being answered by the stack.
#
# The dropping rules count into named counters of "table inet filter", so tests can
# see what was dropped: `nft list counter inet filter NAME` in the gateway:
#   unsolicited_drop                               (drop)
#   invalid_drop_input, invalid_drop_forward       (invalid-drop)
# The table's comment "gcb-nat-kind KIND" records the kind for "list --json".

# shellcheck shell=bash

readonly NAT_KINDS=(preserve random drop invalid-drop)

valid_nat_kind() {
    local k
    for k in "${NAT_KINDS[@]}"; do [[ $k == "$1" ]] && return 0; done
    return 1
}

# NAT + home-router firewall for a gateway of the given kind. Chain names are
# fixed: dpfd and the static-forward benchmarks add DNAT rules to "ip nat pre".
gateway_nft() {
    local ns=$1 kind=$2 masq="masquerade" counters="" fwd_first="" input=""
    case $kind in
        preserve) ;;
        random) masq="masquerade fully-random" ;;
        drop)
            counters='counter unsolicited_drop { }'
            input='iifname "pub0" ct state new ct status dnat accept
        iifname "pub0" ct state new counter name "unsolicited_drop" drop'
            ;;
        invalid-drop)
            counters='counter invalid_drop_input { }
    counter invalid_drop_forward { }'
            fwd_first='ct state invalid counter name "invalid_drop_forward" drop'
            input='ct state invalid counter name "invalid_drop_input" drop'
            ;;
        *) die "up: unknown NAT kind '$kind' (kinds: ${NAT_KINDS[*]})" ;;
    esac
    step "nft $ns" ip netns exec "$ns" nft -f - <<EOF
table ip nat {
    chain pre {
        type nat hook prerouting priority -100;
    }
    chain post {
        type nat hook postrouting priority 100;
        oifname "pub0" $masq
        # Hairpin: a private host reaching a forwarded public port of its own
        # gateway. Without this the answer would come back directly from the
        # private address and the connection would break, unlike on a home router.
        iifname "priv0" oifname "priv0" ct status dnat masquerade
    }
}
table inet filter {
    comment "gcb-nat-kind $kind"
    $counters
    chain forward {
        type filter hook forward priority 0; policy accept;
        $fwd_first
        ct state established,related accept
        # From public to private only what a DNAT rule forwarded.
        iifname "pub0" oifname "priv0" ct status dnat accept
        iifname "pub0" drop
    }
    chain input {
        type filter hook input priority 0; policy accept;
        $input
    }
}
EOF
}

# The kind recorded in a gateway's filter table, or nothing when the table or its
# comment is gone (someone replaced the ruleset by hand).
gateway_kind() {
    ip netns exec "$1" nft list table inet filter 2>/dev/null |
        sed -n 's/^[[:space:]]*comment "gcb-nat-kind \([a-z-]*\)"[[:space:]]*$/\1/p' | head -n1
}
