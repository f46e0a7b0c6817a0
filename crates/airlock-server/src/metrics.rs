//! Counters exposed at `/metrics` in the Prometheus text format.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Default)]
pub struct Metrics {
    state_reads: AtomicU64,
    state_writes: AtomicU64,
    state_write_refusals: AtomicU64,
    locks: AtomicU64,
    lock_conflicts: AtomicU64,
    denied: AtomicU64,
}

impl Metrics {
    pub fn read(&self) {
        self.state_reads.fetch_add(1, Relaxed);
    }
    pub fn write(&self) {
        self.state_writes.fetch_add(1, Relaxed);
    }
    pub fn write_refused(&self) {
        self.state_write_refusals.fetch_add(1, Relaxed);
    }
    pub fn lock(&self) {
        self.locks.fetch_add(1, Relaxed);
    }
    pub fn lock_conflict(&self) {
        self.lock_conflicts.fetch_add(1, Relaxed);
    }
    pub fn denied(&self) {
        self.denied.fetch_add(1, Relaxed);
    }

    pub fn render(&self) -> String {
        let rows = [
            (
                "airlock_state_reads_total",
                "State reads served.",
                &self.state_reads,
            ),
            (
                "airlock_state_writes_total",
                "State versions stored.",
                &self.state_writes,
            ),
            (
                "airlock_state_write_refusals_total",
                "State writes refused by the firewall.",
                &self.state_write_refusals,
            ),
            ("airlock_locks_total", "Locks acquired.", &self.locks),
            (
                "airlock_lock_conflicts_total",
                "Lock requests refused because the stack was locked.",
                &self.lock_conflicts,
            ),
            (
                "airlock_requests_denied_total",
                "Requests refused by authentication or authorization.",
                &self.denied,
            ),
        ];
        let mut out = String::new();
        for (name, help, v) in rows {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
                v.load(Relaxed)
            ));
        }
        out
    }
}
