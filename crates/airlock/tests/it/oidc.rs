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

/// `airlock trust add github` for the test forge's `org/repo` (repository 1001, owner 2002),
/// trusting `issuer`, with `extra` options (`--ref`, `--role`, `--stack`, `--audience`, ...).
fn github_trust<'a>(issuer: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "trust",
        "add",
        "github",
        "--repository",
        "org/repo",
        "--repository-id",
        "1001",
        "--owner-id",
        "2002",
        "--issuer",
        issuer,
    ];
    args.extend_from_slice(extra);
    args
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
           "repository_id": "1001", "repository_owner_id": "2002",
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
        .fails(&t.s.admin, &github_trust(&forge.url, &["--role", "ci"]))
        .contains("needs --ref"));
    assert!(t
        .s
        .fails(
            &t.s.admin,
            &github_trust(
                &forge.url,
                &["--ref", "refs/heads/main", "--role", "approver"]
            )
        )
        .contains("never approver"));
    assert!(t
        .s
        .fails(
            &t.s.admin,
            &github_trust("http://example.com", &["--role", "agent"])
        )
        .contains("https"));
    assert!(t
        .s
        .fails(&t.agent, &github_trust(&forge.url, &["--role", "agent"]))
        .contains("admin"));
    admin(&github_trust(
        &forge.url,
        &[
            "--ref",
            "refs/heads/main",
            "--role",
            "ci",
            "--stack",
            "dev/*",
        ],
    ));
    admin(&github_trust(
        &forge.url,
        &["--role", "agent", "--stack", "dev/*"],
    ));
    admin(&[
        "trust",
        "add",
        "github",
        "--repository",
        "org/slow",
        "--repository-id",
        "1001",
        "--owner-id",
        "2002",
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
        "--repository-id",
        "1001",
        "--owner-id",
        "2002",
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
        "--repository-id",
        "1001",
        "--owner-id",
        "2002",
        "--ref",
        "refs/heads/main",
        "--role",
        "ci",
        "--issuer",
        &forge.url,
    ]);
    let gl = forge.mint(json!({"sub": "project_path:group/proj:ref_type:branch:ref:main", "project_path": "group/proj",
        "project_id": "1001", "namespace_id": "2002", "ref": "main", "ref_type": "branch", "ref_protected": "true", "pipeline_source": "push", "aud": aud}), None);
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
    let pr = forge.mint(json!({"sub": "repo:org/repo:pull_request", "repository": "org/repo", "repository_id": "1001", "repository_owner_id": "2002", "ref": "refs/pull/7/merge",
        "event_name": "pull_request", "aud": aud}), None);
    let (code, v) = login(&t, &pr, None);
    assert_eq!((code, v["role"].as_str()), (201, Some("agent")), "{v}");
    // pull_request_target runs on the base branch's ref: still a pull request.
    let prt = forge.mint(json!({"sub": "repo:org/repo:ref:refs/heads/main", "repository": "org/repo", "repository_id": "1001", "repository_owner_id": "2002", "ref": "refs/heads/main",
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
        ("the path re-created by someone else", forge.mint(with(json!({"repository_id": "9999", "repository_owner_id": "9998"})), None), None, 401, "not the pinned"),
        ("no repository id", forge.mint(with(json!({"repository_id": null})), None), None, 401, "not the pinned"),
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

fn jwks_kids(url: &str) -> Vec<String> {
    let (code, text) = raw("GET", &format!("{url}/.well-known/jwks.json"), "", b"");
    assert_eq!(code, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

/// Trusts (removed ones too) and drift reports survive a backup from SQLite to PostgreSQL and
/// back, lossless; the signing key does not travel (no file but the audit names its kid), so
/// the restored server signs with a new key, and a CI job logs in through the restored trust.
/// A format-3 backup (before trusts) still imports. A hostile backup (a trust granting admin,
/// a drift report of a stack the backup lacks, or of a serial it lacks) is refused by verify
/// and import, and the import writes nothing.
#[test]
fn trusts_and_drift_reports_survive_a_backup_and_ci_logs_in_after_restore_with_a_new_key() {
    use base64::Engine;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let forge = issuer();
    let aud = "https://airlock.example";
    let public = ["--public-url", aud];
    let mut s = TestServer::start_on(&Backing::Dir(data.clone()), None, &public, &[]);
    let admin = s.admin.clone();
    s.ok(&admin, &["stack", "create", "dev/app"]);
    let trust = |role: &str, git_ref: Option<&str>| {
        let mut args = github_trust(
            &forge.url,
            &[
                "--role",
                role,
                "--stack",
                "dev/*",
                "--audience",
                aud,
                "--format",
                "json",
            ],
        );
        if let Some(r) = git_ref {
            args.extend(["--ref", r]);
        }
        let v: Value = serde_json::from_str(&s.ok(&admin, &args)).unwrap();
        v["trust"]["id"].as_str().unwrap().to_owned()
    };
    let ci_trust = trust("ci", Some("refs/heads/main"));
    let removed = trust("agent", None);
    s.ok(&admin, &["trust", "remove", &removed]);
    // A trust is pinned once (other ids are another repository), a removed one not at all.
    let pin = |id: &str| {
        s.fails(
            &admin,
            &[
                "trust",
                "pin",
                id,
                "--repository-id",
                "9999",
                "--owner-id",
                "2002",
            ],
        )
    };
    assert!(pin(&ci_trust).contains("already pinned"));
    assert!(pin(&removed).contains("was removed"));
    let login_url = format!("{}/api/v1/oidc/login", s.url);
    let first = forge.mint(push_claims(aud), None);
    let (code, v) = post(&login_url, "", json!({"token": first}));
    assert_eq!((code, v["role"].as_str()), (201, Some("ci")), "{v}");
    let ci = v["secret"].as_str().unwrap().to_owned();
    // Two drift reports by the CI job: in sync (no state yet), then unknown.
    let drift_url = format!("{}/api/v1/stacks/dev%2Fapp/drift", s.url);
    let plan = json!({"format_version": "1.2", "terraform_version": "1.11.4",
                      "resource_drift": [], "output_changes": {}});
    let b64 = base64::engine::general_purpose::STANDARD.encode(plan.to_string());
    let (code, v) = post(
        &drift_url,
        &ci,
        json!({"serial": null, "plan_json_b64": b64}),
    );
    assert_eq!(code, 201, "{v}");
    let (code, v) = post(
        &drift_url,
        &ci,
        json!({"serial": null, "error": "refresh failed"}),
    );
    assert_eq!(code, 201, "{v}");
    let (_, history) = raw("GET", &drift_url, &admin, b"");
    let old_kids = jwks_kids(&s.url);
    assert_eq!(old_kids.len(), 1);
    s.kill();

    let bk = tmp.path().join("bk");
    let (ok, out) = backup_cli(&[
        "backup",
        "export",
        bk.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(ok && out.contains("2 trust(s), 2 drift report(s)"), "{out}");
    for e in std::fs::read_dir(&bk).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() && e.file_name() != "audit.jsonl" {
            let text = std::fs::read_to_string(e.path()).unwrap();
            assert!(
                !text.contains(&old_kids[0]) && !text.contains("pkcs8"),
                "{:?} carries the signing key",
                e.file_name()
            );
        }
    }
    let (ok, out) = backup_cli(&["backup", "verify", bk.to_str().unwrap()]);
    assert!(ok && out.contains("backup OK"), "{out}");

    // Into PostgreSQL: the trusts, the drift history and a login with a new key.
    let db = TestDatabase::new("trust_backup");
    let (ok, out) = backup_cli(&[
        "backup",
        "import",
        bk.to_str().unwrap(),
        "--database-url",
        &db.url,
    ]);
    assert!(ok, "{out}");
    let pg = TestServer::start_on(&Backing::Url(db.url.clone()), Some(&admin), &public, &[]);
    let listed = pg.ok(&admin, &["trust", "list"]);
    assert!(
        listed.contains("1001/2002") && listed.contains(&removed) && listed.contains("removed"),
        "{listed}"
    );
    let (_, restored_history) = raw(
        "GET",
        &format!("{}/api/v1/stacks/dev%2Fapp/drift", pg.url),
        &admin,
        b"",
    );
    assert_eq!(restored_history, history, "the drift history is the same");
    let new_kids = jwks_kids(&pg.url);
    assert!(
        !new_kids.iter().any(|k| old_kids.contains(k)),
        "the restored server signs with a new key: {new_kids:?}"
    );
    let (code, v) = post(
        &format!("{}/api/v1/oidc/login", pg.url),
        "",
        json!({"token": first}),
    );
    assert_eq!(
        code, 401,
        "the token used before the backup logs in again: {v}"
    );
    let (code, v) = post(
        &format!("{}/api/v1/oidc/login", pg.url),
        "",
        json!({"token": forge.mint(push_claims(aud), None)}),
    );
    assert_eq!((code, v["role"].as_str()), (201, Some("ci")), "{v}");
    let who = pg.ok(v["secret"].as_str().unwrap(), &["whoami"]);
    assert!(who.contains("role ci"), "{who}");
    let (code, v) = post(
        &format!("{}/api/v1/stacks/dev%2Fapp/identity-token", pg.url),
        &ci,
        json!({"audience": "sts.amazonaws.com"}),
    );
    assert_eq!(
        code, 201,
        "the restored CI token gets a phase token from the new key: {v}"
    );
    assert_eq!(v["kid"].as_str(), new_kids.first().map(String::as_str));
    drop(pg);

    // Back out of PostgreSQL and into SQLite: lossless both ways.
    let bk2 = tmp.path().join("bk2");
    let (ok, out) = backup_cli(&[
        "backup",
        "export",
        bk2.to_str().unwrap(),
        "--database-url",
        &db.url,
    ]);
    assert!(ok, "{out}");
    let (ok, out) = backup_cli(&[
        "backup",
        "import",
        bk2.to_str().unwrap(),
        "--data-dir",
        tmp.path().join("data2").to_str().unwrap(),
    ]);
    assert!(ok && out.contains("2 trust(s), 2 drift report(s)"), "{out}");
    let files = |dir: &std::path::Path, rel: &str| std::fs::read(dir.join(rel)).unwrap();
    for rel in ["oidc_trusts.json", "drift_reports.json"] {
        assert_eq!(
            files(&bk, rel),
            files(&bk2, rel),
            "{rel} round-trips byte for byte"
        );
    }
    // The SQLite restore too: its own new key, the same drift history, a CI login.
    let lite = TestServer::start_on(
        &Backing::Dir(tmp.path().join("data2")),
        Some(&admin),
        &public,
        &[],
    );
    let (_, lite_history) = raw(
        "GET",
        &format!("{}/api/v1/stacks/dev%2Fapp/drift", lite.url),
        &admin,
        b"",
    );
    assert_eq!(lite_history, history);
    assert!(!jwks_kids(&lite.url)
        .iter()
        .any(|k| old_kids.contains(k) || new_kids.contains(k)));
    let (code, v) = post(
        &format!("{}/api/v1/oidc/login", lite.url),
        "",
        json!({"token": forge.mint(push_claims(aud), None)}),
    );
    assert_eq!((code, v["role"].as_str()), (201, Some("ci")), "{v}");
    drop(lite);

    // Format 3 (no trusts, no drift reports) still verifies and imports, restoring none.
    let v3 = tmp.path().join("v3");
    copy_dir(&bk, &v3);
    let mpath = v3.join("manifest.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    m["format"] = json!("airlock-backup/3");
    for rel in ["oidc_trusts.json", "drift_reports.json"] {
        m["files"].as_object_mut().unwrap().remove(rel);
        std::fs::remove_file(v3.join(rel)).unwrap();
    }
    for k in ["trusts", "drift_reports"] {
        m["summary"].as_object_mut().unwrap().remove(k);
    }
    std::fs::write(&mpath, m.to_string()).unwrap();
    let data3 = tmp.path().join("data3");
    let (ok, out) = backup_cli(&[
        "backup",
        "import",
        v3.to_str().unwrap(),
        "--data-dir",
        data3.to_str().unwrap(),
    ]);
    assert!(ok && out.contains("0 trust(s), 0 drift report(s)"), "{out}");

    // Hostile backups: each is refused by verify with a clear reason, and import writes nothing.
    type Edit = fn(&mut Value);
    let hostile: [(&str, &str, Edit, &str); 7] = [
        // Well-formed, but not what the audit events that committed with them say.
        (
            "wider",
            "oidc_trusts.json",
            |v| v[0]["stacks"] = json!([]),
            "differs from what its audit events say",
        ),
        (
            "revived",
            "oidc_trusts.json",
            |v| {
                for t in v.as_array_mut().unwrap() {
                    t["removed_at"] = Value::Null;
                    t["removed_by"] = Value::Null;
                }
            },
            "removed it, but the backup has it active",
        ),
        (
            "in-sync",
            "drift_reports.json",
            |v| {
                let mut forged = v[0].clone();
                forged["id"] = json!("drf_forged");
                forged["status"] = json!("in_sync");
                forged["created_at"] = json!(4_102_444_800_000_i64);
                v.as_array_mut().unwrap().push(forged);
            },
            "no drift.report audit event",
        ),
        (
            "admin",
            "oidc_trusts.json",
            |v| v[0]["role"] = json!("admin"),
            "never admin",
        ),
        (
            "unpinned-ids",
            "oidc_trusts.json",
            |v| v[0]["repository_id"] = json!("10O1"),
            "numeric",
        ),
        (
            "ghost",
            "drift_reports.json",
            |v| v[0]["stack"] = json!("prod/ghost"),
            "not in the backup",
        ),
        (
            "serial",
            "drift_reports.json",
            |v| v[0]["serial"] = json!(7),
            "does not hold",
        ),
    ];
    for (name, rel, edit, why) in hostile {
        let bad = tmp.path().join(format!("bad-{name}"));
        copy_dir(&bk, &bad);
        forge_backup_file(&bad, rel, edit);
        let (ok, out) = backup_cli(&["backup", "verify", bad.to_str().unwrap()]);
        assert!(
            !ok && out.contains("backup BROKEN") && out.contains(why),
            "{name}: {out}"
        );
        let target = tmp.path().join(format!("restored-{name}"));
        let (ok, out) = backup_cli(&[
            "backup",
            "import",
            bad.to_str().unwrap(),
            "--data-dir",
            target.to_str().unwrap(),
        ]);
        assert!(
            !ok && out.contains("does not verify") && out.contains(why),
            "{name}: {out}"
        );
        assert!(
            !target.exists(),
            "{name}: the refused import created {}",
            target.display()
        );
    }
}

/// A forge ID token logs in once, and a restore does not give it a second login: its
/// `oidc.login` audit event names the token (issuer, `jti`, expiry), and `backup import`
/// marks every token still alive as used again (the one-use records themselves are not in
/// backups). A backup whose login events predate that still imports, with a note.
#[test]
fn a_forge_token_used_before_a_backup_is_refused_after_the_restore() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let forge = issuer();
    let aud = "https://airlock.example";
    let public = ["--public-url", aud];
    let mut s = TestServer::start_on(&Backing::Dir(data.clone()), None, &public, &[]);
    let admin = s.admin.clone();
    s.ok(
        &admin,
        &github_trust(
            &forge.url,
            &[
                "--ref",
                "refs/heads/main",
                "--role",
                "ci",
                "--audience",
                aud,
            ],
        ),
    );
    let login_at = |url: &str, token: &str| {
        post(
            &format!("{url}/api/v1/oidc/login"),
            "",
            json!({"token": token}),
        )
    };
    let used = forge.mint(push_claims(aud), None);
    let (code, v) = login_at(&s.url, &used);
    assert_eq!(code, 201, "{v}");
    let (code, v) = login_at(&s.url, &used);
    assert_eq!(code, 401, "{v}");
    s.kill();

    let bk = tmp.path().join("bk");
    let (ok, out) = backup_cli(&[
        "backup",
        "export",
        bk.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let printed = out
        .split("manifest.json SHA-256: ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no manifest hash in {out}"))
        .to_owned();
    let restored = tmp.path().join("restored");
    let (ok, out) = backup_cli(&[
        "backup",
        "import",
        bk.to_str().unwrap(),
        "--data-dir",
        restored.to_str().unwrap(),
    ]);
    assert!(
        ok && out.contains("1 forge ID token(s) that logged in before the backup"),
        "{out}"
    );
    let r = TestServer::start_on(&Backing::Dir(restored), Some(&admin), &public, &[]);
    let (code, v) = login_at(&r.url, &used);
    assert_eq!(
        code, 401,
        "a forge token used before the backup logs in again after the restore: {v}"
    );
    assert!(v.to_string().contains("already used"), "{v}");
    let (code, v) = login_at(&r.url, &forge.mint(push_claims(aud), None));
    assert_eq!(code, 201, "a fresh token logs in after the restore: {v}");
    drop(r);

    // Login events from before they named the token: valid then, valid now, and said.
    crate::support::rewrite_backup_audit(&bk, |r| {
        if r.action == "oidc.login" {
            if let Some(d) = r.detail.as_object_mut() {
                d.remove("id_token");
            }
        }
    });
    let note = "1 forge login(s) were recorded before";
    let (ok, out) = backup_cli(&["backup", "verify", bk.to_str().unwrap()]);
    assert!(
        ok && out.contains("backup OK") && out.contains(note),
        "{out}"
    );
    let (ok, out) = backup_cli(&[
        "backup",
        "import",
        bk.to_str().unwrap(),
        "--data-dir",
        tmp.path().join("restored-old").to_str().unwrap(),
    ]);
    assert!(ok && out.contains(note), "{out}");

    // Whoever can rewrite the backup can rewrite its whole audit chain consistently (here the
    // login event names another token, un-spending the real one): only the manifest hash
    // printed at export tells, and import given it refuses, writing nothing (review5's attack).
    crate::support::rewrite_backup_audit(&bk, |r| {
        if r.action == "oidc.login" {
            r.detail["id_token"] =
                json!({"iss": forge.url, "jti": "not-the-spent-one", "exp_ms": 0});
        }
    });
    let (ok, out) = backup_cli(&["backup", "verify", bk.to_str().unwrap()]);
    assert!(ok, "{out}");
    let with_hash = |verb: &str, target: &str| {
        let target = tmp.path().join(target);
        let mut args = vec![
            "backup",
            verb,
            bk.to_str().unwrap(),
            "--manifest-sha256",
            &printed,
        ];
        if verb == "import" {
            args.extend(["--data-dir", target.to_str().unwrap()]);
        }
        let (ok, out) = backup_cli(&args);
        assert!(
            !ok && out.contains("the manifest was replaced"),
            "{verb}: {out}"
        );
        assert!(
            !target.exists(),
            "the refused {verb} wrote {}",
            target.display()
        );
    };
    with_hash("verify", "unused");
    with_hash("import", "restored-rewritten");
}

/// A trust as migration 0011 leaves one added before it (no ids, on a real PostgreSQL store):
/// the server says so at start, `trust list` shows it, each login through it is refused and
/// audited with the command that fixes it, and after `airlock trust pin` the job logs in.
#[test]
fn a_trust_from_before_pinning_refuses_logins_until_an_admin_pins_it() {
    let forge = issuer();
    let db = TestDatabase::new("legacy_trust");
    let aud = "https://airlock.example";
    let public = ["--public-url", aud];
    let mut s = TestServer::start_on(&Backing::Url(db.url.clone()), None, &public, &[]);
    let admin = s.admin.clone();
    s.ok(
        &admin,
        &github_trust(
            &forge.url,
            &[
                "--ref",
                "refs/heads/main",
                "--role",
                "ci",
                "--audience",
                aud,
            ],
        ),
    );
    s.kill();
    db.sql("UPDATE oidc_trusts SET repository_id = NULL, owner_id = NULL");

    // The server's start says so.
    let mut child = Command::new(AIRLOCK)
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &db.url,
        ])
        .args(public)
        .env_remove("AIRLOCK_DATABASE_URL")
        .env_remove("AIRLOCK_DATA_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut started = String::new();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    while !started.contains("listening on") {
        if stdout.read_line(&mut started).unwrap() == 0 {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        started.contains("warning: 1 trust(s) are not pinned") && started.contains("org/repo"),
        "{started}"
    );

    let s = TestServer::start_on(&Backing::Url(db.url.clone()), Some(&admin), &public, &[]);
    assert!(s.ok(&admin, &["trust", "list"]).contains("NOT PINNED"));
    let listed: Value =
        serde_json::from_str(&s.ok(&admin, &["trust", "list", "--format", "json"])).unwrap();
    let id = listed["trusts"][0]["id"].as_str().unwrap().to_owned();
    let login = || {
        post(
            &format!("{}/api/v1/oidc/login", s.url),
            "",
            json!({"token": forge.mint(push_claims(aud), None)}),
        )
    };
    let (code, v) = login();
    assert_eq!(code, 401, "{v}");
    assert!(
        v.to_string()
            .contains(&format!("airlock trust pin {id} --repository-id")),
        "{v}"
    );
    let denied = s.ok(
        &admin,
        &[
            "audit",
            "--action",
            "oidc.login",
            "--outcome",
            "denied",
            "--format",
            "json",
        ],
    );
    assert!(denied.contains("airlock trust pin"), "{denied}");
    let out = s.ok(
        &admin,
        &[
            "trust",
            "pin",
            &id,
            "--repository-id",
            "1001",
            "--owner-id",
            "2002",
        ],
    );
    assert!(out.contains("pinned trust"), "{out}");
    let (code, v) = login();
    assert_eq!((code, v["role"].as_str()), (201, Some("ci")), "{v}");
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
        &github_trust(&forge.url, &["--ref", "refs/heads/main", "--role", "ci"]),
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

/// A CI job's plan phase may read other stacks' state (`terraform_remote_state`) only within
/// what its trust lets the job read: the job's login token, scoped to the trust's stacks, mints
/// the plan-phase token, and read stacks are never wider than their minter. The plan phase's
/// cloud identity still names the planned stack only.
#[test]
fn a_ci_jobs_plan_phase_reads_only_stacks_within_its_trust() {
    let t = team_on(TestServer::start_issuer(&[]), "dev/app");
    for stack in ["dev/net", "prod/net"] {
        t.s.ok(&t.s.admin, &["stack", "create", stack]);
    }
    let forge = issuer();
    t.s.ok(
        &t.s.admin,
        &github_trust(
            &forge.url,
            &[
                "--ref",
                "refs/heads/main",
                "--role",
                "ci",
                "--stack",
                "dev/*",
            ],
        ),
    );
    let (code, v) = login(&t, &forge.mint(push_claims(&t.s.url), None), Some("ci"));
    assert_eq!(code, 201, "{v}");
    let job = v["secret"].as_str().unwrap().to_owned();
    let url = format!("{}/api/v1/stacks/dev%2Fapp/plan-token", t.s.url);
    // Beyond the trust: refused, naming the stack, nothing minted.
    let (code, e) = post(&url, &job, json!({"read_stacks": ["prod/net"]}));
    assert_eq!(code, 403, "{e}");
    assert!(e.to_string().contains("read stack prod/net refused"), "{e}");
    let refused = denied_audits(&t, "token.plan_phase");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["stack"], "prod/net");
    // Within it: the phase token reads dev/net's state, and nothing else of it.
    let (code, v) = post(&url, &job, json!({"read_stacks": ["dev/net"]}));
    assert_eq!(code, 201, "{v}");
    let phase = v["secret"].as_str().unwrap().to_owned();
    let (code, body) = raw("GET", &t.s.state_url("dev/net"), &phase, b"");
    assert_eq!(code, 204, "{body}");
    let (code, body) = raw("GET", &t.s.state_url("prod/net"), &phase, b"");
    assert_eq!(code, 403, "{body}");
    let (code, body) = raw("LOCK", &t.s.state_url("dev/net"), &phase, b"{}");
    assert_eq!(code, 403, "{body}");
    let (code, e) = plan_token(&t, &phase, "dev/app", "sts.amazonaws.com");
    assert_eq!(code, 201, "{e}");
    assert_eq!(e["sub"], "stack:dev/app:run_phase:plan");
    let (code, e) = plan_token(&t, &phase, "dev/net", "sts.amazonaws.com");
    assert_eq!(code, 403, "no cloud identity of a read stack: {e}");
}

/// Review (session 14): every job a trust logs in has the trust's user, and a run's author's
/// user could withdraw it, so one pull request's job (or code its plan runs) withdrew another
/// pull request's approved run. A login's token now carries its job's verified ref
/// (`job_ref`), and so do the runs it plans (`author_ref`): only a job of the same ref
/// withdraws them, and `airlock ci plan` reports only its own job's runs.
#[test]
fn one_pull_requests_job_cannot_withdraw_anothers_run() {
    let stack = "dev/app";
    let t = team_on(TestServer::start_issuer(&[]), stack);
    let forge = issuer();
    t.s.ok(
        &t.s.admin,
        &github_trust(&forge.url, &["--role", "agent", "--stack", "dev/*"]),
    );
    let job = |n: u32| -> String {
        let claims = json!({"sub": "repo:org/repo:pull_request", "repository": "org/repo",
            "repository_id": "1001", "repository_owner_id": "2002",
            "ref": format!("refs/pull/{n}/merge"), "event_name": "pull_request", "aud": t.s.url});
        let (code, v) = login(&t, &forge.mint(claims, None), Some("agent"));
        assert_eq!(code, 201, "{v}");
        v["secret"].as_str().unwrap().to_owned()
    };
    let (first, second) = (job(1), job(2));
    let me: Value = serde_json::from_str(&t.s.ok(&first, &["whoami", "--format", "json"])).unwrap();
    assert_eq!(me["job_ref"], "refs/pull/1/merge", "{me}");
    // Its phase tokens are its job's.
    let (code, v) = post(
        &format!("{}/api/v1/stacks/dev%2Fapp/plan-token", t.s.url),
        &first,
        json!({}),
    );
    assert_eq!(code, 201, "{v}");
    let phase = v["secret"].as_str().unwrap();
    let me: Value = serde_json::from_str(&t.s.ok(phase, &["whoami", "--format", "json"])).unwrap();
    assert_eq!(me["job_ref"], "refs/pull/1/merge", "{me}");
    let ws = Workspace::new(
        &t.s,
        stack,
        "resource \"terraform_data\" \"x\" {\n  input = 1\n}\n",
    );
    let run = plan(&t, &ws, &first, stack);
    let shown = run_json(&t, &run);
    assert_eq!(shown["run"]["author_ref"], "refs/pull/1/merge", "{shown}");
    t.s.ok(&t.approver, &["approve", &run]);
    let withdraw = |token: &str| {
        raw(
            "POST",
            &format!("{}/api/v1/runs/{run}/withdraw", t.s.url),
            token,
            b"{}",
        )
    };
    let (code, body) = withdraw(&second);
    assert_eq!(code, 403, "{body}");
    assert_eq!(run_json(&t, &run)["run"]["status"], "approved");
    // A later job of the same pull request is its author.
    let (code, body) = withdraw(&job(1));
    assert_eq!(code, 200, "{body}");
    assert_eq!(run_json(&t, &run)["run"]["status"], "withdrawn");
}
