#!/usr/bin/env python3
"""Turns bench/replicas results (`key value` lines) into the table: throughput of one and of two
replicas (median over rounds), their ratio, and CPU per cycle by party."""

import statistics
import sys
from collections import defaultdict


def main(path):
    meta, runs = {}, defaultdict(dict)
    with open(path) as f:
        for line in f:
            key, _, value = line.rstrip("\n").partition(" ")
            if key.startswith("meta."):
                meta[key[5:]] = value
                continue
            config, rnd, name = key.split(".", 2)
            runs[(config, rnd)][name] = value
    print(f"replica scaling, PostgreSQL {meta.get('postgres')}, {meta.get('cpus')} CPUs, rev {meta.get('git')}, {meta.get('date')}")
    print(f"{meta.get('clients')} clients on {meta.get('clients')} stacks, lock+write+unlock of a {meta.get('state_bytes')}-byte state (3 audited transactions per cycle)")
    print(f"load average at start {meta.get('load_start')}, at end {meta.get('load_end')}")
    print()
    header = f"{'config':<10} {'round':>5} {'cycles/s':>9} {'p50 ms':>8} {'p99 ms':>8} | CPU ms per cycle: {'airlock':>8} {'postgres':>9} {'loadgen':>8} {'other':>7} {'idle':>6}"
    print(header)
    rates = defaultdict(list)
    per_cycle = defaultdict(lambda: defaultdict(list))
    order = {"one": 0, "two": 1, "one_pinned": 2, "two_pinned": 3}
    for (config, rnd), v in sorted(runs.items(), key=lambda kv: (int(kv[0][1][1:]), order.get(kv[0][0], 9))):
        cycles = float(v.get("cycles", 0))
        if cycles == 0:
            print(f"{config:<10} {rnd[1:]:>5}   failed (see the log)")
            continue
        rate = float(v["cycles_per_s"])
        rates[config].append(rate)
        airlock = float(v["cpu_server_a_s"]) + float(v["cpu_server_b_s"])
        pg = float(v["cpu_postgres_s"])
        lg = float(v["cpu_loadgen_s"])
        busy = float(v["cpu_machine_busy_s"])
        idle = float(v["cpu_machine_idle_s"])
        other = max(busy - airlock - pg - lg, 0.0)
        row = {"airlock": airlock, "postgres": pg, "loadgen": lg, "other": other, "idle": idle}
        for k, x in row.items():
            per_cycle[config][k].append(1000 * x / cycles)
        print(f"{config:<10} {rnd[1:]:>5} {rate:>9.1f} {float(v['p50_ms']):>8.2f} {float(v['p99_ms']):>8.2f} |                   "
              + " ".join(f"{1000 * row[k] / cycles:>{w}.2f}" for k, w in [("airlock", 8), ("postgres", 9), ("loadgen", 8), ("other", 7), ("idle", 6)]))
    print()
    med = {c: statistics.median(r) for c, r in rates.items()}
    for c in ("one", "two", "one_pinned", "two_pinned"):
        if c in med:
            pc = {k: statistics.median(x) for k, x in per_cycle[c].items()}
            print(f"{c}: median {med[c]:.1f} cycles/s ({3 * med[c]:.0f} audited transactions/s); CPU ms per cycle: "
                  f"airlock {pc['airlock']:.2f}, postgres {pc['postgres']:.2f}, loadgen {pc['loadgen']:.2f}, other processes {pc['other']:.2f}, idle {pc['idle']:.2f}")
    for one, two, what in [("one", "two", "each replica free to use every CPU"),
                           ("one_pinned", "two_pinned", "each replica on one CPU of its own")]:
        if one in med and two in med:
            print(f"ratio two/one replicas, {what}: {med[two] / med[one]:.2f} (target >= 1.6)")
    print(f"audit --verify after the run: {meta.get('audit_verify')}")


if __name__ == "__main__":
    main(sys.argv[1])
