//! The CLI's HTTP client against a real server: HTTPS with a self-signed certificate made here
//! (`--ca-cert` / `AIRLOCK_CA_CERT`, and Terraform trusting it through `SSL_CERT_FILE`), the
//! errors a user sees when the URL or the server is wrong, and server-supplied text that must
//! never reach a terminal as control characters (issue 8 item 15; token names are already
//! refused unless printable, so the lock owner is the string tried here).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::support::{raw, terraform_bin, text, TestServer, AIRLOCK};

/// Runs the CLI against `url` with `token`, trusting `ca` when given, and nothing from the
/// caller's environment that could change which server or roots it uses.
fn airlock(url: &str, token: &str, ca: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(AIRLOCK);
    cmd.args(args)
        .env("AIRLOCK_URL", url)
        .env("AIRLOCK_TOKEN", token)
        .env_remove("AIRLOCK_CA_CERT")
        .stdin(Stdio::null());
    if let Some(ca) = ca {
        cmd.env("AIRLOCK_CA_CERT", ca);
    }
    cmd.output().unwrap()
}

/// A self-signed certificate for 127.0.0.1 and localhost: (dir, cert.pem, key.pem).
fn self_signed() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    (dir, cert, key)
}

#[test]
fn the_cli_and_terraform_talk_to_a_tls_server() {
    let (_dir, cert, key) = self_signed();
    let server = TestServer::start_with(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let url = server.url.clone();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");

    let ok = airlock(
        &url,
        &server.admin,
        Some(&cert),
        &["stack", "create", "dev/tls"],
    );
    assert!(ok.status.success(), "{}", text(&ok));
    let ok = airlock(&url, &server.admin, Some(&cert), &["whoami"]);
    assert!(ok.status.success(), "{}", text(&ok));

    // Without the CA: the system roots do not know a self-signed certificate.
    let untrusted = airlock(&url, &server.admin, None, &["whoami"]);
    assert!(!untrusted.status.success());
    assert!(
        text(&untrusted).contains("is not trusted: pass its CA certificate with --ca-cert"),
        "{}",
        text(&untrusted)
    );

    // Plain HTTP to the TLS port: the server says so in HTTP.
    let plain_url = url.replacen("https://", "http://", 1);
    let wrong = airlock(&plain_url, &server.admin, None, &["whoami"]);
    assert!(!wrong.status.success());
    assert!(
        text(&wrong).contains("this airlock server speaks HTTPS: use an https:// URL"),
        "{}",
        text(&wrong)
    );

    // Terraform trusts the certificate through SSL_CERT_FILE (README: "HTTPS").
    let backend = airlock(
        &url,
        &server.admin,
        Some(&cert),
        &["backend-config", "dev/tls"],
    );
    assert!(backend.status.success(), "{}", text(&backend));
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("backend.tf"), &backend.stdout).unwrap();
    std::fs::write(
        work.path().join("main.tf"),
        "resource \"terraform_data\" \"r\" {\n  input = \"tls\"\n}\n",
    )
    .unwrap();
    let rc = work.path().join("terraformrc");
    std::fs::write(&rc, "").unwrap();
    let tf = |args: &[&str], ca: Option<&Path>| {
        let mut cmd = Command::new(terraform_bin());
        cmd.args(args)
            .current_dir(work.path())
            .env("CHECKPOINT_DISABLE", "1")
            .env("TF_IN_AUTOMATION", "1")
            .env("TF_INPUT", "0")
            .env("TF_CLI_CONFIG_FILE", &rc)
            .env("TF_HTTP_USERNAME", "airlock")
            .env("TF_HTTP_PASSWORD", &server.admin)
            .env("TF_HTTP_RETRY_MAX", "0")
            .env_remove("SSL_CERT_FILE")
            .env_remove("SSL_CERT_DIR")
            .stdin(Stdio::null());
        if let Some(ca) = ca {
            cmd.env("SSL_CERT_FILE", ca);
        }
        cmd.output().unwrap()
    };
    let refused = tf(&["init", "-no-color"], None);
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(text(&refused).contains("certificate"), "{}", text(&refused));
    for args in [
        &["init", "-no-color"][..],
        &["apply", "-auto-approve", "-no-color"],
    ] {
        let out = tf(args, Some(&cert));
        assert!(out.status.success(), "terraform {args:?}: {}", text(&out));
    }
    let history = airlock(
        &url,
        &server.admin,
        Some(&cert),
        &["state", "history", "dev/tls", "--format", "json"],
    );
    let v: serde_json::Value = serde_json::from_slice(&history.stdout).unwrap();
    assert_eq!(v["versions"].as_array().map(Vec::len), Some(1));
}

#[test]
fn wrong_urls_and_missing_servers_say_what_to_do() {
    // https:// to a plain HTTP server.
    let server = TestServer::start();
    let tls_url = server.url.replacen("http://", "https://", 1);
    let out = airlock(&tls_url, &server.admin, None, &["whoami"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains(
            "does not answer in TLS: if the server runs without --tls-cert, use an http:// URL"
        ),
        "{}",
        text(&out)
    );
    // Nothing listening.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", free.local_addr().unwrap());
    drop(free);
    let out = airlock(&url, &server.admin, None, &["whoami"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("is `airlock server` running at AIRLOCK_URL (or --url)?"),
        "{}",
        text(&out)
    );
    // An unreadable --ca-cert is named.
    let out = airlock(
        &tls_url,
        &server.admin,
        Some(Path::new("/nonexistent/ca.pem")),
        &["whoami"],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("/nonexistent/ca.pem"), "{}", text(&out));
}

#[test]
fn control_characters_from_the_server_never_reach_the_terminal() {
    let server = TestServer::start();
    server.ok(&server.admin, &["stack", "create", "dev/app"]);
    // Input: Terraform lock info with an escape sequence in `Who` is refused.
    let evil = r#"{"ID":"l1","Operation":"OperationTypeApply","Info":"","Who":"root@vm\u001b]0;pwned\u0007\u001b[2J","Version":"1.11.4","Created":"2026-11-24T03:09:07Z","Path":""}"#;
    let (status, body) = raw(
        "LOCK",
        &server.state_url("dev/app"),
        &server.admin,
        evil.as_bytes(),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("field Who contains the control character U+001B"),
        "{body}"
    );

    // Output: a lock stored before that check (an older server) is still shown escaped.
    let db = rusqlite::Connection::open(server.dir.path().join("data").join("airlock.db")).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    db.execute(
        "INSERT INTO locks (stack_id, lock_id, info, operation, owner_token, owner, created_at) \
         SELECT id, 'l1', x'7b7d', 'OperationTypeApply', 'tok_x', ?1, 0 FROM stacks WHERE name = 'dev/app'",
        ["root@vm\u{1b}]0;pwned\u{7}\u{1b}[2J via someone"],
    )
    .unwrap();
    let shown = server.ok(&server.admin, &["stack", "show", "dev/app"]);
    assert!(
        !shown.contains('\u{1b}') && !shown.contains('\u{7}'),
        "{shown:?}"
    );
    assert!(
        shown.contains(r"root@vm\u{1b}]0;pwned\u{7}\u{1b}[2J via someone"),
        "{shown}"
    );

    // JSON output stays JSON (its escaping is JSON's).
    let json = server.ok(
        &server.admin,
        &["stack", "show", "dev/app", "--format", "json"],
    );
    assert!(
        json.contains(r"root@vm\u001b]0;pwned\u0007\u001b[2J"),
        "{json}"
    );
}
