#!/usr/bin/env bash
# Prints the path of the data to train on.
#
#   scripts/get-data.sh           binarized MNIST if data/ holds it, else Debian's Fashion-MNIST
#   scripts/get-data.sh --fetch   first downloads the real binarized MNIST (Larochelle's .amat files)
#                                 into data/, where the web is reachable
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
data="$root/data"
fetch=0
[ "${1:-}" = "--fetch" ] && fetch=1

if [ -f "$data/binarized_mnist.npz" ]; then echo "$data/binarized_mnist.npz"; exit 0; fi
if [ -f "$data/binarized_mnist_train.amat" ]; then echo "$data/binarized_mnist_train.amat"; exit 0; fi

if [ "$fetch" = 1 ]; then
    mkdir -p "$data"
    base="http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist"
    ok=1
    for split in train valid test; do
        f="binarized_mnist_${split}.amat"
        if ! curl -fsSL --connect-timeout 15 --max-time 600 -o "$data/$f.part" "$base/$f"; then ok=0; break; fi
        mv "$data/$f.part" "$data/$f"
    done
    if [ "$ok" = 1 ]; then echo "$data/binarized_mnist_train.amat"; exit 0; fi
    rm -f "$data"/*.part
    echo "get-data: binarized MNIST could not be downloaded; using Fashion-MNIST" >&2
fi

fashion=/usr/share/datasets/fashion-mnist
if [ -f "$fashion/train-images-idx3-ubyte.gz" ]; then echo "$fashion"; exit 0; fi
echo "get-data: no data: run scripts/setup.sh (installs dataset-fashion-mnist) or pass --fetch" >&2
exit 1
