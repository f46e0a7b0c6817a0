//! Load generator for airlock's state-server benchmark; `bench/state/run.sh` drives it.
//!
//! Subcommands print `key value` lines (prefixed with `--tag`) that the script collects into
//! one results file; `report` turns that file into the table. Every loop is bounded by a count
//! and a deadline, and only loopback `http://` targets are accepted.

mod floor;
mod http;
mod report;
mod state;

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use base64::Engine;
use md5::{Digest, Md5};

use crate::http::{Conn, Target};
use crate::state::{lock_info, StateDoc};

pub(crate) type Res<T> = Result<T, String>;

const USAGE: &str =
    "usage: loadgen <create-stacks|latency|reads|history|stored-bytes|report> [--flag value]...
  create-stacks --url U --token T --stacks a,b,c
  latency  --urls U1[,U2] --token T --stack-prefix bench/lat --clients N --state-bytes B
           [--warmup 5] [--max-iters 2000] [--max-secs 15] [--server-pids P1[,P2]] [--tag T]
           [--cycles-out FILE]   (one line per timed cycle: write sent at (unix µs), write µs, cycle µs)
  reads    --urls U1[,U2] --token T --stack S --state-bytes B --clients N [--secs 10] [--tag T]
  history  --url U --token T --stack S --state-bytes B --versions N [--max-secs 600] [--tag T]
  stored-bytes --db PATH [--tag T]
  large    --url U --token T --stack S --state-bytes B --server-pid P [--tag T]
           (issue 17 §4: write, read, diff and page a big state; server CPU and peak RSS per step)
  fsync    --dir D [--count 200] [--tag T]   (append 4 KiB + fdatasync, as a WAL commit does)
  floor-server --listen 127.0.0.1:0 --dir D   (the least a state server does per cycle: see floor.rs)
  report   RESULTS_FILE";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(64);
    };
    let result = match cmd.as_str() {
        "report" => match rest.first() {
            Some(path) => report::run(path),
            None => Err("report needs the results file".into()),
        },
        _ => Flags::parse(rest).and_then(|f| match cmd.as_str() {
            "create-stacks" => create_stacks(&f),
            "latency" => latency(&f),
            "reads" => reads(&f),
            "history" => history(&f),
            "stored-bytes" => stored_bytes(&f),
            "large" => large(&f),
            "fsync" => fsync_probe(&f),
            "floor-server" => floor::serve(&f),
            other => Err(format!("unknown subcommand {other}\n{USAGE}")),
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen {cmd}: {e}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) struct Flags(HashMap<String, String>);

impl Flags {
    fn parse(args: &[String]) -> Res<Flags> {
        let mut map = HashMap::new();
        let mut it = args.iter();
        while let Some(k) = it.next() {
            let key = k
                .strip_prefix("--")
                .ok_or_else(|| format!("unexpected argument {k}\n{USAGE}"))?;
            let v = it.next().ok_or_else(|| format!("--{key} needs a value"))?;
            map.insert(key.to_owned(), v.clone());
        }
        Ok(Flags(map))
    }

    pub(crate) fn str(&self, k: &str) -> Res<&str> {
        self.0
            .get(k)
            .map(String::as_str)
            .ok_or_else(|| format!("--{k} is required\n{USAGE}"))
    }

    fn num(&self, k: &str, default: Option<u64>) -> Res<u64> {
        match (self.0.get(k), default) {
            (Some(v), _) => v.parse().map_err(|_| format!("--{k} {v}: not a number")),
            (None, Some(d)) => Ok(d),
            (None, None) => Err(format!("--{k} is required")),
        }
    }

    fn tag(&self) -> String {
        self.0.get("tag").cloned().unwrap_or_else(|| "run".into())
    }

    fn targets(&self) -> Res<Vec<Target>> {
        let list = self.0.get("urls").or_else(|| self.0.get("url"));
        let list = list.ok_or("--urls is required")?;
        list.split(',').map(Target::parse).collect()
    }
}

fn emit(tag: &str, key: &str, value: impl std::fmt::Display) {
    println!("{tag}.{key} {value}");
}

fn content_md5(body: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Md5::digest(body))
}

fn create_stacks(f: &Flags) -> Res<()> {
    let target = f.targets()?.into_iter().next().ok_or("no URL")?;
    let mut conn = Conn::new(&target, f.str("token")?);
    let mut out = Vec::new();
    for name in f.str("stacks")?.split(',').filter(|s| !s.is_empty()) {
        let body = format!("{{\"name\":\"{name}\",\"production\":false}}");
        let status = conn
            .request(
                "POST",
                "/api/v1/stacks",
                &[("Content-Type", "application/json")],
                body.as_bytes(),
                &mut out,
            )
            .map_err(|e| format!("creating {name}: {e}"))?;
        if status != 201 && status != 409 {
            return Err(format!(
                "creating stack {name}: HTTP {status}: {}",
                String::from_utf8_lossy(&out)
            ));
        }
    }
    Ok(())
}

/// Nearest-rank percentile of sorted samples.
fn pct(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

/// One Terraform-like client of one stack: LOCK, POST?ID=, UNLOCK, with its own state.
struct Writer {
    conns: Vec<Conn>,
    next_conn: usize,
    path: String,
    doc: StateDoc,
    body: Vec<u8>,
    out: Vec<u8>,
    who: String,
    cycle: u64,
}

/// Times of one lock+write+unlock cycle.
struct Cycle {
    /// When the write was sent (wall clock, to match against a trace of the server).
    write_at: std::time::SystemTime,
    lock: Duration,
    write: Duration,
    unlock: Duration,
}

impl Writer {
    fn new(
        targets: &[Target],
        token: &str,
        stack: &str,
        bytes: usize,
        seed: u64,
        first: usize,
    ) -> Writer {
        let doc = StateDoc::generate(bytes, seed);
        Writer {
            conns: targets.iter().map(|t| Conn::new(t, token)).collect(),
            next_conn: first,
            path: format!("/state/{stack}"),
            doc,
            body: Vec::with_capacity(bytes + 64 * 1024),
            out: Vec::new(),
            who: format!("bench-{seed}@loadgen"),
            cycle: 0,
        }
    }

    /// Requests rotate over the replicas like a round-robin load balancer.
    fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Res<u16> {
        let n = self.conns.len();
        let conn = &mut self.conns[self.next_conn % n];
        self.next_conn = (self.next_conn + 1) % n;
        conn.request(method, path, headers, body, &mut self.out)
            .map_err(|e| format!("{method} {path}: {e}"))
    }

    fn expect(&self, what: &str, status: u16) -> Res<()> {
        if status == 200 {
            return Ok(());
        }
        Err(format!(
            "{what} {}: HTTP {status}: {}",
            self.path,
            String::from_utf8_lossy(&self.out[..self.out.len().min(400)])
        ))
    }

    /// Prepares the next version (untimed): serial + 1, one instance rewritten, rendered with
    /// its `Content-MD5` and lock ID.
    fn prepare(&mut self) -> Prepared {
        self.cycle += 1;
        if self.cycle > 1 {
            self.doc.serial += 1;
            let n = self.doc.instance_count() as u64;
            self.doc.change_instance(
                (self.cycle.wrapping_mul(7919) % n.max(1)) as usize,
                self.cycle,
            );
        }
        let mut body = std::mem::take(&mut self.body);
        self.doc.render(&mut body);
        Prepared {
            md5: content_md5(&body),
            lock_id: format!("{}-{:08}", &self.doc.lineage()[..23], self.cycle),
            body,
        }
    }

    /// Prepares and sends the next version.
    fn cycle(&mut self) -> Res<Cycle> {
        let p = self.prepare();
        let timed = self.send_cycle(&p);
        self.body = p.body;
        timed
    }

    /// LOCK, POST?ID=, UNLOCK of a prepared version, timed.
    fn send_cycle(&mut self, p: &Prepared) -> Res<Cycle> {
        let info = lock_info(&p.lock_id, &self.who);
        let write_path = format!("{}?ID={}", self.path, p.lock_id);
        let path = self.path.clone();
        let t0 = Instant::now();
        let s = self.send(
            "LOCK",
            &path,
            &[("Content-Type", "application/json")],
            info.as_bytes(),
        )?;
        self.expect("LOCK", s)?;
        let t1 = Instant::now();
        let write_at = std::time::SystemTime::now();
        let s = self.send(
            "POST",
            &write_path,
            &[
                ("Content-Type", "application/json"),
                ("Content-MD5", &p.md5),
            ],
            &p.body,
        )?;
        self.expect("POST", s)?;
        let t2 = Instant::now();
        let s = self.send(
            "UNLOCK",
            &path,
            &[("Content-Type", "application/json")],
            info.as_bytes(),
        )?;
        self.expect("UNLOCK", s)?;
        let t3 = Instant::now();
        Ok(Cycle {
            write_at,
            lock: t1 - t0,
            write: t2 - t1,
            unlock: t3 - t2,
        })
    }
}

/// A version ready to send: its body, `Content-MD5` and lock ID.
struct Prepared {
    body: Vec<u8>,
    md5: String,
    lock_id: String,
}

fn latency(f: &Flags) -> Res<()> {
    let targets = f.targets()?;
    let token = f.str("token")?.to_owned();
    let prefix = f.str("stack-prefix")?.to_owned();
    let clients = f.num("clients", None)?.clamp(1, 256) as usize;
    let bytes = f.num("state-bytes", None)? as usize;
    let warmup = f.num("warmup", Some(5))?;
    let max_iters = f.num("max-iters", Some(2000))?;
    let max_secs = f.num("max-secs", Some(15))?;
    // With --prepare-mib M, each client renders and hashes its timed versions before the timed
    // cycles start, within M MiB for all clients (the timed cycles are then as many as fit), so
    // that on a machine the load generator shares with the server its timed CPU is sending
    // only; without, each version is prepared just before its cycle (as Terraform does).
    let prepare_bytes = f.num("prepare-mib", Some(0))? as usize * (1 << 20);
    let tag = f.tag();
    let server_pids: Vec<u32> = match f.0.get("server-pids") {
        None => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|p| {
                p.parse()
                    .map_err(|_| format!("--server-pids {list}: not a pid list"))
            })
            .collect::<Res<_>>()?,
    };

    let barrier = Arc::new(Barrier::new(clients + 1));
    let mut handles = Vec::new();
    for c in 0..clients {
        let (targets, token, barrier) = (targets.clone(), token.clone(), Arc::clone(&barrier));
        let stack = format!("{prefix}-{c}");
        handles.push(std::thread::spawn(move || -> Res<Vec<Cycle>> {
            let mut w = Writer::new(&targets, &token, &stack, bytes, 1000 + c as u64, c);
            // Warm-up (untimed): first write sets the lineage, caches fill, connections open.
            let mut warm = Ok(());
            for _ in 0..warmup {
                if let Err(e) = w.cycle() {
                    warm = Err(e);
                    break;
                }
            }
            let prepared: Vec<Prepared> = if warm.is_ok() && prepare_bytes > 0 {
                let fit = prepare_bytes / clients / bytes.max(1);
                (0..fit.min(max_iters as usize))
                    .map(|_| w.prepare())
                    .collect()
            } else {
                Vec::new()
            };
            barrier.wait();
            warm?;
            let deadline = Instant::now() + Duration::from_secs(max_secs);
            let mut samples = Vec::with_capacity(max_iters as usize);
            if prepare_bytes > 0 {
                for p in &prepared {
                    if Instant::now() >= deadline {
                        break;
                    }
                    samples.push(w.send_cycle(p)?);
                }
                return Ok(samples);
            }
            for _ in 0..max_iters {
                if Instant::now() >= deadline {
                    break;
                }
                samples.push(w.cycle()?);
            }
            Ok(samples)
        }));
    }
    barrier.wait();
    let start = Instant::now();
    let (cpu_start, faults_start) = server_cpu_ticks(&server_pids)?;
    let (own_start, _) = server_cpu_ticks(&[std::process::id()])?;
    let mut all = Vec::new();
    let mut errors = Vec::new();
    for h in handles {
        match h.join() {
            Ok(Ok(s)) => all.extend(s),
            Ok(Err(e)) => errors.push(e),
            Err(_) => errors.push("a client thread panicked".into()),
        }
    }
    let elapsed = start.elapsed();
    let (cpu_end, faults_end) = server_cpu_ticks(&server_pids)?;
    let (own_end, _) = server_cpu_ticks(&[std::process::id()])?;
    if !errors.is_empty() {
        return Err(format!(
            "{} client(s) failed; first: {}",
            errors.len(),
            errors[0]
        ));
    }
    if !server_pids.is_empty() && !all.is_empty() {
        // Server CPU (user + system, all threads) over the timed cycles only.
        let ms = (cpu_end - cpu_start) as f64 * 1000.0 / clock_ticks_per_sec() as f64;
        emit(&tag, "server_cpu_ms", format!("{ms:.0}"));
        emit(
            &tag,
            "server_cpu_ms_per_cycle",
            format!("{:.2}", ms / all.len() as f64),
        );
        // Page faults cost kernel time (zeroing fresh pages): a sign of buffers given back to
        // the kernel and faulted in again on every request.
        // The load generator's own CPU (it hashes and sends every body too): on a machine it
        // shares with the server, both bound the cycles per second, and so the latency of
        // many clients (each waits for the others' cycles: Little's law).
        let own = (own_end - own_start) as f64 * 1000.0 / clock_ticks_per_sec() as f64;
        emit(
            &tag,
            "loadgen_cpu_ms_per_cycle",
            format!("{:.2}", own / all.len() as f64),
        );
        emit(
            &tag,
            "server_minflt_per_cycle",
            format!(
                "{:.0}",
                (faults_end - faults_start) as f64 / all.len() as f64
            ),
        );
    }
    let mut total: Vec<Duration> = all.iter().map(|c| c.lock + c.write + c.unlock).collect();
    let mut lock: Vec<Duration> = all.iter().map(|c| c.lock).collect();
    let mut write: Vec<Duration> = all.iter().map(|c| c.write).collect();
    let mut unlock: Vec<Duration> = all.iter().map(|c| c.unlock).collect();
    if let Some(path) = f.0.get("cycles-out") {
        let mut text = String::new();
        for c in &all {
            let at = c
                .write_at
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            text.push_str(&format!(
                "{} {} {}\n",
                at.as_micros(),
                c.write.as_micros(),
                (c.lock + c.write + c.unlock).as_micros()
            ));
        }
        std::fs::write(path, text).map_err(|e| format!("writing {path}: {e}"))?;
    }
    for v in [&mut total, &mut lock, &mut write, &mut unlock] {
        v.sort_unstable();
    }
    let mean = total.iter().sum::<Duration>() / (total.len().max(1) as u32);
    emit(&tag, "cycles", total.len());
    emit(&tag, "secs", format!("{:.2}", elapsed.as_secs_f64()));
    emit(
        &tag,
        "cycles_per_s",
        format!("{:.1}", total.len() as f64 / elapsed.as_secs_f64()),
    );
    emit(&tag, "p50_ms", ms(pct(&total, 0.50)));
    emit(&tag, "p99_ms", ms(pct(&total, 0.99)));
    emit(&tag, "max_ms", ms(pct(&total, 1.0)));
    emit(&tag, "mean_ms", ms(mean));
    for (name, v) in [("lock", &lock), ("write", &write), ("unlock", &unlock)] {
        emit(&tag, &format!("{name}_p50_ms"), ms(pct(v, 0.50)));
        emit(&tag, &format!("{name}_p99_ms"), ms(pct(v, 0.99)));
    }
    Ok(())
}

/// utime + stime of the processes (all their threads), in clock ticks, and their minor page
/// faults, from `/proc/PID/stat`.
fn server_cpu_ticks(pids: &[u32]) -> Res<(u64, u64)> {
    let (mut sum, mut faults) = (0, 0);
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let t = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
        match (t(11), t(12), t(7)) {
            (Some(u), Some(s), Some(minflt)) => {
                sum += u + s;
                faults += minflt;
            }
            _ => return Err(format!("/proc/{pid}/stat: unexpected format")),
        }
    }
    Ok((sum, faults))
}

/// `getconf CLK_TCK`; 100 on every Linux configuration in practice.
fn clock_ticks_per_sec() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

fn reads(f: &Flags) -> Res<()> {
    let targets = f.targets()?;
    let token = f.str("token")?.to_owned();
    let stack = f.str("stack")?.to_owned();
    let clients = f.num("clients", None)?.clamp(1, 256) as usize;
    let bytes = f.num("state-bytes", None)? as usize;
    let secs = f.num("secs", Some(10))?;
    let tag = f.tag();

    // Seed the stack with one version of the wanted size.
    let mut seed = Writer::new(&targets, &token, &stack, bytes, 7, 0);
    seed.cycle()?;
    let expected_len = seed.body.len();

    let warm = Duration::from_secs(1);
    let barrier = Arc::new(Barrier::new(clients + 1));
    let mut handles = Vec::new();
    for c in 0..clients {
        let (targets, token, barrier) = (targets.clone(), token.clone(), Arc::clone(&barrier));
        let path = format!("/state/{stack}");
        handles.push(std::thread::spawn(move || -> Res<(u64, Vec<Duration>)> {
            let mut conns: Vec<Conn> = targets.iter().map(|t| Conn::new(t, &token)).collect();
            let mut out = Vec::with_capacity(expected_len + 4096);
            barrier.wait();
            let start = Instant::now();
            let (count_from, end) = (start + warm, start + warm + Duration::from_secs(secs));
            let mut counted = 0u64;
            let mut samples = Vec::new();
            // Bounded in count as well as time: no machine reads 20 M states in a few seconds.
            for i in 0..20_000_000u64 {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let n = conns.len();
                let conn = &mut conns[(c + i as usize) % n];
                let status = conn
                    .request("GET", &path, &[], &[], &mut out)
                    .map_err(|e| format!("GET {path}: {e}"))?;
                if status != 200 || out.len() != expected_len {
                    return Err(format!("GET {path}: HTTP {status}, {} bytes", out.len()));
                }
                let t1 = Instant::now();
                if t0 >= count_from && t1 <= end {
                    counted += 1;
                    samples.push(t1 - t0);
                }
            }
            Ok((counted, samples))
        }));
    }
    barrier.wait();
    let mut count = 0;
    let mut samples = Vec::new();
    let mut errors = Vec::new();
    for h in handles {
        match h.join() {
            Ok(Ok((n, s))) => {
                count += n;
                samples.extend(s);
            }
            Ok(Err(e)) => errors.push(e),
            Err(_) => errors.push("a client thread panicked".into()),
        }
    }
    if !errors.is_empty() {
        return Err(format!(
            "{} client(s) failed; first: {}",
            errors.len(),
            errors[0]
        ));
    }
    samples.sort_unstable();
    emit(&tag, "reads", count);
    emit(&tag, "state_bytes", expected_len);
    emit(
        &tag,
        "reads_per_s",
        format!("{:.0}", count as f64 / secs as f64),
    );
    emit(&tag, "p50_ms", ms(pct(&samples, 0.50)));
    emit(&tag, "p99_ms", ms(pct(&samples, 0.99)));
    Ok(())
}

fn history(f: &Flags) -> Res<()> {
    let targets = f.targets()?;
    let token = f.str("token")?;
    let stack = f.str("stack")?;
    let bytes = f.num("state-bytes", None)? as usize;
    let versions = f.num("versions", None)?;
    let max_secs = f.num("max-secs", Some(600))?;
    let tag = f.tag();

    let mut w = Writer::new(&targets, token, stack, bytes, 42, 0);
    let deadline = Instant::now() + Duration::from_secs(max_secs);
    let start = Instant::now();
    let (mut raw, mut written) = (0u64, 0u64);
    let mut writes = Vec::new();
    for _ in 0..versions {
        if Instant::now() >= deadline {
            eprintln!(
                "loadgen history: stopped at the {max_secs}s deadline after {written} versions"
            );
            break;
        }
        let c = w.cycle()?;
        raw += w.body.len() as u64;
        written += 1;
        writes.push(c.write);
        if written % 100 == 0 {
            eprintln!(
                "loadgen history: {written}/{versions} versions, {:.0}s",
                start.elapsed().as_secs_f64()
            );
        }
    }
    writes.sort_unstable();
    emit(&tag, "versions", written);
    emit(&tag, "instances", w.doc.instance_count());
    emit(&tag, "state_bytes", w.body.len());
    emit(&tag, "raw_bytes", raw);
    emit(
        &tag,
        "secs",
        format!("{:.1}", start.elapsed().as_secs_f64()),
    );
    emit(&tag, "write_p50_ms", ms(pct(&writes, 0.50)));
    emit(&tag, "write_p99_ms", ms(pct(&writes, 0.99)));
    Ok(())
}

/// `VmRSS` and `VmHWM` (peak) of a process, in bytes.
fn rss(pid: u32) -> Res<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|k| k * 1024)
            .ok_or_else(|| format!("/proc/{pid}/status has no {key}"))
    };
    Ok((kb("VmRSS:")?, kb("VmHWM:")?))
}

/// Runs `step` and reports its wall time, the server's CPU and the server's peak RSS above
/// its RSS before the step (`/proc/PID/clear_refs` resets the peak; needs the same user).
fn measured<T>(tag: &str, name: &str, pid: u32, step: impl FnOnce() -> Res<T>) -> Res<T> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .map_err(|e| format!("resetting the peak RSS of {pid}: {e}"))?;
    let (before, _) = rss(pid)?;
    let (cpu0, _) = server_cpu_ticks(&[pid])?;
    let t = Instant::now();
    let out = step()?;
    let wall = t.elapsed();
    let cpu = (server_cpu_ticks(&[pid])?.0 - cpu0) as f64 * 1000.0 / clock_ticks_per_sec() as f64;
    let (_, peak) = rss(pid)?;
    emit(
        tag,
        &format!("{name}.wall_ms"),
        format!("{:.0}", wall.as_secs_f64() * 1000.0),
    );
    emit(tag, &format!("{name}.server_cpu_ms"), format!("{cpu:.0}"));
    emit(
        tag,
        &format!("{name}.peak_rss_delta_mb"),
        format!("{:.1}", peak.saturating_sub(before) as f64 / 1e6),
    );
    Ok(out)
}

fn large(f: &Flags) -> Res<()> {
    let targets = f.targets()?;
    let target = targets.first().ok_or("no URL")?.clone();
    let token = f.str("token")?;
    let stack = f.str("stack")?;
    let bytes = f.num("state-bytes", None)? as usize;
    let pid = f.num("server-pid", None)? as u32;
    let tag = f.tag();
    let mut w = Writer::new(&targets, token, stack, bytes, 7, 0);
    measured(&tag, "write1", pid, || w.cycle())?;
    emit(&tag, "state_bytes", w.body.len());
    emit(&tag, "instances", w.doc.instance_count());
    measured(&tag, "write2", pid, || w.cycle())?;
    let mut conn = Conn::new(&target, token);
    let mut out = Vec::new();
    let mut get = |path: &str, out: &mut Vec<u8>| -> Res<()> {
        let status = conn
            .request("GET", path, &[], &[], out)
            .map_err(|e| format!("GET {path}: {e}"))?;
        if status != 200 {
            return Err(format!(
                "GET {path}: HTTP {status}: {}",
                String::from_utf8_lossy(&out[..out.len().min(300)])
            ));
        }
        Ok(())
    };
    measured(&tag, "read", pid, || {
        get(&format!("/state/{stack}"), &mut out)
    })?;
    if out.len() != w.body.len() {
        return Err(format!("read {} bytes, wrote {}", out.len(), w.body.len()));
    }
    let api = format!("/api/v1/stacks/{}", stack.replace('/', "%2F"));
    measured(&tag, "diff", pid, || {
        get(&format!("{api}/diff?from=1&to=2"), &mut out)
    })?;
    emit(&tag, "diff.response_bytes", out.len());
    measured(&tag, "diff_attributes", pid, || {
        get(
            &format!("{api}/diff?from=1&to=2&detail=attributes"),
            &mut out,
        )
    })?;
    // `state show` paging: the first page, then a page at the end (the summary is cached
    // after the first).
    measured(&tag, "show_first_page", pid, || {
        get(&format!("{api}/versions/2?limit=100"), &mut out)
    })?;
    emit(&tag, "show_first_page.response_bytes", out.len());
    let last = w.doc.instance_count().saturating_sub(100);
    measured(&tag, "show_last_page", pid, || {
        get(
            &format!("{api}/versions/2?limit=100&offset={last}"),
            &mut out,
        )
    })?;
    Ok(())
}

fn stored_bytes(f: &Flags) -> Res<()> {
    let db = f.str("db")?;
    let store = airlock_store::SqliteStore::open(std::path::Path::new(db))
        .map_err(|e| format!("opening {db}: {e}"))?;
    let n = airlock_store::StoreStats::stored_state_bytes(&store)
        .map_err(|e| format!("stored_state_bytes: {e}"))?;
    emit(&f.tag(), "stored_bytes", n);
    Ok(())
}

/// Latency of durable 4 KiB appends in `--dir` (what a `synchronous=FULL` WAL commit or a
/// PostgreSQL commit waits for at least once), to read the latency figures against.
fn fsync_probe(f: &Flags) -> Res<()> {
    use std::io::Write;
    let dir = std::path::Path::new(f.str("dir")?);
    let count = f.num("count", Some(200))?.clamp(1, 10_000) as usize;
    let path = dir.join("fsync-probe.tmp");
    let mut file = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let block = [0x5au8; 4096];
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        if Instant::now() >= deadline {
            break;
        }
        let t0 = Instant::now();
        file.write_all(&block).map_err(|e| e.to_string())?;
        file.sync_data().map_err(|e| e.to_string())?;
        samples.push(t0.elapsed());
    }
    drop(file);
    let _ = std::fs::remove_file(&path);
    samples.sort_unstable();
    let tag = f.tag();
    emit(&tag, "fsync_p50_ms", ms(pct(&samples, 0.50)));
    emit(&tag, "fsync_p99_ms", ms(pct(&samples, 0.99)));
    Ok(())
}
