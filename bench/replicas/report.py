#!/usr/bin/env python3
"""Turns bench/replicas results (`key value` lines) into the table: throughput of one and of two
replicas (median over rounds), their ratio, CPU per cycle by party and SQL statements per cycle,
for each variant (`after`, and `before` when run with AIRLOCK_BEFORE_BIN), then before -> after."""

import statistics
import sys
from collections import defaultdict

CONFIGS = ("one", "two", "one_budget", "two_budget", "one_pinned", "two_pinned")
RATIOS = [("one_budget", "two_budget", "budget", "each replica held to its CPU budget (the scaling figure)"),
          ("one", "two", "free", "each replica free to use every CPU (the machine figure)"),
          ("one_pinned", "two_pinned", "pinned", "each replica on one CPU of its own")]
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
    if "budget_cpus" in meta:
        print(f"budgeted configurations: each replica's cgroup has a CFS quota of {meta['budget_cpus']} CPU; PostgreSQL and the load generator none")
    else:
        print("no budgeted configurations (no writable cgroup v1 cpu controller); the pinned rows stand in for them")
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
        for _, _, name, _ in RATIOS:
            if name in b["ratio"] and name in a["ratio"]:
                print(f"{'ratio two/one, ' + name:<34} {b['ratio'][name]:>9.2f} {a['ratio'][name]:>9.2f}")
        for c in ("one", "one_budget"):
            for k in ("airlock", "postgres", "loadgen"):
                if c in b["cpu"] and c in a["cpu"]:
                    x, y = b["cpu"][c][k], a["cpu"][c][k]
                    print(f"{'CPU ms per cycle (' + c + '), ' + k:<34} {x:>9.2f} {y:>9.2f} {y / x:>13.2f}")
    if not variants:
        print()
        print(f"{'before -> after (no timed rounds)':<34} {'before':>9} {'after':>9} {'after/before':>13}")
    if len(variants) == 2 or not variants:
        for key, what in (("cpu_ms_per_cycle_1client", "CPU ms per cycle (1 client)"), ("instructions_per_cycle", "M instructions per cycle")):
            for party in ("airlock", "postgres"):
                x, y = meta.get(f"{key}.{party}.before"), meta.get(f"{key}.{party}.after")
                if x and y and float(x) > 0:
                    print(f"{what + ', ' + party:<34} {float(x):>9.3f} {float(y):>9.3f} {float(y) / float(x):>13.2f}")
        for k in ("statements_per_cycle", "round_trips_per_cycle", "commits_per_cycle"):
            x, y = meta.get(f"{k}.before"), meta.get(f"{k}.after")
            if x and y:
                print(f"{k.replace('_', ' '):<34} {float(x):>9.1f} {float(y):>9.1f} {float(y) / float(x):>13.2f}")


def report(variant, runs, meta):
    print()
    print(f"== {variant} ==")
    header = (f"{'config':<10} {'round':>5} {'load':>5} {'cycles/s':>9} {'p50 ms':>8} {'p99 ms':>8} | replica CPUs a b | CPU ms per cycle: "
              + " ".join(f"{k:>{w}}" for k, w in PARTIES))
    print(header)
    rates = defaultdict(list)
    used = defaultdict(list)
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
        # CPUs each replica used on average over the run (against its budget, when it had one).
        secs = cycles / rate
        cpus = (float(v["cpu_server_a_s"]) / secs, float(v["cpu_server_b_s"]) / secs)
        used[config].append(cpus + tuple(int(v.get(k, "0 0").split()[1]) for k in ("throttled_a", "throttled_b")))
        print(f"{config:<10} {rnd[1:]:>5} {float(v.get('load', 'nan')):>5.1f} {rate:>9.1f} {float(v['p50_ms']):>8.2f} {float(v['p99_ms']):>8.2f} | {cpus[0]:>7.2f} {cpus[1]:>4.2f}"
              + " " * 19 + " ".join(f"{1000 * row[k] / cycles:>{w}.2f}" for k, w in PARTIES))
    print()
    med = {c: statistics.median(r) for c, r in rates.items()}
    cpu = {}
    for c in CONFIGS:
        if c in med:
            pc = {k: statistics.median(x) for k, x in per_cycle[c].items()}
            cpu[c] = pc
            print(f"{c}: median {med[c]:.1f} cycles/s ({3 * med[c]:.0f} audited transactions/s); CPU ms per cycle: "
                  f"airlock {pc['airlock']:.2f}, postgres {pc['postgres']:.2f}, loadgen {pc['loadgen']:.2f}, other processes {pc['other']:.2f}, idle {pc['idle']:.2f}")
    for c in ("one_budget", "two_budget"):
        if c in used and "budget_cpus" in meta:
            a = statistics.median(u[0] for u in used[c])
            b = statistics.median(u[1] for u in used[c])
            ta = statistics.median(u[2] for u in used[c])
            tb = statistics.median(u[3] for u in used[c])
            print(f"{c}: CPUs used by replica a {a:.3f}, b {b:.3f} of a budget of {meta['budget_cpus']} each "
                  f"(time throttled by the quota, summed over CPUs, medians: a {ta} ms, b {tb} ms per run)")
    ratio = {}
    for one, two, name, what in RATIOS:
        if one in med and two in med:
            ratio[name] = med[two] / med[one]
            print(f"ratio two/one replicas, {what}: {ratio[name]:.2f} (target >= 1.6)")
    if f"statements_per_cycle.{variant}" in meta:
        print(f"SQL statements per cycle (1 client, BEGIN and COMMIT included): {meta[f'statements_per_cycle.{variant}']}, "
              f"commits {meta.get(f'commits_per_cycle.{variant}')}, round trips (sends to PostgreSQL) {meta.get(f'round_trips_per_cycle.{variant}', 'not counted: no strace')}")
    cpu1 = [meta.get(f"cpu_ms_per_cycle_1client.{p}.{variant}") for p in ("airlock", "postgres")]
    if all(cpu1):
        print(f"CPU per cycle, 1 client (perf stat task-clock): airlock {cpu1[0]} ms, PostgreSQL {cpu1[1]} ms")
    ins = [meta.get(f"instructions_per_cycle.{p}.{variant}") for p in ("airlock", "postgres")]
    if all(ins):
        print(f"instructions per cycle (1 client, perf stat, user+kernel): airlock {ins[0]} M, PostgreSQL {ins[1]} M")
    print(f"audit --verify after the run: {meta.get(f'audit_verify.{variant}')}")
    return {"rate": med, "ratio": ratio, "cpu": cpu}


if __name__ == "__main__":
    main(sys.argv[1])
