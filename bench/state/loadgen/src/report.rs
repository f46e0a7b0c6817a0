//! Turns the run's `key value` results file into the printed table, with ratios and targets
//! (DESIGN.md, Performance targets). Missing figures print as `-`, so a partial run still
//! reports what it measured.

use std::collections::BTreeMap;

/// Server configurations of the latency and read runs, as (key, column title).
/// `sqlite1before` is the `AIRLOCK_BEFORE_BIN` run of `run.sh --write`; a configuration
/// without figures gets no column.
const CONFIGS: &[(&str, &str)] = &[
    ("sqlite1before", "SQLite before"),
    ("sqlite1", "SQLite x1"),
    ("pg1", "PostgreSQL x1"),
    ("pg2", "PostgreSQL x2"),
];

struct Results(BTreeMap<String, String>);

impl Results {
    fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    fn num(&self, k: &str) -> Option<f64> {
        self.get(k).and_then(|v| v.parse().ok())
    }

    fn text(&self, k: &str) -> String {
        self.get(k).unwrap_or("-").to_owned()
    }

    /// Median of a comma-separated list of seconds.
    fn median(&self, k: &str) -> Option<f64> {
        let mut v: Vec<f64> = self
            .get(k)?
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        Some(if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        })
    }
}

fn f(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{x:.digits$}"))
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "MET",
        Some(false) => "MISSED",
        None => "not measured",
    }
}

/// Prints the report for the results file at `path`.
pub fn run(path: &str) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"))?;
    let mut map = BTreeMap::new();
    for line in text.lines() {
        if let Some((k, v)) = line.split_once(' ') {
            map.insert(k.trim().to_owned(), v.trim().to_owned());
        }
    }
    let r = Results(map);
    let configs: Vec<(&str, &str)> = CONFIGS
        .iter()
        .copied()
        .filter(|(c, _)| {
            r.0.keys().any(|k| {
                k.starts_with(&format!("lat.{c}.")) || k.starts_with(&format!("reads.{c}."))
            })
        })
        .collect();
    let configs = &configs;
    let mut out = String::new();
    let mut p = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };

    p(format!(
        "airlock state-server benchmark ({} mode) {} git {}",
        r.text("meta.mode"),
        r.text("meta.date"),
        r.text("meta.git")
    ));
    p(format!(
        "machine: {} CPUs ({}); load average at start {}, at end {}",
        r.text("meta.cpus"),
        r.text("meta.cpu"),
        r.text("meta.load_start"),
        r.text("meta.load_end")
    ));
    p(format!(
        "terraform {}, PostgreSQL {}; load generator and servers share the machine",
        r.text("meta.terraform"),
        r.text("meta.postgres")
    ));
    p(format!(
        "disk: 4 KiB append + fdatasync p50 {} ms, p99 {} ms (each commit waits for at least one)",
        f(r.num("meta.fsync_p50_ms"), 2),
        f(r.num("meta.fsync_p99_ms"), 2)
    ));
    p(String::new());

    // (a)
    p(format!(
        "(a) terraform apply, 200 terraform_data, wall seconds, median of {} runs",
        r.text("meta.reps")
    ));
    p(format!(
        "    {:<28}{:>10}{:>10}{:>10}{:>13}{:>15}",
        "", "airlock", "pg", "local", "airlock/pg", "airlock/local"
    ));
    let mut change_ratio = None;
    for (phase, title) in [
        ("create", "create 200 (fresh apply)"),
        ("change", "change 200 (second apply)"),
    ] {
        let a = r.median(&format!("tf.airlock.{phase}"));
        let pg = r.median(&format!("tf.pg.{phase}"));
        let local = r.median(&format!("tf.local.{phase}"));
        let ratio = |x: Option<f64>, y: Option<f64>| match (x, y) {
            (Some(x), Some(y)) if y > 0.0 => Some(x / y),
            _ => None,
        };
        let (rp, rl) = (ratio(a, pg), ratio(a, local));
        if phase == "change" {
            change_ratio = rp;
        }
        p(format!(
            "    {:<28}{:>10}{:>10}{:>10}{:>12}x{:>14}x",
            title,
            f(a, 2),
            f(pg, 2),
            f(local, 2),
            f(rp, 2),
            f(rl, 2)
        ));
    }
    for backend in ["airlock", "pg", "local"] {
        p(format!(
            "    runs {backend:<8} create [{}]  change [{}]",
            r.text(&format!("tf.{backend}.create")),
            r.text(&format!("tf.{backend}.change"))
        ));
    }
    p(format!(
        "    target: changing 200 resources <= 1.0x pg -> {}",
        verdict(change_ratio.map(|x| x <= 1.0))
    ));
    p(String::new());

    // (b) + (d)
    p("(b)+(d) lock+write+unlock of a 1 MB state (ms; each client its own stack; x2 = two replicas, requests round-robin)".into());
    let mut head = format!("    {:<34}", "");
    for (_, title) in configs {
        head.push_str(&format!("{title:>16}"));
    }
    p(head);
    let row = |label: &str, key: &dyn Fn(&str) -> String, digits: usize| {
        let mut s = format!("    {label:<34}");
        for (c, _) in configs {
            s.push_str(&format!("{:>16}", f(r.num(&key(c)), digits)));
        }
        s
    };
    let pair_row = |label: &str, clients: u32| {
        let mut s = format!("    {label:<34}");
        for (c, _) in configs {
            let v = format!(
                "{} / {}",
                f(r.num(&format!("lat.{c}.c{clients}.p50_ms")), 1),
                f(r.num(&format!("lat.{c}.c{clients}.p99_ms")), 1)
            );
            s.push_str(&format!("{v:>16}"));
        }
        s
    };
    p(pair_row("1 client    p50 / p99", 1));
    p(pair_row("8 clients   p50 / p99", 8));
    p(row(
        "8 clients   cycles/s",
        &|c| format!("lat.{c}.c8.cycles_per_s"),
        0,
    ));
    p(row(
        "1 client    server CPU ms / cycle",
        &|c| format!("lat.{c}.c1.server_cpu_ms_per_cycle"),
        2,
    ));
    p(row(
        "8 clients   server CPU ms / cycle",
        &|c| format!("lat.{c}.c8.server_cpu_ms_per_cycle"),
        2,
    ));
    p(row(
        "8 clients   loadgen CPU ms / cycle",
        &|c| format!("lat.{c}.c8.loadgen_cpu_ms_per_cycle"),
        2,
    ));
    p(row(
        "1 client    page faults / cycle",
        &|c| format!("lat.{c}.c1.server_minflt_per_cycle"),
        0,
    ));
    for op in ["lock", "write", "unlock"] {
        let mut s = format!("    {:<34}", format!("8 clients   {op} p50 / p99"));
        for (c, _) in configs {
            let v = format!(
                "{} / {}",
                f(r.num(&format!("lat.{c}.c8.{op}_p50_ms")), 1),
                f(r.num(&format!("lat.{c}.c8.{op}_p99_ms")), 1)
            );
            s.push_str(&format!("{v:>16}"));
        }
        p(s);
    }
    p(row(
        "32 clients  reads/s of 100 KB",
        &|c| format!("reads.{c}.reads_per_s"),
        0,
    ));
    let mut s = format!("    {:<34}", "32 clients  read p50 / p99");
    for (c, _) in configs {
        let v = format!(
            "{} / {}",
            f(r.num(&format!("reads.{c}.p50_ms")), 2),
            f(r.num(&format!("reads.{c}.p99_ms")), 2)
        );
        s.push_str(&format!("{v:>16}"));
    }
    p(s);
    let p99 = r.num("lat.sqlite1.c8.p99_ms");
    p(format!(
        "    target: p99 <= 10 ms (SQLite, 8 clients): {} ms -> {}",
        f(p99, 1),
        verdict(p99.map(|x| x <= 10.0))
    ));
    // Issue 17 §1.
    let cpu = r.num("lat.sqlite1.c1.server_cpu_ms_per_cycle");
    p(format!(
        "    target: server CPU <= 4 ms per 1 MB cycle (SQLite, 1 client): {} ms -> {}",
        f(cpu, 2),
        verdict(cpu.map(|x| x <= 4.0))
    ));
    let p99_1 = r.num("lat.sqlite1.c1.p99_ms");
    p(format!(
        "    target: p99 <= 8 ms (SQLite, 1 client): {} ms -> {}",
        f(p99_1, 1),
        verdict(p99_1.map(|x| x <= 8.0))
    ));
    p(format!(
        "    target: p99 <= 25 ms (SQLite, 8 clients, issue 17): {} ms -> {}",
        f(p99, 1),
        verdict(p99.map(|x| x <= 25.0))
    ));
    // What the machine allows: 8 closed-loop clients each wait for the others' cycles, so the
    // mean cycle is 8 / (cycles per second), and the cores bound cycles per second by the CPU a
    // cycle takes on them (server and load generator, which share them here).
    if let (Some(s), Some(l), Some(cpus)) = (
        r.num("lat.sqlite1.c8.server_cpu_ms_per_cycle"),
        r.num("lat.sqlite1.c8.loadgen_cpu_ms_per_cycle"),
        r.num("meta.cpus"),
    ) {
        p(format!(
            "    bound: 8 clients' mean cycle >= 8 x ({s:.2} server + {l:.2} load generator) ms CPU / {cpus:.0} CPUs = {:.1} ms (p99 is above the mean)",
            8.0 * (s + l) / cpus
        ));
    }
    let rps = r.num("reads.sqlite1.reads_per_s");
    p(format!(
        "    target: >= 10,000 reads/s on 2 cores (SQLite): {} -> {}",
        f(rps, 0),
        verdict(rps.map(|x| x >= 10_000.0))
    ));
    p(String::new());

    // (c)
    let versions = r.num("hist.versions");
    let raw = r.num("hist.raw_bytes");
    let stored = r.num("hist.stored_bytes");
    let share = match (stored, raw) {
        (Some(s), Some(r)) if r > 0.0 => Some(100.0 * s / r),
        _ => None,
    };
    p(format!(
        "(c) history: {} versions of a {} MB state ({} instances), one instance changed per version",
        f(versions, 0),
        f(r.num("hist.state_bytes").map(|b| b / 1e6), 1),
        r.text("hist.instances")
    ));
    p(format!(
        "    raw {} MB, stored {} MB = {} % of raw (StoreStats::stored_state_bytes on the SQLite file; versions written over HTTP)",
        f(raw.map(|b| b / 1e6), 1),
        f(stored.map(|b| b / 1e6), 2),
        f(share, 2)
    ));
    let file = r.num("hist.db_file_bytes");
    p(format!(
        "    SQLite files on disk {} MB = {} % of raw; write p50 / p99 {} / {} ms; {} s in all",
        f(file.map(|b| b / 1e6), 1),
        f(
            match (file, raw) {
                (Some(s), Some(r)) if r > 0.0 => Some(100.0 * s / r),
                _ => None,
            },
            2
        ),
        f(r.num("hist.write_p50_ms"), 1),
        f(r.num("hist.write_p99_ms"), 1),
        r.text("hist.secs")
    ));
    p(format!(
        "    target: <= 5 % of raw bytes -> {}",
        verdict(share.map(|x| x <= 5.0))
    ));
    print!("{out}");
    Ok(())
}
