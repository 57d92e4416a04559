#!/usr/bin/env bash
# Usage: sudo cluster/scaling-harness.sh
#
# Measures how the cluster scales over a real (virtual) network: for every combination of the
# lists below it starts H hosts as network namespaces made-s-h1 .. made-s-hH, W workers in each,
# and the coordinator in made-s-h0, all joined by a bridge (10.214.0.0/24); each host's link,
# the coordinator's included, is limited to RATE in both directions with tbf. It then runs
#
#   MODE=bench (default): made bench --bind ... --wait-for-workers H*W in made-s-h0, and prints a
#     table row: hosts, workers per host, relay, link rate, batch, examples/s, ms per step, bytes
#     per step through the coordinator and per host, per peer (worker or relay) and step the
#     compute and the wait (the rest of the time from handing out a task to holding its result)
#     in ms, and the coordinator's own ms per step between exchanges. With SIMULATE_MS the workers
#     sleep that long per shard instead of computing (`measured`: a shard's time in one process),
#     the rows say `simulated`, and the last column is the efficiency: examples/s over those of
#     workers that only computed.
#   MODE=train: made coordinator + made worker for EPOCHS epochs, and prints per row the seconds
#     taken, the workers lost and whether params_sha256 equals a single-process made train of the
#     same flags (run once, in the root namespace, before the rows).
#
# A host of two or more workers runs them behind one relay (`made relay --workers W`), as the
# launchers do: the coordinator sends the host the step's parameters once and gets one answer
# back; the relay shares the parameters with its workers through shared memory. RELAY=0 has
# every worker dial the coordinator instead (over its socket, as from another host).
#
# The namespaces are removed after each row and on any exit; every wait is bounded.
#
# Environment (lists are space-separated):
#   HOSTS            host counts (default: "1 2")
#   WORKERS          workers per host (default: "1 2")
#   RATE             link rates as tc spells them, or "none" (default: "1gbit")
#   BATCH            batch sizes (default: "100")
#   STEPS, WARMUP    timed and untimed steps of the bench (default: 100, 10)
#   SHARDS           shards per step (default: one per worker; train: 4)
#   HIDDENS          hidden layer sizes (default: 500)
#   EXAMPLES         random training examples of the generated data (default: 20000)
#   SIMULATE_MS      bench: simulated compute per shard in ms, or `measured` (default: none)
#   EPOCHS           train: epochs (default: 1)
#   RELAY            1: a relay per host of two or more workers; 0: none (default: 1)
#   HEARTBEAT_TIMEOUT  --heartbeat-timeout of the workers and relays, and in train mode of the
#                    coordinator, in s (default: the programs' own)
#   INSECURE         set to run without CURVE (default: CURVE keys made for the run)
#   MADE_BIN         the made binary (default: .build/release/made under the repo root)
#   ROW_TIMEOUT      seconds allowed to one row (default: 600)
#   HARNESS_KEEP     set to keep the temporary folder (logs)
set -euo pipefail

# shellcheck source=cluster/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# shellcheck source=cluster/netns-common.sh
. "$(dirname "${BASH_SOURCE[0]}")/netns-common.sh"
export PATH=$PATH:/usr/sbin:/sbin

made=${MADE_BIN:-$MADE_REPO_ROOT/.build/release/made}
mode=${MODE:-bench}
read -r -a host_counts <<<"${HOSTS:-1 2}"
read -r -a worker_counts <<<"${WORKERS:-1 2}"
read -r -a rates <<<"${RATE:-1gbit}"
read -r -a batches <<<"${BATCH:-100}"
steps=${STEPS:-100}
warmup=${WARMUP:-10}
hiddens=${HIDDENS:-500}
examples=${EXAMPLES:-20000}
epochs=${EPOCHS:-1}
relay=${RELAY:-1}
row_timeout=${ROW_TIMEOUT:-600}
subnet=10.214.0
port=29600
prefix=made-s

fail() {
    echo "scaling-harness: $*" >&2
    exit 1
}

[[ $mode == bench || $mode == train ]] || fail "MODE must be bench or train, not '$mode'"
[[ $relay == 0 || $relay == 1 ]] || fail "RELAY must be 0 or 1, not '$relay'"
((EUID == 0)) || fail "must run as root"
command -v ip >/dev/null || fail "needs ip (iproute2)"
command -v tc >/dev/null || fail "needs tc (iproute2)"
[[ -x $made ]] || fail "no executable made at $made (set MADE_BIN)"

work=$(mktemp -d /tmp/made-scaling.XXXXXX)
pids=()
live_hosts=0

# shellcheck disable=SC2317  # run by the trap
cleanup() {
    local status=$?
    trap - EXIT INT TERM HUP
    made_stop_pids 5 "${pids[@]}"
    netns_down "$prefix" "$live_hosts"
    if [[ -n ${HARNESS_KEEP:-} ]]; then echo "kept $work" >&2; else rm -rf "$work"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

# The value of KEY=... in a line.
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<" $2"; }

data=$work/data.npz
"$made" bench --save-data "$data" --examples "$examples" --steps 1 --warmup 0 --kernel sparse -q "$hiddens" >/dev/null
security=(--insecure)
worker_security=()
if [[ -z ${INSECURE:-} ]]; then
    "$made" keygen "$work/keys" >/dev/null
    security=(--keys "$work/keys")
    worker_security=(--keys "$work/keys")
fi
heartbeat=()
if [[ -n ${HEARTBEAT_TIMEOUT:-} ]]; then heartbeat=(--heartbeat-timeout "$HEARTBEAT_TIMEOUT"); fi

if [[ $mode == bench ]]; then
    printf '%-5s %-7s %-5s %-8s %-6s %-11s %-8s %-12s %-12s %-10s %-10s %-10s %s\n' hosts workers relay rate batch \
        examples/s step_ms coord_B/step host_B/step compute_ms wait_ms between_ms "${SIMULATE_MS:+simulated efficiency}"
else
    printf '%-5s %-7s %-5s %-8s %-6s %-8s %-8s %-12s %s\n' hosts workers relay rate batch status seconds workers_lost \
        checksum
fi

reference=""
for batch in "${batches[@]}"; do
    if [[ $mode == train ]]; then
        train_flags=(-d "$data" -q "$hiddens" --epochs "$epochs" --batch-size "$batch")
        timeout "$row_timeout" "$made" train "${train_flags[@]}" --shards "${SHARDS:-4}" >"$work/reference.out" 2>"$work/reference.log" ||
            fail "the single-process reference run failed; see $work/reference.log"
        reference=$(made_checksum "$work/reference.out")
    fi
    for rate in "${rates[@]}"; do
        for hosts in "${host_counts[@]}"; do
            for per_host in "${worker_counts[@]}"; do
                total=$((hosts * per_host))
                shards=${SHARDS:-$total}
                # The checksum equals the reference's only with the reference's shards.
                if [[ $mode == train ]]; then shards=${SHARDS:-4}; fi
                live_hosts=$((hosts + 1))
                netns_up "$prefix" "$subnet" "$live_hosts"
                if [[ $rate != none ]]; then
                    for ((i = 0; i <= hosts; i++)); do netns_limit "$prefix" "$i" "$rate" "$rate"; done
                fi
                row=$work/row-$hosts-$per_host-$rate-$batch
                mkdir -p "$row"
                endpoint=tcp://$subnet.1:$port
                started=$SECONDS
                if [[ $mode == bench ]]; then
                    simulate=()
                    if [[ -n ${SIMULATE_MS:-} ]]; then simulate=(--simulate-compute-ms "$SIMULATE_MS"); fi
                    ip netns exec "$prefix-h0" timeout "$row_timeout" "$made" bench -d "$data" -q "$hiddens" --kernel sparse \
                        --batch-size "$batch" --shards "$shards" --steps "$steps" --warmup "$warmup" \
                        --bind "$endpoint" --wait-for-workers "$total" "${security[@]}" ${simulate[@]+"${simulate[@]}"} \
                        >"$row/coordinator.out" 2>"$row/coordinator.log" &
                else
                    ip netns exec "$prefix-h0" timeout "$row_timeout" "$made" coordinator "${train_flags[@]}" --shards "$shards" \
                        --bind "$endpoint" --wait-for-workers "$total" "${security[@]}" ${heartbeat[@]+"${heartbeat[@]}"} \
                        >"$row/coordinator.out" 2>"$row/coordinator.log" &
                fi
                coordinator_pid=$!
                pids=("$coordinator_pid")
                relayed=no
                if ((relay && per_host >= 2)); then relayed=yes; fi
                for ((h = 1; h <= hosts; h++)); do
                    if [[ $relayed == yes ]]; then
                        ip netns exec "$prefix-h$h" timeout "$row_timeout" "$made" relay -d "$data" --connect "$endpoint" \
                            --name "h$h" --workers "$per_host" --coordinator-timeout 30 \
                            ${worker_security[@]+"${worker_security[@]}"} ${heartbeat[@]+"${heartbeat[@]}"} \
                            >"$row/relay-h$h.log" 2>&1 &
                        pids+=("$!")
                        continue
                    fi
                    for ((w = 0; w < per_host; w++)); do
                        ip netns exec "$prefix-h$h" timeout "$row_timeout" "$made" worker -d "$data" --connect "$endpoint" \
                            --name "h$h-w$w" --no-shared-memory --coordinator-timeout 30 \
                            ${worker_security[@]+"${worker_security[@]}"} ${heartbeat[@]+"${heartbeat[@]}"} \
                            >"$row/worker-h$h-w$w.log" 2>&1 &
                        pids+=("$!")
                    done
                done
                status=0
                wait "$coordinator_pid" || status=$?
                seconds=$((SECONDS - started))
                made_stop_pids 10 "${pids[@]}"
                pids=()
                netns_down "$prefix" "$live_hosts"
                if [[ $mode == bench ]]; then
                    line=$(grep -m1 '^made_cluster' "$row/coordinator.out" || true)
                    if ((status != 0)) || [[ -z $line ]]; then
                        printf '%-5s %-7s %-5s %-8s %-6s failed (exit %s; see %s)\n' "$hosts" "$per_host" "$relayed" "$rate" \
                            "$batch" "$status" "$row"
                        HARNESS_KEEP=1
                        continue
                    fi
                    extra=""
                    if [[ $line == made_cluster_simulated* ]]; then
                        extra="simulated $(field simulated_compute_ms_per_shard "$line")ms/shard $(field efficiency "$line")"
                    fi
                    printf '%-5s %-7s %-5s %-8s %-6s %-11s %-8s %-12s %-12s %-10s %-10s %-10s %s\n' "$hosts" "$per_host" \
                        "$relayed" "$rate" "$batch" "$(field examples_per_s "$line")" "$(field step_ms "$line")" \
                        "$(field bytes_per_step "$line")" "$(field host_bytes_per_step "$line")" \
                        "$(field compute_ms_per_step "$line")" "$(field wait_ms_per_step "$line")" \
                        "$(field between_exchanges_ms_per_step "$line")" "$extra"
                else
                    checksum=$(made_checksum "$row/coordinator.out")
                    lost=$(field workers_lost "$(grep -m1 '^cluster ' "$row/coordinator.out" || true)")
                    match=differs
                    if [[ -n $checksum && $checksum == "$reference" ]]; then match=equal; fi
                    outcome=ok
                    if ((status == 124)); then outcome=timeout; elif ((status != 0)); then outcome="exit$status"; fi
                    printf '%-5s %-7s %-5s %-8s %-6s %-8s %-8s %-12s %s\n' "$hosts" "$per_host" "$relayed" "$rate" "$batch" \
                        "$outcome" "$seconds" \
                        "${lost:-?}" "$match"
                fi
            done
        done
    done
done
