#!/usr/bin/env python3
"""PyTorch reference benchmark for MADE training throughput on the CPU.

Measures how many training examples per second a plain PyTorch MADE
(Germain et al. 2015) processes, to serve as the peer figure for the Swift
implementation's own `made bench`. The model mirrors the well-known small
PyTorch MADE: `MaskedLinear` layers whose connectivity masks come from unit
degrees drawn with `numpy.random.RandomState`, ReLU between layers, the loss
`binary_cross_entropy_with_logits(..., reduction="sum") / batch`, and Adam with
lr 1e-3 and weight_decay 1e-4. Default configuration: 784-500-784, batch 100.

Data: `--data FILE` loads a `.npy` array or the `train_data` array (else the
first array) of a `.npz`, N x 784 with 0/1 entries, held as float32 as the
reference does. Without `--data`, 50000 x 784 Bernoulli(0.5) rows from a
fixed seed stand in (the size of the binarized MNIST training split).

Modes:
  --mode single        one process, one thread. Prints exactly one line:
                         pytorch_single examples_per_s=<float> peak_rss_mib=<float>
  --mode ddp --procs P DistributedDataParallel over gloo on 127.0.0.1, P
                       processes of one thread each, the global batch split
                       evenly between them. Rank 0 prints:
                         pytorch_ddp procs=P examples_per_s=<float>
                       (global examples per second).

Each mode runs --warmup steps (default 20) untimed, then times --steps steps
(default 300). Threading is pinned to one thread per process for OpenMP and
the BLAS library alike (OMP_NUM_THREADS / OPENBLAS_NUM_THREADS /
MKL_NUM_THREADS are set to 1 before torch loads).

Usage:
  python3 scripts/bench_pytorch.py --mode single
  python3 scripts/bench_pytorch.py --mode ddp --procs 2
  python3 scripts/bench_pytorch.py --mode single --data binarized_mnist.npz

On Debian, `apt-get install python3-torch` provides torch for /usr/bin/python3.
"""

import argparse
import os
import resource
import socket
import sys
import time

# One thread per process, for OpenMP and for the BLAS library. These must be
# in the environment before torch (and the BLAS it links) is loaded; child
# processes of the ddp mode inherit them.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

try:
    import numpy as np
    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError as exc:
    sys.stderr.write(
        "bench_pytorch: cannot import torch (or numpy) with %s (%s).\n"
        "Install it with `apt-get install python3-torch` (for /usr/bin/python3) "
        "or `pip install torch`.\n" % (sys.executable, exc)
    )
    sys.exit(2)


# ----------------------------------------------------------------------------
# Model


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask."""

    def __init__(self, in_features, out_features, bias=True):
        super().__init__(in_features, out_features, bias)
        self.register_buffer("mask", torch.ones(out_features, in_features))

    def set_mask(self, mask):
        # mask arrives as (in, out) booleans; the weight is (out, in).
        self.mask.data.copy_(torch.from_numpy(mask.astype(np.uint8).T))

    def forward(self, x):
        return F.linear(x, self.mask * self.weight, self.bias)


class MADE(nn.Module):
    def __init__(self, nin, hidden_sizes, nout, num_masks=1, natural_ordering=False):
        super().__init__()
        assert nout % nin == 0, "nout must be an integer multiple of nin"
        self.nin = nin
        self.nout = nout
        self.hidden_sizes = list(hidden_sizes)
        self.num_masks = num_masks
        self.natural_ordering = natural_ordering

        layers = []
        sizes = [nin] + self.hidden_sizes + [nout]
        for h0, h1 in zip(sizes, sizes[1:]):
            layers.append(MaskedLinear(h0, h1))
            layers.append(nn.ReLU())
        layers.pop()  # no nonlinearity on the output logits
        self.net = nn.Sequential(*layers)

        self.seed = 0
        self.m = {}
        self.update_masks()

    def update_masks(self):
        if self.m and self.num_masks == 1:
            return  # a single fixed mask set never changes
        L = len(self.hidden_sizes)
        rng = np.random.RandomState(self.seed)
        self.seed = (self.seed + 1) % self.num_masks

        # Degrees: inputs get an ordering, hidden units a degree in
        # [min degree of the previous layer, nin - 1).
        self.m[-1] = np.arange(self.nin) if self.natural_ordering else rng.permutation(self.nin)
        for l in range(L):
            self.m[l] = rng.randint(self.m[l - 1].min(), self.nin - 1, size=self.hidden_sizes[l])

        masks = [self.m[l - 1][:, None] <= self.m[l][None, :] for l in range(L)]
        masks.append(self.m[L - 1][:, None] < self.m[-1][None, :])
        if self.nout > self.nin:
            k = self.nout // self.nin
            masks[-1] = np.concatenate([masks[-1]] * k, axis=1)

        linears = [mod for mod in self.net.modules() if isinstance(mod, MaskedLinear)]
        for layer, mask in zip(linears, masks):
            layer.set_mask(mask)

    def forward(self, x):
        return self.net(x)


# ----------------------------------------------------------------------------
# Data


def load_data(args):
    """Return an (N, nin) float32 tensor of 0/1 values."""
    if args.data is None:
        rng = np.random.RandomState(args.seed)
        bits = rng.randint(0, 2, size=(args.n_examples, args.nin), dtype=np.uint8)
        return torch.from_numpy(bits.astype(np.float32))

    path = args.data
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            keys = list(loaded.keys())
            if not keys:
                fail("%s: the archive holds no arrays" % path)
            x = loaded["train_data" if "train_data" in keys else keys[0]]
        else:
            x = loaded
    except Exception as exc:  # I/O, header, zip and zlib errors alike
        fail("cannot read %s: %s: %s" % (path, type(exc).__name__, exc))
    if x.ndim != 2 or x.shape[1] != args.nin:
        fail("%s: expected an N x %d array, found shape %s" % (path, args.nin, x.shape))
    if x.shape[0] < args.batch:
        fail("%s: %d rows, fewer than one batch of %d" % (path, x.shape[0], args.batch))
    if not ((x == 0) | (x == 1)).all():
        fail("%s: entries must be 0 or 1" % path)
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def fail(message):
    sys.stderr.write("bench_pytorch: %s\n" % message)
    sys.exit(1)


# ----------------------------------------------------------------------------
# Training loop


def build(args):
    torch.manual_seed(args.seed)
    model = MADE(args.nin, args.hiddens, args.nin)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    return model, opt


def run_steps(model, opt, x, first_step, count, global_batch, offset, local_batch):
    """Run `count` training steps over consecutive global batches of x.

    This process uses rows [offset, offset + local_batch) of each global batch.
    """
    n_batches = x.shape[0] // global_batch
    for step in range(first_step, first_step + count):
        start = (step % n_batches) * global_batch + offset
        xb = x[start:start + local_batch]
        logits = model(xb)
        loss = F.binary_cross_entropy_with_logits(logits, xb, reduction="sum") / local_batch
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss


def bench_single(args):
    torch.set_num_threads(1)
    x = load_data(args)
    model, opt = build(args)
    model.train()
    run_steps(model, opt, x, 0, args.warmup, args.batch, 0, args.batch)
    t0 = time.perf_counter()
    run_steps(model, opt, x, args.warmup, args.steps, args.batch, 0, args.batch)
    elapsed = time.perf_counter() - t0
    rate = args.steps * args.batch / elapsed
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    print("pytorch_single examples_per_s=%.1f peak_rss_mib=%.1f" % (rate, peak_rss_mib), flush=True)


def ddp_worker(rank, args, port):
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", rank=rank, world_size=args.procs)
    try:
        x = load_data(args)
        model, opt = build(args)
        # The masks are buffers computed identically on every rank from the
        # same seed, so re-broadcasting them each step is not needed.
        ddp = nn.parallel.DistributedDataParallel(model, broadcast_buffers=args.broadcast_buffers)
        ddp.train()
        local = args.batch // args.procs
        offset = rank * local

        run_steps(ddp, opt, x, 0, args.warmup, args.batch, offset, local)
        dist.barrier()
        t0 = time.perf_counter()
        run_steps(ddp, opt, x, args.warmup, args.steps, args.batch, offset, local)
        dist.barrier()
        elapsed = time.perf_counter() - t0

        if rank == 0:
            rate = args.steps * args.batch / elapsed
            print("pytorch_ddp procs=%d examples_per_s=%.1f" % (args.procs, rate), flush=True)
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_ddp(args):
    if not dist.is_available() or not dist.is_gloo_available():
        fail("this torch build lacks torch.distributed with the gloo backend")
    if args.procs < 1 or args.batch % args.procs != 0:
        fail("--batch %d must split evenly over --procs %d" % (args.batch, args.procs))
    mp.spawn(ddp_worker, args=(args, free_port()), nprocs=args.procs, join=True)


# ----------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("single", "ddp"), default="single")
    p.add_argument("--procs", type=int, default=2, help="processes in ddp mode (default 2)")
    p.add_argument("--hiddens", default="500", help="comma-separated hidden sizes (default 500)")
    p.add_argument("--nin", type=int, default=784, help="input dimension (default 784)")
    p.add_argument("--batch", type=int, default=100, help="global batch size (default 100)")
    p.add_argument("--steps", type=int, default=300, help="timed steps (default 300)")
    p.add_argument("--warmup", type=int, default=20, help="untimed warm-up steps (default 20)")
    p.add_argument("--data", default=None, help=".npy or .npz file of N x nin 0/1 values")
    p.add_argument("--n-examples", type=int, default=50000,
                   help="rows of random data when --data is not given (default 50000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--broadcast-buffers", action="store_true",
                   help="ddp: let DDP re-broadcast the mask buffers every step (its default)")
    args = p.parse_args(argv)
    try:
        args.hiddens = [int(h) for h in args.hiddens.split(",") if h.strip()]
    except ValueError:
        p.error("--hiddens must be comma-separated integers, e.g. 500 or 500,500")
    if not args.hiddens or min(args.hiddens) < 1:
        p.error("--hiddens needs at least one positive size")
    if args.steps < 1 or args.warmup < 0 or args.batch < 1:
        p.error("--steps must be >= 1, --warmup >= 0, --batch >= 1")
    if args.data is None and args.n_examples < args.batch:
        p.error("--n-examples must be at least --batch")
    return args


def main():
    args = parse_args()
    if args.mode == "single":
        bench_single(args)
    else:
        bench_ddp(args)


if __name__ == "__main__":
    main()
