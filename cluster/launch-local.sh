#!/usr/bin/env bash
# Usage: cluster/launch-local.sh N [made flags...]
#
# Runs a data-parallel training on this machine the by-hand way, as separate processes: one
# `made coordinator` bound to tcp://127.0.0.1 on a free port (port 0, endpoint written to a file)
# and N `made worker --endpoint-file FILE` processes. The made flags go to the coordinator; its
# data flags (-d, --binarize, --binarize-seed, --threshold, --valid-fraction) and --threads and
# --keys also go to the workers. Without --shards, each batch is cut into N shards; without
# --wait-for-workers, the coordinator starts once all N workers have joined.
#
#   cluster/launch-local.sh 3 -d /usr/share/datasets/fashion-mnist -q 64 --epochs 1 --shards 4
#
# Without -d, the data is what scripts/run.sh trains on (scripts/get-data.sh: binarized MNIST in
# data/ when it is there, else Debian's Fashion-MNIST).
#
# Prints the coordinator's output (stdout and stderr). Worker logs, verbose (connecting, joined,
# done and the tasks computed), go to $MADE_LOG_DIR/worker-I.log (default: a temporary folder,
# removed at the end; the tails are printed when the run fails).
# On exit, error, Ctrl-C or SIGTERM every process started here is stopped (the coordinator is
# asked first, so it checkpoints). Exits with the coordinator's status.
#
# Environment:
#   MADE_BIN                  the made binary (default: .build/release/made under the repo root)
#   MADE_LOG_DIR              keep the worker logs in this folder
#   MADE_COORDINATOR_TIMEOUT  workers' --coordinator-timeout in seconds (default: 60)
set -euo pipefail

# shellcheck source=cluster/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2; }

if (($# < 1)) || [[ $1 == -h || $1 == --help ]]; then
    usage
    exit 2
fi
workers=$1
shift
if ! [[ $workers =~ ^[0-9]+$ ]] || ((workers < 1)); then
    echo "launch-local: N must be a positive number of workers, not '$workers'" >&2
    exit 2
fi

made=${MADE_BIN:-$MADE_REPO_ROOT/.build/release/made}
if [[ ! -x $made ]]; then
    echo "launch-local: no executable made at $made (build it: swift build -c release --product made, or set MADE_BIN)" >&2
    exit 2
fi
if ! made_has_data_flag "$@"; then
    data=$("$MADE_REPO_ROOT/scripts/get-data.sh") || exit 2
    set -- -d "$data" "$@"
fi
made_worker_flags "$@"

work=$(mktemp -d "${TMPDIR:-/tmp}/made-local.XXXXXX")
logs=${MADE_LOG_DIR:-$work}
mkdir -p "$logs"
endpoint_file=$work/endpoint
coordinator_pid=
worker_pids=()

# shellcheck disable=SC2317  # run by the trap
cleanup() {
    local status=$?
    trap - EXIT INT TERM HUP
    if [[ -n $coordinator_pid ]]; then made_stop_pids 30 "$coordinator_pid"; fi
    made_stop_pids 5 "${worker_pids[@]}"
    if ((status != 0)); then made_print_log_tails 5 "$logs"/worker-*.log; fi
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT

# shellcheck disable=SC2317  # run by the trap
interrupt() {
    # Let the coordinator finish its step and checkpoint; the main loop then waits for it.
    if [[ -n $coordinator_pid ]]; then kill -INT "$coordinator_pid" 2>/dev/null || true; else exit 130; fi
}
trap interrupt INT TERM HUP

made_shard_flags "$workers" "$@"

"$made" coordinator --bind tcp://127.0.0.1:0 --endpoint-file "$endpoint_file" ${shard_flags[@]+"${shard_flags[@]}"} "$@" 2>&1 &
coordinator_pid=$!

for ((i = 0; i < workers; i++)); do
    "$made" worker --endpoint-file "$endpoint_file" --name "local-$i" --parent-pid "$$" \
        --coordinator-timeout "${MADE_COORDINATOR_TIMEOUT:-60}" --verbose "${WORKER_FLAGS[@]}" \
        >"$logs/worker-$i.log" 2>&1 &
    worker_pids+=("$!")
done

status=0
made_wait_for "$coordinator_pid" || status=$?
coordinator_pid=
exit "$status"
