//! What a newcomer meets (issue 9): a safe first start with an offline recovery, refusals that
//! can be read although Terraform shows only a status code (`airlock why`, the server's log),
//! the audit listing, exit codes per class and `--format json` errors.

use std::process::Command;

use serde_json::Value;

use crate::support::{offline_cli, Backing, TestServer, Workspace};

fn settings() -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.add_filter(r"tok_[0-9a-f]+", "tok_[id]");
    s.add_filter(r"airlock_[0-9a-f]{64}", "airlock_[secret]");
    s.add_filter(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", "[time]");
    s.add_filter(r"127\.0\.0\.1:\d+", "127.0.0.1:[port]");
    s.add_filter(r"audit event \d+", "audit event [seq]");
    s.add_filter(r"uid \d+ on [^)]+", "uid [uid] on [host]");
    s.add_filter(
        r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        "[lock-id]",
    );
    s
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

#[test]
fn a_failed_first_start_creates_nothing_and_a_lost_admin_token_is_recovered_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let data_arg = data.to_str().unwrap();
    // The port is taken: the start fails before anything exists, so no token is burnt.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let out = offline_cli(&["server", "--listen", &port, "--data-dir", data_arg], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        !text(&out.stdout).contains("admin token"),
        "{}",
        text(&out.stdout)
    );
    assert!(!text(&out.stdout).contains("listening on"));
    settings().bind(|| {
        insta::assert_snapshot!(
            "first_start_port_taken",
            text(&out.stderr).lines().next().unwrap_or_default()
        );
    });
    assert!(!data.exists(), "a failed start created the data directory");
    // So does a certificate that cannot be loaded.
    let missing = tmp.path().join("missing.pem");
    let missing = missing.to_str().unwrap();
    let out = offline_cli(
        &[
            "server",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data_arg,
            "--tls-cert",
            missing,
            "--tls-key",
            missing,
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("--tls-cert"),
        "{}",
        text(&out.stderr)
    );
    assert!(!data.exists());
    drop(taken);

    // The next good start prints the admin token.
    let backing = Backing::Dir(data.clone());
    let mut first = TestServer::start_on(&backing, None, &[], &[]);
    assert!(first.admin.starts_with("airlock_"));
    first.kill();

    // The admin token is lost: recover offline, with no server running.
    let out = offline_cli(
        &[
            "token",
            "create",
            "--data-dir",
            data_arg,
            "--role",
            "admin",
            "--name",
            "rescue",
            "--user",
            "admin",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    settings().bind(|| insta::assert_snapshot!("offline_token_create", stdout));
    let rescue = stdout
        .lines()
        .find_map(|l| l.strip_prefix("secret (shown once): "))
        .unwrap()
        .to_owned();
    // A wrong data directory is an error, not a new empty database.
    let wrong = tmp.path().join("nowhere");
    let out = offline_cli(
        &[
            "token",
            "create",
            "--data-dir",
            wrong.to_str().unwrap(),
            "--role",
            "admin",
            "--name",
            "x",
            "--user",
            "admin",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(!wrong.exists());

    // The recovered token works, and its creation is audited with the local account.
    let server = TestServer::start_on(&backing, Some(&rescue), &[], &[]);
    let who = server.ok(&rescue, &["whoami"]);
    assert!(who.starts_with("rescue (tok_"), "{who}");
    assert!(who.contains("role admin"), "{who}");
    let audit = server.ok(
        &rescue,
        &[
            "audit",
            "--action",
            "token.create",
            "--limit",
            "1",
            "--format",
            "json",
        ],
    );
    let v: Value = serde_json::from_str(&audit).unwrap();
    let actor = v["events"][0]["actor"].as_str().unwrap();
    assert!(actor.starts_with("offline (uid "), "{actor}");
    assert_eq!(v["events"][0]["detail"]["name"], "rescue");
}

#[test]
fn exit_codes_are_one_per_class() {
    let server = TestServer::start();
    let reader = server.token("reader", "reader");
    let code = |token: &str, args: &[&str]| server.cli(token, args).status.code();
    // Usage errors are 64, never 2; --help is 0 and lists the codes.
    assert_eq!(code(&server.admin, &["audit", "--bogus"]), Some(64));
    assert_eq!(code(&server.admin, &[]), Some(64));
    let help = server.cli(&server.admin, &["--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(text(&help.stdout).contains("Exit codes: 0 ok, 1 error, 2 refused"));
    // 0 ok; 1 error (not found, unreachable).
    assert_eq!(code(&server.admin, &["stack", "create", "app"]), Some(0));
    assert_eq!(code(&server.admin, &["run", "show", "run_nosuch"]), Some(1));
    let unreachable = offline_cli(
        &["whoami"],
        &[
            ("AIRLOCK_URL", "http://127.0.0.1:1"),
            ("AIRLOCK_TOKEN", "x"),
        ],
    );
    assert_eq!(unreachable.status.code(), Some(1));
    // 2 refused: permission (403) and conflict (409) alike.
    assert_eq!(code(&reader, &["stack", "create", "other"]), Some(2));
    assert_eq!(code(&server.admin, &["stack", "create", "app"]), Some(2));
    // 4 not authenticated: no token, an unknown one, a revoked one.
    assert_eq!(
        offline_cli(&["whoami"], &[("AIRLOCK_URL", &server.url)])
            .status
            .code(),
        Some(4)
    );
    assert_eq!(code("airlock_bogus", &["whoami"]), Some(4));
}

#[test]
fn json_errors_when_json_was_asked_for() {
    let server = TestServer::start();
    let reader = server.token("reader", "reader");
    let refused = server.cli(&reader, &["stack", "create", "app", "--format", "json"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(refused.stdout.is_empty());
    let unknown = server.cli("airlock_bogus", &["audit", "--format", "json"]);
    let missing = server.cli(
        &server.admin,
        &["state", "history", "nosuch", "--format", "json"],
    );
    let bad_time = server.cli(
        &server.admin,
        &["audit", "--since", "yesterday", "--format", "json"],
    );
    for out in [&refused, &unknown, &missing, &bad_time] {
        let v: Value = serde_json::from_slice(&out.stderr)
            .unwrap_or_else(|e| panic!("{e}: {}", text(&out.stderr)));
        assert!(
            v["error"]["code"].is_string() && v["error"]["message"].is_string(),
            "{v}"
        );
    }
    settings().bind(|| {
        insta::assert_snapshot!(
            "json_errors",
            [&refused, &unknown, &missing, &bad_time]
                .iter()
                .map(|o| text(&o.stderr))
                .collect::<String>()
        );
        // Text errors stay text.
        insta::assert_snapshot!(
            "text_error_refused",
            text(&server.cli(&reader, &["stack", "create", "app"]).stderr)
        );
    });
}

#[test]
fn json_output_has_rfc3339_times_and_all_stacks_as_a_star() {
    let server = TestServer::start();
    server.ok(
        &server.admin,
        &[
            "token", "create", "--name", "ci", "--role", "ci", "--ttl", "1h",
        ],
    );
    let ci = server.token_where("name", "ci");
    let ms = ci["expires_at"].as_i64().unwrap();
    assert_eq!(ci["expires_at_rfc3339"], airlock_core_rfc3339(ms));
    assert_eq!(ci["stacks"], serde_json::json!(["*"]));
    let listing = server.ok(&server.admin, &["token", "list"]);
    let line = listing.lines().find(|l| l.contains(" ci ")).unwrap();
    assert!(line.contains(" * "), "{line}");
}

/// RFC 3339 as the CLI writes it (checked independently of the CLI's own formatter).
fn airlock_core_rfc3339(ms: i64) -> String {
    let out = Command::new("date")
        .args(["-u", "-d", &format!("@{}", ms / 1000), "+%Y-%m-%dT%H:%M:%S"])
        .output()
        .unwrap();
    format!("{}.{:03}Z", text(&out.stdout).trim(), ms % 1000)
}

#[test]
fn audit_lists_the_newest_first_with_filters_and_a_hint() {
    let server = TestServer::start();
    for s in ["a", "b", "c", "d"] {
        server.ok(&server.admin, &["stack", "create", s]);
    }
    let reader = server.token("reader", "reader");
    let _ = server.cli(&reader, &["stack", "create", "e"]);
    let events = |args: &[&str]| -> Value {
        let mut a = vec!["audit", "--format", "json"];
        a.extend(args);
        serde_json::from_str(&server.ok(&server.admin, &a)).unwrap()
    };
    let stacks = |v: &Value| -> Vec<String> {
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["stack"].as_str().unwrap_or("-").to_owned())
            .collect()
    };
    // Newest first.
    let v = events(&["--action", "stack.create"]);
    assert_eq!(stacks(&v), ["d", "c", "b", "a"]);
    // The last N, with how many more and where the next page starts.
    let v = events(&["--action", "stack.create", "--limit", "2"]);
    assert_eq!(stacks(&v), ["d", "c"]);
    assert_eq!(v["more"], 2);
    let before = v["next_before"].as_i64().unwrap().to_string();
    let v = events(&[
        "--action",
        "stack.create",
        "--limit",
        "2",
        "--before",
        &before,
    ]);
    assert_eq!(stacks(&v), ["b", "a"]);
    assert_eq!(v["more"], 0);
    // Filters by stack, outcome, actor and time, applied by the server.
    assert_eq!(stacks(&events(&["--stack", "b"])), ["b"]);
    let denied = events(&["--outcome", "denied"]);
    assert_eq!(denied["events"].as_array().unwrap().len(), 1);
    assert!(denied["events"][0]["actor"]
        .as_str()
        .unwrap()
        .starts_with("reader (tok_"));
    assert_eq!(
        events(&["--actor", "reader"])["events"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        stacks(&events(&["--action", "stack.create", "--since", "1h"])).len(),
        4
    );
    assert_eq!(
        stacks(&events(&[
            "--since",
            "2000-01-01",
            "--until",
            "2000-01-02T00:00:00+02:00"
        ]))
        .len(),
        0
    );
    // The text listing says what is hidden and how to see it: the events before the one shown.
    // (Its sequence number depends on whether the server's one-second audit seal fell between
    // the stacks' creations, so it is checked against the listing, not fixed in the snapshot.)
    let out = server.cli(
        &server.admin,
        &["audit", "--action", "stack.create", "--limit", "1"],
    );
    let shown = events(&["--action", "stack.create", "--limit", "1"])["events"][0]["seq"].clone();
    let hint = text(&out.stderr);
    assert!(hint.contains(&format!("--before {shown} ")), "{hint}");
    let mut hidden = settings();
    hidden.add_filter(r"--before \d+", "--before [seq]");
    hidden.bind(|| insta::assert_snapshot!("audit_more_hint", hint));
    // A stack-scoped token sees only its stacks' events.
    let scoped = {
        let out = server.ok(
            &server.admin,
            &[
                "token", "create", "--name", "s", "--role", "reader", "--stack", "b", "--format",
                "json",
            ],
        );
        serde_json::from_str::<Value>(&out).unwrap()["secret"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let v: Value =
        serde_json::from_str(&server.ok(&scoped, &["audit", "--format", "json"])).unwrap();
    assert_eq!(stacks(&v), ["b"]);
    assert_eq!(v["more"], Value::Null);
}

#[test]
fn terraform_refusals_are_explained_by_why_and_the_server_log() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("server.log");
    let server = TestServer::start_logging(&[], std::fs::File::create(&log).unwrap());
    server.ok(&server.admin, &["stack", "create", "app"]);
    let reader = server.token("reader", "reader");
    let ws = Workspace::new(&server, "app", "resource \"terraform_data\" \"x\" {}\n");
    ws.tf_ok(&reader, &["init", "-input=false", "-no-color"]);
    // A valid token lacking the permission: 403, which Terraform calls "invalid auth".
    let err = ws.tf_err(&reader, &["apply", "-auto-approve", "-no-color"]);
    assert!(
        err.contains("HTTP remote state endpoint invalid auth"),
        "{err}"
    );
    let why = server.ok(&server.admin, &["why", "app"]);
    settings().bind(|| insta::assert_snapshot!("why_permission", why));
    // An unknown token: 401, "requires auth"; the refusal is recorded for the stack too.
    let err = ws.tf_err("airlock_bogus", &["plan", "-lock=false", "-no-color"]);
    assert!(
        err.contains("HTTP remote state endpoint requires auth"),
        "{err}"
    );
    let why = server.ok(&server.admin, &["why", "app"]);
    settings().bind(|| insta::assert_snapshot!("why_unauthenticated", why));
    // A lock held by someone else: 423.
    let lock = r#"{"ID":"11111111-2222-3333-4444-555555555555","Operation":"OperationTypeApply","Who":"alice@laptop","Version":"1.11.0","Created":"2026-11-30T00:00:00Z","Path":"","Info":""}"#;
    let (status, _) = crate::support::raw(
        "LOCK",
        &server.state_url("app"),
        &server.admin,
        lock.as_bytes(),
    );
    assert_eq!(status, 200);
    let ci = server.token("ci", "ci");
    let err = ws.tf_err(&ci, &["plan", "-no-color"]);
    assert!(err.contains("HTTP remote state already locked"), "{err}");
    let why = server.ok(&server.admin, &["why", "app", "--format", "json"]);
    let v: Value = serde_json::from_str(&why).unwrap();
    assert_eq!(v["refusal"]["detail"]["status"], 423);
    assert!(v["refusal"]["detail"]["reason"]
        .as_str()
        .unwrap()
        .contains("locked by alice@laptop"));
    // No refusal on a stack: said so.
    server.ok(&server.admin, &["stack", "create", "quiet"]);
    let none = server.ok(&server.admin, &["why", "quiet"]);
    settings().bind(|| insta::assert_snapshot!("why_none", none));
    // The server logged one structured line per refusal, with stack, actor, status and reason.
    let log = std::fs::read_to_string(&log).unwrap();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("event=refused"))
        .collect();
    assert!(
        refused.iter().any(|l| l.contains("status=403 method=LOCK path=/state/app stack=app actor=\"reader (tok_")
            && l.contains("code=forbidden reason=\"permission denied: reader tokens do not have the lock permission")),
        "{log}"
    );
    assert!(
        refused
            .iter()
            .any(|l| l.contains("status=401") && l.contains("reason=\"unknown token")),
        "{log}"
    );
    assert!(
        refused
            .iter()
            .any(|l| l.contains("status=423") && l.contains("locked by alice@laptop")),
        "{log}"
    );
    // Accepted requests are not logged at the default level.
    assert!(!log.contains("event=request"), "{log}");
}

#[test]
fn log_level_info_logs_every_request() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("server.log");
    let server = TestServer::start_logging(
        &["--log-level", "info"],
        std::fs::File::create(&log).unwrap(),
    );
    server.ok(&server.admin, &["whoami"]);
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.lines().any(|l| l.contains("level=info event=request status=200 method=GET path=/api/v1/whoami actor=\"bootstrap-admin (tok_")),
        "{log}"
    );
}

#[test]
fn backend_config_json_is_a_backend_tf_json_terraform_reads() {
    let server = TestServer::start();
    server.ok(&server.admin, &["stack", "create", "app"]);
    let doc = server.ok(
        &server.admin,
        &["backend-config", "app", "--format", "json"],
    );
    settings().bind(|| insta::assert_snapshot!("backend_config_json", doc));
    let ws = Workspace::new(&server, "app", "resource \"terraform_data\" \"x\" {}\n");
    std::fs::remove_file(ws.dir.join("backend.tf")).unwrap();
    std::fs::write(ws.dir.join("backend.tf.json"), doc).unwrap();
    ws.tf_ok(&server.admin, &["init", "-input=false", "-no-color"]);
    ws.tf_ok(&server.admin, &["apply", "-auto-approve", "-no-color"]);
    assert_eq!(server.version_count("app"), 1);
}

/// Secrets never reach the server's log, even at `--log-level info` (one line per request):
/// not the admin token, not minted token secrets (Bearer or Terraform's Basic auth), not an
/// unknown token someone tried, not a sensitive value inside a state body.
#[test]
fn secrets_never_reach_the_server_log() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("server.log");
    let server = TestServer::start_logging(
        &["--log-level", "info"],
        std::fs::File::create(&log).unwrap(),
    );
    server.ok(&server.admin, &["stack", "create", "dev/secrets"]);
    let ci = server.token("pipeline", "ci");
    let agent = server.token("bot", "agent");
    let ws = Workspace::new(
        &server,
        "dev/secrets",
        "resource \"terraform_data\" \"db\" {\n  input = sensitive(\"s3cr3t-db-password\")\n}\noutput \"pw\" {\n  value     = terraform_data.db.output\n  sensitive = true\n}\n",
    );
    ws.tf_ok(&ci, &["init"]);
    ws.tf_ok(&ci, &["apply", "-auto-approve"]);
    ws.tf_err(&agent, &["apply", "-auto-approve"]);
    let guessed = "tok_guess.0123456789abcdef0123456789abcdef";
    assert!(!server.cli(guessed, &["whoami"]).status.success());
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.lines().count() > 10,
        "the log has one line per request: {log}"
    );
    for secret in [
        server.admin.as_str(),
        &ci,
        &agent,
        guessed,
        "s3cr3t-db-password",
    ] {
        assert!(!log.contains(secret), "{secret} appears in the server log");
    }
}

/// `--public-url` names the server as people reach it (behind a TLS proxy): the console's
/// cookies are `Secure` when it is https, browsers may call `/mcp` from its origin only, and a
/// value that is not a base URL stops the start with a message.
#[test]
fn public_url_marks_cookies_secure_and_is_the_only_browser_origin_for_mcp() {
    let s = TestServer::start_with(&["--public-url", "https://airlock.example.test/"]);
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    let login = agent
        .post(&format!("{}/ui/login", s.url))
        // With --public-url, the browser's origin is that URL's (the whole origin is compared:
        // scheme, host and port), not the address the server listens on.
        .set("Origin", "https://airlock.example.test")
        .set("Sec-Fetch-Site", "same-origin")
        .set("Cookie", "airlock_login=x")
        .send_form(&[
            ("token", s.admin.as_str()),
            ("login_csrf", "x"),
            ("next", "/ui/"),
        ]);
    let resp = match login {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("sign-in failed: {e}"),
    };
    let cookies: Vec<&str> = resp.all("set-cookie");
    let session = cookies
        .iter()
        .find(|c| c.starts_with("airlock_session="))
        .unwrap_or_else(|| panic!("no session cookie: {} {cookies:?}", resp.status()));
    assert!(session.contains("; Secure"), "{session}");
    // The address the server listens on is not a browser origin of it once a public URL is set.
    let direct = agent
        .post(&format!("{}/ui/login", s.url))
        .set("Origin", &s.url)
        .set("Sec-Fetch-Site", "same-origin")
        .set("Cookie", "airlock_login=x")
        .send_form(&[("token", s.admin.as_str()), ("login_csrf", "x")]);
    assert!(
        matches!(direct, Err(ureq::Error::Status(403, _))),
        "{direct:?}"
    );

    let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let mcp = |origin: &str| {
        let r = agent
            .post(&format!("{}/mcp", s.url))
            .set("Authorization", &format!("Bearer {}", s.admin))
            .set("Accept", "application/json, text/event-stream")
            .set("Content-Type", "application/json")
            .set("Origin", origin)
            .send_string(ping);
        match r {
            Ok(r) => r.status(),
            Err(ureq::Error::Status(code, _)) => code,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(mcp("https://airlock.example.test"), 200);
    assert_eq!(mcp("https://evil.example.test"), 403);

    for (bad, why) in [
        ("ftp://airlock.example.test", "is not a base URL"),
        ("https://", "is not a base URL"),
        ("https://a.test/?x=1", "is not a base URL"),
        ("airlock.test", "is not a base URL"),
        // Browsers never send a default port in Origin.
        ("https://a.test:443/", "default port 443"),
        ("http://a.test:80", "default port 80"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(crate::support::AIRLOCK)
            .args([
                "server",
                "--listen",
                "127.0.0.1:0",
                "--public-url",
                bad,
                "--data-dir",
            ])
            .arg(dir.path().join("data"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad} was accepted");
        assert!(
            text(&out.stderr).contains(why),
            "{bad}: {}",
            text(&out.stderr)
        );
    }
}
