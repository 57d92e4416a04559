#!/usr/bin/env bash
# The main job on a fresh machine: installs packages, gets data, builds, trains.
#
#   scripts/run.sh [--fetch] [--dry-run] [made train flags...]
#
# --fetch (anywhere among the arguments) downloads the real binarized MNIST where the web is
# reachable; otherwise Debian's Fashion-MNIST (binarized stochastically with a fixed seed) is
# used. Other flags go to `made train`; the defaults are the reference's: 784-500-784, batch
# 100, Adam 1e-3, 100 epochs, trained by one worker process per core (MADE_WORKERS overrides
# the count). Outputs go to runs/: the checkpoint runs/made.ckpt (run again to resume) and the
# metrics runs/made.jsonl (for scripts/plot.sh), unless --checkpoint or --metrics says otherwise.
# --dry-run prints the commands instead of running them.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
fetch=()
dry=0
flags=()
checkpoint=1
metrics=1
for arg in "$@"; do
    case $arg in
        --fetch) fetch=(--fetch) ;;
        --dry-run) dry=1 ;;
        *)
            case $arg in
                --checkpoint | --checkpoint=*) checkpoint=0 ;;
                --metrics | --metrics=*) metrics=0 ;;
            esac
            flags+=("$arg")
            ;;
    esac
done
defaults=()
((checkpoint)) && defaults+=(--checkpoint runs/made.ckpt --resume)
((metrics)) && defaults+=(--metrics runs/made.jsonl)
command=(.build/release/made train -d DATA --workers "${MADE_WORKERS:-$(nproc)}" ${defaults[@]+"${defaults[@]}"} ${flags[@]+"${flags[@]}"})
if ((dry)); then
    echo "scripts/setup.sh"
    echo "scripts/get-data.sh${fetch[*]:+ ${fetch[*]}}"
    echo "swift build -c release"
    echo "${command[*]}"
    exit 0
fi
scripts/setup.sh
data="$(scripts/get-data.sh ${fetch[@]+"${fetch[@]}"})"
swift build -c release
mkdir -p runs
command[3]=$data
exec "${command[@]}"
