//! The HTTP client the CLI commands share: finds the server and token, turns server refusals
//! into errors that carry their status (403 becomes exit code 2).

use std::fmt;
use std::io::Read;

use anyhow::Context;
use serde_json::Value;

use crate::cli::{ClientArgs, OutputFormat};

/// The server refused a request.
#[derive(Debug)]
pub struct ServerRefused {
    pub status: u16,
    pub message: String,
}

impl fmt::Display for ServerRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (HTTP {})", self.message, self.status)
    }
}

impl std::error::Error for ServerRefused {}

pub struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
    pub format: OutputFormat,
}

/// Percent-encodes a stack name into one path segment (`prod/app` -> `prod%2Fapp`).
pub fn stack_segment(stack: &str) -> String {
    stack.replace('%', "%25").replace('/', "%2F")
}

impl Client {
    pub fn new(args: &ClientArgs) -> anyhow::Result<Client> {
        let base = args.url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            anyhow::bail!("AIRLOCK_URL / --url must start with http:// or https://, got {base:?}");
        }
        let agent = ureq::AgentBuilder::new()
            .timeout(std::time::Duration::from_secs(300))
            .build();
        Ok(Client {
            base,
            token: args.token.clone(),
            agent,
            format: args.format,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: &str, path: &str) -> anyhow::Result<ureq::Request> {
        let token = self
            .token
            .as_deref()
            .context("no token: set AIRLOCK_TOKEN or pass --token")?;
        Ok(self
            .agent
            .request(method, &format!("{}{path}", self.base))
            .set("Authorization", &format!("Bearer {token}")))
    }

    fn finish(
        &self,
        result: Result<ureq::Response, ureq::Error>,
    ) -> anyhow::Result<ureq::Response> {
        match result {
            Ok(r) => Ok(r),
            Err(ureq::Error::Status(status, resp)) => {
                let body = resp.into_string().unwrap_or_default();
                let message = serde_json::from_str::<Value>(&body)
                    .ok()
                    .and_then(|v| {
                        v.pointer("/error/message")
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                    })
                    .unwrap_or(body);
                Err(ServerRefused { status, message }.into())
            }
            Err(e) => Err(anyhow::Error::new(e).context(format!(
                "could not reach the airlock server at {}",
                self.base
            ))),
        }
    }

    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        let resp = self.finish(self.request("GET", path)?.call())?;
        resp.into_json().context("the server sent invalid JSON")
    }

    pub fn get_bytes(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let resp = self.finish(self.request("GET", path)?.call())?;
        let mut out = Vec::new();
        resp.into_reader()
            .read_to_end(&mut out)
            .context("reading the response")?;
        Ok(out)
    }

    pub fn send(&self, method: &str, path: &str, body: &Value) -> anyhow::Result<Value> {
        let resp = self.finish(self.request(method, path)?.send_json(body))?;
        resp.into_json().context("the server sent invalid JSON")
    }

    /// Prints `value` as JSON when `--format json`, otherwise runs `text`.
    pub fn print(&self, value: &Value, text: impl FnOnce(&Value) -> String) {
        match self.format {
            OutputFormat::Json => crate::out(&format!(
                "{}\n",
                serde_json::to_string_pretty(value).unwrap_or_default()
            )),
            OutputFormat::Text => crate::out(&text(value)),
        }
    }
}

/// A JSON field as display text.
pub fn s(v: &Value, ptr: &str) -> String {
    match v.pointer(ptr) {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(x)) => x.clone(),
        Some(other) => other.to_string(),
    }
}

/// A millisecond timestamp field as RFC 3339.
pub fn time(v: &Value, ptr: &str) -> String {
    v.pointer(ptr)
        .and_then(Value::as_i64)
        .map_or("-".into(), airlock_core::time::rfc3339)
}

/// Lays rows out in aligned columns.
pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let all = std::iter::once(header.iter().map(|h| h.to_string()).collect::<Vec<_>>()).chain(rows);
    for r in all {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
