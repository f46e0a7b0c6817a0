//! A repository's Rego, run by a child `airlock __rego-eval` (`airlock_policy::rego`): the text
//! is the planner's, and regorus aborts its process on some Rego (an allocation it cannot
//! make), so the server never runs it in its own. The child limits itself to
//! `SANDBOX_MEMORY_BYTES` of address space and `SANDBOX_CPU_SECONDS` of CPU before it reads
//! the job; whatever stops it, the upload is refused with the reason and the server goes on.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use airlock_policy::analysis::Finding;
use airlock_policy::rego::{
    self, RegoError, RegoRunner, SANDBOX_COMMAND, SANDBOX_CPU_SECONDS, SANDBOX_MEMORY_BYTES,
};

/// Runs Rego in a child process of `exe` (the `airlock` binary).
pub struct Sandboxed {
    pub exe: PathBuf,
}

impl RegoRunner for Sandboxed {
    fn run(&self, files: &[(String, String)], plan_text: &str) -> Result<Vec<Finding>, RegoError> {
        let failed = |what: String| RegoError::Eval(format!("the policy evaluator {what}"));
        let mut child = Command::new(&self.exe)
            .arg(SANDBOX_COMMAND)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| failed(format!("did not start: {e}")))?;
        let (mut stdin, mut stdout, mut stderr) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let (printed, said) = std::thread::scope(|s| {
            // The job is written while the answer is read: neither pipe may fill and stall.
            s.spawn(move || {
                if let Some(input) = stdin.as_mut() {
                    // A child stopped early closes its end; its status says why.
                    let _ = rego::write_job(input, files, plan_text);
                }
            });
            let said = s.spawn(move || {
                let mut buf = Vec::new();
                if let Some(e) = stderr.as_mut() {
                    let _ = e.take(64 * 1024).read_to_end(&mut buf);
                }
                buf
            });
            let mut printed = Vec::new();
            if let Some(out) = stdout.as_mut() {
                let _ = out.take(16 * 1024 * 1024).read_to_end(&mut printed);
            }
            (printed, said.join().unwrap_or_default())
        });
        let status = child
            .wait()
            .map_err(|e| failed(format!("could not be waited for: {e}")))?;
        if !status.success() {
            let said = String::from_utf8_lossy(&said);
            let last = said
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            return Err(failed(format!(
                "was stopped before the Rego finished ({status}{}): a policy may use at most {} GiB of memory and {SANDBOX_CPU_SECONDS} s of CPU on a plan (an unbounded numbers.range or sprintf width, say, or a plan too large for the policy); fix the policy, or plan a smaller change",
                if last.is_empty() { String::new() } else { format!(": {}", last.chars().take(200).collect::<String>()) },
                SANDBOX_MEMORY_BYTES >> 30
            )));
        }
        rego::read_outcome(&printed)
            .map_err(|e| failed(format!("gave an answer that does not read: {e}")))?
    }
}
