#!/usr/bin/env bash
# The main job on a fresh machine: installs packages, gets data, builds, trains.
#
#   scripts/run.sh [--fetch] [made train flags...]
#
# --fetch downloads the real binarized MNIST where the web is reachable; otherwise Debian's
# Fashion-MNIST (binarized stochastically with a fixed seed) is used. Other flags go to
# `made train`; the defaults are the reference's: 784-500-784, batch 100, Adam 1e-3, 100 epochs,
# trained by one worker process per core (MADE_WORKERS overrides the count).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
fetch=()
if [ "${1:-}" = "--fetch" ]; then fetch=(--fetch); shift; fi
scripts/setup.sh
data="$(scripts/get-data.sh "${fetch[@]}")"
swift build -c release
mkdir -p runs
exec .build/release/made train -d "$data" --workers "${MADE_WORKERS:-$(nproc)}" --checkpoint runs/made.ckpt --resume "$@"
