#!/usr/bin/env bash
# Renders training curves from a `made train --metrics FILE` JSON Lines file to a PNG.
#
#   scripts/plot.sh METRICS.jsonl OUT.png [--run ID | --run all]
#
# Two panels: the training loss of every step (thin) with its running mean over an epoch's
# worth of steps, and, per epoch, the mean training NLL and the validation NLL. A metrics file
# may hold several runs (each record names its run); the last run in the file is drawn unless
# --run names another (or `all`). A run resumed from its checkpoint keeps its id; steps redone
# after an interruption count once, as their last record says. Needs gnuplot (Debian's
# gnuplot-nox, installed here when missing) and python3.
set -euo pipefail
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2; exit 2; }
run=last
positional=()
while [ $# -gt 0 ]; do
    case $1 in
        --run) [ $# -ge 2 ] || usage; run=$2; shift 2 ;;
        --run=*) run=${1#--run=}; shift ;;
        -h | --help) usage ;;
        *) positional+=("$1"); shift ;;
    esac
done
[ ${#positional[@]} -eq 2 ] || usage
metrics="${positional[0]}"
out="${positional[1]}"
[ -r "$metrics" ] || { echo "plot: cannot read $metrics" >&2; exit 1; }
if ! command -v gnuplot >/dev/null 2>&1; then
    sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get install -y -qq gnuplot-nox >/dev/null
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

python3 - "$metrics" "$work" "$run" <<'PY'
import json, sys
metrics, work, wanted = sys.argv[1], sys.argv[2], sys.argv[3]
records, runs = [], []
with open(metrics) as f:
    for number, line in enumerate(f, 1):
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            sys.exit(f"plot: {metrics}:{number}: not JSON ({error})")
        if not isinstance(record, dict):
            sys.exit(f"plot: {metrics}:{number}: not a JSON object")
        run = record.get("run", "")   # files written before runs had ids hold one unnamed run
        if run not in runs:
            runs.append(run)
        records.append((run, record))
if wanted == "last":
    wanted = runs[-1] if runs else ""
elif wanted != "all" and wanted not in runs:
    sys.exit(f"plot: {metrics} holds no run {wanted} (runs: {', '.join(r or '(unnamed)' for r in runs)})")
steps, epochs = {}, {}
for index, (run, record) in enumerate(records):
    if wanted != "all" and run != wanted:
        continue
    # Within one run the last record of a step or epoch counts (steps redone after a resume);
    # with --run all every record is kept.
    key = record.get("step") if wanted != "all" else index
    if record.get("type") == "step" and record.get("loss") is not None:
        steps[key] = (record["step"], record["loss"])
    elif record.get("type") == "epoch":
        epochs[record.get("epoch") if wanted != "all" else index] = (record["epoch"] + 1, record.get("train_nll"), record.get("valid_nll"))
steps = sorted(steps.values()) if wanted != "all" else list(steps.values())
epochs = sorted(epochs.values()) if wanted != "all" else list(epochs.values())
if not steps and not epochs:
    sys.exit(f"plot: {metrics} holds no step or epoch records")
label = "all runs" if wanted == "all" else f"run {wanted}" if wanted else "the run"
print(f"plot: {label} of {len(runs)}: {len(steps)} steps, {len(epochs)} epochs")
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
