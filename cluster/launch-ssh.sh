#!/usr/bin/env bash
# Usage: cluster/launch-ssh.sh HOSTFILE [--dry-run] [made flags...]
#
# Runs the coordinator here and workers on other hosts over ssh.
#
# HOSTFILE holds one `host [slots]` per line (`slots=N` also works); '#' starts a comment. Each
# host gets `slots` workers (default 1). A host of 2 or more slots gets one relay, which starts
# them and stands for them at the coordinator (it sends the host the step's parameters once and
# gets one gradient back; the workers share them through shared memory):
#
#   $MADE_SSH -tt HOST $MADE_REMOTE_BIN relay --connect tcp://ADVERTISED:PORT --workers SLOTS --keys KEYS -d DATA ...
#
# A host of one slot, and every host with --no-relay (or MADE_RELAY=0), gets its workers one by one:
#
#   $MADE_SSH -tt HOST $MADE_REMOTE_BIN worker --connect tcp://ADVERTISED:PORT --keys KEYS -d DATA ...
#
# The coordinator binds tcp://0.0.0.0:$MADE_PORT with --keys $MADE_KEYS (CURVE; required unless
# --insecure is among the flags) and --advertise-host ADVERTISED. The made flags go to the
# coordinator; its data flags (-d, --binarize, --binarize-seed, --threshold, --valid-fraction,
# --threads) also go to the workers. The data, the keys folder and the binary must exist at the
# same paths on every host (a shared file system), or be named with the MADE_REMOTE_* variables.
# Without --shards, each batch is cut into one shard per worker; without --wait-for-workers, the
# coordinator starts once every worker has joined.
#
#   MADE_KEYS=$HOME/made-keys cluster/launch-ssh.sh hosts.txt -d /data/mnist --shards 16 --epochs 100
#
# --dry-run prints the commands and runs nothing.
#
# Prints the coordinator's output; worker and relay logs go to $MADE_LOG_DIR/HOST-I.log (default: a temporary
# folder, removed at the end; their tails are printed when the run fails). On exit, error, Ctrl-C
# or SIGTERM the coordinator is asked to checkpoint and stop, and the ssh clients are ended: with
# -tt the remote workers get a hangup, and a worker that misses it still gives up after
# --coordinator-timeout seconds without its coordinator. Exits with the coordinator's status.
#
# Environment:
#   MADE_BIN                  the local made binary (default: .build/release/made under the repo root)
#   MADE_REMOTE_BIN           the made binary on the hosts (default: MADE_BIN)
#   MADE_KEYS                 CURVE key folder from `made keygen` (default: --keys among the flags)
#   MADE_REMOTE_KEYS          that folder on the hosts (default: MADE_KEYS)
#   MADE_KEY_NAME             the workers' key pair in that folder (default: worker)
#   MADE_REMOTE_DATA          the -d path on the hosts (default: the same as here)
#   MADE_PORT                 port of the coordinator (default: 29500; 0 picks a free one)
#   MADE_ADVERTISE            host name or address the workers dial (default: hostname -f)
#   MADE_SSH                  ssh command, split on blanks (default: ssh)
#   MADE_COORDINATOR_TIMEOUT  workers' --coordinator-timeout in seconds (default: 60)
#   MADE_LOG_DIR              keep the worker logs in this folder
#   MADE_RELAY                0: no relay, every worker dials the coordinator (as --no-relay)
set -euo pipefail

# shellcheck source=cluster/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2; }
die() {
    echo "launch-ssh: $*" >&2
    exit 2
}

if (($# < 1)) || [[ $1 == -h || $1 == --help ]]; then
    usage
    exit 2
fi
hostfile=$1
shift
[[ -r $hostfile ]] || die "cannot read the host file '$hostfile'"

# Split our own flags from the made flags.
dry_run=0
relay=${MADE_RELAY:-1}
[[ $relay == 0 || $relay == 1 ]] || die "MADE_RELAY='$relay' is neither 0 nor 1"
insecure=0
keys=${MADE_KEYS:-}
flags=()
while (($#)); do
    case $1 in
        --dry-run) dry_run=1 ;;
        --no-relay) relay=0 ;;
        --insecure)
            insecure=1
            flags+=("$1")
            ;;
        --keys)
            (($# >= 2)) || die "--keys needs a value"
            keys=$2
            shift
            ;;
        --keys=*) keys=${1#--keys=} ;;
        --bind | --bind=* | --endpoint-file | --endpoint-file=* | --advertise-host | --advertise-host=* | --workers | --workers=*)
            die "$1 is set by this script (see MADE_PORT, MADE_ADVERTISE)"
            ;;
        *) flags+=("$1") ;;
    esac
    shift
done
made_worker_flags "${flags[@]}"
worker_flags=("${WORKER_FLAGS[@]}")
if [[ -n ${MADE_REMOTE_DATA:-} ]]; then
    # Replace the data path by the remote one.
    rewritten=()
    for ((i = 0; i < ${#worker_flags[@]}; i++)); do
        case ${worker_flags[i]} in
            -d | --data-path)
                rewritten+=("${worker_flags[i]}" "$MADE_REMOTE_DATA")
                i=$((i + 1))
                ;;
            -d?* | --data-path=*) rewritten+=(-d "$MADE_REMOTE_DATA") ;;
            *) rewritten+=("${worker_flags[i]}") ;;
        esac
    done
    worker_flags=("${rewritten[@]}")
fi
if [[ -z $keys ]] && ((!insecure)); then
    die "the coordinator listens on every interface: set MADE_KEYS to a folder made by \`made keygen\` (or pass --insecure on a trusted network)"
fi

made=${MADE_BIN:-$MADE_REPO_ROOT/.build/release/made}
remote_made=${MADE_REMOTE_BIN:-$made}
remote_keys=${MADE_REMOTE_KEYS:-$keys}
port=${MADE_PORT:-29500}
if ! [[ $port =~ ^[0-9]+$ ]] || ((port > 65535)); then die "MADE_PORT='$port' is not a port"; fi
advertise=${MADE_ADVERTISE:-$(hostname -f 2>/dev/null || hostname)}
read -r -a ssh_command <<<"${MADE_SSH:-ssh}"
((${#ssh_command[@]})) || die "MADE_SSH is empty"

# Processes to start over ssh, one entry each: its host and, for a relay, its workers (0 for a worker).
hosts=()
relay_workers=()
workers=0
while IFS= read -r line || [[ -n $line ]]; do
    line=${line%%#*}
    read -r host slots _ <<<"$line" || true
    [[ -n ${host:-} ]] || continue
    slots=${slots:-1}
    slots=${slots#slots=}
    [[ $slots =~ ^[0-9]+$ ]] || die "$hostfile: bad slot count '$slots' for $host"
    workers=$((workers + slots))
    if ((relay && slots >= 2)); then
        hosts+=("$host")
        relay_workers+=("$slots")
    else
        for ((s = 0; s < slots; s++)); do
            hosts+=("$host")
            relay_workers+=(0)
        done
    fi
done <"$hostfile"
((${#hosts[@]})) || die "$hostfile lists no host"

coordinator=("$made" coordinator --bind "tcp://0.0.0.0:$port" --advertise-host "$advertise")
[[ -z $keys ]] || coordinator+=(--keys "$keys")
made_shard_flags "$workers" "${flags[@]}"
coordinator+=(${shard_flags[@]+"${shard_flags[@]}"} "${flags[@]}")

# The remote command, one shell word per argument: ssh hands the remote shell a single string.
remote_command() { # ENDPOINT NAME RELAY_WORKERS
    local words=("$remote_made" worker --connect "$1" --name "$2"
        --coordinator-timeout "${MADE_COORDINATOR_TIMEOUT:-60}")
    ((${3:-0} == 0)) || words=("$remote_made" relay --connect "$1" --name "$2" --workers "$3"
        --coordinator-timeout "${MADE_COORDINATOR_TIMEOUT:-60}")
    [[ -z $remote_keys ]] || words+=(--keys "$remote_keys" --key-name "${MADE_KEY_NAME:-worker}")
    words+=("${worker_flags[@]}")
    local quoted
    printf -v quoted '%q ' "${words[@]}"
    printf '%s' "${quoted% }"
}

# One argument in single quotes, for printing.
single_quoted() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

if ((dry_run)); then
    shown_port=$port
    ((port != 0)) || shown_port=PORT
    printf -v line '%q ' "${coordinator[@]}"
    echo "${line% }"
    for ((i = 0; i < ${#hosts[@]}; i++)); do
        printf -v line '%q ' "${ssh_command[@]}" -tt "${hosts[i]}"
        command=$(remote_command "tcp://$advertise:$shown_port" "${hosts[i]}-$i" "${relay_workers[i]}")
        echo "$line$(single_quoted "$command")"
    done
    exit 0
fi

[[ -x $made ]] || die "no executable made at $made (build it, or set MADE_BIN)"

work=$(mktemp -d "${TMPDIR:-/tmp}/made-ssh.XXXXXX")
logs=${MADE_LOG_DIR:-$work}
mkdir -p "$logs"
coordinator_pid=
ssh_pids=()

# shellcheck disable=SC2317  # run by the trap
cleanup() {
    local status=$?
    trap - EXIT INT TERM HUP
    if [[ -n $coordinator_pid ]]; then made_stop_pids 30 "$coordinator_pid"; fi
    # A coordinator that ended the run (or was interrupted) told its workers; give them a moment
    # to leave, then hang up.
    local grace=2
    if ((status == 0 || status == 130)); then grace=10; fi
    made_wait_pids "$grace" "${ssh_pids[@]}" || true
    made_stop_pids 5 "${ssh_pids[@]}"
    if ((status != 0)); then made_print_log_tails 5 "$logs"/*.log; fi
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT

# shellcheck disable=SC2317  # run by the trap
interrupt() {
    if [[ -n $coordinator_pid ]]; then kill -INT "$coordinator_pid" 2>/dev/null || true; else exit 130; fi
}
trap interrupt INT TERM HUP

"${coordinator[@]}" --endpoint-file "$work/endpoint" 2>&1 &
coordinator_pid=$!

# Wait until the coordinator is listening; its endpoint file names the port (useful with port 0).
for ((t = 0; t < 600; t++)); do
    [[ -s $work/endpoint ]] && break
    kill -0 "$coordinator_pid" 2>/dev/null || break
    sleep 0.1
done
if [[ ! -s $work/endpoint ]]; then
    echo "launch-ssh: the coordinator did not start listening" >&2
    status=1
    wait "$coordinator_pid" || status=$?
    coordinator_pid=
    exit "$status"
fi
bound=$(<"$work/endpoint")
endpoint="tcp://$advertise:${bound##*:}"
echo "launch-ssh: coordinator at $endpoint, starting $workers worker(s) in ${#hosts[@]} process(es) over ssh" >&2

for ((i = 0; i < ${#hosts[@]}; i++)); do
    "${ssh_command[@]}" -tt "${hosts[i]}" "$(remote_command "$endpoint" "${hosts[i]}-$i" "${relay_workers[i]}")" \
        </dev/null >"$logs/${hosts[i]}-$i.log" 2>&1 &
    ssh_pids+=("$!")
done

status=0
made_wait_for "$coordinator_pid" || status=$?
coordinator_pid=
exit "$status"
