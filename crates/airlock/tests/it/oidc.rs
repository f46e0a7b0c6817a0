//! airlock as an OIDC issuer and CI login with a forge's ID token (issue 15), against the real
//! binary: issued tokens verified by an independent verifier (PyJWT + cryptography, from the
//! discovery document and JWKS only), key rotation, the apply token's binding to its run, and
//! forge logins against a local RS256 issuer (`tests/oidc/issuer.py`) with every attack refused
//! and audited.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};

use crate::support::*;

fn python() -> String {
    std::env::var("AIRLOCK_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("AIRLOCK_TEST_PYTHON is not set: these tests verify tokens with PyJWT and run a test issuer; run `. scripts/test-deps.sh` first (scripts/test.sh does)")
    })
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/oidc")
        .join(name)
}

/// Verifies `(expected sub, token)` pairs with PyJWT from the issuer's discovery and JWKS;
/// returns each token's `{kid, claims}`, or the verifier's error.
fn verify(issuer: &str, audience: &str, tokens: &[(&str, &str)]) -> Result<Vec<Value>, String> {
    let mut child = Command::new(python())
        .arg(script("verify.py"))
        .args([issuer, audience])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        for (sub, t) in tokens {
            writeln!(stdin, "{sub} {t}").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    if out.status.success() {
        Ok(lines)
    } else {
        Err(format!(
            "{lines:?} {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn post(url: &str, token: &str, body: Value) -> (u16, Value) {
    let (code, text) = raw("POST", url, token, body.to_string().as_bytes());
    (
        code,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn plan_token(t: &Team, token: &str, stack: &str, aud: &str) -> (u16, Value) {
    let seg = stack.replace('/', "%2F");
    let url = format!("{}/api/v1/stacks/{seg}/identity-token", t.s.url);
    post(&url, token, json!({"audience": aud}))
}

fn apply_token(t: &Team, token: &str, run: &str) -> (u16, Value) {
    let url = format!("{}/api/v1/runs/{run}/identity-token", t.s.url);
    post(&url, token, json!({"audience": "sts.amazonaws.com"}))
}

fn denied_audits(t: &Team, action: &str) -> Vec<Value> {
    let v: Value = serde_json::from_str(&t.s.ok(
        &t.s.admin,
        &[
            "audit", "--action", action, "--limit", "500", "--format", "json",
        ],
    ))
    .unwrap();
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["outcome"] == "denied")
        .cloned()
        .collect()
}

#[test]
fn phase_tokens_verify_independently_and_the_apply_token_is_bound_to_its_applying_run() {
    let t = team_on(TestServer::start_issuer(&[]), "prod/app");
    let ws = Workspace::new(&t.s, "prod/app", &data_resources(1));
    let run = plan(&t, &ws, &t.agent, "prod/app");
    let (code, plan_tok) = plan_token(&t, &t.agent, "prod/app", "sts.amazonaws.com");
    assert_eq!(code, 201, "{plan_tok}");
    let plan_jwt = plan_tok["token"].as_str().unwrap();

    // Apply-phase: not before the run applies, and not to anyone but its run-bound token.
    let (code, e) = apply_token(&t, &t.ci, &run);
    assert_eq!(code, 403, "{e}");
    t.s.ok(&t.approver, &["approve", &run]);
    let run_token = start_apply(&t, &run);
    let (code, e) = apply_token(&t, &t.ci, &run);
    assert_eq!(
        code, 403,
        "the caller that started the apply is not the run: {e}"
    );
    assert!(e.to_string().contains("own run-bound token"), "{e}");
    let (code, e) = apply_token(&t, &t.agent, &run);
    assert_eq!(code, 403, "{e}");
    let (code, e) = plan_token(&t, &run_token, "prod/app", "sts.amazonaws.com");
    assert_eq!(code, 403, "a run-bound token asks for a plan token: {e}");
    let (code, apply_tok) = apply_token(&t, &run_token, &run);
    assert_eq!(code, 201, "{apply_tok}");
    let apply_jwt = apply_tok["token"].as_str().unwrap();

    // The independent verifier: signature, iss, aud, times, sub per phase.
    let issuer = t.s.url.clone();
    let checked = verify(
        &issuer,
        "sts.amazonaws.com",
        &[
            ("stack:prod/app:run_phase:plan", plan_jwt),
            ("stack:prod/app:run_phase:apply", apply_jwt),
        ],
    )
    .unwrap();
    let apply_claims = &checked[1]["claims"];
    assert_eq!(apply_claims["airlock_run_id"], run.as_str());
    assert_eq!(
        apply_claims["airlock_plan_sha256"],
        run_json(&t, &run)["run"]["plan_sha256"]
    );
    assert_eq!(
        checked[0]["claims"]["airlock_principal"],
        checked[0]["claims"]["airlock_principal"]
    );
    // A wrong audience is refused by the verifier, a tampered token too.
    assert!(verify(
        &issuer,
        "other",
        &[("stack:prod/app:run_phase:plan", plan_jwt)]
    )
    .is_err());
    let mut parts: Vec<String> = plan_jwt.split('.').map(str::to_owned).collect();
    parts[1] = parts[1].replacen('e', "f", 1);
    assert!(verify(
        &issuer,
        "sts.amazonaws.com",
        &[("stack:prod/app:run_phase:plan", &parts.join("."))]
    )
    .is_err());

    // The run finishes: a replayed request for its apply token is refused, and audited.
    let (code, body) = post(
        &format!("{}/api/v1/runs/{run}/finish", t.s.url),
        &run_token,
        json!({"success": false, "log_b64": "", "plan_check": "test"}),
    );
    assert_eq!(code, 200, "{body}");
    let (code, e) = apply_token(&t, &run_token, &run);
    assert!(code == 401 || code == 403, "{code} {e}");
    // (The run-bound token died with the run: the refusal may come from authentication.)
    assert!(denied_audits(&t, "oidc.apply_token").len() >= 2);

    // Bad requests: hostile audiences and lifetimes.
    for body in [
        json!({"audience": ""}),
        json!({"audience": "a\u{0}b"}),
        json!({"audience": "x".repeat(301)}),
        json!({"audience": "a", "ttl_seconds": 3601}),
        json!({"audience": "a", "ttl_seconds": 1}),
        json!({"aud": "a"}),
    ] {
        let url = format!("{}/api/v1/stacks/prod%2Fapp/identity-token", t.s.url);
        let (code, e) = post(&url, &t.agent, body);
        assert_eq!(code, 400, "{e}");
    }
    // A reader cannot get one at all; a token scoped elsewhere cannot either.
    let reader = t.s.token("peek", "reader");
    assert_eq!(plan_token(&t, &reader, "prod/app", "a").0, 403);
}

#[test]
fn a_rotated_key_keeps_verifying_its_tokens_and_signs_no_more() {
    let t = team_on(TestServer::start_issuer(&[]), "dev/app");
    let (_, before) = plan_token(&t, &t.agent, "dev/app", "sts.amazonaws.com");
    let old_kid = before["kid"].as_str().unwrap().to_owned();
    let out = t.s.ok(&t.s.admin, &["oidc", "rotate"]);
    assert!(out.contains("new signing key"), "{out}");
    // Only an admin of all stacks rotates.
    t.s.ok(&t.s.admin, &["user", "create", "scoped"]);
    let out = t.s.ok(
        &t.s.admin,
        &[
            "token", "create", "--name", "scoped", "--role", "admin", "--user", "scoped",
            "--stack", "dev/*", "--format", "json",
        ],
    );
    let scoped: Value = serde_json::from_str(&out).unwrap();
    let e =
        t.s.fails(scoped["secret"].as_str().unwrap(), &["oidc", "rotate"]);
    assert!(e.contains("scoped"), "{e}");
    let (_, after) = plan_token(&t, &t.agent, "dev/app", "sts.amazonaws.com");
    let new_kid = after["kid"].as_str().unwrap();
    assert_ne!(old_kid, new_kid);
    let jwks: Value = ureq::get(&format!("{}/.well-known/jwks.json", t.s.url))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids, [old_kid.as_str(), new_kid]);
    assert!(
        jwks.to_string().find("\"d\"").is_none(),
        "a private key in the JWKS: {jwks}"
    );
    let sub = "stack:dev/app:run_phase:plan";
    let checked = verify(
        &t.s.url,
        "sts.amazonaws.com",
        &[
            (sub, before["token"].as_str().unwrap()),
            (sub, after["token"].as_str().unwrap()),
        ],
    )
    .unwrap();
    assert_eq!(checked[0]["kid"], old_kid.as_str());
    assert_eq!(checked[1]["kid"], new_kid);
    // (When the old key leaves the JWKS is `oidc::tests::the_jwks_keeps_a_retired_key_until_its_tokens_expired`.)
}

/// The local forge issuer (a Python process), killed on drop.
struct Issuer {
    child: Child,
    url: String,
}

impl Drop for Issuer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn issuer() -> Issuer {
    let mut child = Command::new(python())
        .arg(script("issuer.py"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = format!("http://127.0.0.1:{}", line.trim());
    Issuer { child, url }
}

impl Issuer {
    fn mint(&self, claims: Value, attack: Option<&str>) -> String {
        let v: Value = ureq::post(&format!("{}/mint", self.url))
            .send_json(json!({"claims": claims, "attack": attack}))
            .unwrap()
            .into_json()
            .unwrap();
        v["token"].as_str().unwrap().to_owned()
    }
}

fn login(t: &Team, token: &str, role: Option<&str>) -> (u16, Value) {
    post(
        &format!("{}/api/v1/oidc/login", t.s.url),
        "",
        json!({"token": token, "role": role}),
    )
}

fn push_claims(aud: &str) -> Value {
    json!({"sub": "repo:org/repo:ref:refs/heads/main", "repository": "org/repo",
           "ref": "refs/heads/main", "event_name": "push", "aud": aud})
}

#[test]
fn ci_logs_in_with_its_forge_token_and_every_attack_is_refused_and_audited() {
    let t = team_on(TestServer::start_issuer(&[]), "dev/app");
    let forge = issuer();
    let aud = t.s.url.clone();
    let admin = |args: &[&str]| t.s.ok(&t.s.admin, args);
    // The ci role needs a ref; approver or admin can never be given to a job.
    assert!(t
        .s
        .fails(
            &t.s.admin,
            &[
                "trust",
                "add",
                "github",
                "--repository",
                "org/repo",
                "--role",
                "ci",
                "--issuer",
                &forge.url
            ]
        )
        .contains("needs --ref"));
    assert!(t
        .s
        .fails(
            &t.s.admin,
            &[
                "trust",
                "add",
                "github",
                "--repository",
                "org/repo",
                "--ref",
                "refs/heads/main",
                "--role",
                "approver",
                "--issuer",
                &forge.url
            ]
        )
        .contains("never approver"));
    assert!(t
        .s
        .fails(
            &t.s.admin,
            &[
                "trust",
                "add",
                "github",
                "--repository",
                "org/repo",
                "--role",
                "agent",
                "--issuer",
                "http://example.com"
            ]
        )
        .contains("https"));
    assert!(t
        .s
        .fails(
            &t.agent,
            &[
                "trust",
                "add",
                "github",
                "--repository",
                "org/repo",
                "--role",
                "agent",
                "--issuer",
                &forge.url
            ]
        )
        .contains("admin"));
    admin(&[
        "trust",
        "add",
        "github",
        "--repository",
        "org/repo",
        "--ref",
        "refs/heads/main",
        "--role",
        "ci",
        "--stack",
        "dev/*",
        "--issuer",
        &forge.url,
    ]);
    admin(&[
        "trust",
        "add",
        "github",
        "--repository",
        "org/repo",
        "--role",
        "agent",
        "--stack",
        "dev/*",
        "--issuer",
        &forge.url,
    ]);
    admin(&[
        "trust",
        "add",
        "github",
        "--repository",
        "org/slow",
        "--role",
        "agent",
        "--issuer",
        &format!("{}/slow", forge.url),
    ]);
    admin(&[
        "trust",
        "add",
        "github",
        "--repository",
        "org/garbage",
        "--role",
        "agent",
        "--issuer",
        &format!("{}/garbage", forge.url),
    ]);
    let listed = admin(&["trust", "list"]);
    assert!(
        listed.contains("refs/heads/main") && listed.contains("org/repo"),
        "{listed}"
    );

    // The real CLI on "GitHub Actions": the runner's ID token, masked, into $GITHUB_ENV.
    let dir = tempfile::tempdir().unwrap();
    let gh_env = dir.path().join("github_env");
    std::fs::write(&gh_env, "").unwrap();
    let request_url = format!("{}/gh-token?api-version=2.0", forge.url);
    let out = cli_in(
        &t.s,
        "",
        dir.path(),
        &["login", "--oidc", "--github-env"],
        &[
            ("ACTIONS_ID_TOKEN_REQUEST_URL", request_url.as_str()),
            ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "runner-secret"),
            ("GITHUB_ENV", gh_env.to_str().unwrap()),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let written = std::fs::read_to_string(&gh_env).unwrap();
    let secret = written
        .trim()
        .strip_prefix("AIRLOCK_TOKEN=")
        .unwrap()
        .to_owned();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("::add-mask::{secret}")));
    let who = t.s.ok(&secret, &["whoami"]);
    assert!(who.contains("role ci"), "{who}");
    // Each login asks the runner for a new ID token (a new jti), so logging in again works.
    let again = cli_in(
        &t.s,
        "",
        dir.path(),
        &["login", "--oidc", "--github-env"],
        &[
            ("ACTIONS_ID_TOKEN_REQUEST_URL", request_url.as_str()),
            ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "runner-secret"),
            ("GITHUB_ENV", gh_env.to_str().unwrap()),
        ],
    );
    assert!(again.status.success(), "{}", text(&again));
    // The token is scoped as the trust says.
    assert_eq!(plan_token(&t, &secret, "dev/app", "a").0, 201);

    // GitLab's way: the ID token in a variable.
    admin(&[
        "trust",
        "add",
        "gitlab",
        "--repository",
        "group/proj",
        "--ref",
        "refs/heads/main",
        "--role",
        "ci",
        "--issuer",
        &forge.url,
    ]);
    let gl = forge.mint(json!({"sub": "project_path:group/proj:ref_type:branch:ref:main", "project_path": "group/proj",
        "ref": "main", "ref_type": "branch", "ref_protected": "true", "pipeline_source": "push", "aud": aud}), None);
    let out = cli_in(
        &t.s,
        "",
        dir.path(),
        &["login", "--oidc", "--format", "json"],
        &[("AIRLOCK_ID_TOKEN", gl.as_str())],
    );
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["role"], "ci");
    // The same ID token again (a second login in the job, or someone who copied it): refused,
    // saying why and what to do.
    let out = cli_in(
        &t.s,
        "",
        dir.path(),
        &["login", "--oidc", "--format", "json"],
        &[("AIRLOCK_ID_TOKEN", gl.as_str())],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("already used") && text(&out).contains("id_tokens"),
        "{}",
        text(&out)
    );

    // A pull-request job: at most agent, and asking for ci is refused.
    let pr = forge.mint(json!({"sub": "repo:org/repo:pull_request", "repository": "org/repo", "ref": "refs/pull/7/merge",
        "event_name": "pull_request", "aud": aud}), None);
    let (code, v) = login(&t, &pr, None);
    assert_eq!((code, v["role"].as_str()), (201, Some("agent")), "{v}");
    // pull_request_target runs on the base branch's ref: still a pull request.
    let prt = forge.mint(json!({"sub": "repo:org/repo:ref:refs/heads/main", "repository": "org/repo", "ref": "refs/heads/main",
        "event_name": "pull_request_target", "aud": aud}), None);

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let with = |extra: Value| {
        let mut c = push_claims(&aud);
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let attacks: Vec<(&str, String, Option<&str>, u16, &str)> = vec![
        ("alg none", forge.mint(push_claims(&aud), Some("none")), None, 401, "alg \"none\" is refused"),
        ("HS256 with the public key", forge.mint(push_claims(&aud), Some("hs256-public")), None, 401, "alg \"HS256\" is refused"),
        ("wrong kid", forge.mint(push_claims(&aud), Some("wrong-kid")), None, 401, "no key \"not-a-key\""),
        ("forged sub, another key", forge.mint(push_claims(&aud), Some("other-key")), None, 401, "does not verify"),
        ("expired", forge.mint(with(json!({"exp": now - 120, "iat": now - 600, "nbf": now - 600})), None), None, 401, "expired"),
        ("not yet valid", forge.mint(with(json!({"nbf": now + 600})), None), None, 401, "nbf"),
        ("wrong aud", forge.mint(with(json!({"aud": "https://elsewhere"})), None), None, 401, "aud"),
        ("wrong iss", forge.mint(with(json!({"iss": "https://token.actions.githubusercontent.com"})), None), None, 401, "not trusted"),
        ("sub of another repository", forge.mint(with(json!({"sub": "repo:evil/repo:ref:refs/heads/main"})), None), None, 401, "does not belong"),
        ("pull request asks for ci", prt.clone(), Some("ci"), 403, "at most a plan-capable role"),
        ("other branch asks for ci", forge.mint(with(json!({"ref": "refs/heads/dev", "sub": "repo:org/repo:ref:refs/heads/dev"})), None), Some("ci"), 403, "at most the agent role"),
        ("claims unmet", forge.mint(with(json!({"repository": "org/other", "sub": "repo:org/other:ref:refs/heads/main"})), None), None, 401, "no trust matches"),
        ("garbage JWKS", forge.mint(with(json!({"iss": format!("{}/garbage", forge.url), "repository": "org/garbage", "sub": "repo:org/garbage:x"})), None), None, 401, "could not be fetched"),
        ("not a JWT", "a.b".into(), None, 401, "three dot-separated parts"),
        ("oversized", "a".repeat(20_000), None, 401, "longer than"),
        ("no jti", forge.mint(with(json!({"jti": null})), None), None, 401, "no `jti`"),
        ("replayed", gl.clone(), None, 401, "already used"),
    ];
    for (name, token, role, want, says) in &attacks {
        let (code, v) = login(&t, token, *role);
        assert_eq!(code, *want, "{name}: {v}");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{name}: {v}");
    }
    // A slow JWKS: a bounded wait, a clear refusal, and the server stays up.
    let slow = forge.mint(with(json!({"iss": format!("{}/slow", forge.url), "repository": "org/slow", "sub": "repo:org/slow:x"})), None);
    let started = std::time::Instant::now();
    let (code, v) = login(&t, &slow, None);
    assert_eq!(code, 401, "{v}");
    assert!(v.to_string().contains("could not be fetched"), "{v}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let (code, _) = raw("GET", &format!("{}/healthz", t.s.url), "", b"");
    assert_eq!(code, 200);
    // Every refusal is in the audit log, with its reason.
    let denied = denied_audits(&t, "oidc.login");
    assert!(
        denied.len() > attacks.len(),
        "{} refusals audited of {}",
        denied.len(),
        attacks.len() + 1
    );
    assert!(denied.iter().any(|e| e["detail"]["reason"]
        .as_str()
        .unwrap_or_default()
        .contains("alg \"none\"")));
    // And a good token still logs in; a removed trust no longer does.
    let (code, v) = login(&t, &forge.mint(push_claims(&aud), None), Some("ci"));
    assert_eq!(code, 201, "{v}");
    let ci_trust = v["trust"].as_str().unwrap().to_owned();
    let issued = v["secret"].as_str().unwrap().to_owned();
    let (code, _) = raw("GET", &format!("{}/api/v1/stacks", t.s.url), &issued, b"");
    assert_eq!(
        code, 200,
        "the issued token works before the trust is removed"
    );
    admin(&["trust", "remove", &ci_trust]);
    let (code, v) = login(&t, &forge.mint(push_claims(&aud), None), Some("ci"));
    assert_eq!(code, 403, "{v}");
    // Removing a trust also revokes what it issued: a leaked job token dies with the trust.
    let (code, _) = raw("GET", &format!("{}/api/v1/stacks", t.s.url), &issued, b"");
    assert_eq!(code, 401, "a token issued by a removed trust still works");
}

/// Two replicas on one PostgreSQL: one forge ID token sent to both at once (the job and a
/// replay of its token, racing) logs in exactly once; replayed afterwards at either, refused.
#[test]
fn a_forge_token_logs_in_once_across_two_replicas() {
    let db = TestDatabase::new("jti");
    let backing = Backing::Url(db.url.clone());
    let public = ["--public-url", "https://airlock.example"];
    let a = TestServer::start_on(&backing, None, &public, &[]);
    let b = TestServer::start_on(&backing, Some(&a.admin), &public, &[]);
    let forge = issuer();
    a.ok(
        &a.admin,
        &[
            "trust",
            "add",
            "github",
            "--repository",
            "org/repo",
            "--ref",
            "refs/heads/main",
            "--role",
            "ci",
            "--issuer",
            &forge.url,
        ],
    );
    let login_at = |s: &TestServer, token: &str| {
        post(
            &format!("{}/api/v1/oidc/login", s.url),
            "",
            json!({"token": token}),
        )
    };
    for round in 0..3 {
        let token = forge.mint(push_claims("https://airlock.example"), None);
        let start = std::sync::Barrier::new(8);
        let answers: Vec<(u16, Value)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let (s, token, start) = ([&a, &b][i % 2], &token, &start);
                    scope.spawn(move || {
                        start.wait();
                        login_at(s, token)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let won = answers.iter().filter(|(c, _)| *c == 201).count();
        assert_eq!(won, 1, "round {round}: {answers:?}");
        for (code, v) in answers.iter().filter(|(c, _)| *c != 201) {
            assert_eq!(*code, 401, "round {round}: {v}");
            assert!(v.to_string().contains("already used"), "round {round}: {v}");
        }
        for s in [&a, &b] {
            let (code, v) = login_at(s, &token);
            assert_eq!(code, 401, "a replay at {} logged in: {v}", s.url);
        }
    }
}
