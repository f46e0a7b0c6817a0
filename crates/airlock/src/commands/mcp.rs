//! `airlock mcp`: the Model Context Protocol over stdio, for agents that launch their MCP servers
//! (Claude Code, Cursor, Codex...). A bridge: every newline-delimited JSON-RPC message read on
//! stdin is sent to the server's `/mcp` with `AIRLOCK_URL`/`AIRLOCK_TOKEN`, and the answer is
//! written on stdout, so the tool list, its derivation from the token, the tools and their audit
//! live in one place, the server. The one exception is `propose_change`, which runs terraform in
//! the agent's checkout: the server checks and audits the call first, then this process runs
//! `airlock plan`'s own code on a directory inside the working tree (`--root`).
//!
//! stdout carries JSON-RPC messages only, one per line; everything else goes to stderr.

use std::io::{BufRead, Write};
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use serde_json::{json, Value};

use super::client::Client;
use super::run::{plan_run, Origin, PlanRequest};
use crate::cli::McpArgs;

/// The largest message read from stdin (the server takes at most 8 MiB; a longer line is
/// answered with an error and skipped).
const MAX_LINE: usize = 8 * 1024 * 1024;
/// The largest answer relayed from the server.
const MAX_ANSWER: u64 = 64 * 1024 * 1024;
/// Findings a `propose_change` result lists.
const MAX_FINDINGS: usize = 100;

struct Bridge {
    client: Client,
    root: PathBuf,
    terraform_bin: String,
}

/// Runs `airlock mcp` until stdin closes.
pub fn run(args: McpArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.client)?;
    if args.client.token.is_none() {
        anyhow::bail!("no token: set AIRLOCK_TOKEN in the MCP server's env (an agent token)");
    }
    let root = args
        .root
        .canonicalize()
        .with_context(|| format!("--root {} is not a directory", args.root.display()))?;
    eprintln!(
        "airlock mcp: serving {} over stdio; propose_change plans inside {} (terraform init and plan run the configuration's providers on this machine, as this user)",
        client.base(),
        root.display()
    );
    let bridge = Bridge {
        client,
        root,
        terraform_bin: args.terraform_bin,
    };
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let stdout = std::io::stdout();
    loop {
        let line = match read_line(&mut input)? {
            Line::Eof => break,
            Line::TooLong => Some(error(
                Value::Null,
                -32700,
                &format!("message refused: longer than {MAX_LINE} bytes"),
            )),
            Line::Text(text) if text.iter().all(u8::is_ascii_whitespace) => None,
            Line::Text(text) => bridge.answer(&text),
        };
        if let Some(answer) = line {
            let mut out = stdout.lock();
            let text = if answer.contains(&b'\n') {
                // serde_json never writes raw newlines; re-encode anything that would have some.
                serde_json::from_slice::<Value>(&answer)
                    .map(|v| v.to_string().into_bytes())
                    .unwrap_or_default()
            } else {
                answer
            };
            out.write_all(&text)?;
            out.write_all(b"\n")?;
            out.flush()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

enum Line {
    Eof,
    TooLong,
    Text(Vec<u8>),
}

/// One line of at most [`MAX_LINE`] bytes; a longer one is read to its end and dropped.
fn read_line(input: &mut impl BufRead) -> std::io::Result<Line> {
    let mut buf = Vec::new();
    let n = std::io::Read::take(&mut *input, MAX_LINE as u64 + 1).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(Line::Eof);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        return Ok(Line::Text(buf));
    }
    if buf.len() <= MAX_LINE {
        return Ok(Line::Text(buf)); // the last line, without a newline
    }
    loop {
        let chunk = input.fill_buf()?;
        if chunk.is_empty() {
            break;
        }
        match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => {
                input.consume(i + 1);
                break;
            }
            None => {
                let len = chunk.len();
                input.consume(len);
            }
        }
    }
    Ok(Line::TooLong)
}

fn error(id: Value, code: i64, message: &str) -> Vec<u8> {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
        .to_string()
        .into_bytes()
}

fn tool_error(id: Value, message: &str) -> Vec<u8> {
    json!({"jsonrpc": "2.0", "id": id, "result": {"content": [{"type": "text", "text": message}], "isError": true}})
        .to_string()
        .into_bytes()
}

impl Bridge {
    /// The answer to one message, if it has one.
    fn answer(&self, text: &[u8]) -> Option<Vec<u8>> {
        let Ok(msg) = serde_json::from_slice::<Value>(text) else {
            return Some(error(Value::Null, -32700, "not JSON"));
        };
        let is_propose = msg["method"] == "tools/call" && msg["params"]["name"] == "propose_change";
        let answer = self.relay(&msg, text)?;
        if !is_propose {
            return Some(answer);
        }
        // The server allowed (and audited) the call, or said why not.
        let allowed: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
        if allowed["result"]["structuredContent"]["proceed"] != true {
            return Some(answer);
        }
        let id = msg["id"].clone();
        let args = &allowed["result"]["structuredContent"];
        let (dir, stack) = (
            args["dir"].as_str().unwrap_or_default(),
            args["stack"].as_str().unwrap_or_default(),
        );
        let refresh_only = args["refresh_only"] == true;
        Some(match self.propose(dir, stack, refresh_only) {
            Ok(structured) => {
                let text = serde_json::to_string_pretty(&structured).unwrap_or_default();
                json!({"jsonrpc": "2.0", "id": id, "result": {"content": [{"type": "text", "text": text}], "structuredContent": structured, "isError": false}})
                    .to_string()
                    .into_bytes()
            }
            Err(e) => tool_error(id, &format!("propose_change failed: {e:#}")),
        })
    }

    /// Sends `text` to `/mcp`; the server's JSON-RPC answer, or an error in its place for a
    /// request the server refused at the HTTP level (expired token, unreachable, ...).
    fn relay(&self, msg: &Value, text: &[u8]) -> Option<Vec<u8>> {
        let headers = [
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
            (airlock_server::mcp::BRIDGE_HEADER, "stdio"),
        ];
        let is_request = msg.get("method").is_some() && msg.get("id").is_some();
        let id = msg.get("id").cloned().unwrap_or(Value::Null);
        match self.client.post_raw("/mcp", &headers, text, MAX_ANSWER) {
            Ok((202, _)) => None,
            Ok((_, body))
                if serde_json::from_slice::<Value>(&body)
                    .is_ok_and(|v| v.get("jsonrpc").is_some()) =>
            {
                Some(body)
            }
            Ok((status, body)) => {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                // A proxy's error page can be anything: its first 500 bytes say enough.
                let reason = v
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .map_or_else(
                        || String::from_utf8_lossy(body.get(..500).unwrap_or(&body)).into_owned(),
                        str::to_owned,
                    );
                is_request.then(|| {
                    error(
                        id,
                        -32000,
                        &format!("airlock server refused the request: {reason} (HTTP {status})"),
                    )
                })
            }
            Err(e) => is_request.then(|| error(id, -32000, &format!("{e:#}"))),
        }
    }

    /// Plans `dir` for `stack` and uploads the run, as `airlock plan DIR --stack STACK
    /// [--refresh-only]` does.
    fn propose(&self, dir: &str, stack: &str, refresh_only: bool) -> anyhow::Result<Value> {
        let dir = inside(&self.root, dir).map_err(anyhow::Error::msg)?;
        let planned = plan_run(
            &self.client,
            &PlanRequest {
                dir: &dir,
                stack: Some(stack),
                destroy: false,
                refresh_only,
                terraform_bin: &self.terraform_bin,
                origin: Origin::default(),
                read_stacks: &[],
            },
        )?;
        let (v, stack) = (planned.response, planned.stack);
        let run = &v["run"];
        let next = v["next"].as_str().unwrap_or_default();
        let approve = next
            .find("airlock approve ")
            .and_then(|i| next.get(i..))
            .map(|c| c.trim_end_matches(['.', ')']).to_owned());
        let findings: Vec<Value> = run["report"]["findings"]
            .as_array()
            .map(|fs| {
                fs.iter()
                    .take(MAX_FINDINGS)
                    .map(|f| json!({"address": f["address"], "severity": f["severity"], "rule": f["rule"], "message": f["message"]}))
                    .collect()
            })
            .unwrap_or_default();
        Ok(json!({
            "run_id": run["id"], "stack": stack, "status": run["status"], "decision": run["decision"],
            "destroys": run["destroys"], "findings": findings, "approve_command": approve,
            "next": next, "plan_mode": run["plan_mode"],
        }))
    }
}

/// `dir` (relative to `root`, or absolute) as a directory inside `root` (canonical), symlinks
/// resolved; `..` is refused outright.
fn inside(root: &Path, dir: &str) -> Result<PathBuf, String> {
    let p = Path::new(dir);
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(format!(
            "dir {dir:?} contains `..`: name a directory inside the working tree {}",
            root.display()
        ));
    }
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        root.join(p)
    };
    let real = joined
        .canonicalize()
        .map_err(|e| format!("dir {dir:?}: {e}"))?;
    if !real.starts_with(root) {
        return Err(format!(
            "dir {dir:?} resolves to {}, outside the working tree {}: propose_change plans only inside it",
            real.display(),
            root.display()
        ));
    }
    if !real.is_dir() {
        return Err(format!("dir {dir:?} is not a directory"));
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_must_stay_inside_the_working_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("repo");
        std::fs::create_dir_all(root.join("stacks/app")).unwrap();
        std::fs::create_dir_all(tmp.path().join("outside")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("outside"), root.join("link")).unwrap();
        let root = root.canonicalize().unwrap();
        assert_eq!(
            inside(&root, "stacks/app").unwrap(),
            root.join("stacks/app")
        );
        assert_eq!(inside(&root, ".").unwrap(), root);
        let abs = root.join("stacks/app").display().to_string();
        assert!(inside(&root, &abs).is_ok());
        for bad in [
            "../outside",
            "stacks/../../outside",
            "link",
            "/etc",
            "missing",
        ] {
            assert!(inside(&root, bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn long_lines_are_dropped_whole() {
        let mut data = vec![b'x'; MAX_LINE + 10];
        data.extend_from_slice(b"\n{\"a\":1}\n");
        let mut r = std::io::BufReader::new(&data[..]);
        assert!(matches!(read_line(&mut r).unwrap(), Line::TooLong));
        assert!(matches!(read_line(&mut r).unwrap(), Line::Text(t) if t == b"{\"a\":1}"));
        assert!(matches!(read_line(&mut r).unwrap(), Line::Eof));
    }
}
