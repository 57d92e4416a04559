#!/usr/bin/env bash
# Compare MADE training throughput against PyTorch on the CPU, side by side.
#
# Builds the package in release mode, runs `made bench --steps $STEPS` (ours,
# one process) and `scripts/bench_pytorch.py --mode single` (PyTorch, one
# thread) on the same configuration (784-500-784, batch 100, Adam), then
# `made bench --workers 2` (coordinator and two workers) against PyTorch
# DistributedDataParallel (gloo, two processes) at the same global batch, and prints
#   ours examples_per_s=<float>
#   pytorch_single examples_per_s=<float> peak_rss_mib=<float>
#   ratio_vs_pytorch_single=<ours/theirs> ours=<float> pytorch_single=<float>
#   ours_cluster examples_per_s=<float>
#   pytorch_ddp procs=2 examples_per_s=<float>
#   ratio_vs_pytorch_ddp=<ours/theirs> cluster_vs_our_single=<cluster/single> ours_cluster=<float> pytorch_ddp=<float> ours_single=<float>
# All figures come from this one run. WORKERS (default 2) sets the process count of both.
# Both sides train on the same data: DATA (default the binarized Fashion-MNIST training
# split at /usr/share/datasets/fashion-mnist when it is there; DATA= for random bits), which
# `made bench -d` binarizes and hands to PyTorch as an .npz. Ours is the default (sparse)
# kernel; its dense figure from the same run is printed too.
#
# Usage:
#   scripts/bench-vs-pytorch.sh
#   PYTHON=/usr/bin/python3 STEPS=300 scripts/bench-vs-pytorch.sh   # default 1000 timed steps
#   DATA= scripts/bench-vs-pytorch.sh                                 # random bits
#
# PYTHON picks the interpreter for the PyTorch side; by default the first of
# /usr/bin/python3, python3, python that can import torch. If none can, our
# own figure is still printed, with a note on installing torch, and the
# script exits 0.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

STEPS="${STEPS:-1000}"
if [[ -z "${DATA+set}" && -d /usr/share/datasets/fashion-mnist ]]; then
    DATA=/usr/share/datasets/fashion-mnist
fi
DATA="${DATA:-}"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
data_args=()
peer_args=()
if [[ -n "$DATA" ]]; then
    data_args=(-d "$DATA")
fi

has_torch() {
    "$1" -c 'import torch, numpy' >/dev/null 2>&1
}

find_python() {
    local candidate
    if [[ -n "${PYTHON:-}" ]]; then
        echo "$PYTHON"
        return
    fi
    for candidate in /usr/bin/python3 python3 python; do
        if command -v "$candidate" >/dev/null 2>&1 && has_torch "$candidate"; then
            echo "$candidate"
            return
        fi
    done
    echo ""
}

# Print the value of key=<number> from the first line of stdin carrying it.
extract() {
    grep -o "$1=[-+0-9.eE]*" | head -n 1 | cut -d= -f2
}

echo "== swift build -c release" >&2
swift build -c release >&2

echo "== .build/release/made bench --steps $STEPS ${data_args[*]} --save-data $scratch/data.npz" >&2
if ! ours_out="$(.build/release/made bench --steps "$STEPS" "${data_args[@]}" --save-data "$scratch/data.npz")"; then
    echo "bench-vs-pytorch: '.build/release/made bench --steps $STEPS ${data_args[*]}' failed" >&2
    exit 1
fi
printf '%s\n' "$ours_out" >&2
peer_args=(--data "$scratch/data.npz")
ours="$(printf '%s\n' "$ours_out" | grep 'kernel=sparse' | extract examples_per_s || true)"
ours_dense="$(printf '%s\n' "$ours_out" | grep 'kernel=dense' | extract examples_per_s || true)"
echo "ours_dense examples_per_s=$ours_dense"
if [[ -z "$ours" ]]; then
    echo "bench-vs-pytorch: no examples_per_s=<number> in the output of 'made bench':" >&2
    printf '%s\n' "$ours_out" >&2
    exit 1
fi
echo "ours examples_per_s=$ours"

python="$(find_python)"
if [[ -z "$python" ]] || ! has_torch "$python"; then
    echo "bench-vs-pytorch: the PyTorch peer is not installed (no torch for ${python:-any of /usr/bin/python3, python3, python})." >&2
    echo "  Install it with 'sudo apt-get install python3-torch' (Debian, for /usr/bin/python3)" >&2
    echo "  or 'pip install torch', then rerun, optionally with PYTHON=/path/to/python3." >&2
    exit 0
fi

echo "== $python scripts/bench_pytorch.py --mode single --steps $STEPS ${peer_args[*]}" >&2
theirs_out="$("$python" scripts/bench_pytorch.py --mode single --steps "$STEPS" "${peer_args[@]}")"
printf '%s\n' "$theirs_out"
theirs="$(printf '%s\n' "$theirs_out" | extract examples_per_s || true)"
if [[ -z "$theirs" ]]; then
    echo "bench-vs-pytorch: no examples_per_s=<number> in the PyTorch output" >&2
    exit 1
fi

awk -v a="$ours" -v b="$theirs" 'BEGIN {
    if (b + 0 <= 0) { print "bench-vs-pytorch: PyTorch figure is not positive" > "/dev/stderr"; exit 1 }
    printf "ratio_vs_pytorch_single=%.3f ours=%s pytorch_single=%s\n", a / b, a, b
}'

WORKERS="${WORKERS:-2}"
echo "== .build/release/made bench --workers $WORKERS --steps $STEPS --kernel sparse ${data_args[*]}" >&2
cluster_out="$(.build/release/made bench --workers "$WORKERS" --steps "$STEPS" --kernel sparse "${data_args[@]}" 2>/dev/null)"
printf '%s\n' "$cluster_out" >&2
cluster="$(printf '%s\n' "$cluster_out" | grep '^made_cluster ' | extract examples_per_s || true)"
echo "ours_cluster examples_per_s=$cluster"
echo "== $python scripts/bench_pytorch.py --mode ddp --procs $WORKERS --steps $STEPS ${peer_args[*]}" >&2
ddp_out="$("$python" scripts/bench_pytorch.py --mode ddp --procs "$WORKERS" --steps "$STEPS" "${peer_args[@]}")"
printf '%s\n' "$ddp_out"
ddp="$(printf '%s\n' "$ddp_out" | extract examples_per_s || true)"
awk -v c="$cluster" -v d="$ddp" -v s="$ours" 'BEGIN {
    if (d + 0 <= 0 || s + 0 <= 0) { print "bench-vs-pytorch: a DDP or single figure is not positive" > "/dev/stderr"; exit 1 }
    printf "ratio_vs_pytorch_ddp=%.3f cluster_vs_our_single=%.3f ours_cluster=%s pytorch_ddp=%s ours_single=%s\n", c / d, c / s, c, d, s
}'
