//! The HTTP client the CLI commands share: finds the server and token, speaks HTTPS with the
//! system's roots plus `--ca-cert`, turns server refusals into errors that carry their status
//! (their status decides the exit code, see `main.rs`), and makes every server-supplied string safe for a terminal
//! ([`printable`]) before text output shows it.

use std::borrow::Cow;
use std::fmt;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use serde_json::Value;

use crate::cli::{ClientArgs, OutputFormat};

/// The server refused a request.
#[derive(Debug)]
pub struct ServerRefused {
    pub status: u16,
    /// The server's error code (`forbidden`, `locked`, ...), or `http_STATUS` without one.
    pub code: String,
    pub message: String,
}

/// No token was given.
#[derive(Debug)]
pub struct NoToken;

impl fmt::Display for NoToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no token: set AIRLOCK_TOKEN or pass --token")
    }
}

impl std::error::Error for NoToken {}

impl fmt::Display for ServerRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (HTTP {})", printable(&self.message), self.status)
    }
}

impl std::error::Error for ServerRefused {}

#[derive(Clone)]
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
        let mut agent = ureq::AgentBuilder::new().timeout(std::time::Duration::from_secs(300));
        if base.starts_with("https://") {
            agent = agent.tls_config(tls_config(args.ca_cert.as_deref())?);
        }
        let agent = agent.build();
        Ok(Client {
            base,
            token: args.token.clone(),
            agent,
            format: args.format,
        })
    }

    /// The same server and transport with another token (a run-bound token, say).
    pub fn with_token(&self, token: String) -> Client {
        Client {
            base: self.base.clone(),
            token: Some(token),
            agent: self.agent.clone(),
            format: self.format,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: &str, path: &str) -> anyhow::Result<ureq::Request> {
        let token = self.token.as_deref().ok_or(NoToken)?;
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
                let parsed = serde_json::from_str::<Value>(&body).ok();
                let field = |name: &str| {
                    parsed
                        .as_ref()
                        .and_then(|v| v.pointer(&format!("/error/{name}")))
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                };
                let code = field("code").unwrap_or_else(|| format!("http_{status}"));
                let message = field("message").unwrap_or(body);
                Err(ServerRefused {
                    status,
                    code,
                    message,
                }
                .into())
            }
            Err(e) => Err(unreachable(&self.base, e)),
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

    /// POSTs `body` without a token (`airlock login --oidc`: the body carries the credential).
    pub fn post_anonymous(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let req = self.agent.post(&format!("{}{path}", self.base));
        let resp = self.finish(req.send_json(body))?;
        resp.into_json().context("the server sent invalid JSON")
    }

    pub fn send(&self, method: &str, path: &str, body: &Value) -> anyhow::Result<Value> {
        let resp = self.finish(self.request(method, path)?.send_json(body))?;
        resp.into_json().context("the server sent invalid JSON")
    }

    /// POSTs a body of type `content_type` read from `body` as it is produced (chunked), and
    /// returns the JSON answer.
    pub fn send_stream(
        &self,
        path: &str,
        content_type: &str,
        body: impl Read,
    ) -> anyhow::Result<Value> {
        let req = self
            .request("POST", path)?
            .set("Content-Type", content_type);
        let resp = self.finish(req.send(body))?;
        resp.into_json().context("the server sent invalid JSON")
    }

    /// POSTs `body` with extra `headers` and returns the status and body whatever the status
    /// (at most `limit` bytes of it): for relays that pass the server's answers on as they are
    /// (`airlock mcp`). Only a server that cannot be reached is an error.
    pub fn post_raw(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        limit: u64,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        self.send_raw("POST", path, headers, body, limit, None)
    }

    /// [`Client::post_raw`] with any method (Terraform's state protocol: `LOCK`, `UNLOCK`) and,
    /// when given, a timeout for the whole request shorter than the client's.
    pub fn send_raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        limit: u64,
        timeout: Option<std::time::Duration>,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let mut req = self.request(method, path)?;
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        for (k, v) in headers {
            req = req.set(k, v);
        }
        let resp = match req.send_bytes(body) {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => return Err(unreachable(&self.base, e)),
        };
        let status = resp.status();
        let mut out = Vec::new();
        resp.into_reader()
            .take(limit)
            .read_to_end(&mut out)
            .context("reading the response")?;
        Ok((status, out))
    }

    /// Prints `value` as JSON when `--format json`, otherwise runs `text`.
    pub fn print(&self, value: &Value, text: impl FnOnce(&Value) -> String) {
        print_as(self.format, value, text);
    }
}

/// Prints `value` as JSON (with [`with_rfc3339`] times and [`all_stacks_as_star`]) when
/// `format` is JSON, otherwise runs `text` on it made [`printable`].
pub fn print_as(format: OutputFormat, value: &Value, text: impl FnOnce(&Value) -> String) {
    match format {
        OutputFormat::Json => {
            let mut v = value.clone();
            with_rfc3339(&mut v);
            all_stacks_as_star(&mut v);
            crate::out(&format!(
                "{}\n",
                serde_json::to_string_pretty(&v).unwrap_or_default()
            ))
        }
        OutputFormat::Text => crate::out(&text(&printable_value(value))),
    }
}

/// Next to every epoch-milliseconds time field (`*_at` with an integer value) adds the same
/// time in RFC 3339 as `*_at_rfc3339`, which people and `jq` can read.
pub fn with_rfc3339(v: &mut Value) {
    match v {
        Value::Array(items) => items.iter_mut().for_each(with_rfc3339),
        Value::Object(map) => {
            let times: Vec<(String, String)> = map
                .iter()
                .filter(|(k, _)| k.ends_with("_at"))
                .filter_map(|(k, x)| {
                    x.as_i64()
                        .map(|ms| (format!("{k}_rfc3339"), airlock_core::time::rfc3339(ms)))
                })
                .collect();
            map.values_mut().for_each(with_rfc3339);
            for (k, t) in times {
                map.insert(k, Value::String(t));
            }
        }
        _ => {}
    }
}

/// A token's `stacks: []` means all stacks; JSON output says `["*"]`, as text output says `*`
/// (the glob `*` matches every stack name, so the two mean the same to the server).
pub fn all_stacks_as_star(v: &mut Value) {
    match v {
        Value::Array(items) => items.iter_mut().for_each(all_stacks_as_star),
        Value::Object(map) => {
            if map.contains_key("role") {
                if let Some(Value::Array(a)) = map.get_mut("stacks") {
                    if a.is_empty() {
                        a.push(Value::String("*".into()));
                    }
                }
            }
            map.values_mut().for_each(all_stacks_as_star);
        }
        _ => {}
    }
}

/// The rustls configuration of an https:// server: the system's roots (which honour
/// `SSL_CERT_FILE` / `SSL_CERT_DIR`) plus the PEM certificates of `ca_cert`.
pub(crate) fn tls_config(ca_cert: Option<&Path>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    let mut roots = rustls::RootCertStore::empty();
    // Unreadable or odd system certificates are skipped: --ca-cert may be all that is needed.
    let (_added, _ignored) =
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(path) = ca_cert {
        let what = || {
            format!(
                "reading the CA certificate {} (--ca-cert / AIRLOCK_CA_CERT)",
                path.display()
            )
        };
        let pem = std::fs::read(path).with_context(what)?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .with_context(what)?;
        if certs.is_empty() {
            anyhow::bail!(
                "{}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
                what()
            );
        }
        for cert in certs {
            roots.add(cert).with_context(what)?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS setup")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A transport failure, with what to do about it.
fn unreachable(base: &str, e: ureq::Error) -> anyhow::Error {
    let mut refused = false;
    let mut tls: Option<&rustls::Error> = None;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            refused |= io.kind() == std::io::ErrorKind::ConnectionRefused;
            tls = tls.or_else(|| io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()));
        }
        tls = tls.or_else(|| err.downcast_ref::<rustls::Error>());
        source = err.source();
    }
    let hint = match tls {
        Some(rustls::Error::InvalidCertificate(_)) => format!(
            "the TLS certificate of {base} is not trusted: pass its CA certificate with --ca-cert FILE or AIRLOCK_CA_CERT (PEM)"
        ),
        Some(rustls::Error::InvalidMessage(_)) => format!(
            "{base} does not answer in TLS: if the server runs without --tls-cert, use an http:// URL"
        ),
        _ if refused => format!(
            "nothing is listening at {base}: is `airlock server` running at AIRLOCK_URL (or --url)?"
        ),
        _ => format!("could not reach the airlock server at {base}: is `airlock server` running at AIRLOCK_URL (or --url)?"),
    };
    anyhow::Error::new(e).context(hint)
}

/// Server-supplied text made safe for a terminal: control characters (escape sequences, bells,
/// carriage returns, newlines) and bidirectional overrides are shown escaped (`\u{1b}`) rather
/// than interpreted. Every text output of a server string goes through it.
pub fn printable(text: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() || airlock_core::text::disguises(c);
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `v` with [`printable`] applied to every string and key, for text renderers.
fn printable_value(v: &Value) -> Value {
    match v {
        Value::String(x) => Value::String(printable(x).into_owned()),
        Value::Array(items) => Value::Array(items.iter().map(printable_value).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, x)| (printable(k).into_owned(), printable_value(x)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// A JSON field as display text, made [`printable`].
pub fn s(v: &Value, ptr: &str) -> String {
    match v.pointer(ptr) {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(x)) => printable(x).into_owned(),
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
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|r| r.iter().map(|c| printable(c).into_owned()).collect())
        .collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_escapes_control_and_bidi_characters_only() {
        assert_eq!(
            printable("plain text, tabs\tand é"),
            "plain text, tabs\\u{9}and é"
        );
        assert_eq!(
            printable("a\u{1b}[2Jb\u{7}\r\n\u{9b}"),
            "a\\u{1b}[2Jb\\u{7}\\u{d}\\u{a}\\u{9b}"
        );
        assert_eq!(printable("x\u{202e}y"), "x\\u{202e}y");
        assert!(matches!(printable("ok"), Cow::Borrowed(_)));
        let v = serde_json::json!({"k\u{1b}": ["\u{1b}", 1, {"n": "\u{7}"}]});
        assert_eq!(
            printable_value(&v),
            serde_json::json!({"k\\u{1b}": ["\\u{1b}", 1, {"n": "\\u{7}"}]})
        );
        assert_eq!(s(&v, "/k\u{1b}/0"), "\\u{1b}");
        assert!(!table(&["A"], vec![vec!["\u{1b}x".into()]]).contains('\u{1b}'));
        let refused = ServerRefused {
            status: 423,
            code: "locked".into(),
            message: "locked by root\u{1b}[2J".into(),
        };
        assert_eq!(refused.to_string(), "locked by root\\u{1b}[2J (HTTP 423)");
    }
}
