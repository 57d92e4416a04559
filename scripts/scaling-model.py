#!/usr/bin/env python3
"""A model on paper of the cluster's examples/s, built from measured constants (standard library only).

    scripts/scaling-model.py                 # projection: 1-16 hosts of 16 cores, 1/10/25 Gbit/s, batch 100/1000
    scripts/scaling-model.py --check         # the model beside every harness row it can reach, with the ratios
    scripts/scaling-model.py --cores 32 --relay-ms-per-worker 0.5 --hosts 1,4,16 --rates 10 --batches 1000

A step, as the system runs it today (784-500-784, sparse kernel, one relay and C workers per host, shards =
H x C but at most B, as a run refuses more shards than examples, the batch B split evenly over them):

    step = between + H x bytes_out / R + compute + relay + H x bytes_in / R

  between   the coordinator's own serial time between exchanges (Adam, the next step's plan);
  bytes     one host's packed parameters out and packed gradient back, through the coordinator's one NIC;
  compute   one worker's shard: ceil(B / shards) rows at one process's measured cost per row;
  relay     the relay's memory work on its host (parameters into its shared memory, its workers' dense
            gradient slots written and summed in tree order), per worker of the host.

Assumptions, stated plainly:
  - nothing overlaps: all parameters go out, then every host computes, then all gradients come back
    (the system does not yet overlap the exchange with compute);
  - links are full duplex, and the coordinator's one NIC is the bottleneck: every host's bytes cross it,
    each host's own link carries only its own; the NIC runs at its line rate on payload bytes (TCP/IP
    framing, about 4.6% at MTU 1500, is left out);
  - compute scales per row: a shard of r rows costs r times one process's time per row at that batch
    (which includes Adam, so it is slightly pessimistic for large shards; fixed costs per shard of tiny
    shards, such as writing a dense gradient slot, are in the relay term);
  - the coordinator's CPU keeps up with its NIC: CURVE encryption and the sockets' copies cost no time of
    their own in the projection (on the 2-core machine they do, and --check counts them; see --xfer-cpu-ms).

Every constant is a flag; the defaults are measured figures, each with where it was measured.
"""
import argparse
import math
import sys
import textwrap

# Measured constants. Each default says where it comes from.
CONSTANTS = [
    ("one_process_exs_b100", 27350.0,
     "one process's examples/s at batch 100, sparse kernel, random bits (issue 9's side-by-side table: "
     "26.8-27.9k; mid-range)"),
    ("one_process_exs_b1000", 30300.0,
     "one process's examples/s at batch 1000 (issue 9's table: 29.8-30.8k; mid-range)"),
    ("two_workers_shm_exs_b100", 37150.0,
     "coordinator + 2 workers on one host through shared memory, batch 100 (issue 9's table: 33.4-40.9k; "
     "used only to check that a worker's cost per row holds on a shared host)"),
    ("bytes_per_host", 3147641.0,
     "coordinator bytes per step per host, both directions (docs/benchmarks.md, scaling harness: 3147641 at "
     "2 hosts of 1 worker, 1gbit; 3146878-3147924 in every measured row, with or without a relay)"),
    ("between_ms", 1.608,
     "the coordinator's serial ms per step between exchanges (docs/benchmarks.md, simulated compute: "
     "1.111, 1.331, 2.139, 1.852 at 1, 2, 4, 8 hosts of 8 workers; their mean)"),
    ("relay_ms_per_worker", 1.593,
     "a relay's memory work per step and worker of its host (docs/benchmarks.md, simulated compute, 1 host of "
     "8 workers at 2 ms a shard: the relay's block took 14.741 ms, less the 2 ms sleep, over 8 workers; "
     "measured on 2 loaded cores, so an upper bound for a host with a core per worker)"),
    ("xfer_cpu_ms_per_host", 13.621,
     "CPU ms to move one host's bytes through CURVE and the kernel on the 2-core machine, used by --check "
     "only (docs/benchmarks.md, simulated compute, 1 host of 8 workers, no rate limit: wait_ms 13.621)"),
]

# Rows of the scaling harness (docs/benchmarks.md, 2026-12-02), on the 2-core machine, load average 14-28.
# hosts, workers per host, rate in bit/s (None: no limit), batch, simulated ms per shard (None: computed),
# measured examples/s, measured compute_ms per peer and step, measured between_ms (None: not printed).
HARNESS = [
    (2, 1, 1e9, 100, None, 1523.3, 12.785, None),
    (2, 2, 1e9, 100, None, 1536.0, 16.427, None),
    (2, 1, 1e8, 100, None, 204.5, 11.239, None),
    (2, 2, 1e8, 100, None, 199.4, 15.809, None),
    (1, 8, None, 100, 2.0, 3229.9, 14.741, 1.111),
    (2, 8, None, 100, 2.0, 1415.3, 36.002, 1.331),
    (4, 8, None, 100, 2.0, 803.7, 56.856, 2.139),
    (8, 8, None, 100, 2.0, 376.5, 113.898, 1.852),
    (1, 8, None, 100, 4.155, 2929.6, 19.833, None),
    (2, 8, None, 100, 4.015, 1473.1, 33.109, None),
    (4, 8, None, 100, 4.477, 683.6, 68.399, None),
    (1, 8, None, 1000, 12.186, 16046.5, 37.115, None),
    (2, 8, None, 1000, 9.974, 10557.4, 53.462, None),
    (4, 8, None, 1000, 3.865, 6795.4, 74.748, None),
]
HARNESS_CORES = 2
CALIBRATION = "  (calibration row: relay and socket CPU constants)"


def ms_per_row(c, batch):
    """One process's ms per example at this batch: linear in the batch between the two measured figures."""
    a, b = 1000.0 / c.one_process_exs_b100, 1000.0 / c.one_process_exs_b1000
    t = min(max((batch - 100.0) / 900.0, 0.0), 1.0)
    return a + (b - a) * t


def one_process_exs(c, batch):
    return 1000.0 / ms_per_row(c, batch)


def project(c, hosts, cores, rate_bits, batch):
    """The step's parts in ms for H hosts of C cores, each its own machine, link rate R (bit/s)."""
    shards = min(hosts * cores, batch)
    workers_per_host = math.ceil(shards / hosts)
    rows = math.ceil(batch / shards)
    link = hosts * c.bytes_per_host * 8.0 / rate_bits * 1000.0
    compute = rows * ms_per_row(c, batch)
    relay = workers_per_host * c.relay_ms_per_worker if workers_per_host > 1 else 0.0
    step = c.between_ms + link + compute + relay
    return {"link": link, "compute": compute, "relay": relay, "step": step, "rows": rows}


def harness_model(c, hosts, workers, rate_bits, batch, simulate_ms, compute_ms=None, between_ms=None):
    """The same step with every host on the harness's 2 shared cores: the hosts' compute, relay work and
    socket CPU run one after another on those 2 cores instead of at once on machines of their own."""
    shards = hosts * workers
    rows = math.ceil(batch / shards)
    wire = hosts * c.bytes_per_host * 8.0 / rate_bits * 1000.0 if rate_bits else 0.0
    xfer_cpu = hosts * c.xfer_cpu_ms_per_host
    link = max(wire, xfer_cpu)  # the socket work is done while the bytes cross the link
    if compute_ms is not None:
        # The row's own measured block time per peer and step (compute, and for a relay its memory work), as
        # the peers ran on the 2 shared cores under the machine's load.
        compute, relay = compute_ms, 0.0
    elif simulate_ms is not None:
        compute = simulate_ms  # sleeps overlap
        relay = hosts * workers * c.relay_ms_per_worker if workers > 1 else 0.0
    else:
        compute = max(rows * ms_per_row(c, batch), shards * rows * ms_per_row(c, batch) / HARNESS_CORES)
        relay = hosts * workers * c.relay_ms_per_worker if workers > 1 else 0.0
    between = between_ms if between_ms is not None else c.between_ms
    step = between + link + compute + relay
    return {"link": link, "compute": compute, "relay": relay, "step": step}


def rate_name(rate_bits):
    if rate_bits is None:
        return "none"
    return f"{rate_bits / 1e9:g}gbit" if rate_bits >= 1e9 else f"{rate_bits / 1e6:g}mbit"


def print_projection(c, hosts_list, cores, rates, batches):
    print(f"# PROJECTION from measured constants (not measured): H hosts of {cores} cores, one relay + "
          f"{cores} workers each; see --help")
    print(f"{'hosts':<6}{'Gbit/s':<7}{'batch':<6}{'rows/wk':<8}{'link_ms':>9}{'compute_ms':>11}{'relay_ms':>9}"
          f"{'between':>8}{'step_ms':>9}{'examples/s':>11}{'vs_1proc':>9}{'link_share':>11}")
    table = {}
    for batch in batches:
        for rate in rates:
            for hosts in hosts_list:
                p = project(c, hosts, cores, rate * 1e9, batch)
                exs = batch / p["step"] * 1000.0
                table[(hosts, rate, batch)] = exs
                print(f"{hosts:<6}{rate:<7g}{batch:<6}{p['rows']:<8}{p['link']:>9.2f}{p['compute']:>11.2f}"
                      f"{p['relay']:>9.2f}{c.between_ms:>8.2f}{p['step']:>9.2f}{exs:>11.0f}"
                      f"{exs / one_process_exs(c, batch):>9.2f}{p['link'] / p['step']:>11.2f}")
    print()
    print("# examples/s (PROJECTION), hosts down, link rate and batch across")
    head = "".join(f"{f'{r:g}G b{b}':>11}" for b in batches for r in rates)
    print(f"{'hosts':<6}{head}")
    for hosts in hosts_list:
        print(f"{hosts:<6}" + "".join(f"{table[(hosts, r, b)]:>11.0f}" for b in batches for r in rates))
    print(f"{'1 proc':<6}" + "".join(f"{one_process_exs(c, b):>11.0f}" for b in batches for r in rates))
    print()
    print("# examples/s (PROJECTION) with the relay term at 0: the bound set by the coordinator's NIC, its serial")
    print("# time and compute alone, if a relay's memory work cost nothing or overlapped the transfers")
    print(f"{'hosts':<6}{head}")
    free = argparse.Namespace(**vars(c))
    free.relay_ms_per_worker = 0.0
    for hosts in hosts_list:
        print(f"{hosts:<6}" + "".join(f"{b / project(free, hosts, cores, r * 1e9, b)['step'] * 1000.0:>11.0f}"
                                      for b in batches for r in rates))


def print_check(c):
    print("# The model beside the scaling harness's rows (docs/benchmarks.md), all hosts on this machine's "
          f"{HARNESS_CORES} cores")
    print("# model: from the constants alone; model+row: with the row's own measured compute_ms (and between_ms)")
    print(f"{'hosts':<6}{'wk':<4}{'rate':<8}{'batch':<6}{'sim_ms':<7}{'measured':>9}{'model':>9}{'ratio':>7}"
          f"{'model+row':>10}{'ratio':>7}  {'model parts: link compute relay (ms)'}")
    for hosts, workers, rate, batch, sim, exs, compute_ms, between_ms in HARNESS:
        m = harness_model(c, hosts, workers, rate, batch, sim)
        r = harness_model(c, hosts, workers, rate, batch, sim, compute_ms, between_ms)
        me, re_ = batch / m["step"] * 1000.0, batch / r["step"] * 1000.0
        print(f"{hosts:<6}{workers:<4}{rate_name(rate):<8}{batch:<6}{(f'{sim:g}' if sim else '-'):<7}{exs:>9.1f}"
              f"{me:>9.1f}{me / exs:>7.2f}{re_:>10.1f}{re_ / exs:>7.2f}  "
              f"{m['link']:.1f} {m['compute']:.1f} {m['relay']:.1f}"
              f"{CALIBRATION if (hosts, workers, sim) == (1, 8, 2.0) else ''}")
    per_row = (100.0 / c.two_workers_shm_exs_b100 * 1000.0 - c.between_ms) / 50.0
    print(f"# a worker's ms per row in a 2-worker shared-memory step at batch 100, less the coordinator's serial "
          f"time: {per_row:.4f}\n# against one process's {ms_per_row(c, 100):.4f} (which includes Adam): "
          "no loss per core when workers share a host;\n# the model keeps one process's cost")


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                epilog="Defaults, measured:\n" + "\n".join(
                                    textwrap.fill(f"--{n.replace('_', '-')} {v:.10g}: {w}", 100,
                                                  initial_indent="  ", subsequent_indent="      ")
                                    for n, v, w in CONSTANTS),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, value, where in CONSTANTS:
        p.add_argument("--" + name.replace("_", "-"), type=float, default=value, help=where)
    p.add_argument("--hosts", default="1,2,4,8,16", help="host counts (default 1,2,4,8,16)")
    p.add_argument("--cores", type=int, default=16, help="cores, so workers, per host (default 16)")
    p.add_argument("--rates", default="1,10,25", help="link rates in Gbit/s (default 1,10,25)")
    p.add_argument("--batches", default="100,1000", help="batch sizes (default 100,1000)")
    p.add_argument("--check", action="store_true", help="print the model beside the harness's measured rows")
    a = p.parse_args(argv)
    try:
        hosts = [int(x) for x in a.hosts.split(",")]
        rates = [float(x) for x in a.rates.split(",")]
        batches = [int(x) for x in a.batches.split(",")]
    except ValueError as e:
        p.error(f"lists are comma-separated numbers: {e}")
    if min(hosts) < 1 or a.cores < 1 or min(rates) <= 0 or min(batches) < 1:
        p.error("hosts, cores and batches must be at least 1, rates above 0")
    for name, _, _ in CONSTANTS:
        low_ok = name in ("relay_ms_per_worker", "xfer_cpu_ms_per_host", "between_ms")
        if getattr(a, name) < 0 or (getattr(a, name) == 0 and not low_ok):
            p.error(f"--{name.replace('_', '-')} must be " + ("0 or more" if low_ok else "above 0"))
    if a.check:
        print_check(a)
    else:
        print_projection(a, hosts, a.cores, rates, batches)


if __name__ == "__main__":
    main(sys.argv[1:])
