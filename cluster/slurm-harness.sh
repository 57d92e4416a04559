#!/usr/bin/env bash
# Usage: sudo cluster/slurm-harness.sh
#
# Checks `made launch` under a real Slurm on this one machine: a 3-task `srun` (one coordinator,
# two workers, CURVE keys) must end with the same params_sha256 as a single-process `made train`
# with the same --shards. Prints `slurm: PASS ...` and exits 0, or `slurm: FAIL ...` and exits 1.
#
# Must run as root. It
#   - installs Debian's slurmctld, slurmd, munge and slurm-client with apt-get if they are missing
#     (apt-get update only when the install fails without it);
#   - writes a minimal single-node slurm.conf (no cgroups: proctrack/linuxproc, task/none, so it
#     works in a container) into /etc/slurm, or, when /etc/slurm/slurm.conf exists and is not one
#     of ours, into its temporary folder (via SLURM_CONF), leaving /etc/slurm alone;
#   - creates the munge key if missing, starts munged unless one answers, then slurmctld and
#     slurmd (-D, as background jobs of this script), with state and spool in a temporary folder;
#   - waits (bounded) for the node to be idle, runs
#       srun -N1 -n 3 --overcommit MADE_BIN launch -d DATA MADE_FLAGS --keys KEYS
#     and, at the same time, MADE_BIN train -d DATA MADE_FLAGS, and compares the checksums;
#   - always (trap) cancels its jobs and stops the daemons it started, removes its slurm.conf and
#     its temporary folder. Every wait is bounded.
# It refuses to run when slurmctld or slurmd is already running (a real cluster node).
#
# Environment:
#   MADE_BIN        the made binary (default: .build/release/made under the repo root); it must be
#                   reachable by root
#   DATA            data for -d (default: /usr/share/datasets/fashion-mnist)
#   MADE_FLAGS      training flags (default: -q 32 --epochs 1 --batch-size 500 --shards 4)
#   HARNESS_KEEP    set to keep the temporary folder (logs, outputs, keys)
#   HARNESS_TIMEOUT seconds allowed to each of the two training runs (default: 150)
set -euo pipefail

# shellcheck source=cluster/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
export PATH=$PATH:/usr/sbin:/sbin

marker="# written by made's cluster/slurm-harness.sh"
made=${MADE_BIN:-$MADE_REPO_ROOT/.build/release/made}
data=${DATA:-/usr/share/datasets/fashion-mnist}
read -r -a made_flags <<<"${MADE_FLAGS:--q 32 --epochs 1 --batch-size 500 --shards 4}"
run_timeout=${HARNESS_TIMEOUT:-150}
started=$SECONDS

fail() {
    echo "slurm: FAIL $*"
    exit 1
}
log() { echo "slurm-harness: [$((SECONDS - started)) s] $*" >&2; }

((EUID == 0)) || fail "must run as root"
[[ -x $made ]] || fail "no executable made at $made (set MADE_BIN)"
[[ -e $data ]] || fail "no data at $data (set DATA)"
for daemon in slurmctld slurmd; do
    if pgrep -x "$daemon" >/dev/null; then fail "$daemon is already running here; this harness only runs on a machine without Slurm daemons"; fi
done

# --- packages
missing=()
for pair in slurmctld:slurmctld slurmd:slurmd munged:munge srun:slurm-client sinfo:slurm-client; do
    if ! command -v "${pair%%:*}" >/dev/null && [[ " ${missing[*]} " != *" ${pair#*:} "* ]]; then missing+=("${pair#*:}"); fi
done
if ((${#missing[@]})); then
    command -v apt-get >/dev/null || fail "missing ${missing[*]} and no apt-get"
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! timeout 600 apt-get install -y -q slurmctld slurmd munge slurm-client >/dev/null 2>&1; then
        timeout 600 apt-get update -q >/dev/null 2>&1 || log "apt-get update failed"
        timeout 600 apt-get install -y -q slurmctld slurmd munge slurm-client >/dev/null ||
            fail "could not install slurmctld slurmd munge slurm-client"
    fi
fi

# --- state, cleaned up whatever happens
work=$(mktemp -d /tmp/made-slurm.XXXXXX)
chmod 755 "$work"
conf=/etc/slurm/slurm.conf
wrote_etc_conf=0
munged_pid=
ctld_pid=
slurmd_pid=
reference_pid=
stepd_before=" $(pgrep -x slurmstepd | tr "\n" " " || true) "

# shellcheck disable=SC2317  # run by the trap
cleanup() {
    local status=$? pid
    trap - EXIT INT TERM HUP
    if [[ -n $reference_pid ]]; then made_stop_pids 3 "$reference_pid"; fi
    log "stopping what it started"
    if [[ -n $ctld_pid ]] && kill -0 "$ctld_pid" 2>/dev/null; then
        # Our cluster's jobs (the only ones), then our slurmctld, which also stops our slurmd.
        timeout 10 scancel --quiet --full --user=root 2>/dev/null || true
        for _ in $(seq 50); do
            [[ -z $(timeout 5 squeue -h -o %i 2>/dev/null) ]] && break
            sleep 0.2
        done
        timeout 10 scontrol shutdown >/dev/null 2>&1 || true
        made_wait_pids 10 "$ctld_pid" ${slurmd_pid:+"$slurmd_pid"} || true
    fi
    if [[ -n $slurmd_pid ]]; then made_stop_pids 10 "$slurmd_pid"; fi
    if [[ -n $ctld_pid ]]; then made_stop_pids 10 "$ctld_pid"; fi
    # Step daemons that started after us and outlived their slurmd.
    for pid in $(pgrep -x slurmstepd); do
        [[ $stepd_before == *" $pid "* ]] || made_stop_pids 3 "$pid"
    done
    if [[ -n $munged_pid ]]; then made_stop_pids 5 "$munged_pid"; fi
    if ((wrote_etc_conf)) && grep -qF "$marker" "$conf" 2>/dev/null; then rm -f "$conf"; fi
    if ((status != 0)) && [[ -d $work ]]; then
        made_print_log_tails 8 "$work"/*.log
    fi
    if [[ -n ${HARNESS_KEEP:-} ]]; then echo "kept $work" >&2; else rm -rf "$work"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

# --- slurm.conf
host=$(hostname -s)
cpus=$(nproc)
((cpus >= 4)) || cpus=4
if [[ -e $conf ]] && ! grep -qF "$marker" "$conf"; then
    log "$conf exists and is not ours; using $work/slurm.conf"
    conf=$work/slurm.conf
else
    mkdir -p /etc/slurm
    wrote_etc_conf=1
fi
export SLURM_CONF=$conf
mkdir -p "$work/state" "$work/spool"
# SlurmdParameters=config_overrides lets the node declare more CPUs than it has (3 tasks on 2 cores).
# The addresses are loopback so that the host name need not resolve.
cat >"$conf" <<EOF
$marker; removed when it ends
ClusterName=madeharness
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=${SLURMCTLD_PORT:-6817}
SlurmdPort=${SLURMD_PORT:-6818}
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/slurmctld.log
SlurmdLogFile=$work/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
SchedulerType=sched/backfill
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=30
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=harness Nodes=$host Default=YES MaxTime=INFINITE OverSubscribe=YES State=UP
EOF

# --- munge
if ! timeout 5 sh -c 'munge -n | unmunge' >/dev/null 2>&1; then
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating /etc/munge/munge.key"
        mkdir -p /etc/munge
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile=/etc/munge/munge.key
        else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
        fi
    fi
    munge_user=root
    id munge >/dev/null 2>&1 && munge_user=munge
    chown "$munge_user:" /etc/munge /etc/munge/munge.key
    chmod 700 /etc/munge
    chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown "$munge_user:" /run/munge /var/lib/munge /var/log/munge
    chmod 755 /run/munge
    log "starting munged"
    if [[ $munge_user == munge ]]; then
        setpriv --reuid=munge --regid=munge --init-groups munged --foreground --force \
            --log-file="$work/munged.log" >"$work/munged.out.log" 2>&1 &
    else
        munged --foreground --force --log-file="$work/munged.log" >"$work/munged.out.log" 2>&1 &
    fi
    munged_pid=$!
    for _ in $(seq 50); do
        timeout 5 sh -c 'munge -n | unmunge' >/dev/null 2>&1 && break
        kill -0 "$munged_pid" 2>/dev/null || fail "munged did not start (see munged.log)"
        sleep 0.2
    done
    timeout 5 sh -c 'munge -n | unmunge' >/dev/null 2>&1 || fail "munge does not answer"
fi

# --- slurm daemons
log "starting slurmctld and slurmd (conf $conf)"
slurmctld -D -i -f "$conf" >"$work/slurmctld.out.log" 2>&1 &
ctld_pid=$!
for _ in $(seq 100); do
    timeout 5 scontrol ping 2>/dev/null | grep -q UP && break
    kill -0 "$ctld_pid" 2>/dev/null || fail "slurmctld exited (see slurmctld.log)"
    sleep 0.2
done
slurmd -D -f "$conf" >"$work/slurmd.out.log" 2>&1 &
slurmd_pid=$!
state=
for _ in $(seq 150); do
    state=$(timeout 5 sinfo -h -N -n "$host" -o %T 2>/dev/null || true)
    [[ $state == idle* ]] && break
    kill -0 "$slurmd_pid" 2>/dev/null || fail "slurmd exited (see slurmd.log)"
    sleep 0.2
done
[[ $state == idle* ]] || fail "node $host is '${state:-unknown}', not idle, after 30 s"
log "node $host idle"

# --- the runs
keys=$work/keys
"$made" keygen "$keys" >/dev/null
chmod -R go-rwx "$keys"

port_free() { ! ss -Htln "sport = :$1" 2>/dev/null | grep -q .; }
port=${MASTER_PORT:-}
if [[ -z $port ]]; then
    for _ in $(seq 50); do
        port=$((20000 + RANDOM % 20000))
        port_free "$port" && break
    done
fi
srun_env=ALL,MASTER_PORT=$port
if ! getent hosts "$host" >/dev/null; then
    log "$host does not resolve: MASTER_ADDR=127.0.0.1"
    srun_env+=,MASTER_ADDR=127.0.0.1
fi

timeout "$run_timeout" "$made" train -d "$data" "${made_flags[@]}" >"$work/reference.out" 2>"$work/reference.log" &
reference_pid=$!

log "srun -N1 -n 3 made launch, and made train, at port $port"
srun_status=0
timeout --kill-after=10 "$run_timeout" srun -N1 -n 3 --overcommit --cpus-per-task=1 --kill-on-bad-exit=0 \
    --job-name=made-harness --export="$srun_env" \
    "$made" launch -d "$data" "${made_flags[@]}" --keys "$keys" --coordinator-timeout 30 \
    >"$work/srun.out" 2>"$work/srun.log" || srun_status=$?

log "srun exited with $srun_status"
reference_status=0
wait "$reference_pid" || reference_status=$?
reference_pid=
log "made train exited with $reference_status"

cluster=$(made_checksum "$work/srun.out")
single=$(made_checksum "$work/reference.out")
counters=$(grep -m1 '^cluster ' "$work/srun.out" | grep -o 'workers_joined=[0-9]* workers_lost=[0-9]* reassigned_shards=[0-9]*' || true)
elapsed=$((SECONDS - started))
if ((srun_status != 0)) || [[ -z $cluster ]]; then
    cat "$work/srun.out" >&2
    fail "srun exited with $srun_status (124: timed out), checksum '${cluster:-none}' (${elapsed} s)"
fi
if ((reference_status != 0)) || [[ -z $single ]]; then
    fail "single-process made train exited with $reference_status, checksum '${single:-none}' (${elapsed} s)"
fi
if [[ $cluster != "$single" ]]; then
    grep -m1 '^cluster ' "$work/srun.out" >&2 || true
    fail "srun -n 3 gave params_sha256=$cluster, made train gave $single (${elapsed} s)"
fi
echo "slurm: PASS srun -n 3 (1 coordinator + 2 workers, CURVE, $counters) params_sha256=$cluster equals single-process made train (${elapsed} s)"
