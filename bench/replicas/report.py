#!/usr/bin/env python3
"""Turns bench/replicas results (`key value` lines) into the table: throughput of one and of two
replicas (median over rounds), their ratio, CPU per cycle by party and SQL statements per cycle,
for each variant (`after`, and `before` when run with AIRLOCK_BEFORE_BIN), then before -> after."""

import statistics
import sys
from collections import defaultdict

CONFIGS = ("one", "two", "one_pinned", "two_pinned")
PARTIES = [("airlock", 8), ("postgres", 9), ("loadgen", 8), ("other", 7), ("idle", 6)]


def main(path):
    meta, runs = {}, defaultdict(dict)
    with open(path) as f:
        for line in f:
            key, _, value = line.rstrip("\n").partition(" ")
            if key.startswith("meta."):
                meta[key[5:]] = value
                continue
            variant, config, rnd, name = key.split(".", 3)
            runs[(variant, config, rnd)][name] = value
    print(f"replica scaling, PostgreSQL {meta.get('postgres')}, {meta.get('cpus')} CPUs, rev {meta.get('git')}, {meta.get('date')}")
    print(f"{meta.get('clients')} clients on {meta.get('clients')} stacks, lock+write+unlock of a {meta.get('state_bytes')}-byte state (3 audited transactions per cycle)")
    print(f"load average at start {meta.get('load_start')}, at end {meta.get('load_end')}")
    variants = [v for v in ("before", "after") if any(k[0] == v for k in runs)]
    summary = {}
    for v in variants:
        summary[v] = report(v, {k[1:]: x for k, x in runs.items() if k[0] == v}, meta)
    if len(variants) == 2:
        b, a = summary["before"], summary["after"]
        print()
        print(f"{'before -> after':<34} {'before':>9} {'after':>9} {'after/before':>13}")
        for c in CONFIGS:
            if c in b["rate"] and c in a["rate"]:
                print(f"{c + ' cycles/s':<34} {b['rate'][c]:>9.1f} {a['rate'][c]:>9.1f} {a['rate'][c] / b['rate'][c]:>13.2f}")
        for name in ("free", "pinned"):
            if name in b["ratio"] and name in a["ratio"]:
                print(f"{'ratio two/one, ' + name:<34} {b['ratio'][name]:>9.2f} {a['ratio'][name]:>9.2f}")
        for k in ("airlock", "postgres", "loadgen"):
            if "one" in b["cpu"] and "one" in a["cpu"]:
                x, y = b["cpu"]["one"][k], a["cpu"]["one"][k]
                print(f"{'CPU ms per cycle (one), ' + k:<34} {x:>9.2f} {y:>9.2f} {y / x:>13.2f}")
        for k in ("statements_per_cycle", "commits_per_cycle"):
            x, y = meta.get(f"{k}.before"), meta.get(f"{k}.after")
            if x and y:
                print(f"{k.replace('_', ' '):<34} {float(x):>9.1f} {float(y):>9.1f} {float(y) / float(x):>13.2f}")


def report(variant, runs, meta):
    print()
    print(f"== {variant} ==")
    header = f"{'config':<10} {'round':>5} {'cycles/s':>9} {'p50 ms':>8} {'p99 ms':>8} | CPU ms per cycle: " + " ".join(f"{k:>{w}}" for k, w in PARTIES)
    print(header)
    rates = defaultdict(list)
    per_cycle = defaultdict(lambda: defaultdict(list))
    order = {c: i for i, c in enumerate(CONFIGS)}
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
              + " ".join(f"{1000 * row[k] / cycles:>{w}.2f}" for k, w in PARTIES))
    print()
    med = {c: statistics.median(r) for c, r in rates.items()}
    cpu = {}
    for c in CONFIGS:
        if c in med:
            pc = {k: statistics.median(x) for k, x in per_cycle[c].items()}
            cpu[c] = pc
            print(f"{c}: median {med[c]:.1f} cycles/s ({3 * med[c]:.0f} audited transactions/s); CPU ms per cycle: "
                  f"airlock {pc['airlock']:.2f}, postgres {pc['postgres']:.2f}, loadgen {pc['loadgen']:.2f}, other processes {pc['other']:.2f}, idle {pc['idle']:.2f}")
    ratio = {}
    for one, two, name, what in [("one", "two", "free", "each replica free to use every CPU"),
                                 ("one_pinned", "two_pinned", "pinned", "each replica on one CPU of its own")]:
        if one in med and two in med:
            ratio[name] = med[two] / med[one]
            print(f"ratio two/one replicas, {what}: {ratio[name]:.2f} (target >= 1.6)")
    if f"statements_per_cycle.{variant}" in meta:
        print(f"SQL statements per cycle (1 client, BEGIN and COMMIT included): {meta[f'statements_per_cycle.{variant}']}, "
              f"commits {meta.get(f'commits_per_cycle.{variant}')}")
    print(f"audit --verify after the run: {meta.get(f'audit_verify.{variant}')}")
    return {"rate": med, "ratio": ratio, "cpu": cpu}


if __name__ == "__main__":
    main(sys.argv[1])
