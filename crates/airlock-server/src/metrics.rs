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
    unaudited_refusals: AtomicU64,
    elements_reused: AtomicU64,
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
    pub fn unaudited_refusal(&self) {
        self.unaudited_refusals.fetch_add(1, Relaxed);
    }
    pub fn elements_reused(&self, n: usize) {
        self.elements_reused
            .fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Relaxed);
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
            (
                "airlock_unaudited_refusals_total",
                "Refusals of requests without a valid credential left out of the audit past its budget (each counted in an audit.unaudited_refusals event).",
                &self.unaudited_refusals,
            ),
            (
                "airlock_state_elements_reused_total",
                "Resource elements of written states taken from the stack's previous write instead of parsed again.",
                &self.elements_reused,
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

/// Drift counts that name no stack: `airlock_stacks_drifted` (stacks whose newest verdict other
/// than unknown is drifted) and `airlock_stacks_drift_unknown` (newest check could not tell).
pub fn render_drift_counts(states: &[airlock_store::DriftState]) -> String {
    let drifted = states.iter().filter(|d| d.drifted_since.is_some()).count();
    let unknown = states.iter().filter(|d| d.last.status == "unknown").count();
    format!(
        "# HELP airlock_stacks_drifted Stacks that have drifted (their newest verdict other than unknown).\n# TYPE airlock_stacks_drifted gauge\nairlock_stacks_drifted {drifted}\n\
         # HELP airlock_stacks_drift_unknown Stacks whose newest drift check could not tell.\n# TYPE airlock_stacks_drift_unknown gauge\nairlock_stacks_drift_unknown {unknown}\n"
    )
}

/// Per-stack drift gauges: `airlock_stack_drifted{stack}` (1 while the newest verdict is
/// drifted, else 0), `airlock_stack_drift_unknown{stack}` (1 when the newest check could not
/// tell), `airlock_stack_drift_check_age_seconds{stack}`. Stack names are `[a-z0-9._/-]`, so
/// they need no escaping in a label.
pub fn render_drift(states: &[airlock_store::DriftState], now_ms: i64) -> String {
    let mut out = String::new();
    type Gauge<'a> = &'a dyn Fn(&airlock_store::DriftState) -> String;
    let rows: [(&str, &str, Gauge); 3] = [
        (
            "airlock_stack_drifted",
            "1 while the stack has drifted (its newest verdict other than unknown), else 0.",
            &|d| u8::from(d.drifted_since.is_some()).to_string(),
        ),
        (
            "airlock_stack_drift_unknown",
            "1 when the stack's newest drift check could not tell (provider or refresh error).",
            &|d| u8::from(d.last.status == "unknown").to_string(),
        ),
        (
            "airlock_stack_drift_check_age_seconds",
            "Seconds since the stack's newest drift check.",
            &|d| ((now_ms - d.last.created_at).max(0) / 1000).to_string(),
        ),
    ];
    for (name, help, value) in rows {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for d in states {
            out.push_str(&format!(
                "{name}{{stack=\"{}\"}} {}\n",
                d.last.stack,
                value(d)
            ));
        }
    }
    out
}
