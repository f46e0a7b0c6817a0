//! Benchmark (`bench/person-mint/run.sh`): what judging a mint for a person costs
//! (`Person::may_receive`: the user's parentless tokens and their minters, read in the minting
//! transaction), on SQLite, as the user's derived (plan-phase) tokens pile up: an agent user
//! mints up to 60 an hour, and the read scans the user's rows of the `tokens_by_user` index.
//! Per size, blocks of mints for the person alternate with blocks of own-identity tokens (no
//! person judged), so both see the same load; wall and process CPU time per mint.

use std::time::Instant;

use airlock_core::Role;
use airlock_store::{NewAudit, NewToken, NewUser, SqliteStore, Store};

/// CPU seconds this process has used (user + system, all threads).
fn cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let rest = stat.rsplit_once(')').expect("stat format").1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn token(id: &str, user: &str, created_by: &str) -> NewToken {
    NewToken {
        id: id.into(),
        secret_hash: airlock_store::blob::sha256(id.as_bytes()),
        name: id.into(),
        role: Role::Agent,
        stacks: vec!["dev/*".into()],
        expires_at: None,
        created_by: created_by.into(),
        run_id: None,
        user: user.into(),
        parent_id: None,
        mint_limit: None,
        read_stacks: Vec::new(),
        minted_by: airlock_store::minter_id(created_by).map(str::to_owned),
        job_ref: None,
    }
}

fn main() {
    let per_block: usize = std::env::args()
        .nth(1)
        .map_or(100, |n| n.parse().expect("MINTS per block"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    let store = SqliteStore::open(&path).unwrap();
    let audit = || NewAudit::ok("bench", "token.create", None, serde_json::json!({}));
    store
        .create_token(token("tok_root", "tok_root", "bench"), audit())
        .unwrap();
    store
        .create_user(
            NewUser {
                name: "bot".into(),
                created_by: "bench".into(),
                forge_logins: Vec::new(),
            },
            audit(),
        )
        .unwrap();
    store
        .create_token(token("tok_bot", "bot", "root (tok_root)"), audit())
        .unwrap();
    let mut raw = rusqlite::Connection::open(&path).unwrap();
    let (mut derived, mut n) = (0usize, 0usize);
    println!("derived tokens of the user | person mint: wall µs, CPU µs | own-identity mint: wall µs, CPU µs | ratio (wall, CPU)");
    for size in [0usize, 10_000, 100_000] {
        // Plan-phase tokens of the user, inserted in one transaction (as the store stores them).
        let tx = raw.transaction().unwrap();
        for i in derived..size {
            tx.execute(
                "INSERT INTO tokens (id, secret_hash, name, role, stacks, created_at, expires_at, created_by, run_id, user_name, parent_id, read_stacks) VALUES (?1, ?2, 'plan', 'agent', '[\"dev/app\"]', ?3, ?3, 'bot (tok_bot)', NULL, 'bot', 'tok_bot', '[]')",
                rusqlite::params![format!("tok_d{i}"), airlock_store::blob::sha256(format!("d{i}").as_bytes()).to_vec(), i as i64],
            )
            .unwrap();
        }
        tx.commit().unwrap();
        derived = size;
        let (mut person, mut own) = ((0.0, 0.0), (0.0, 0.0));
        for _round in 0..4 {
            for (sum, for_person) in [(&mut person, true), (&mut own, false)] {
                let (w, c) = (Instant::now(), cpu());
                for _ in 0..per_block {
                    n += 1;
                    let id = format!("tok_m{n}");
                    let user = if for_person {
                        "bot".to_owned()
                    } else {
                        id.clone()
                    };
                    store
                        .create_token(token(&id, &user, "root (tok_root)"), audit())
                        .unwrap();
                }
                sum.0 += w.elapsed().as_secs_f64();
                sum.1 += cpu() - c;
            }
        }
        let mints = (4 * per_block) as f64;
        let us = |s: f64| s / mints * 1e6;
        println!(
            "{size:>7} | {:>7.0}, {:>7.0} | {:>7.0}, {:>7.0} | {:.2}, {:.2}",
            us(person.0),
            us(person.1),
            us(own.0),
            us(own.1),
            person.0 / own.0,
            person.1 / own.1.max(1e-9)
        );
    }
}
