//! SIGKILL during acknowledged writes, on SQLite and PostgreSQL: nothing acknowledged is lost.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{
    agent, assert_verified, call, current_lock, history, lock_body, sha256_hex, state_body, Rng,
};
use crate::support::*;

// ---- (c) SIGKILL during acknowledged writes ----

#[derive(Debug, Default)]
struct WriterOutcome {
    /// Versions the server acknowledged (200 to the POST).
    acked: Vec<(u64, String)>,
    /// A write sent whose answer never came: it may or may not be stored, but never partly.
    in_flight: Option<(u64, String)>,
    /// The lock ID this client may hold: LOCK acknowledged or sent, UNLOCK not acknowledged.
    maybe_holding: Option<String>,
}

/// LOCK/POST/UNLOCK cycles until the server goes away (bounded by `max_cycles`).
fn write_until_killed(
    url: &str,
    token: &str,
    lineage: &str,
    first_serial: u64,
    round: usize,
) -> WriterOutcome {
    let agent = agent();
    let mut out = WriterOutcome::default();
    let mut serial = first_serial;
    for cycle in 0..10_000 {
        let id = format!("crash-{round}-{cycle}");
        out.maybe_holding = Some(id.clone());
        match call(&agent, "LOCK", url, token, &lock_body(&id)) {
            Ok((200, _)) => {}
            Ok((code, body)) => panic!("LOCK answered {code}: {body}"),
            Err(_) => return out,
        }
        let body = state_body(lineage, serial, 40, 1000 + (cycle % 7) * 300);
        let sha = sha256_hex(&body);
        out.in_flight = Some((serial, sha.clone()));
        match call(&agent, "POST", &format!("{url}?ID={id}"), token, &body) {
            Ok((200, _)) => {
                out.acked.push((serial, sha));
                out.in_flight = None;
                serial += 1;
            }
            Ok((code, body)) => panic!("POST serial {serial} answered {code}: {body}"),
            Err(_) => return out,
        }
        match call(&agent, "UNLOCK", url, token, &lock_body(&id)) {
            Ok((200, _)) => out.maybe_holding = None,
            Ok((code, body)) => panic!("UNLOCK answered {code}: {body}"),
            Err(_) => return out,
        }
    }
    out
}

fn crash_loop(backing: Backing, engine: &str) {
    const ROUNDS: usize = 8;
    let mut rng = Rng::from_env_or_clock(&format!("crash loop on {engine}"));
    let mut server = TestServer::start_on(&backing, None, &[], &[]);
    let admin = server.admin.clone();
    server.ok(&admin, &["stack", "create", "dev/crash"]);
    let lineage = "3f0a4c3e-crash-test-lineage-000000000001";
    let mut durable: BTreeMap<u64, String> = BTreeMap::new();
    let (mut acked_total, mut in_flight_stored) = (0usize, 0usize);
    let started = Instant::now();
    for round in 0..ROUNDS {
        let next = durable.keys().next_back().map_or(1, |s| s + 1);
        let (url, token, lin) = (
            server.state_url("dev/crash"),
            admin.clone(),
            lineage.to_owned(),
        );
        let writer =
            std::thread::spawn(move || write_until_killed(&url, &token, &lin, next, round));
        std::thread::sleep(Duration::from_millis(50 + rng.below(450)));
        server.kill();
        let outcome = writer.join().unwrap();
        server = TestServer::start_on(&backing, Some(&admin), &[], &[]);

        let stored = history(&server, "dev/crash");
        let stored_map: BTreeMap<u64, String> = stored.iter().cloned().collect();
        for (serial, sha) in durable
            .iter()
            .chain(outcome.acked.iter().map(|(a, b)| (a, b)))
        {
            match stored_map.get(serial) {
                Some(s) if s == sha => {}
                other => {
                    panic!("round {round}: acknowledged serial {serial} ({sha}) after restart: {other:?}");
                }
            }
        }
        acked_total += outcome.acked.len();
        for (serial, sha) in &outcome.acked {
            durable.insert(*serial, sha.clone());
        }
        for (serial, sha) in &stored {
            if durable.contains_key(serial) {
                continue;
            }
            // The only version that may appear without an acknowledgement is the write that
            // was in flight when the server died, and then whole.
            assert_eq!(
                outcome.in_flight.as_ref(),
                Some(&(*serial, sha.clone())),
                "round {round}: unexpected stored version {serial}"
            );
            in_flight_stored += 1;
            durable.insert(*serial, sha.clone());
        }
        assert_eq!(stored.len(), durable.len(), "round {round}");
        assert_verified(&server);
        // A lock can only be the one this client took (it may not have seen the answer);
        // a dead request never leaves a lock of its own. The client then force-unlocks.
        match current_lock(&server, "dev/crash") {
            None => {}
            Some(id) => {
                assert_eq!(
                    Some(&id),
                    outcome.maybe_holding.as_ref(),
                    "round {round}: stack left locked by {id}, which this client never held"
                );
                let (code, body) = raw("UNLOCK", &server.state_url("dev/crash"), &admin, b"");
                assert_eq!(code, 200, "force-unlock: {body}");
            }
        }
    }
    assert!(
        acked_total >= ROUNDS,
        "too few acknowledged writes ({acked_total}) for the test to mean anything"
    );
    eprintln!(
        "crash loop on {engine}: {ROUNDS} SIGKILLs, {acked_total} acknowledged writes all durable, {in_flight_stored} in-flight write(s) stored whole, {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn sigkill_during_acknowledged_writes_loses_nothing_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    crash_loop(Backing::Dir(dir.path().join("data")), "sqlite");
}

#[test]
fn sigkill_during_acknowledged_writes_loses_nothing_on_postgres() {
    let db = TestDatabase::new("crash");
    crash_loop(Backing::Url(db.url.clone()), "postgres");
}
