//! The pure readers never panic on input (ARCHITECTURE.md): every fuzz seed under `fuzz/corpus/`
//! and a fixed, reproducible set of mutations of it (truncations, bit flips, byte insertions and
//! deletions, spliced seeds) go through each reader, which must return a value or an error.
//! This is a bounded smoke run inside the test suite; `scripts/fuzz-smoke.sh` runs libFuzzer.

use std::path::{Path, PathBuf};

use airlock_core::lockinfo::LockInfo;
use airlock_core::state::{ParsedState, StateSummary};
use airlock_policy::analysis::Analyzer;
use airlock_policy::config::{self, Config};
use airlock_policy::plan;
use airlock_policy::planfile::PlanFile;

/// Mutations tried per seed (each reader runs on every one).
const MUTATIONS: usize = 3000;

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let out: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    assert!(!out.is_empty(), "no seeds in {}", dir.display());
    out
}

/// A small deterministic generator (xorshift), so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn mutate(seed: &[u8], other: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(b.len() + 1);
        match rng.below(6) {
            0 => b.truncate(at),
            1 if at < b.len() => b[at] ^= 1 << rng.below(8),
            2 => b.insert(at, b"{}[]\",:\\0\xff\xc3"[rng.below(11)]),
            3 if at < b.len() => {
                b.remove(at);
            }
            4 => {
                let from = rng.below(other.len() + 1);
                let take = rng.below(64).min(other.len() - from);
                b.splice(at..at, other[from..from + take].iter().copied());
            }
            _ => {
                // Repeat a slice: duplicate keys, deeper nesting, longer varints.
                let end = (at + rng.below(32)).min(b.len());
                let chunk = b[at..end].to_vec();
                b.splice(at..at, chunk);
            }
        }
    }
    b
}

fn each_mutation(target: &str, mut check: impl FnMut(&[u8])) {
    let seeds = seeds(target);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for (i, seed) in seeds.iter().enumerate() {
        check(seed);
        let other = &seeds[(i + 1) % seeds.len()];
        for _ in 0..MUTATIONS {
            check(&mutate(seed, other, &mut rng));
        }
    }
}

#[test]
fn state_reader() {
    // Each body is also read reusing the last state read before it (a seed or a mutation of
    // one, so most resource elements are shared): the result is the one of reading it alone.
    let mut prev: Option<ParsedState> = None;
    let mut reused = 0;
    each_mutation("state_reader", |b| {
        let alone = StateSummary::parse(b);
        let with = ParsedState::parse(b.to_vec(), prev.as_ref());
        match (&alone, &with) {
            (Ok(a), Ok(w)) => assert_eq!(a, w.summary().as_ref(), "{}", String::from_utf8_lossy(b)),
            (Err(a), Err(w)) => assert_eq!(a, w, "{}", String::from_utf8_lossy(b)),
            _ => panic!(
                "alone {alone:?}, reusing {with:?}: {}",
                String::from_utf8_lossy(b)
            ),
        }
        if let Ok(s) = alone {
            assert!(
                s.removed_in(&s).is_empty(),
                "a state loses nothing against itself"
            );
        }
        if let Ok(w) = with {
            reused += w.reused_elements();
            prev = Some(w);
        }
    });
    assert!(reused > 100, "reuse was exercised: {reused} elements");
}

#[test]
fn lock_info_reader() {
    each_mutation("lockinfo_reader", |b| {
        let _ = LockInfo::parse(b);
    });
}

#[test]
fn plan_reader_and_rules() {
    let config = Config::default();
    each_mutation("plan_reader", |b| {
        let mut analyzer = Analyzer::new(&config, None);
        if let Ok(info) = plan::read_plan(b, |rc| {
            analyzer.change(&rc);
        }) {
            let _ = analyzer.finish(info);
        }
    });
}

/// The drift reader (`airlock drift`, and the server on every report) on the plan seeds and
/// their mutations: a report or an error, never a panic.
#[test]
fn drift_reader() {
    each_mutation("plan_reader", |b| {
        if let Ok(r) = airlock_policy::drift::read(b) {
            assert!(r.instances.len() <= airlock_policy::drift::MAX_INSTANCES);
        }
    });
}

#[test]
fn binary_plan_reader() {
    each_mutation("planfile_reader", |b| {
        if let Ok(p) = PlanFile::parse(b) {
            let _ = p.matches_json(&p.changes, &p.outputs);
        }
    });
}

#[test]
fn config_reader() {
    each_mutation("config_parser", |b| {
        let _ = config::parse(&String::from_utf8_lossy(b), "airlock.hcl");
    });
}
