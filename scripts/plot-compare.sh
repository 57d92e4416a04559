#!/usr/bin/env bash
# Draws the validation NLL of several runs side by side, from their `made train --metrics` files,
# against epochs and against training time (the sum of the epochs' step time, validation left out).
#
#   scripts/plot-compare.sh OUT.png LABEL=METRICS.jsonl [LABEL=METRICS.jsonl ...]
#
# Each file's last run is drawn. Needs gnuplot and python3, as scripts/plot.sh does.
set -euo pipefail
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2; exit 2; }
[ $# -ge 2 ] || usage
case $1 in -h | --help) usage ;; esac
out=$1
shift
command -v gnuplot >/dev/null 2>&1 || { echo "plot-compare: needs gnuplot (apt-get install gnuplot-nox)" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

python3 - "$work" "$@" <<'PY'
import json, sys
work, specs = sys.argv[1], sys.argv[2:]
plots = []
for i, spec in enumerate(specs):
    label, sep, path = spec.partition("=")
    if not sep or not label or not path:
        sys.exit(f"plot-compare: '{spec}' is not LABEL=FILE")
    try:
        records = [json.loads(line) for line in open(path) if line.strip()]
    except (OSError, ValueError) as e:
        sys.exit(f"plot-compare: {path}: {e}")
    runs = [r.get("run") for r in records if r.get("type") == "epoch"]
    if not runs:
        sys.exit(f"plot-compare: {path}: no epoch records")
    last = runs[-1]
    epochs = {}
    for r in records:
        if r.get("type") == "epoch" and r.get("run") == last and r.get("valid_nll") is not None:
            epochs[r["epoch"]] = r   # a redone epoch counts once, as its last record says
    elapsed = 0.0
    with open(f"{work}/{i}.dat", "w") as f:
        for e in sorted(epochs):
            elapsed += epochs[e]["seconds"]
            f.write(f"{e + 1} {elapsed:.3f} {epochs[e]['valid_nll']:.6f}\n")
    plots.append((i, label.replace('"', "'")))
with open(f"{work}/plots", "w") as f:
    for column, name in [(1, "epochs"), (2, "time")]:
        f.write(", ".join(f"'{work}/{i}.dat' using {column}:3 with linespoints title \"{label}\"" for i, label in plots) + "\n")
PY
{
    echo "set terminal pngcairo size 1200,500 font ',10'"
    echo "set output '$out'"
    echo "set multiplot layout 1,2"
    echo "set grid"
    echo "set ylabel 'validation NLL (nats), ensemble log-mean-exp'"
    echo "set key top right"
    echo "set xlabel 'epochs'"
    echo "plot $(sed -n 1p "$work/plots")"
    echo "set xlabel 'training time (s, validation excluded)'"
    echo "plot $(sed -n 2p "$work/plots")"
    echo "unset multiplot"
} > "$work/plot.gp"
gnuplot "$work/plot.gp"
echo "wrote $out"
