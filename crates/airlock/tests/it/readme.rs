//! Documentation that cannot drift: the README's examples are executed as written against a
//! real `airlock server` and real `terraform`; its table of stack defaults, the roles matrix of
//! `docs/design.md` and every example of `docs/airlock-hcl.md` are checked against the code.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use airlock_core::{Permission, Role};
use airlock_store::StackSettings;

use crate::support::{terraform_bin, AIRLOCK};

/// The repository root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// The fenced code blocks of a Markdown text: (info string, body).
fn fenced_blocks(markdown: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(String, String)> = None;
    for line in markdown.lines() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(info)) => open = Some((info.trim().to_owned(), String::new())),
            (Some(_), Some(rest)) if rest.trim().is_empty() => blocks.extend(open.take()),
            (Some((_, body)), _) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "an unterminated code block");
    blocks
}

/// The bodies of the blocks whose info string is exactly `info`.
fn blocks_tagged(markdown: &str, info: &str) -> Vec<String> {
    fenced_blocks(markdown)
        .into_iter()
        .filter(|(i, _)| i == info)
        .map(|(_, b)| b)
        .collect()
}

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `PATH` with the directory of the `airlock` binary under test first.
fn path_with_airlock() -> String {
    let bin_dir = Path::new(AIRLOCK).parent().unwrap();
    format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// Runs the README's `sh {server}` block (one command) in `dir` on a free loopback port;
/// returns the child, the URL it listens on and the admin token it printed.
fn start_readme_server(
    readme: &str,
    dir: &Path,
    env: &[(&str, String)],
) -> (Killed, String, String) {
    let blocks = blocks_tagged(readme, "sh {server}");
    assert_eq!(
        blocks.len(),
        1,
        "README.md must have one `sh {{server}}` block"
    );
    let commands: Vec<&str> = blocks[0]
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(
        commands.len(),
        1,
        "the `sh {{server}}` block must be one command"
    );
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(format!("exec {}", commands[0]))
        .current_dir(dir)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        // The README's server listens on the default port; the test takes a free one.
        .env("AIRLOCK_LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawning the README's server command");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let child = Killed(child);
    let (mut url, mut admin) = (None, None);
    let mut line = String::new();
    while url.is_none() {
        line.clear();
        if stdout.read_line(&mut line).unwrap() == 0 {
            panic!("the README's `airlock server` exited before listening");
        }
        if let Some(t) = line.strip_prefix("admin token: ") {
            admin = Some(t.trim().to_owned());
        }
        if let Some(u) = line.strip_prefix("listening on ") {
            url = Some(u.trim().to_owned());
        }
    }
    // Keep draining the server's output so it never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = stdout.read_to_end(&mut sink);
    });
    (
        child,
        url.unwrap(),
        admin.expect("the README's server printed no admin token on first start"),
    )
}

/// Every `sh {test}` block of README.md, in order, in one `bash -euo pipefail` (so `cd` and
/// `export` carry over, as in one terminal), against the server the README's own `sh {server}`
/// command starts. The only substitutions are the two placeholders a reader replaces too: the
/// default address and the printed admin token.
#[test]
fn the_readme_examples_run_as_written() {
    let terraform = terraform_bin();
    let readme = read("README.md");
    let tmp = tempfile::tempdir().unwrap();
    let (home, work) = (tmp.path().join("home"), tmp.path().join("work"));
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let env = vec![
        ("PATH", path_with_airlock()),
        ("HOME", home.display().to_string()),
        ("CHECKPOINT_DISABLE", "1".to_owned()),
        ("AIRLOCK_TERRAFORM_BIN", terraform),
    ];
    let (_server, url, admin) = start_readme_server(&readme, &work, &env);

    let script = blocks_tagged(&readme, "sh {test}").join("\n");
    for placeholder in ["http://127.0.0.1:8750", "airlock_..."] {
        assert!(
            script.contains(placeholder),
            "the README's examples no longer use the placeholder {placeholder}; update this test"
        );
    }
    let script = script
        .replace("http://127.0.0.1:8750", &url)
        .replace("airlock_...", &admin);
    let script_path = tmp.path().join("readme.sh");
    std::fs::write(&script_path, &script).unwrap();
    let log_path = tmp.path().join("readme.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Killed(
        Command::new("bash")
            .args(["-euo", "pipefail"])
            .arg(&script_path)
            .current_dir(&work)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > Duration::from_secs(600) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        status.is_some_and(|s| s.success()),
        "the README's examples failed ({status:?}); script:\n{script}\noutput:\n{output}"
    );

    // What the walkthrough did: two applied runs on prod/app, leaving only terraform_data.web.
    let cli = |args: &[&str]| -> serde_json::Value {
        let out = Command::new(AIRLOCK)
            .args(args)
            .args(["--format", "json"])
            .env("AIRLOCK_URL", &url)
            .env("AIRLOCK_TOKEN", &admin)
            .output()
            .unwrap();
        assert!(out.status.success(), "airlock {args:?}: {out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let runs = cli(&["runs", "--stack", "prod/app"]);
    let statuses: Vec<&str> = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["applied", "applied"], "{runs}");
    let out = Command::new(AIRLOCK)
        .args(["state", "pull", "prod/app"])
        .env("AIRLOCK_URL", &url)
        .env("AIRLOCK_TOKEN", &admin)
        .output()
        .unwrap();
    let state: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = state["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web"]);
}

fn roles(list: &[Role]) -> String {
    list.iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The cells of the Markdown table row whose first cell starts with `first`.
fn table_row<'a>(markdown: &'a str, first: &str) -> Vec<&'a str> {
    let rows: Vec<Vec<&str>> = markdown
        .lines()
        .filter_map(|l| l.trim().strip_prefix('|')?.strip_suffix('|'))
        .map(|l| l.split('|').map(str::trim).collect::<Vec<_>>())
        .filter(|cells| cells.first().is_some_and(|c| c.starts_with(first)))
        .collect();
    assert_eq!(rows.len(), 1, "one table row starting with {first:?}");
    rows.into_iter().next().unwrap()
}

/// The README's table of defaults per stack kind is `StackSettings::defaults`.
#[test]
fn the_readme_states_the_stack_defaults() {
    let readme = read("README.md");
    let (prod, other) = (
        StackSettings::defaults(true),
        StackSettings::defaults(false),
    );
    let expect = [
        (
            "`required_approvals`",
            prod.required_approvals.to_string(),
            other.required_approvals.to_string(),
        ),
        (
            "`direct_writes`",
            roles(&prod.direct_writes),
            roles(&other.direct_writes),
        ),
        (
            "`apply_from`",
            roles(&prod.apply_from),
            roles(&other.apply_from),
        ),
    ];
    for (setting, p, o) in expect {
        let row = table_row(&readme, setting);
        assert_eq!(
            row.get(1..),
            Some(&[p.as_str(), o.as_str()][..]),
            "{setting}"
        );
    }
}

/// Every permission, once; the match makes a new variant a compile error here.
fn every_permission() -> Vec<Permission> {
    let all = vec![
        Permission::Read,
        Permission::Lock,
        Permission::CreateRun,
        Permission::Approve,
        Permission::ApplyRun,
        Permission::WriteState,
        Permission::Restore,
        Permission::ForceUnlock,
        Permission::Admin,
        Permission::ReportDrift,
        Permission::ReadPlan,
    ];
    for p in &all {
        match p {
            Permission::Read
            | Permission::Lock
            | Permission::CreateRun
            | Permission::Approve
            | Permission::ApplyRun
            | Permission::WriteState
            | Permission::Restore
            | Permission::ForceUnlock
            | Permission::Admin
            | Permission::ReportDrift
            | Permission::ReadPlan => {}
        }
    }
    all
}

/// The roles matrix of docs/design.md, rendered from `Role::has`, is the table in the doc.
#[test]
fn the_roles_matrix_is_the_code() {
    let design = read("docs/design.md");
    let header = table_row(&design, "permission");
    let names: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(header.get(1..), Some(&names[..]), "the matrix's columns");
    for p in every_permission() {
        let row = table_row(&design, &format!("`{}`", p.name()));
        let documented: Vec<bool> = row
            .iter()
            .skip(1)
            .map(|cell| {
                // A footnote (¹, ²) qualifies a mark; it does not change it.
                let mark = cell.trim_end_matches(['¹', '²', '³']);
                assert!(
                    mark.is_empty() || mark == "✓",
                    "cell {cell:?} of {}",
                    p.name()
                );
                mark == "✓"
            })
            .collect();
        let code: Vec<bool> = Role::ALL.iter().map(|r| r.has(p)).collect();
        assert_eq!(
            documented,
            code,
            "permission {} in docs/design.md",
            p.name()
        );
    }
    let rows = design.lines().filter(|l| l.starts_with("| `")).count();
    assert_eq!(
        rows,
        every_permission().len(),
        "one matrix row per permission"
    );
}

/// Every `hcl` example of docs/airlock-hcl.md parses with the real parser; every `hcl {error}`
/// example is refused by it.
#[test]
fn every_airlock_hcl_example_is_what_the_parser_does() {
    let doc = read("docs/airlock-hcl.md");
    let valid = blocks_tagged(&doc, "hcl");
    let invalid = blocks_tagged(&doc, "hcl {error}");
    assert!(
        valid.len() >= 6 && invalid.len() >= 4,
        "examples went missing"
    );
    for example in &valid {
        if let Err(e) = airlock_policy::config::parse(example, "airlock.hcl") {
            panic!("docs/airlock-hcl.md example does not parse: {e}\n{example}");
        }
    }
    for example in &invalid {
        assert!(
            airlock_policy::config::parse(example, "airlock.hcl").is_err(),
            "docs/airlock-hcl.md shows this as refused, but it parses:\n{example}"
        );
    }
    // The complete example is what the reference says it is.
    let full = airlock_policy::config::parse(&valid[0], "airlock.hcl").unwrap();
    let prod = full.stack("prod/app").unwrap();
    assert_eq!(prod.dir.as_deref(), Some("stacks/prod/app"));
    assert!(prod.production && prod.required_approvals == 2);
    let dev = full.stack("dev/app").unwrap();
    assert!(
        !dev.production && dev.required_approvals == 1,
        "documented defaults"
    );
    assert!(full
        .allowed_destroy("module.legacy.aws_db_instance.old[0]")
        .is_some());
    assert!(full.protects("aws_s3_bucket", "aws_s3_bucket.logs[\"eu\"]"));
    assert!(full.protects("aws_vpc", "module.network.aws_vpc.main"));
    // The address rules the reference states.
    use airlock_policy::config::address_matches;
    assert!(address_matches(
        "aws_db_instance.main",
        "aws_db_instance.main[0]"
    ));
    assert!(address_matches(
        "aws_db_instance.main",
        "aws_db_instance.main[\"a\"]"
    ));
    assert!(address_matches(
        "module.legacy",
        "module.legacy.module.inner.aws_s3_bucket.b[0]"
    ));
    assert!(address_matches(
        "aws_db_instance.main",
        "aws_db_instance.main[\"a[b\"]"
    ));
    assert!(address_matches(
        "module.legacy",
        "module.legacy[0].aws_db_instance.old"
    ));
    assert!(address_matches(
        "module.legacy",
        "module.legacy[\"eu\"].module.inner.aws_s3_bucket.b[0]"
    ));
    assert!(!address_matches(
        "module.legacy[\"eu\"]",
        "module.legacy[\"us\"].aws_db_instance.old"
    ));
    assert!(address_matches(
        "module.legacy.module.inner",
        "module.legacy[\"eu\"].module.inner[1].aws_s3_bucket.b[0]"
    ));
    assert!(address_matches(
        "module.sandbox_*",
        "module.sandbox_a.aws_instance.x"
    ));
    assert!(!address_matches(
        "aws_db_instance.main",
        "aws_db_instance.main2"
    ));
    let defaults = airlock_policy::config::parse("", "airlock.hcl").unwrap();
    let m = defaults.mass_destruction;
    assert_eq!(
        (m.max_count, m.max_percent, m.min_instances),
        (20, 25.0, 10)
    );
}

/// The README, ARCHITECTURE.md and docs/ point inside the repository.
#[test]
fn the_docs_point_inside_the_repository() {
    for path in [
        "README.md",
        "ARCHITECTURE.md",
        "docs/design.md",
        "docs/airlock-hcl.md",
    ] {
        let text = read(path);
        assert!(
            !text.contains("../shared")
                && !text.contains("shared/DESIGN")
                && !text.contains("shared/reference"),
            "{path} points outside the repository"
        );
    }
}
