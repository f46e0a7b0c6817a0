//! Two replicas on one PostgreSQL: 32 concurrent real `terraform apply` runs, a lock race
//! with exactly one winner per round, and audit chains written by both that verify and give
//! tampering away.

use std::collections::BTreeSet;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{agent, assert_verified, call, current_lock, history, lock_body, state_body};
use crate::support::*;

// ---- (a) 32 concurrent terraform applies through two replicas ----

#[test]
fn two_replicas_on_postgres_serve_32_concurrent_terraform_applies() {
    const RUNS: usize = 32;
    let db = TestDatabase::new("applies");
    let backing = Backing::Url(db.url.clone());
    let a = TestServer::start_on(&backing, None, &[], &[]);
    let b = TestServer::start_on(&backing, Some(&a.admin), &[], &[]);
    a.ok(&a.admin, &["stack", "create", "dev/many"]);
    // Each run adds its own resource. `-target` keeps every run from touching the others'
    // resources (which are in the state it reads under the lock, but not in its config), so
    // every change must survive: a run that wrote a state read before the previous run's
    // write would drop that run's resource, and the final state would miss it.
    let workspaces: Vec<Workspace> = (0..RUNS)
        .map(|i| {
            let replica = if i % 2 == 0 { &a } else { &b };
            Workspace::new(
                replica,
                "dev/many",
                &format!("resource \"terraform_data\" \"r{i}\" {{\n  input = \"change-{i}\"\n}}\n"),
            )
        })
        .collect();
    let started = Instant::now();
    for batch in workspaces.chunks(8) {
        std::thread::scope(|scope| {
            for ws in batch {
                let admin = a.admin.clone();
                scope.spawn(move || ws.tf_ok(&admin, &["init", "-input=false"]));
            }
        });
    }
    let init_time = started.elapsed();
    let barrier = Barrier::new(RUNS);
    let outputs: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = workspaces
            .iter()
            .enumerate()
            .map(|(i, ws)| {
                let (admin, barrier) = (a.admin.clone(), &barrier);
                scope.spawn(move || {
                    barrier.wait();
                    let target = format!("-target=terraform_data.r{i}");
                    ws.tf(
                        &admin,
                        &[
                            "apply",
                            "-auto-approve",
                            "-input=false",
                            // Generous: 32 serialized applies on 2 busy cores, and Terraform's
                            // retry backoff (up to 16 s) can keep an unlucky one waiting.
                            "-lock-timeout=900s",
                            &target,
                        ],
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let apply_time = started.elapsed() - init_time;
    for (i, out) in outputs.iter().enumerate() {
        assert!(
            out.status.success(),
            "apply {i} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let serials: Vec<u64> = history(&b, "dev/many").iter().map(|v| v.0).collect();
    assert_eq!(
        serials,
        (1..=RUNS as u64).collect::<Vec<_>>(),
        "one version per apply, serials consecutive"
    );
    let (code, state) = raw("GET", &b.state_url("dev/many"), &b.admin, b"");
    assert_eq!(code, 200);
    let state: Value = serde_json::from_str(&state).unwrap();
    let names: BTreeSet<String> = state["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    let want: BTreeSet<String> = (0..RUNS).map(|i| format!("r{i}")).collect();
    assert_eq!(names, want, "the final state holds every run's change");
    let text = state.to_string();
    for i in 0..RUNS {
        assert!(
            text.contains(&format!("\"change-{i}\"")),
            "change {i} is missing"
        );
    }
    assert_verified(&a);
    eprintln!(
        "32 applies on 2 replicas: init {:.1} s, concurrent applies {:.1} s",
        init_time.as_secs_f64(),
        apply_time.as_secs_f64()
    );
    assert!(
        apply_time < Duration::from_secs(900),
        "bounded: {apply_time:?}"
    );
}

// ---- (b) lock race across replicas ----

#[test]
fn lock_race_across_two_replicas_has_exactly_one_winner_per_round() {
    const ROUNDS: usize = 12;
    const CLIENTS: usize = 16;
    let db = TestDatabase::new("lockrace");
    let backing = Backing::Url(db.url.clone());
    let a = TestServer::start_on(&backing, None, &[], &[]);
    let b = TestServer::start_on(&backing, Some(&a.admin), &[], &[]);
    a.ok(&a.admin, &["stack", "create", "dev/race"]);
    let urls = [a.state_url("dev/race"), b.state_url("dev/race")];
    for round in 0..ROUNDS {
        let barrier = Arc::new(Barrier::new(CLIENTS));
        let results: Vec<(String, u16, String)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..CLIENTS)
                .map(|c| {
                    let (barrier, url, admin) =
                        (Arc::clone(&barrier), urls[c % 2].clone(), a.admin.clone());
                    scope.spawn(move || {
                        let id = format!("race-{round}-{c}");
                        let agent = agent();
                        barrier.wait();
                        let (code, body) =
                            call(&agent, "LOCK", &url, &admin, &lock_body(&id)).unwrap();
                        (id, code, body)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let winners: Vec<&(String, u16, String)> = results.iter().filter(|r| r.1 == 200).collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        let winner = &winners[0].0;
        for (id, code, body) in &results {
            if id != winner {
                assert_eq!(*code, 423, "round {round}: {id}: {body}");
                let holder: Value = serde_json::from_str(body).unwrap();
                assert_eq!(
                    holder["ID"].as_str(),
                    Some(winner.as_str()),
                    "round {round}"
                );
            }
        }
        let (code, body) = raw("UNLOCK", &urls[round % 2], &a.admin, &lock_body(winner));
        assert_eq!(code, 200, "{body}");
    }
    assert_eq!(current_lock(&b, "dev/race"), None);
    assert_verified(&b);
}

// ---- (c) audit chains across replicas ----

/// `airlock audit --verify` on `s`: (intact, its output).
fn audit_verify(s: &TestServer) -> (bool, String) {
    let out = s.cli(&s.admin, &["audit", "--verify"]);
    (out.status.success(), text(&out))
}

/// Two replicas write 8 different stacks at once (lock, write, unlock, alternating replicas):
/// each stack's events form its own gapless chain, the seals cover them, and `airlock audit
/// --verify` accepts the whole log. Then the database is tampered with, one attack at a time
/// and undone after: an edited stack record, a dropped sealed stack record, a dropped stack
/// chain, a dropped global record, two records' positions swapped (a reorder). Each is caught.
#[test]
fn two_replicas_writing_different_stacks_keep_verifiable_audit_chains_and_tampering_is_caught() {
    const STACKS: usize = 8;
    const CYCLES: usize = 5;
    let db = TestDatabase::new("chains");
    let backing = Backing::Url(db.url.clone());
    let a = TestServer::start_on(&backing, None, &[], &[]);
    let b = TestServer::start_on(&backing, Some(&a.admin), &[], &[]);
    for i in 0..STACKS {
        a.ok(&a.admin, &["stack", "create", &format!("dev/s{i}")]);
    }
    let barrier = Barrier::new(STACKS);
    std::thread::scope(|scope| {
        for i in 0..STACKS {
            let (a, b, barrier) = (&a, &b, &barrier);
            scope.spawn(move || {
                let agent = agent();
                let lineage = format!("4f7ab0c2-0000-4000-8000-00000000000{i}");
                barrier.wait();
                for c in 0..CYCLES {
                    let s = if (i + c) % 2 == 0 { a } else { b };
                    let url = s.state_url(&format!("dev/s{i}"));
                    let id = format!("chains-{i}-{c}");
                    let lock = call(&agent, "LOCK", &url, &a.admin, &lock_body(&id)).unwrap();
                    assert_eq!(lock.0, 200, "{lock:?}");
                    let body = state_body(&lineage, c as u64 + 1, 3, 100);
                    let write = call(&agent, "POST", &format!("{url}?ID={id}"), &a.admin, &body);
                    assert_eq!(write.as_ref().unwrap().0, 200, "{write:?}");
                    let unlock = call(&agent, "UNLOCK", &url, &a.admin, &lock_body(&id)).unwrap();
                    assert_eq!(unlock.0, 200, "{unlock:?}");
                }
            });
        }
    });
    // Each stack: its creation and 3 events per cycle, positions 1..=n without a gap.
    let per_stack = 1 + 3 * CYCLES;
    let chains = db.sql(
        "SELECT chain || ' ' || count(*) || ' ' || min(chain_seq) || ' ' || max(chain_seq) FROM audit WHERE chain LIKE 'dev/%' GROUP BY chain ORDER BY chain",
    );
    let want: Vec<String> = (0..STACKS)
        .map(|i| format!("dev/s{i} {per_stack} 1 {per_stack}"))
        .collect();
    assert_eq!(chains.lines().collect::<Vec<_>>(), want);
    // Every replica seals each second; wait (bounded) until every stack head is sealed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sealed = db.sql(&format!(
            "SELECT count(*) FROM audit_sealed WHERE chain LIKE 'dev/%' AND seq = {per_stack}"
        ));
        if sealed == STACKS.to_string() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stack heads not sealed: {sealed}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (ok, out) = audit_verify(&b);
    assert!(ok && out.contains("audit chain intact"), "{out}");
    assert_verified(&a);

    // Attacks, each undone before the next. Triggers refuse changes to audit rows, so the
    // attacker is the database's owner turning them off for the session.
    let off = "SET session_replication_role = replica;";
    let broken = |what: &str, reason: &str| {
        let (ok, out) = audit_verify(&a);
        assert!(
            !ok && out.contains("audit chain BROKEN") && out.contains(reason),
            "{what}: {out}"
        );
    };
    // An edited stack record.
    db.sql(&format!(
        "{off} UPDATE audit SET outcome = 'denied' WHERE chain = 'dev/s3' AND chain_seq = 5"
    ));
    broken("an edited stack record", "does not match its hash");
    db.sql(&format!(
        "{off} UPDATE audit SET outcome = 'ok' WHERE chain = 'dev/s3' AND chain_seq = 5"
    ));
    assert!(audit_verify(&a).0);
    // The sealed last record of a stack chain (nothing after it in its chain to break).
    let keep = |cond: &str| {
        db.sql(&format!("DROP TABLE IF EXISTS kept; CREATE TABLE kept AS SELECT * FROM audit WHERE {cond}; {off} DELETE FROM audit WHERE {cond}"));
    };
    let restore = || {
        db.sql(&format!("{off} INSERT INTO audit SELECT * FROM kept"));
        assert!(audit_verify(&a).0, "restored");
    };
    keep(&format!("chain = 'dev/s5' AND chain_seq = {per_stack}"));
    broken("a dropped sealed stack record", "seal");
    restore();
    // A whole stack chain.
    keep("chain = 'dev/s6'");
    broken("a dropped stack chain", "seal");
    restore();
    // A record of the global chain (the first admin token's creation, say).
    keep("chain = '' AND chain_seq = 1");
    broken("a dropped global record", "chain \"\"");
    restore();
    // Two records of different stacks swap positions (a reorder of history).
    let (x, y) = (
        db.sql("SELECT seq FROM audit WHERE chain = 'dev/s1' AND chain_seq = 4"),
        db.sql("SELECT seq FROM audit WHERE chain = 'dev/s2' AND chain_seq = 4"),
    );
    let swap = format!("{off} UPDATE audit SET seq = -1 WHERE seq = {x}; UPDATE audit SET seq = {x} WHERE seq = {y}; UPDATE audit SET seq = {y} WHERE seq = -1");
    db.sql(&swap);
    broken("two records' positions swapped", "does not match its hash");
    db.sql(&swap);
    assert!(audit_verify(&a).0);
}
