# Helpers shared by the cluster/ scripts; sourced, not run.
#
#   . "$(dirname "$0")/common.sh"
#
# Defines:
#   MADE_REPO_ROOT                 the repository root (the folder above cluster/)
#   made_worker_flags FLAGS...     sets WORKER_FLAGS to the flags of FLAGS a `made worker` also
#                                  needs (data: -d, --binarize..., --valid-fraction; --threads;
#                                  --keys; -v/--verbose), dropping the training-only ones
#   made_has_data_flag FLAGS...    whether FLAGS name the data (-d, --data-path)
#   made_wait_pids SECONDS PID...  waits until the processes are gone; fails after SECONDS
#   made_stop_pids SECONDS PID...  SIGTERM, then SIGKILL after SECONDS those still alive
#   made_checksum FILE             the params_sha256 value printed in FILE (empty if none)

# shellcheck shell=bash

MADE_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export MADE_REPO_ROOT

made_worker_flags() {
    WORKER_FLAGS=()
    while (($#)); do
        case $1 in
            -d | --data-path | --binarize | --binarize-seed | --threshold | --valid-fraction | --threads | --keys)
                if (($# < 2)); then
                    echo "$1 needs a value" >&2
                    return 2
                fi
                WORKER_FLAGS+=("$1" "$2")
                shift 2
                ;;
            --data-path=* | --binarize=* | --binarize-seed=* | --threshold=* | --valid-fraction=* | --threads=* | --keys=*)
                WORKER_FLAGS+=("$1")
                shift
                ;;
            -d?*)
                WORKER_FLAGS+=("$1")
                shift
                ;;
            -v | --verbose)
                WORKER_FLAGS+=(--verbose)
                shift
                ;;
            *)
                shift
                ;;
        esac
    done
}

made_has_data_flag() {
    local arg
    for arg in "$@"; do
        case $arg in
            -d | -d?* | --data-path | --data-path=*) return 0 ;;
        esac
    done
    return 1
}

made_wait_pids() {
    local grace=$1 pid alive deadline
    shift
    deadline=$((SECONDS + grace))
    while :; do
        alive=0
        for pid in "$@"; do
            if kill -0 "$pid" 2>/dev/null; then alive=1; fi
        done
        ((alive)) || return 0
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

made_stop_pids() {
    local grace=$1 pid
    shift
    (($#)) || return 0
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    made_wait_pids "$grace" "$@" && return 0
    for pid in "$@"; do kill -KILL "$pid" 2>/dev/null || true; done
}

made_checksum() {
    sed -n 's/^params_sha256=\([0-9a-f]\{64\}\).*$/\1/p' "$1" 2>/dev/null | tail -n 1
}

# made_print_log_tails N FILE...: the last N lines of each non-empty log, to standard error.
made_print_log_tails() {
    local lines=$1 log
    shift
    for log in "$@"; do
        [[ -s $log ]] || continue
        echo "--- last lines of $log" >&2
        tail -n "$lines" "$log" >&2
    done
}

# made_shard_flags N ARGS...: sets the array `shard_flags` to `--shards N --wait-for-workers N`,
# leaving out either flag when ARGS already name it: by default each batch is cut into one shard
# per worker, and the coordinator starts once all N workers have joined.
# shellcheck disable=SC2034  # shard_flags is read by the caller
made_shard_flags() {
    local n=$1 arg shards=1 wait=1
    shift
    for arg in "$@"; do
        if [[ $arg == --shards || $arg == --shards=* ]]; then shards=0; fi
        if [[ $arg == --wait-for-workers || $arg == --wait-for-workers=* ]]; then wait=0; fi
    done
    shard_flags=()
    if ((shards)); then shard_flags+=(--shards "$n"); fi
    if ((wait)); then shard_flags+=(--wait-for-workers "$n"); fi
}

# made_wait_for PID: waits until PID has exited, also through trapped signals that cut `wait`
# short, and returns its exit status.
made_wait_for() {
    local pid=$1 status=0
    wait "$pid" || status=$?
    while kill -0 "$pid" 2>/dev/null; do
        status=0
        wait "$pid" || status=$?
    done
    status=0
    wait "$pid" || status=$?
    return "$status"
}
