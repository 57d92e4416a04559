#!/usr/bin/env bash
# Usage: sudo cluster/netns-harness.sh [K]
#
# Checks a cluster run over a real (virtual) network with CURVE: K (default 3, at least 2)
# network namespaces made-h0 .. made-h(K-1), each with a veth pair into a bridge that lives in its
# own namespace made-hub (the root namespace is not touched), addresses 10.213.0.(i+1)/24. Only
# these namespaces' own addresses are used; nothing is sent anywhere else.
#
#   made-h0:       made coordinator --bind tcp://10.213.0.1:$MADE_PORT --keys KEYS --wait-for-workers K-1 MADE_FLAGS
#   made-h1 .. :   made worker --connect tcp://10.213.0.1:$MADE_PORT --keys KEYS --name made-hI --coordinator-timeout 30
#                  (with RELAY_WORKERS=N: made relay ... --workers N, a relay and N workers behind it)
#   root namespace, at the same time: made train MADE_FLAGS (one process)
#
# The two params_sha256 must be equal: prints `netns: PASS ...` and exits 0, or `netns: FAIL ...`
# and exits 1. Before the run it checks that `ip netns exec made-h1 ping -c1 -W1 10.213.0.1`
# answers. The namespaces are always removed (trap), on success, failure, Ctrl-C or timeout; every
# wait is bounded.
#
# Must run as root, with `ip` (iproute2); ping (iputils-ping) is installed with apt-get if missing.
#
# Environment:
#   MADE_BIN        the made binary (default: .build/release/made under the repo root)
#   DATA            data for -d (default: /usr/share/datasets/fashion-mnist)
#   MADE_FLAGS      training flags (default: -q 32 --epochs 1 --batch-size 500 --shards 4)
#   MADE_PORT       the coordinator's port inside made-h0 (default: 29500)
#   HARNESS_KEEP    set to keep the temporary folder (logs, outputs, keys)
#   HARNESS_TIMEOUT seconds allowed to each training run (default: 150)
#   UPLINK_RATE     limit what each worker namespace sends to this rate with tbf (e.g. 2mbit)
#   DOWNLINK_RATE   limit what each worker namespace receives likewise
#   WORKER_EXTRA    more flags for every worker, or relay (e.g. --heartbeat-timeout 2)
#   RELAY_WORKERS   start a relay of this many workers in each worker namespace instead of one worker
#
# With a slow UPLINK_RATE the harness checks liveness by the connection: a result that takes
# longer than --heartbeat-timeout to cross must not get its worker, or relay, dropped
# (workers_lost=0).
set -euo pipefail

# shellcheck source=cluster/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# shellcheck source=cluster/netns-common.sh
. "$(dirname "${BASH_SOURCE[0]}")/netns-common.sh"
export PATH=$PATH:/usr/sbin:/sbin

hosts=${1:-3}
made=${MADE_BIN:-$MADE_REPO_ROOT/.build/release/made}
data=${DATA:-/usr/share/datasets/fashion-mnist}
read -r -a made_flags <<<"${MADE_FLAGS:--q 32 --epochs 1 --batch-size 500 --shards 4}"
port=${MADE_PORT:-29500}
run_timeout=${HARNESS_TIMEOUT:-150}
read -r -a worker_extra <<<"${WORKER_EXTRA:-}"
relay_workers=${RELAY_WORKERS:-0}
subnet=10.213.0
started=$SECONDS

fail() {
    echo "netns: FAIL $*"
    exit 1
}
log() { echo "netns-harness: $*" >&2; }

if ! [[ $hosts =~ ^[0-9]+$ ]] || ((hosts < 2 || hosts > 200)); then fail "K must be a number from 2 to 200, not '$hosts'"; fi
if ! [[ $relay_workers =~ ^[0-9]+$ ]] || ((relay_workers > 64)); then
    fail "RELAY_WORKERS must be a number from 0 to 64, not '$relay_workers'"
fi
# Workers the coordinator waits for: a relay counts as the workers behind it.
awaited=$((hosts - 1))
role=(worker)
if ((relay_workers > 0)); then
    awaited=$(((hosts - 1) * relay_workers))
    role=(relay --workers "$relay_workers")
fi
((EUID == 0)) || fail "must run as root"
command -v ip >/dev/null || fail "needs ip (iproute2)"
[[ -x $made ]] || fail "no executable made at $made (set MADE_BIN)"
[[ -e $data ]] || fail "no data at $data (set DATA)"

work=$(mktemp -d /tmp/made-netns.XXXXXX)
pids=()

# shellcheck disable=SC2317  # run by the trap
cleanup() {
    local status=$?
    trap - EXIT INT TERM HUP
    made_stop_pids 5 "${pids[@]}"
    netns_down made "$hosts"
    if ((status != 0)); then
        made_print_log_tails 6 "$work"/*.log
    fi
    if [[ -n ${HARNESS_KEEP:-} ]]; then echo "kept $work" >&2; else rm -rf "$work"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

# --- the network
netns_up made "$subnet" "$hosts"
for ((i = 1; i < hosts; i++)); do netns_limit made "$i" "${UPLINK_RATE:-}" "${DOWNLINK_RATE:-}"; done

if ! command -v ping >/dev/null && command -v apt-get >/dev/null; then
    log "installing iputils-ping"
    DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -q iputils-ping >/dev/null 2>&1 || true
fi
if command -v ping >/dev/null; then
    reached=0
    for _ in $(seq 10); do
        if timeout 5 ip netns exec made-h1 ping -c1 -W1 "$subnet.1" >"$work/ping.log" 2>&1; then
            reached=1
            break
        fi
        sleep 0.5
    done
    ((reached)) || fail "made-h1 cannot ping $subnet.1 (made-h0)"
else
    log "no ping and no way to install it: skipping the ping check"
fi
log "$hosts namespaces up after $((SECONDS - started)) s"

# --- the runs
keys=$work/keys
"$made" keygen "$keys" >/dev/null

timeout "$run_timeout" "$made" train -d "$data" "${made_flags[@]}" >"$work/reference.out" 2>"$work/reference.log" &
reference_pid=$!
pids+=("$reference_pid")

ip netns exec made-h0 timeout "$run_timeout" "$made" coordinator -d "$data" "${made_flags[@]}" \
    --bind "tcp://$subnet.1:$port" --keys "$keys" --wait-for-workers "$awaited" >"$work/coordinator.out" 2>"$work/coordinator.log" &
coordinator_pid=$!
pids+=("$coordinator_pid")

worker_pids=()
for ((i = 1; i < hosts; i++)); do
    ip netns exec "made-h$i" timeout "$run_timeout" "$made" "${role[@]}" -d "$data" \
        --connect "tcp://$subnet.1:$port" --keys "$keys" --name "made-h$i" --coordinator-timeout 30 \
        ${worker_extra[@]+"${worker_extra[@]}"} >"$work/worker-h$i.log" 2>&1 &
    worker_pids+=("$!")
    pids+=("$!")
done

coordinator_status=0
wait "$coordinator_pid" || coordinator_status=$?
reference_status=0
wait "$reference_pid" || reference_status=$?
workers_failed=0
for pid in "${worker_pids[@]}"; do
    # The workers leave once the coordinator has ended the run; bounded by their own timeout.
    wait "$pid" || workers_failed=$((workers_failed + 1))
done

cluster=$(made_checksum "$work/coordinator.out")
single=$(made_checksum "$work/reference.out")
counters=$(grep -m1 '^cluster ' "$work/coordinator.out" | grep -o 'workers_joined=[0-9]* workers_lost=[0-9]* reassigned_shards=[0-9]*' || true)
curve=$(grep -o 'curve=[a-z]*' "$work/coordinator.log" | head -n 1 || true)
elapsed=$((SECONDS - started))
if ((coordinator_status != 0)) || [[ -z $cluster ]]; then
    fail "the coordinator in made-h0 exited with $coordinator_status (124: timed out), checksum '${cluster:-none}' (${elapsed} s)"
fi
if ((reference_status != 0)) || [[ -z $single ]]; then
    fail "single-process made train exited with $reference_status, checksum '${single:-none}' (${elapsed} s)"
fi
if [[ $cluster != "$single" ]]; then
    grep -m1 '^cluster ' "$work/coordinator.out" >&2 || true
    fail "coordinator + $((hosts - 1)) worker namespaces gave params_sha256=$cluster, made train gave $single (${elapsed} s)"
fi
if ((workers_failed)); then
    fail "$workers_failed worker(s) exited with an error, though the checksums match (${elapsed} s)"
fi
links=""
if [[ -n ${UPLINK_RATE:-}${DOWNLINK_RATE:-} ]]; then links=", worker links up ${UPLINK_RATE:-free} down ${DOWNLINK_RATE:-free}"; fi
relays=""
if ((relay_workers > 0)); then relays=", each a relay of $relay_workers workers"; fi
echo "netns: PASS coordinator in made-h0 ($subnet.1, $curve) + $((hosts - 1)) worker namespace(s)$relays$links ($counters) params_sha256=$cluster equals single-process made train (${elapsed} s)"
