#!/usr/bin/env python3
"""log p(x) of data under a reference-MADE state dict in safetensors form, with NumPy only.

    scripts/made_logp.py MODEL.safetensors DATA [--split test] [--out FILE]

MODEL is what `made export` writes (or any file with the reference's names: net.{2l}.weight,
net.{2l}.bias, net.{2l}.mask). DATA is an .npz holding train_data/valid_data/test_data (0/1 or
real rows) or a single .npy matrix. Prints the mean NLL in nats, and with --out writes one
log p(x) per line, in row order, as `made eval --per-example` does.

The model is the reference's forward pass: h = relu((mask * W) h + b) for every layer but the
last, outputs = (mask * W) h + b; Bernoulli outputs are logits, Gaussian outputs are
[means | log standard deviations] (from the metadata's made.distribution, else nout / nin).
The safetensors file is parsed by hand (8-byte little-endian header length, JSON header, raw
little-endian arrays), so neither torch nor the safetensors package is needed.
"""
import argparse
import json
import struct
import sys

import numpy as np


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    data = raw[8 + length:]
    metadata = header.pop("__metadata__", {})
    dtypes = {"F32": "<f4", "F64": "<f8"}
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        tensors[name] = np.frombuffer(data[begin:end], dtype=dtypes[info["dtype"]]).reshape(info["shape"]).astype(np.float64)
    return tensors, metadata


def log_likelihoods(tensors, metadata, x):
    layers = []
    while f"net.{2 * len(layers)}.weight" in tensors:
        name = f"net.{2 * len(layers)}"
        layers.append((tensors[name + ".weight"], tensors[name + ".bias"], tensors[name + ".mask"]))
    if not layers:
        sys.exit("made_logp: no net.0.weight in the file")
    h = x
    for i, (w, b, m) in enumerate(layers):
        h = h @ (m * w).T + b
        if i + 1 < len(layers):
            h = np.maximum(h, 0)
    nin = x.shape[1]
    distribution = metadata.get("made.distribution") or ("bernoulli" if h.shape[1] == nin else "gaussian")
    if distribution == "bernoulli":
        # log sigmoid(z) for x = 1, log sigmoid(-z) for x = 0, without overflow.
        s = np.where(x > 0.5, -h, h)
        return -(np.maximum(s, 0) + np.log1p(np.exp(-np.abs(s)))).sum(axis=1)
    mean, log_std = h[:, :nin], h[:, nin:2 * nin]
    u = (x - mean) * np.exp(-log_std)
    return -(0.5 * np.log(2 * np.pi) + log_std + 0.5 * u * u).sum(axis=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("data")
    parser.add_argument("--split", default="test", choices=["train", "valid", "test"])
    parser.add_argument("--out")
    args = parser.parse_args()
    tensors, metadata = read_safetensors(args.model)
    if args.data.endswith(".npz"):
        x = np.load(args.data)[f"{args.split}_data"]
    else:
        x = np.load(args.data)
    x = np.asarray(x, dtype=np.float64)
    ll = log_likelihoods(tensors, metadata, x)
    if args.out:
        with open(args.out, "w") as f:
            f.writelines(f"{v:.6f}\n" for v in ll)
    print(f"nll={-ll.mean():.4f} examples={len(ll)}")


if __name__ == "__main__":
    main()
