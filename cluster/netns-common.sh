# Network namespaces joined by a bridge, for the harnesses; sourced, not run.
#
#   . "$(dirname "$0")/netns-common.sh"
#
# Defines (every name is under the caller's PREFIX, so harnesses with other prefixes never touch
# each other's namespaces; only the namespaces' own addresses are used, nothing else is reached):
#   netns_up PREFIX SUBNET K    namespaces PREFIX-hub (a bridge br0) and PREFIX-h0 .. PREFIX-h(K-1),
#                               each with eth0 at SUBNET.(i+1)/24 joined to the bridge by a veth
#                               pair (port i in the hub); namespaces left by an earlier run go first
#   netns_limit PREFIX I UP DOWN  limits host I's link with tbf: UP on its eth0 (what it sends),
#                               DOWN on its port in the hub (what it receives); an empty rate
#                               leaves that direction alone. Rates as tc spells them: 2mbit, 1gbit
#   netns_down PREFIX K         kills anything left in the namespaces and removes them
#   netns_names PREFIX K        prints the names, hub first

# shellcheck shell=bash

netns_names() {
    local prefix=$1 count=$2 i
    echo "$prefix-hub"
    for ((i = 0; i < count; i++)); do echo "$prefix-h$i"; done
}

netns_down() {
    local prefix=$1 count=$2 ns pid
    for ns in $(netns_names "$prefix" "$count"); do
        [[ -e /run/netns/$ns ]] || continue
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
}

netns_up() {
    local prefix=$1 subnet=$2 count=$3 hub=$1-hub i ns
    netns_down "$prefix" "$count"
    ip netns add "$hub"
    ip -n "$hub" link add br0 type bridge
    ip -n "$hub" link set br0 up
    ip -n "$hub" link set lo up
    for ((i = 0; i < count; i++)); do
        ns=$prefix-h$i
        ip netns add "$ns"
        ip -n "$hub" link add "port$i" type veth peer name eth0 netns "$ns"
        ip -n "$hub" link set "port$i" master br0 up
        ip -n "$ns" addr add "$subnet.$((i + 1))/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$ns" link set lo up
    done
}

# The token bucket for RATE, in bytes: what the rate brings in 4 ms (a timer tick at HZ=250, so
# the bucket does not run dry between refills and cap a fast link below its rate), at least
# 4000 bytes (a few packets, so a slow link holds its rate from the first packet).
netns_burst() {
    local rate=$1 number unit bits bytes
    number=${rate%%[a-zA-Z]*}
    unit=${rate#"$number"}
    case ${unit,,} in
        bit | "") bits=$number ;;
        kbit) bits=$((number * 1000)) ;;
        mbit) bits=$((number * 1000000)) ;;
        gbit) bits=$((number * 1000000000)) ;;
        *) echo "netns_burst: unknown rate unit in '$rate' (use kbit, mbit or gbit)" >&2; return 2 ;;
    esac
    bytes=$((bits / 250 / 8))
    ((bytes >= 4000)) || bytes=4000
    echo "$bytes"
}

# At most 400 ms of queue: TCP sees drops rather than an ever longer queue.
#
# The uplink's qdisc sits on the sending host's own eth0, so it must drop as a host's qdisc does:
# by refusing a packet, which TCP then holds and sends again at once (local congestion). tbf cuts
# a GSO packet larger than its bucket into segments and drops those beyond its queue after TCP
# counted them sent; TCP took them for lost on the wire and waited out retransmission timeouts,
# whose backoff left the link silent for seconds (over 2 Mbit/s, 13737 segments sent again and 6
# timeouts in one run of the slow-link test, a worker dropped once in dozens of runs for outliving
# a 2 s heartbeat timeout). One segment per packet: no retransmission, no timeout. A downlink's
# qdisc forwards the coordinator's packets, and drops them as a router on the way would.
netns_limit() {
    local prefix=$1 i=$2 up=$3 down=$4
    if [[ -n $up ]]; then
        ip -n "$prefix-h$i" link set dev eth0 gso_max_segs 1
        ip netns exec "$prefix-h$i" tc qdisc add dev eth0 root tbf rate "$up" burst "$(netns_burst "$up")" latency 400ms
    fi
    if [[ -n $down ]]; then
        ip netns exec "$prefix-hub" tc qdisc add dev "port$i" root tbf rate "$down" burst "$(netns_burst "$down")" latency 400ms
    fi
}
