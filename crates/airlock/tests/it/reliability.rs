//! Reliability: tries to lose data. Two replicas on one PostgreSQL under 32 concurrent real
//! `terraform apply` runs and a lock race; SIGKILL during acknowledged writes on SQLite and
//! PostgreSQL; a table of hostile HTTP input; backups moved between engines. Everything talks
//! to loopback only and is bounded in count and time.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::*;

// ---- small helpers ----

fn sha256_hex(bytes: &[u8]) -> String {
    airlock_store::blob::sha256(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A small deterministic PRNG (xorshift64*), seeded from the clock and printed, so a failing
/// run can be reproduced with AIRLOCK_TEST_SEED.
struct Rng(u64);

impl Rng {
    fn from_env_or_clock(what: &str) -> Rng {
        let seed = std::env::var("AIRLOCK_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            })
            | 1;
        eprintln!("{what}: AIRLOCK_TEST_SEED={seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(2))
        .timeout(Duration::from_secs(20))
        .build()
}

/// One request; `Err` only when no HTTP response came back (connection refused or cut).
fn call(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    token: &str,
    body: &[u8],
) -> Result<(u16, String), String> {
    let req = agent
        .request(method, url)
        .set("Authorization", &format!("Bearer {token}"));
    match req.send_bytes(body) {
        Ok(r) => Ok((r.status(), r.into_string().unwrap_or_default())),
        Err(ureq::Error::Status(code, r)) => Ok((code, r.into_string().unwrap_or_default())),
        Err(e) => Err(e.to_string()),
    }
}

fn lock_body(id: &str) -> Vec<u8> {
    format!(r#"{{"ID":"{id}","Operation":"OperationTypeApply","Info":"","Who":"test@reliability","Version":"1.11.4","Created":"2026-11-24T03:09:07.006165048Z","Path":""}}"#).into_bytes()
}

/// A state v4 body with `n` resources of some padding, so writes take a little while.
fn state_body(lineage: &str, serial: u64, n: usize, pad: usize) -> Vec<u8> {
    let resources: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "mode": "managed", "type": "terraform_data", "name": format!("r{i}"),
                "provider": "provider[\"terraform.io/builtin/terraform\"]",
                "instances": [{"schema_version": 0, "attributes": {"id": format!("id-{i}"), "input": {"value": format!("s{serial}-{}", "x".repeat(pad)), "type": "string"}}}]
            })
        })
        .collect();
    serde_json::to_vec(&json!({
        "version": 4, "terraform_version": "1.11.4", "serial": serial, "lineage": lineage,
        "outputs": {}, "resources": resources, "check_results": null
    }))
    .unwrap()
}

fn stack_segment(stack: &str) -> String {
    stack.replace('/', "%2F")
}

/// (serial, sha256) of every stored version, oldest first.
fn history(s: &TestServer, stack: &str) -> Vec<(u64, String)> {
    let (code, body) = raw(
        "GET",
        &format!("{}/api/v1/stacks/{}/versions", s.url, stack_segment(stack)),
        &s.admin,
        b"",
    );
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["serial"].as_u64().unwrap(),
                x["sha256"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn current_lock(s: &TestServer, stack: &str) -> Option<String> {
    let (code, body) = raw(
        "GET",
        &format!("{}/api/v1/stacks/{}", s.url, stack_segment(stack)),
        &s.admin,
        b"",
    );
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["lock"]["id"].as_str().map(str::to_owned)
}

fn assert_verified(s: &TestServer) {
    let verify = s.ok(&s.admin, &["state", "verify"]);
    assert!(verify.contains(" 0 failure(s)"), "{verify}");
    let audit = s.ok(&s.admin, &["audit", "--verify"]);
    assert!(audit.contains("audit chain intact"), "{audit}");
}

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

// ---- (d) hostile input at the HTTP layer ----

/// Sends raw bytes on a fresh connection and reads the response until the server closes it.
/// Returns (status, raw head, body); status 0 if the server closed without answering.
fn send_raw(addr: &str, request: &[u8]) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    // The server may answer (and close) before reading everything, e.g. on an oversized body.
    let _ = stream.write_all(request);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

/// A request with Host, Connection: close and Content-Length added (unless `raw_headers`
/// sets its own framing).
fn request(method: &str, target: &str, token: &str, headers: &[String], body: &[u8]) -> Vec<u8> {
    let mut r = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    if !token.is_empty() {
        r.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    let framed = headers.iter().any(|h| {
        h.to_ascii_lowercase().starts_with("transfer-encoding")
            || h.to_ascii_lowercase().starts_with("content-length")
    });
    for h in headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    if !framed {
        r.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    r.push_str("\r\n");
    let mut bytes = r.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

struct Case {
    name: &'static str,
    request: Vec<u8>,
    /// Statuses accepted (all 4xx).
    expect: &'static [u16],
    /// Whether the refusal is airlock's (JSON body with a message). Requests hyper refuses
    /// before they reach airlock (malformed HTTP framing) get a bare 400.
    message: bool,
}

fn md5_b64_of_other() -> &'static str {
    // MD5 of "something else", base64: a well-formed but wrong Content-MD5.
    "bTj4Ho1j5uYl3b0tZ8Mj3w=="
}

#[test]
fn hostile_http_input_gets_a_4xx_with_a_message_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_on(
        &Backing::Dir(dir.path().join("data")),
        None,
        &["--max-state-mib", "1"],
        &[("AIRLOCK_REQUEST_TIMEOUT_SECS", "2")],
    );
    let t = s.admin.clone();
    s.ok(&t, &["stack", "create", "dev/bad"]);
    let lineage = "0b2c9d4e-bad-input-lineage-0000000000001";
    let stack_url = s.state_url("dev/bad");
    let (code, _) = raw("LOCK", &stack_url, &t, &lock_body("bad-lock"));
    assert_eq!(code, 200);
    let (code, body) = raw(
        "POST",
        &format!("{stack_url}?ID=bad-lock"),
        &t,
        &state_body(lineage, 1, 2, 10),
    );
    assert_eq!(code, 200, "{body}");
    let baseline = history(&s, "dev/bad");

    let w = "/state/dev/bad?ID=bad-lock";
    let valid2 = state_body(lineage, 2, 2, 10);
    let with_serial = |serial: &str| {
        format!(r#"{{"version":4,"terraform_version":"1.11.4","serial":{serial},"lineage":"{lineage}","outputs":{{}},"resources":[]}}"#).into_bytes()
    };
    let instance = r#"{"mode":"managed","type":"terraform_data","name":"a","provider":"provider[\"terraform.io/builtin/terraform\"]","instances":[{"schema_version":0,"attributes":{"id":"x"}}]}"#;
    let duplicate = format!(
        r#"{{"version":4,"terraform_version":"1.11.4","serial":2,"lineage":"{lineage}","outputs":{{}},"resources":[{instance},{instance}]}}"#
    );
    let deep = format!(
        r#"{{"version":4,"terraform_version":"1.11.4","serial":2,"lineage":"{lineage}","outputs":{{"o":{{"value":{}{}}}}},"resources":[]}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let version3 = String::from_utf8(with_serial("2"))
        .unwrap()
        .replacen("\"version\":4", "\"version\":3", 1)
        .into_bytes();
    let mut bad_utf8 = with_serial("2");
    let at = bad_utf8.iter().position(|b| *b == b'1').unwrap();
    bad_utf8.splice(at..at, [0xff, 0xfe, 0xc3]);
    let oversized = {
        let mut b = with_serial("2");
        b.truncate(b.len() - 1);
        b.extend_from_slice(br#","pad":""#);
        b.extend(std::iter::repeat_n(b'x', 1024 * 1024));
        b.extend_from_slice(br#""}"#);
        b
    };
    let chunked_oversized = {
        let mut b = Vec::new();
        for _ in 0..20 {
            b.extend_from_slice(format!("{:x}\r\n", 64 * 1024).as_bytes());
            b.extend(std::iter::repeat_n(b' ', 64 * 1024));
            b.extend_from_slice(b"\r\n");
        }
        b.extend_from_slice(b"0\r\n\r\n");
        b
    };
    let h = |s: &str| vec![s.to_owned()];
    let no: &[String] = &[];
    let c = |name, request, expect, message| Case {
        name,
        request,
        expect,
        message,
    };
    let cases = vec![
        // bodies
        c(
            "oversized body",
            request("POST", w, &t, no, &oversized),
            &[413],
            true,
        ),
        c(
            "oversized chunked body",
            request(
                "POST",
                w,
                &t,
                &h("Transfer-Encoding: chunked"),
                &chunked_oversized,
            ),
            &[413],
            true,
        ),
        c("empty body", request("POST", w, &t, no, b""), &[400], true),
        c(
            "truncated JSON",
            request("POST", w, &t, no, &valid2[..valid2.len() / 2]),
            &[400],
            true,
        ),
        c(
            "malformed JSON",
            request("POST", w, &t, no, br#"{"version":4,,"serial":2}"#),
            &[400],
            true,
        ),
        c(
            "JSON array instead of a state",
            request("POST", w, &t, no, b"[1,2,3]"),
            &[400],
            true,
        ),
        c(
            "state format version 3",
            request("POST", w, &t, no, &version3),
            &[400],
            true,
        ),
        c(
            "unknown top-level field",
            request(
                "POST",
                w,
                &t,
                no,
                format!(r#"{{"version":4,"serial":2,"lineage":"{lineage}","evil":1}}"#).as_bytes(),
            ),
            &[400],
            true,
        ),
        c(
            "wrong Content-MD5",
            request(
                "POST",
                w,
                &t,
                &h(&format!("Content-MD5: {}", md5_b64_of_other())),
                &valid2,
            ),
            &[400],
            true,
        ),
        c(
            "Content-MD5 not base64",
            request("POST", w, &t, &h("Content-MD5: !!not-base64!!"), &valid2),
            &[400],
            true,
        ),
        c(
            "duplicate instances",
            request("POST", w, &t, no, duplicate.as_bytes()),
            &[400],
            true,
        ),
        c(
            "negative serial",
            request("POST", w, &t, no, &with_serial("-1")),
            &[400],
            true,
        ),
        c(
            "non-integer serial",
            request("POST", w, &t, no, &with_serial("2.5")),
            &[400],
            true,
        ),
        c(
            "string serial",
            request("POST", w, &t, no, &with_serial("\"2\"")),
            &[400],
            true,
        ),
        c(
            "serial 2^64",
            request("POST", w, &t, no, &with_serial("18446744073709551616")),
            &[400],
            true,
        ),
        c(
            "serial 1e400",
            request("POST", w, &t, no, &with_serial("1e400")),
            &[400],
            true,
        ),
        c(
            "serial above i64::MAX",
            request("POST", w, &t, no, &with_serial("9223372036854775808")),
            &[400, 409],
            true,
        ),
        c(
            "serial u64::MAX",
            request("POST", w, &t, no, &with_serial("18446744073709551615")),
            &[400, 409],
            true,
        ),
        c(
            "serial not greater than stored",
            request("POST", w, &t, no, &with_serial("1")),
            &[409],
            true,
        ),
        c(
            "other lineage",
            request("POST", w, &t, no, &state_body("other-lineage", 2, 1, 1)),
            &[409],
            true,
        ),
        c(
            "deep nesting",
            request("POST", w, &t, no, deep.as_bytes()),
            &[400],
            true,
        ),
        c(
            "invalid UTF-8",
            request("POST", w, &t, no, &bad_utf8),
            &[400],
            true,
        ),
        c(
            "write without the lock ID",
            request("POST", "/state/dev/bad", &t, no, &valid2),
            &[423],
            true,
        ),
        c(
            "write with another lock ID",
            request("POST", "/state/dev/bad?ID=someone-else", &t, no, &valid2),
            &[423],
            true,
        ),
        c(
            "bad percent-encoding in the query",
            request("POST", "/state/dev/bad?ID=%zz", &t, no, &valid2),
            &[400, 423],
            true,
        ),
        // lock bodies
        c(
            "LOCK with malformed JSON",
            request("LOCK", "/state/dev/bad", &t, no, b"{\"ID\":"),
            &[400],
            true,
        ),
        c(
            "LOCK without an ID",
            request(
                "LOCK",
                "/state/dev/bad",
                &t,
                no,
                br#"{"Operation":"OperationTypeApply"}"#,
            ),
            &[400],
            true,
        ),
        c(
            "LOCK body too large",
            request(
                "LOCK",
                "/state/dev/bad",
                &t,
                no,
                format!(r#"{{"ID":"x","Info":"{}"}}"#, "i".repeat(20_000)).as_bytes(),
            ),
            &[413],
            true,
        ),
        c(
            "UNLOCK with malformed JSON",
            request("UNLOCK", "/state/dev/bad", &t, no, b"{not json"),
            &[400],
            true,
        ),
        // stack names in the path
        c(
            "path ..",
            request("GET", "/state/..", &t, no, b""),
            &[400, 404],
            true,
        ),
        c(
            "path dev/..",
            request("POST", "/state/dev/..?ID=bad-lock", &t, no, &valid2),
            &[400],
            true,
        ),
        c(
            "path %2e%2e",
            request("GET", "/state/%2e%2e", &t, no, b""),
            &[400],
            true,
        ),
        c(
            "path dev/%2e%2e/bad",
            request("POST", "/state/dev/%2e%2e/bad?ID=bad-lock", &t, no, &valid2),
            &[400],
            true,
        ),
        c(
            "path %2F",
            request("POST", "/state/dev%2Fbad?ID=bad-lock", &t, no, &valid2),
            &[400],
            true,
        ),
        c(
            "path double slash",
            request("POST", "/state/dev//bad?ID=bad-lock", &t, no, &valid2),
            &[400],
            true,
        ),
        c(
            "path leading double slash",
            request("POST", "/state//dev/bad?ID=bad-lock", &t, no, &valid2),
            &[400],
            true,
        ),
        c(
            "path trailing slash",
            request("POST", "/state/dev/bad/?ID=bad-lock", &t, no, &valid2),
            &[400],
            true,
        ),
        c(
            "path uppercase",
            request("POST", "/state/DEV/Bad?ID=bad-lock", &t, no, &valid2),
            &[400],
            true,
        ),
        c(
            "path 5 segments",
            request("POST", "/state/a/b/c/d/e?ID=bad-lock", &t, no, &valid2),
            &[400],
            true,
        ),
        c(
            "path NUL",
            request("GET", "/state/dev/%00", &t, no, b""),
            &[400],
            true,
        ),
        c(
            "path escaping to the API",
            request("GET", "/state/../api/v1/tokens", &t, no, b""),
            &[400],
            true,
        ),
        c(
            "path with a space",
            request("GET", "/state/dev/bad%20x", &t, no, b""),
            &[400],
            true,
        ),
        c(
            "empty stack",
            request("GET", "/state/", &t, no, b""),
            &[400, 404],
            true,
        ),
        // methods
        c(
            "DELETE state",
            request("DELETE", "/state/dev/bad", &t, no, b""),
            &[405],
            true,
        ),
        c(
            "PATCH state",
            request("PATCH", "/state/dev/bad", &t, no, &valid2),
            &[405],
            true,
        ),
        c(
            "made-up method",
            request("FROB", "/state/dev/bad", &t, no, b""),
            &[405],
            true,
        ),
        c(
            "LOCK on the API",
            request("LOCK", "/api/v1/stacks", &t, no, &lock_body("x")),
            &[404, 405],
            false,
        ),
        c(
            "POST on /healthz",
            request("POST", "/healthz", &t, no, b""),
            &[404, 405],
            false,
        ),
        // authentication and headers
        c(
            "no credentials",
            request("POST", w, "", no, &valid2),
            &[401],
            true,
        ),
        c(
            "garbage Authorization",
            request("POST", w, "", &h("Authorization: Negotiate abc"), &valid2),
            &[401],
            true,
        ),
        c(
            "Basic auth that is not base64",
            request("POST", w, "", &h("Authorization: Basic %%%"), &valid2),
            &[401],
            true,
        ),
        c(
            "unknown token",
            request("POST", w, "not-a-token", no, &valid2),
            &[401],
            true,
        ),
        c(
            "CRLF in the lock ID (JSON-escaped)",
            request(
                "LOCK",
                "/state/dev/bad",
                &t,
                no,
                br#"{"ID":"a\r\nSet-Cookie: pwn=1","Operation":"OperationTypeApply"}"#,
            ),
            &[400],
            true,
        ),
        c(
            "CRLF in the ?ID= (percent-encoded)",
            request(
                "POST",
                "/state/dev/bad?ID=x%0d%0aSet-Cookie:%20pwn=1",
                &t,
                no,
                &valid2,
            ),
            &[423],
            true,
        ),
        c(
            "bare CR in a header value",
            request("POST", w, &t, &h("X-Note: a\rSet-Cookie: pwn=1"), &valid2),
            &[400],
            false,
        ),
        c(
            "obsolete header folding",
            request(
                "POST",
                w,
                &t,
                &h("X-Note: a\r\n Set-Cookie: pwn=1"),
                &valid2,
            ),
            &[400],
            false,
        ),
        c(
            "two different Content-Lengths",
            request(
                "POST",
                w,
                &t,
                &[
                    "Content-Length: 3".to_owned(),
                    "Content-Length: 400".to_owned(),
                ],
                &valid2,
            ),
            &[400],
            false,
        ),
        c(
            "bad chunk size",
            request(
                "POST",
                w,
                &t,
                &h("Transfer-Encoding: chunked"),
                b"zz\r\nabc\r\n0\r\n\r\n",
            ),
            &[400],
            false,
        ),
        c(
            "garbage request line",
            b"GARBAGE\r\n\r\n".to_vec(),
            &[400],
            false,
        ),
    ];

    let mut failures = Vec::new();
    for case in &cases {
        let (status, head, body) = send_raw(&s.addr(), &case.request);
        let ok_status = case.expect.contains(&status);
        let has_message = !case.message
            || serde_json::from_str::<Value>(&body).ok().and_then(|v| {
                v.pointer("/error/message")
                    .and_then(Value::as_str)
                    .map(|m| !m.is_empty())
            }) == Some(true);
        let injected = head
            .lines()
            .any(|l| l.to_ascii_lowercase().starts_with("set-cookie"));
        if !ok_status || !has_message || injected {
            failures.push(format!(
                "{}: got {status} (want {:?}), message: {has_message}, injected header: {injected}\n{head}\n{}",
                case.name,
                case.expect,
                body.chars().take(300).collect::<String>()
            ));
        }
        // The server keeps serving, and nothing was stored.
        let (code, _) = raw("GET", &format!("{}/healthz", s.url), &t, b"");
        assert_eq!(code, 200, "after {}: /healthz", case.name);
        assert_eq!(
            history(&s, "dev/bad"),
            baseline,
            "after {}: something was stored",
            case.name
        );
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );

    // Slow clients: one sends headers and then stalls on its body, one stalls in its headers.
    // Others are served meanwhile; the stalled upload gets a 408 when its time is up.
    let mut stalled_body = TcpStream::connect(s.addr()).unwrap();
    stalled_body
        .write_all(&request("POST", w, &t, &h("Content-Length: 5000"), b"")[..])
        .unwrap();
    stalled_body.write_all(br#"{"version":4,"serial""#).unwrap();
    let mut stalled_head = TcpStream::connect(s.addr()).unwrap();
    stalled_head
        .write_all(b"POST /state/dev/bad HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthor")
        .unwrap();
    let began = Instant::now();
    for _ in 0..20 {
        let t0 = Instant::now();
        let (code, _) = raw("GET", &stack_url, &t, b"");
        assert_eq!(code, 200);
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "a read waited on a stalled client"
        );
    }
    stalled_body
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = stalled_body.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("gave up on this request"), "{answer}");
    assert!(began.elapsed() < Duration::from_secs(10));
    drop(stalled_head);
    assert_eq!(history(&s, "dev/bad"), baseline);
    let (code, _) = raw("GET", &format!("{}/healthz", s.url), &t, b"");
    assert_eq!(code, 200);
}

// ---- backups move a stack's history between engines ----

fn backup_cli(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(AIRLOCK)
        .args(args)
        .env_remove("AIRLOCK_DATABASE_URL")
        .env_remove("AIRLOCK_DATA_DIR")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn dir_arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn backup_round_trips_sqlite_to_postgres_and_back_and_verify_catches_tampering() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut s = TestServer::start_on(&Backing::Dir(data.clone()), None, &[], &[]);
    let admin = s.admin.clone();
    s.ok(&admin, &["stack", "create", "dev/app"]);
    s.ok(&admin, &["stack", "create", "prod/db", "--production"]);
    let reader = s.token("auditor", "reader");
    let _spare = s.token("spare", "ci");
    let listed: Value =
        serde_json::from_str(&s.ok(&admin, &["token", "list", "--format", "json"])).unwrap();
    let auditor = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "auditor")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.ok(&admin, &["token", "revoke", &auditor]);
    let ws = Workspace::new(&s, "dev/app", &data_resources(3));
    ws.tf_ok(&admin, &["init"]);
    ws.tf_ok(&admin, &["apply", "-auto-approve"]);
    ws.write_main(&data_resources(5));
    ws.tf_ok(&admin, &["apply", "-auto-approve"]);
    s.ok(
        &admin,
        &[
            "state",
            "restore",
            "dev/app",
            "--version",
            "1",
            "--reason",
            "test restore",
        ],
    );
    s.ok(
        &admin,
        &[
            "stack",
            "allow-removal",
            "dev/app",
            "--address",
            "terraform_data.r[0]",
            "--ttl",
            "1h",
            "--reason",
            "test",
        ],
    );
    // A governed run (record and artifacts) proposed by an agent.
    let agent = s.token("bot", "agent");
    let planned = std::process::Command::new(AIRLOCK)
        .args(["plan", ".", "--stack", "dev/app", "--format", "json"])
        .current_dir(&ws.dir)
        .env("AIRLOCK_URL", &s.url)
        .env("AIRLOCK_TOKEN", &agent)
        .env("CHECKPOINT_DISABLE", "1")
        .env("TF_CLI_CONFIG_FILE", "/dev/null")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let planned: Value = serde_json::from_slice(&planned.stdout)
        .unwrap_or_else(|_| panic!("airlock plan: {}", String::from_utf8_lossy(&planned.stderr)));
    let run_id = planned["run"]["id"].as_str().unwrap().to_owned();
    let (code, _) = raw(
        "LOCK",
        &s.state_url("prod/db"),
        &admin,
        &lock_body("held-over-backup"),
    );
    assert_eq!(code, 200);
    let before = history(&s, "dev/app");
    s.kill();

    // Export from SQLite, verify, import into PostgreSQL.
    let bk = tmp.path().join("backup");
    let (ok, out) = backup_cli(&[
        "backup",
        "export",
        dir_arg(&bk),
        "--data-dir",
        dir_arg(&data),
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains(
            "exported 2 stack(s), 3 version(s), 1 user(s), 5 token(s), 1 grant(s), 1 lock(s), 1 run(s)"
        ),
        "{out}"
    );
    let (ok, out) = backup_cli(&["backup", "verify", dir_arg(&bk)]);
    assert!(ok && out.contains("backup OK"), "{out}");
    let tokens = std::fs::read_to_string(bk.join("tokens.json")).unwrap();
    assert!(
        !tokens.contains(&admin) && !tokens.contains(&reader),
        "a secret leaked into the backup"
    );

    let db = TestDatabase::new("backup");
    let (ok, out) = backup_cli(&["migrate", "--database-url", &db.url]);
    assert!(ok && out.contains("postgres"), "{out}");
    let (ok, out) = backup_cli(&["backup", "import", dir_arg(&bk), "--database-url", &db.url]);
    assert!(ok, "{out}");
    let (ok, out) = backup_cli(&["backup", "import", dir_arg(&bk), "--database-url", &db.url]);
    assert!(
        !ok && out.contains("not empty"),
        "a second import is refused: {out}"
    );

    // Straight back out of PostgreSQL: the same files, byte for byte (audit included).
    let bk2 = tmp.path().join("backup2");
    let (ok, out) = backup_cli(&["backup", "export", dir_arg(&bk2), "--database-url", &db.url]);
    assert!(ok, "{out}");

    // The PostgreSQL server serves the same history, locks and tokens (the old secret works),
    // and the audit chain still verifies.
    let pg = TestServer::start_on(&Backing::Url(db.url.clone()), Some(&admin), &[], &[]);
    assert_eq!(history(&pg, "dev/app"), before);
    assert_eq!(
        current_lock(&pg, "prod/db").as_deref(),
        Some("held-over-backup")
    );
    let (code, _) = raw("GET", &pg.state_url("dev/app"), &reader, b"");
    assert_eq!(code, 401, "the revoked token stays revoked");
    assert_verified(&pg);
    let shown: Value =
        serde_json::from_str(&pg.ok(&admin, &["run", "show", &run_id, "--format", "json"]))
            .unwrap();
    assert_eq!(
        shown["run"]["id"],
        run_id.as_str(),
        "the run came along: {shown}"
    );
    let pulled = pg.cli(&admin, &["state", "pull", "dev/app", "--version", "2"]);
    assert!(pulled.status.success());
    assert_eq!(sha256_hex(&pulled.stdout), before[1].1);
    drop(pg);

    // ... and into a fresh SQLite data dir.
    let data2 = tmp.path().join("data2");
    let (ok, out) = backup_cli(&[
        "backup",
        "import",
        dir_arg(&bk2),
        "--data-dir",
        dir_arg(&data2),
    ]);
    assert!(ok, "{out}");
    let m1: Value =
        serde_json::from_slice(&std::fs::read(bk.join("manifest.json")).unwrap()).unwrap();
    let m2: Value =
        serde_json::from_slice(&std::fs::read(bk2.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m1["files"], m2["files"], "lossless both ways");
    assert_eq!(m1["summary"], m2["summary"]);

    // Tampering is caught: a changed state byte, a changed audit record, an extra file.
    let version = bk.join("stacks/0001/versions/2.tfstate");
    let original = std::fs::read(&version).unwrap();
    let mut tampered = original.clone();
    let i = tampered.iter().position(|b| *b == b'v').unwrap();
    tampered[i] = b'w';
    std::fs::write(&version, &tampered).unwrap();
    let (ok, out) = backup_cli(&["backup", "verify", dir_arg(&bk)]);
    assert!(
        !ok && out.contains("backup BROKEN") && out.contains("2.tfstate"),
        "{out}"
    );
    let (ok, out) = backup_cli(&[
        "backup",
        "import",
        dir_arg(&bk),
        "--data-dir",
        dir_arg(&tmp.path().join("data3")),
    ]);
    assert!(!ok && out.contains("does not verify"), "{out}");
    std::fs::write(&version, &original).unwrap();
    // An edited audit record with a manifest forged to match: the chain itself gives it away.
    let audit_path = bk.join("audit.jsonl");
    let audit = std::fs::read_to_string(&audit_path).unwrap();
    let manifest_path = bk.join("manifest.json");
    let manifest = std::fs::read(&manifest_path).unwrap();
    let forged_audit = audit.replacen("\"outcome\":\"ok\"", "\"outcome\":\"denied\"", 1);
    assert_ne!(forged_audit, audit);
    let mut forged: Value = serde_json::from_slice(&manifest).unwrap();
    forged["files"]["audit.jsonl"] =
        json!({"sha256": sha256_hex(forged_audit.as_bytes()), "size": forged_audit.len()});
    std::fs::write(&audit_path, &forged_audit).unwrap();
    std::fs::write(&manifest_path, serde_json::to_vec(&forged).unwrap()).unwrap();
    let (ok, out) = backup_cli(&["backup", "verify", dir_arg(&bk)]);
    assert!(!ok && out.contains("audit chain broken"), "{out}");
    std::fs::write(&audit_path, &audit).unwrap();
    std::fs::write(&manifest_path, &manifest).unwrap();
    std::fs::write(bk.join("stray.txt"), "x").unwrap();
    let (ok, out) = backup_cli(&["backup", "verify", dir_arg(&bk)]);
    assert!(!ok && out.contains("stray.txt"), "{out}");
    std::fs::remove_file(bk.join("stray.txt")).unwrap();
    let (ok, out) = backup_cli(&["backup", "verify", dir_arg(&bk)]);
    assert!(ok, "{out}");
}

/// A backup written before users existed (format `airlock-backup/1`) still verifies and
/// imports; its tokens get users and parents exactly as the store's migration gives them.
#[test]
fn backup_in_format_1_without_users_still_imports() {
    let tmp = tempfile::tempdir().unwrap();
    let bk = tmp.path().join("v1");
    std::fs::create_dir_all(&bk).unwrap();
    let admin = "tok_00000000000000a1";
    let bot = "tok_00000000000000b2";
    let plan = "tok_00000000000000c3";
    let token = |id: &str, name: &str, role: &str, by: &str, revoked: Option<i64>| {
        json!({"id": id, "name": name, "role": role, "stacks": [], "created_at": 1000,
               "expires_at": null, "revoked_at": revoked, "created_by": by, "run_id": null,
               "secret_sha256": sha256_hex(id.as_bytes())})
    };
    let tokens = serde_json::to_vec(&json!([
        token(admin, "bootstrap-admin", "admin", "system", None),
        token(
            bot,
            "bot",
            "agent",
            &format!("bootstrap-admin ({admin})"),
            Some(5000)
        ),
        token(plan, "plan for bot", "agent", &format!("bot ({bot})"), None),
    ]))
    .unwrap();
    std::fs::write(bk.join("tokens.json"), &tokens).unwrap();
    std::fs::write(bk.join("audit.jsonl"), b"").unwrap();
    let manifest = json!({
        "format": "airlock-backup/1",
        "created_at": "2026-01-01T00:00:00Z",
        "source_engine": "sqlite",
        "summary": {"stacks": 0, "versions": 0, "tokens": 3, "grants": 0, "locks": 0, "runs": 0,
                    "audit_events": 0, "audit_head": "0".repeat(64)},
        "files": {
            "tokens.json": {"sha256": sha256_hex(&tokens), "size": tokens.len()},
            "audit.jsonl": {"sha256": sha256_hex(b""), "size": 0},
        },
    });
    std::fs::write(bk.join("manifest.json"), manifest.to_string()).unwrap();
    let (ok, out) = backup_cli(&["backup", "verify", dir_arg(&bk)]);
    assert!(ok && out.contains("backup OK"), "{out}");
    let data = tmp.path().join("data");
    let (ok, out) = backup_cli(&[
        "backup",
        "import",
        dir_arg(&bk),
        "--data-dir",
        dir_arg(&data),
    ]);
    assert!(ok, "{out}");
    // Read back through a format-2 export.
    let bk2 = tmp.path().join("v2");
    let (ok, out) = backup_cli(&[
        "backup",
        "export",
        dir_arg(&bk2),
        "--data-dir",
        dir_arg(&data),
    ]);
    assert!(ok, "{out}");
    let users: Value =
        serde_json::from_slice(&std::fs::read(bk2.join("users.json")).unwrap()).unwrap();
    assert_eq!(users[0]["name"], "admin", "{users}");
    let tokens: Value =
        serde_json::from_slice(&std::fs::read(bk2.join("tokens.json")).unwrap()).unwrap();
    let by_id = |id: &str| {
        tokens
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(by_id(admin)["user"], "admin");
    assert_eq!(by_id(bot)["user"], bot, "each old token is its own user");
    assert_eq!(by_id(plan)["parent_id"], bot);
    assert_eq!(
        by_id(plan)["user"],
        bot,
        "a phase token belongs to its root's user"
    );
    assert_eq!(
        by_id(plan)["revoked_at"],
        5000,
        "a phase token of a revoked token is revoked with it"
    );
}

/// Runs the CLI under umask 022 (the common default, which would make new files 0644).
fn cli_with_umask_022(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("umask 022; exec \"$0\" \"$@\"")
        .arg(AIRLOCK)
        .args(args)
        .env_remove("AIRLOCK_DATABASE_URL")
        .env_remove("AIRLOCK_DATA_DIR")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Every file and directory below `root` (and `root`), with its mode.
fn modes_below(root: &Path) -> Vec<(String, u32)> {
    let mut out = vec![(root.display().to_string(), mode(root))];
    for e in std::fs::read_dir(root).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(modes_below(&p));
        } else {
            out.push((p.display().to_string(), mode(&p)));
        }
    }
    out
}

#[test]
fn data_dir_database_and_backups_are_private_whatever_the_umask() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data/nested");
    let (ok, out) = cli_with_umask_022(&["migrate", "--data-dir", dir_arg(&data)]);
    assert!(ok, "{out}");
    assert_eq!(mode(&data), 0o700, "data dir");
    assert_eq!(mode(&tmp.path().join("data")), 0o700, "created parent");
    let db = data.join("airlock.db");
    assert_eq!(mode(&db), 0o600, "database file");
    // SQLite gives -wal and -shm the database file's mode.
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; CREATE TABLE t (x); INSERT INTO t VALUES (1);",
        )
        .unwrap();
        for suffix in ["-wal", "-shm"] {
            let p = data.join(format!("airlock.db{suffix}"));
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
    }

    // A deleted (archived) stack, to see the backup keep it.
    {
        use airlock_store::{NewAudit, StackSettings, Store};
        let store = airlock_store::SqliteStore::open(&db).unwrap();
        let audit = |a: &str| NewAudit::ok("test", a, Some("old/app"), json!({}));
        store
            .create_stack(
                "old/app",
                false,
                StackSettings::default(),
                audit("stack.create"),
            )
            .unwrap();
        store
            .archive_stack("old/app", "test", "gone", audit("stack.delete"))
            .unwrap();
    }
    let bk = tmp.path().join("backups/b1");
    let (ok, out) = cli_with_umask_022(&[
        "backup",
        "export",
        dir_arg(&bk),
        "--data-dir",
        dir_arg(&data),
    ]);
    assert!(ok, "{out}");
    for (path, m) in modes_below(&bk) {
        let want = if Path::new(&path).is_dir() {
            0o700
        } else {
            0o600
        };
        assert_eq!(m, want, "{path}");
    }

    // `verify --manifest-sha256` checks the hash printed at export.
    let printed = out
        .split("manifest.json SHA-256: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .to_owned();
    let (ok, out) = backup_cli(&[
        "backup",
        "verify",
        dir_arg(&bk),
        "--manifest-sha256",
        &printed,
    ]);
    assert!(ok && out.contains("backup OK"), "{out}");
    let other = "0".repeat(64);
    let (ok, out) = backup_cli(&[
        "backup",
        "verify",
        dir_arg(&bk),
        "--manifest-sha256",
        &other,
    ]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("backup BROKEN: 1 problem(s)")
            && out.contains(&format!(
                "manifest.json has SHA-256 {printed}, not the {other} recorded at export"
            )),
        "{out}"
    );
    let (ok, out) = backup_cli(&["backup", "verify", dir_arg(&bk), "--manifest-sha256", "abc"]);
    assert!(
        !ok && out.contains("--manifest-sha256 must be the 64 hex digits"),
        "{out}"
    );

    // Import keeps the deletion.
    let restored = tmp.path().join("restored");
    let (ok, out) = cli_with_umask_022(&[
        "backup",
        "import",
        dir_arg(&bk),
        "--data-dir",
        dir_arg(&restored),
    ]);
    assert!(ok, "{out}");
    assert_eq!(mode(&restored), 0o700);
    let store = airlock_store::SqliteStore::open(&restored.join("airlock.db")).unwrap();
    let old = airlock_store::Store::stack(&store, "old/app")
        .unwrap()
        .unwrap();
    assert_eq!(old.archived.unwrap().reason, "gone");
}
