#!/usr/bin/env bash
# Renders training curves from a `made train --metrics FILE` JSON Lines file to a PNG.
#
#   scripts/plot.sh METRICS.jsonl OUT.png
#
# Two panels: the training loss of every step (thin) with its running mean over an epoch's
# worth of steps, and, per epoch, the mean training NLL and the validation NLL. Needs gnuplot
# (Debian's gnuplot-nox, installed here when missing) and python3.
set -euo pipefail
if [ $# -ne 2 ]; then
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2
    exit 2
fi
metrics="$1"
out="$2"
[ -r "$metrics" ] || { echo "plot: cannot read $metrics" >&2; exit 1; }
if ! command -v gnuplot >/dev/null 2>&1; then
    sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get install -y -qq gnuplot-nox >/dev/null
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

python3 - "$metrics" "$work" <<'PY'
import json, sys
metrics, work = sys.argv[1], sys.argv[2]
steps, epochs = [], []
with open(metrics) as f:
    for number, line in enumerate(f, 1):
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            sys.exit(f"plot: {metrics}:{number}: not JSON ({error})")
        if record.get("type") == "step" and record.get("loss") is not None:
            steps.append((record["step"], record["loss"]))
        elif record.get("type") == "epoch":
            epochs.append((record["epoch"] + 1, record.get("train_nll"), record.get("valid_nll")))
if not steps and not epochs:
    sys.exit(f"plot: {metrics} holds no step or epoch records")
window = max(1, min(500, len(steps) // 20 or 1))
with open(f"{work}/steps.dat", "w") as f:
    total, queue = 0.0, []
    for step, loss in steps:
        queue.append(loss); total += loss
        if len(queue) > window:
            total -= queue.pop(0)
        f.write(f"{step} {loss} {total / len(queue)}\n")
with open(f"{work}/epochs.dat", "w") as f:
    for epoch, train, valid in epochs:
        f.write(f"{epoch} {'NaN' if train is None else train} {'NaN' if valid is None else valid}\n")
with open(f"{work}/window", "w") as f:
    f.write(str(window))
PY

window="$(cat "$work/window")"
gnuplot <<GP
set terminal pngcairo size 1000,420 font "sans,10"
set output "$out"
set multiplot layout 1,2
set grid
set key top right
set title "Training loss per step"
set xlabel "step"
set ylabel "nats per example"
plot "$work/steps.dat" using 1:2 with lines lw 0.5 lc rgb "#b0c4de" title "step", \
     "$work/steps.dat" using 1:3 with lines lw 2 lc rgb "#1f4e9c" title "mean of $window steps"
set title "NLL per epoch"
set xlabel "epoch"
plot "$work/epochs.dat" using 1:2 with linespoints lw 2 lc rgb "#1f4e9c" title "train", \
     "$work/epochs.dat" using 1:3 with linespoints lw 2 lc rgb "#c0392b" title "validation"
unset multiplot
GP
echo "plot: wrote $out"
