//! Two replicas on one PostgreSQL: 32 concurrent real `terraform apply` runs, and a lock race
//! with exactly one winner per round.

use std::collections::BTreeSet;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{agent, assert_verified, call, current_lock, history, lock_body};
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
