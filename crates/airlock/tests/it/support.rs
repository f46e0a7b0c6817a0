//! Shared test harness: a real `airlock server` on a free loopback port, the real CLI, and the
//! real `terraform` binary in temp directories.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub const AIRLOCK: &str = env!("CARGO_BIN_EXE_airlock");

/// Fails (never skips) when terraform is missing.
pub fn terraform_bin() -> String {
    let bin = std::env::var("AIRLOCK_TEST_TERRAFORM").unwrap_or_else(|_| "terraform".into());
    match Command::new(&bin).arg("version").stdout(Stdio::null()).stderr(Stdio::null()).status() {
        Ok(s) if s.success() => bin,
        _ => panic!("`{bin}` was not found or does not run: these tests need the real Terraform binary (1.11.x) on PATH"),
    }
}

pub struct TestServer {
    pub url: String,
    pub admin: String,
    pub dir: tempfile::TempDir,
    /// What the server printed before it listened (one line each: the bootstrap token,
    /// warnings).
    pub started: Vec<String>,
    child: Child,
    _stdout: BufReader<std::process::ChildStdout>,
}

impl TestServer {
    pub fn start() -> TestServer {
        Self::start_with(&[])
    }

    /// The server process's id (to read its memory from `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn start_with(extra: &[&str]) -> TestServer {
        Self::start_logging(extra, Stdio::inherit())
    }

    /// A server whose stderr (its log) goes to `log`.
    pub fn start_logging(extra: &[&str], log: impl Into<Stdio>) -> TestServer {
        Self::start_listening("127.0.0.1:0", extra, log)
    }

    /// An OIDC issuer: `--public-url` is the server's own address (a free port, picked first).
    pub fn start_issuer(extra: &[&str]) -> TestServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}");
        let mut args = vec!["--public-url", url.as_str()];
        args.extend_from_slice(extra);
        Self::start_listening(&format!("127.0.0.1:{port}"), &args, Stdio::inherit())
    }

    fn start_listening(listen: &str, extra: &[&str], log: impl Into<Stdio>) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut child = Command::new(AIRLOCK)
            .args(["server", "--listen", listen, "--data-dir"])
            .arg(&data)
            .args(extra)
            .env_remove("AIRLOCK_DATABASE_URL")
            .env_remove("AIRLOCK_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawning airlock server");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let (mut url, mut admin) = (None, None);
        let mut line = String::new();
        let mut started = Vec::new();
        while url.is_none() {
            line.clear();
            if stdout.read_line(&mut line).unwrap() == 0 {
                panic!("airlock server exited before listening");
            }
            started.push(line.trim_end().to_owned());
            if let Some(t) = line.strip_prefix("admin token: ") {
                admin = Some(t.trim().to_owned());
            }
            if let Some(u) = line.strip_prefix("listening on ") {
                url = Some(u.trim().to_owned());
            }
        }
        TestServer {
            url: url.unwrap(),
            admin: admin.expect("bootstrap admin token printed"),
            dir,
            started,
            child,
            _stdout: stdout,
        }
    }

    /// Runs the CLI with `token`.
    pub fn cli(&self, token: &str, args: &[&str]) -> Output {
        Command::new(AIRLOCK)
            .args(args)
            .env("AIRLOCK_URL", &self.url)
            .env("AIRLOCK_TOKEN", token)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs the CLI and asserts success; returns stdout.
    pub fn ok(&self, token: &str, args: &[&str]) -> String {
        let out = self.cli(token, args);
        assert!(
            out.status.success(),
            "airlock {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Every token, as the admin lists them (`airlock token list --format json`).
    pub fn tokens(&self) -> Vec<serde_json::Value> {
        let out = self.ok(&self.admin, &["token", "list", "--format", "json"]);
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["tokens"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// The token whose `field` is `value` (its id, its name), as the admin lists it.
    pub fn token_where(&self, field: &str, value: &str) -> serde_json::Value {
        self.tokens()
            .into_iter()
            .find(|t| t[field] == value)
            .unwrap_or_else(|| panic!("no token whose {field} is {value}"))
    }

    /// The audit events of `action` as `token` reads them (`airlock audit --action ACTION
    /// --format json`), newest first.
    pub fn audit_of(&self, token: &str, action: &str) -> Vec<serde_json::Value> {
        let out = self.ok(token, &["audit", "--action", action, "--format", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["events"].as_array().unwrap().clone()
    }

    /// Creates a token and returns its secret.
    /// A token named `name`; admin and approver tokens belong to the user `name` (created
    /// here if it does not exist yet), others are their own identity.
    pub fn token(&self, name: &str, role: &str) -> String {
        let mut args = vec![
            "token", "create", "--name", name, "--role", role, "--format", "json",
        ];
        if matches!(role, "admin" | "approver") {
            let _ = self.cli(&self.admin, &["user", "create", name]);
            args.extend(["--user", name]);
        }
        let out = self.ok(&self.admin, &args);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["secret"].as_str().unwrap().to_owned()
    }

    pub fn state_url(&self, stack: &str) -> String {
        format!("{}/state/{stack}", self.url)
    }

    /// Number of versions of a stack.
    pub fn version_count(&self, stack: &str) -> usize {
        self.history_json(stack)["versions"]
            .as_array()
            .unwrap()
            .len()
    }

    pub fn serials(&self, stack: &str) -> Vec<u64> {
        self.history_json(stack)["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["serial"].as_u64().unwrap())
            .collect()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Terraform working directory wired to a stack.
pub struct Workspace {
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
    cli_config: PathBuf,
    /// Extra environment for terraform (set last): see [`Workspace::with_env`].
    env: Vec<(String, String)>,
}

impl Workspace {
    pub fn new(server: &TestServer, stack: &str, main_tf: &str) -> Workspace {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tf");
        std::fs::create_dir_all(&dir).unwrap();
        let backend = server.ok(&server.admin, &["backend-config", stack]);
        std::fs::write(dir.join("backend.tf"), backend).unwrap();
        std::fs::write(dir.join("main.tf"), main_tf).unwrap();
        let cli_config = tmp.path().join("terraformrc");
        std::fs::write(&cli_config, "").unwrap();
        Workspace {
            dir,
            _tmp: tmp,
            cli_config,
            env: Vec::new(),
        }
    }

    /// The same workspace with extra environment for terraform (e.g. the local test cloud's
    /// CLI configuration, `testcloud::TestCloud::env`).
    pub fn with_env(mut self, env: &[(&str, String)]) -> Workspace {
        self.env
            .extend(env.iter().map(|(k, v)| (k.to_string(), v.clone())));
        self
    }

    pub fn write_main(&self, main_tf: &str) {
        std::fs::write(self.dir.join("main.tf"), main_tf).unwrap();
    }

    /// Runs terraform with `token` as the http backend password.
    pub fn tf(&self, token: &str, args: &[&str]) -> Output {
        Command::new(terraform_bin())
            .args(args)
            .current_dir(&self.dir)
            .env("CHECKPOINT_DISABLE", "1")
            .env("TF_IN_AUTOMATION", "1")
            .env("TF_INPUT", "0")
            .env("TF_CLI_CONFIG_FILE", &self.cli_config)
            .env("TF_HTTP_USERNAME", "airlock")
            .env("TF_HTTP_PASSWORD", token)
            .env("TF_HTTP_RETRY_MAX", "0")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    pub fn tf_ok(&self, token: &str, args: &[&str]) -> String {
        let out = self.tf(token, args);
        assert!(
            out.status.success(),
            "terraform {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn tf_err(&self, token: &str, args: &[&str]) -> String {
        let out = self.tf(token, args);
        assert!(
            !out.status.success(),
            "terraform {args:?} unexpectedly succeeded:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

pub fn data_resources(n: usize) -> String {
    format!("resource \"terraform_data\" \"r\" {{\n  count = {n}\n  input = \"v-${{count.index}}\"\n}}\n")
}

/// Raw HTTP request to the server (for lock/unlock scenarios Terraform cannot set up).
pub fn raw(method: &str, url: &str, token: &str, body: &[u8]) -> (u16, String) {
    let agent = ureq::AgentBuilder::new().build();
    let req = agent
        .request(method, url)
        .set("Authorization", &format!("Bearer {token}"));
    match req.send_bytes(body) {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("{method} {url}: {e}"),
    }
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}

// ---- the shared context ----
//
// What most tests need, in one place: the CLI run as a user would (`TestServer::cli`, `ok`,
// `fails`, `cli_in`), what it printed (`text`), a stack's history, and `Team`, a server with one
// stack and a token per role, with the governed-run steps (`plan`, `apply`, `start_apply`,
// `run_json`). Tests add only what is particular to them.

/// What a terminal would show: stdout, then stderr.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs the CLI with no server settings and no store settings from the caller's environment,
/// only `env` (offline commands: `backup`, `migrate`, `server`, `admin`).
pub fn offline_cli(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(AIRLOCK)
        .args(args)
        .env_remove("AIRLOCK_TOKEN")
        .env_remove("AIRLOCK_URL")
        .env_remove("AIRLOCK_DATA_DIR")
        .env_remove("AIRLOCK_DATABASE_URL")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

impl TestServer {
    /// Runs the CLI and asserts failure; returns what it printed (stdout, then stderr).
    pub fn fails(&self, token: &str, args: &[&str]) -> String {
        let out = self.cli(token, args);
        assert!(!out.status.success(), "airlock {args:?} succeeded");
        text(&out)
    }

    /// `state history STACK --format json`, as the admin.
    pub fn history_json(&self, stack: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(
            &self.admin,
            &["state", "history", stack, "--format", "json"],
        ))
        .unwrap()
    }
}

/// A server with one stack and a token per role: an agent (`bot`), two approvers (`alice`,
/// `bob`, each their own user) and CI (`pipeline`).
pub struct Team {
    pub s: TestServer,
    pub agent: String,
    pub approver: String,
    pub approver2: String,
    pub ci: String,
}

/// A fresh server with `stack` created and the tokens of [`Team`].
pub fn team(stack: &str) -> Team {
    team_on(TestServer::start(), stack)
}

/// [`team`] on a given server (an OIDC issuer, say).
pub fn team_on(s: TestServer, stack: &str) -> Team {
    s.ok(&s.admin, &["stack", "create", stack]);
    let agent = s.token("bot", "agent");
    let approver = s.token("alice", "approver");
    let approver2 = s.token("bob", "approver");
    let ci = s.token("pipeline", "ci");
    Team {
        s,
        agent,
        approver,
        approver2,
        ci,
    }
}

/// The CLI as `token` against `s`, in `dir` (Terraform's checkpoint and CLI config off), its
/// stdin closed: to run, or to start in the background.
pub fn cli_command(s: &TestServer, token: &str, dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(AIRLOCK);
    cmd.args(args)
        .current_dir(dir)
        .env("AIRLOCK_URL", &s.url)
        .env("AIRLOCK_TOKEN", token)
        .env("CHECKPOINT_DISABLE", "1")
        .env("TF_CLI_CONFIG_FILE", "/dev/null")
        // The plan phase's kept data directories go with the test's server, not to ~/.cache.
        .env("XDG_CACHE_HOME", s.dir.path().join("cache"))
        .stdin(Stdio::null());
    cmd
}

/// Runs the CLI in `dir` with extra environment (Terraform's checkpoint and CLI config off).
pub fn cli_in(
    s: &TestServer,
    token: &str,
    dir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> Output {
    cli_command(s, token, dir, args)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// `airlock plan` as `token`; returns the run id.
pub fn plan(t: &Team, ws: &Workspace, token: &str, stack: &str) -> String {
    let out = cli_in(
        &t.s,
        token,
        &ws.dir,
        &["plan", ".", "--stack", stack, "--format", "json"],
        &[],
    );
    assert!(
        out.status.success() || out.status.code() == Some(2),
        "plan failed: {}",
        text(&out)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("plan output: {}", text(&out)));
    v["run"]["id"].as_str().unwrap().to_owned()
}

pub fn apply(t: &Team, ws: &Workspace, token: &str, run: &str) -> Output {
    cli_in(&t.s, token, &ws.dir, &["apply", run, "--dir", "."], &[])
}

/// Starts the apply by hand, as CI would (with the checkout's fingerprint), records the plan
/// check as `airlock apply` would once `terraform show -json` agreed (so the token may lock
/// and write), and returns the run-bound token.
pub fn start_apply(t: &Team, run: &str) -> String {
    let token = start_apply_unchecked(t, run);
    let (code, body) = record_plan_check(t, run, &token, &run_json(t, run)["run"]["plan_sha256"]);
    assert_eq!(code, 200, "{body}");
    token
}

/// `POST /api/v1/runs/RUN/plan-check` with `token`, for plan hash `sha`.
pub fn record_plan_check(
    t: &Team,
    run: &str,
    token: &str,
    sha: &serde_json::Value,
) -> (u16, String) {
    let body = serde_json::json!({"plan_sha256": sha, "check": "terraform show -json agreed"});
    raw(
        "POST",
        &format!("{}/api/v1/runs/{run}/plan-check", t.s.url),
        token,
        body.to_string().as_bytes(),
    )
}

/// Asks to start the apply by hand, as CI would (with the checkout's fingerprint): the server's
/// answer.
pub fn start_apply_answer(t: &Team, run: &str) -> (u16, String) {
    let fp = run_json(t, run)["run"]["fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    raw(
        "POST",
        &format!("{}/api/v1/runs/{run}/apply", t.s.url),
        &t.ci,
        format!(r#"{{"fingerprint":"{fp}"}}"#).as_bytes(),
    )
}

/// Starts the apply by hand, as CI would (with the checkout's fingerprint), and returns the
/// run-bound token, its plan check not recorded.
pub fn start_apply_unchecked(t: &Team, run: &str) -> String {
    let (code, body) = start_apply_answer(t, run);
    assert_eq!(code, 200, "{body}");
    serde_json::from_str::<serde_json::Value>(&body).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// `run show RUN --format json`, as the admin.
pub fn run_json(t: &Team, run: &str) -> serde_json::Value {
    serde_json::from_str(&t.s.ok(&t.s.admin, &["run", "show", run, "--format", "json"])).unwrap()
}

pub fn history_json(t: &Team, stack: &str) -> serde_json::Value {
    t.s.history_json(stack)
}

/// Compressed as the store compresses artifacts and blobs.
pub fn zstd_compress(b: &[u8]) -> Vec<u8> {
    airlock_store::blob::compress(b)
}

// ---- servers on a given store (replicas, restarts), PostgreSQL databases ----

/// Where a test server keeps its data, so that a second replica or a restart can use it.
#[derive(Debug, Clone)]
pub enum Backing {
    /// An embedded SQLite database in this directory.
    Dir(PathBuf),
    /// A PostgreSQL database.
    Url(String),
}

impl TestServer {
    /// Starts a server on `backing`. Pass `admin` when the store was bootstrapped already (a
    /// second replica, a restart): the server then prints no token. `env` is added to the
    /// server's environment. It listens on a free port unless `extra` has `--listen`.
    pub fn start_on(
        backing: &Backing,
        admin: Option<&str>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(AIRLOCK);
        cmd.arg("server");
        if !extra.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        match backing {
            Backing::Dir(d) => cmd.arg("--data-dir").arg(d),
            Backing::Url(u) => cmd.args(["--database-url", u]),
        };
        cmd.args(extra)
            .env_remove("AIRLOCK_DATABASE_URL")
            .env_remove("AIRLOCK_DATA_DIR")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawning airlock server");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let (mut url, mut printed_admin) = (None, None);
        let mut line = String::new();
        let mut started = Vec::new();
        while url.is_none() {
            line.clear();
            if stdout.read_line(&mut line).unwrap() == 0 {
                let _ = child.wait();
                panic!("airlock server on {backing:?} exited before listening");
            }
            started.push(line.trim_end().to_owned());
            if let Some(t) = line.strip_prefix("admin token: ") {
                printed_admin = Some(t.trim().to_owned());
            }
            if let Some(u) = line.strip_prefix("listening on ") {
                url = Some(u.trim().to_owned());
            }
        }
        let admin = match (admin, printed_admin) {
            (Some(a), _) => a.to_owned(),
            (None, Some(a)) => a,
            (None, None) => {
                panic!("the store on {backing:?} was bootstrapped already: pass its admin token")
            }
        };
        TestServer {
            url: url.unwrap(),
            admin,
            dir,
            started,
            child,
            _stdout: stdout,
        }
    }

    /// SIGKILLs the server (no graceful shutdown, nothing flushed) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `host:port` the server listens on.
    pub fn addr(&self) -> String {
        self.url
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .to_owned()
    }
}

/// AIRLOCK_TEST_DATABASE_URL, or a failure that says how to get one (never a skip).
pub fn test_database_url() -> String {
    match std::env::var("AIRLOCK_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "AIRLOCK_TEST_DATABASE_URL is not set: the PostgreSQL tests need a database. Run the suite through \
             scripts/test.sh (or scripts/with-postgres.sh cargo nextest run ...), which starts a throwaway PostgreSQL 15 \
             cluster, or set AIRLOCK_TEST_DATABASE_URL to a database you may create databases from"
        ),
    }
}

/// A fresh PostgreSQL database for one test (created with the real `psql`), dropped at the end.
pub struct TestDatabase {
    admin_url: String,
    name: String,
    /// URL of the fresh database.
    pub url: String,
}

fn psql(url: &str, sql: &str) -> Output {
    Command::new("psql")
        .args([url, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .stdin(Stdio::null())
        .output()
        .expect("running psql (the PostgreSQL client must be on PATH)")
}

impl TestDatabase {
    pub fn new(test: &str) -> TestDatabase {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let admin_url = test_database_url();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("airlock_it_{test}_{}_{n}_{nanos}", std::process::id());
        let out = psql(&admin_url, &format!("CREATE DATABASE \"{name}\""));
        assert!(
            out.status.success(),
            "creating database {name} through AIRLOCK_TEST_DATABASE_URL failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (base, query) = match admin_url.split_once('?') {
            Some((b, q)) => (b, format!("?{q}")),
            None => (admin_url.as_str(), String::new()),
        };
        let authority = base.find("://").map_or(0, |i| i + 3);
        let path = base[authority..]
            .find('/')
            .map_or(base.len(), |i| authority + i);
        let url = format!("{}/{name}{query}", &base[..path]);
        TestDatabase {
            admin_url,
            name,
            url,
        }
    }
}

impl TestDatabase {
    /// Runs SQL on this database as its owner (the cluster's superuser) and returns the
    /// unaligned output; for tests that tamper with what the server stored.
    pub fn sql(&self, sql: &str) -> String {
        let out = Command::new("psql")
            .args([
                &self.url,
                "-X",
                "-q",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .stdin(Stdio::null())
            .output()
            .expect("running psql (the PostgreSQL client must be on PATH)");
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let _ = psql(
            &self.admin_url,
            &format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name),
        );
    }
}

/// An offline command (`backup`, `migrate`): (success, stdout then stderr).
pub fn backup_cli(args: &[&str]) -> (bool, String) {
    let out = offline_cli(args, &[]);
    (out.status.success(), text(&out))
}

/// A path as a command-line argument.
pub fn dir_arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    airlock_store::blob::sha256(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Copies directory `from` (a backup, a data directory) to `to`, recursively.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Writes file `rel` of backup `bk` and its manifest entry, as someone with write access to the
/// backup would (the manifest's own SHA-256, printed at export, is what such an edit cannot
/// match).
pub fn put_backup_file(bk: &Path, rel: &str, bytes: &[u8]) {
    std::fs::write(bk.join(rel), bytes).unwrap();
    let mpath = bk.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    m["files"][rel] = serde_json::json!({"sha256": sha256_hex(bytes), "size": bytes.len()});
    std::fs::write(&mpath, m.to_string()).unwrap();
}

/// Rewrites one JSON file of a backup and its manifest entry ([`put_backup_file`]).
pub fn forge_backup_file(bk: &Path, rel: &str, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bk.join(rel)).unwrap()).unwrap();
    edit(&mut v);
    put_backup_file(bk, rel, &serde_json::to_vec_pretty(&v).unwrap());
}

/// Edits a backup's audit records and re-hashes the whole log (every chain's links and hashes,
/// the seals' named heads, the manifest's entry and head), as an older airlock would have
/// written it, or as someone who rewrites the chain would: what only the manifest's printed
/// SHA-256 and the audit head a server recorded can tell apart.
pub fn rewrite_backup_audit(bk: &Path, edit: impl Fn(&mut airlock_core::audit::AuditRecord)) {
    use airlock_core::audit::{AuditRecord, GENESIS};
    let path = bk.join("audit.jsonl");
    let mut heads: std::collections::HashMap<String, String> = Default::default();
    let mut by_position: std::collections::HashMap<(String, i64), String> = Default::default();
    let mut legacy = GENESIS.to_owned();
    let mut out = String::new();
    for line in std::fs::read_to_string(&path).unwrap().lines() {
        let mut r: AuditRecord = serde_json::from_str(line).unwrap();
        edit(&mut r);
        if let Some(heads) = r.detail.get_mut("heads").and_then(|h| h.as_object_mut()) {
            for (chain, h) in heads.iter_mut() {
                let at = h["chain_seq"].as_i64().unwrap();
                h["hash"] = serde_json::json!(by_position[&(chain.clone(), at)]);
            }
        }
        r.prev_hash = match (&r.chain, r.chain_seq) {
            (Some(c), Some(_)) => heads.get(c).cloned().unwrap_or_else(|| {
                if c.is_empty() {
                    legacy.clone()
                } else {
                    GENESIS.to_owned()
                }
            }),
            _ => legacy.clone(),
        };
        r.hash = r.expected_hash();
        match (&r.chain, r.chain_seq) {
            (Some(c), Some(at)) => {
                heads.insert(c.clone(), r.hash.clone());
                by_position.insert((c.clone(), at), r.hash.clone());
            }
            _ => legacy = r.hash.clone(),
        }
        out.push_str(&serde_json::to_string(&r).unwrap());
        out.push('\n');
    }
    let head = serde_json::from_str::<AuditRecord>(out.lines().last().unwrap())
        .unwrap()
        .hash;
    std::fs::write(&path, &out).unwrap();
    let sha: String = airlock_store::blob::sha256(out.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mpath = bk.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    m["files"]["audit.jsonl"] = serde_json::json!({"sha256": sha, "size": out.len()});
    m["summary"]["audit_head"] = serde_json::json!(head);
    std::fs::write(&mpath, m.to_string()).unwrap();
}

/// Replaces artifact `name` of run `run` in the SQLite store under `t` with `data` (its
/// append-only trigger dropped), as only whoever can write the database could: `airlock apply`
/// must refuse a plan or reviewed JSON that is not what was approved.
pub fn swap_run_artifact(t: &Team, run: &str, name: &str, data: &[u8]) {
    let db = t.s.dir.path().join("data/airlock.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("DROP TRIGGER IF EXISTS run_artifacts_no_update; DROP TRIGGER IF EXISTS run_artifacts_only_purge")
        .unwrap();
    let sha = {
        use sha2::Digest;
        sha2::Sha256::digest(data).to_vec()
    };
    conn.execute(
        "UPDATE run_artifacts SET data = ?1, raw_len = ?2, sha256 = ?3 WHERE run_id = ?4 AND name = ?5",
        rusqlite::params![zstd_compress(data), data.len() as i64, sha, run, name],
    )
    .unwrap();
}
