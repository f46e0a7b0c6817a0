//! Store calls run in place: on the caller's own thread, when every engine call they make
//! completes without waiting for the disk, the network or another writer.
//!
//! A server hands blocking store calls to a pool of threads and waits for the answer; on this
//! machine's two cores each such hand-off costs two thread wake-ups (~0.1 ms of CPU), more than
//! a short call itself (issue 17: taking a lock, releasing it, reading a stack with its lock).
//! [`run`] runs such a call directly, and the engines refuse, in place, any step that could
//! wait:
//! - SQLite: reads run on an idle reader connection (WAL readers never wait for the writer;
//!   opening a new connection is refused); a lock change commits only if the writer is free
//!   (`try_lock`), does not wait for its sync (it never does), and never runs SQLite's
//!   automatic checkpoint (the writer's WAL hook leaves it to the next commit made off the
//!   runtime, and no lock change runs in place while one is due); a durable write (which waits
//!   for its `fdatasync`) is refused; and where SQLite would wait for a lock another
//!   connection or process holds, its busy handler refuses instead of sleeping.
//! - PostgreSQL: every call is refused (each is a round trip to the database).
//!
//! The first refused step ends the run: it and every later engine call in it return an error,
//! and [`run`] returns `None`, whatever the call made of that error. The caller then runs the
//! call off its thread, from the start. What the call did before the refusal is done again, so
//! a call run in place may only read before its one commit, and nothing may follow that
//! commit that could wait: a refusal after a commit is reported as an error, not retried.

use std::cell::Cell;

use crate::{Result, StoreError};

#[derive(Clone, Copy, PartialEq)]
enum Run {
    /// No call runs in place on this thread.
    Off,
    /// A call runs in place; `committed` once it has committed its change.
    On { committed: bool },
    /// A step was refused: the run is over.
    Refused,
}

thread_local! {
    static RUN: Cell<Run> = const { Cell::new(Run::Off) };
}

/// Runs `f` in place. `None` when a step of it was refused for waiting: run it again off this
/// thread.
pub fn run<T>(f: impl FnOnce() -> T) -> Option<T> {
    struct Reset(Run);
    impl Drop for Reset {
        fn drop(&mut self) {
            RUN.with(|r| r.set(self.0));
        }
    }
    let _reset = Reset(RUN.with(|r| r.replace(Run::On { committed: false })));
    let out = f();
    (RUN.with(Cell::get) != Run::Refused).then_some(out)
}

/// Whether the current call runs in place (a step that could wait must then be refused).
pub(crate) fn active() -> bool {
    RUN.with(Cell::get) != Run::Off
}

/// Refuses a step that would wait, when in place: ends the run (see the module documentation).
pub(crate) fn refuse(step: &str) -> StoreError {
    let after_commit = RUN.with(|r| {
        let was = r.get();
        if was != (Run::On { committed: true }) {
            r.set(Run::Refused);
        }
        was == Run::On { committed: true }
    });
    if after_commit {
        StoreError::Backend(format!(
            "{step} would wait after this store call's commit, in a call run in place: run it off the request's thread"
        ))
    } else {
        StoreError::Backend(format!("{step} would wait (store call run in place)"))
    }
}

/// Refuses `step` when in place, or when an earlier step of the run was refused.
pub(crate) fn refuse_if_active(step: &str) -> Result<()> {
    if active() {
        return Err(refuse(step));
    }
    Ok(())
}

/// For steps that never wait: refused only once an earlier step of the run was.
pub(crate) fn check() -> Result<()> {
    if RUN.with(Cell::get) == Run::Refused {
        return Err(StoreError::Backend(
            "an earlier step of this store call was refused (store call run in place)".into(),
        ));
    }
    Ok(())
}

/// Records a commit made in place; a second one in the same run is refused (see the module
/// documentation: a run makes at most one change, its last).
pub(crate) fn committing(step: &str) -> Result<()> {
    RUN.with(|r| match r.get() {
        Run::Off => Ok(()),
        Run::On { committed: false } => {
            r.set(Run::On { committed: true });
            Ok(())
        }
        Run::On { committed: true } => Err(StoreError::Backend(format!(
            "{step}: a store call run in place commits at most once"
        ))),
        Run::Refused => Err(refuse(step)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_step_ends_the_run_whatever_the_call_made_of_it() {
        let out = run(|| {
            let first = refuse_if_active("a sync");
            // The call swallows the error and goes on: every later step is refused too.
            let later = check();
            (first.is_err(), later.is_err())
        });
        assert_eq!(out, None);
        assert!(!active(), "the thread is back to normal after the run");
        assert!(check().is_ok() && refuse_if_active("a sync").is_ok());
    }

    #[test]
    fn a_run_commits_at_most_once_and_nothing_that_waits_follows_its_commit() {
        let out = run(|| {
            committing("lock").unwrap();
            let second = committing("unlock").unwrap_err().to_string();
            let wait = refuse_if_active("a sync").unwrap_err().to_string();
            (second, wait)
        });
        let (second, wait) = out.expect("a refusal after a commit is an error, not a retry");
        assert!(second.contains("commits at most once"), "{second}");
        assert!(wait.contains("after this store call's commit"), "{wait}");
    }

    #[test]
    fn runs_nest_and_restore() {
        let out = run(|| {
            let inner = run(|| refuse_if_active("a sync").is_err());
            (inner, active(), check().is_ok())
        });
        assert_eq!(out, Some((None, true, true)));
        assert!(!active());
    }
}
