//! The server's log: one structured line on stderr per refused request (and, at `info`, per
//! request), because Terraform shows only a bare status code ("HTTP error: 403") and discards
//! the response body that says why. Lines are logfmt: `key=value`, free text quoted and escaped,
//! so a hostile stack name or token name cannot forge a line.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use axum::Extension;

use crate::AppState;

/// How much the server logs on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum LogLevel {
    /// Nothing.
    Off,
    /// Unexpected (internal) errors only.
    Error,
    /// Internal errors and every refused request (4xx) with its reason: the default.
    #[default]
    Warn,
    /// Everything above and one line per request.
    Info,
}

/// Why a request was refused, attached to the response by `ApiError` for this log.
#[derive(Debug, Clone)]
pub(crate) struct RefusalNote {
    pub code: &'static str,
    pub reason: String,
}

/// A refusal the audit budget left out of the audit (`audit_budget`): it is not logged one
/// by one either (the budget logs how many, at most once a second).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LeftOut;

/// The longest method a log line or a refusal shows (the route table's longest is 6 bytes; a
/// client may send a method as long as its request header).
pub(crate) const MAX_METHOD: usize = 16;
/// The longest path a log line shows.
const MAX_PATH: usize = 1024;

/// Who made the request and about which stack, attached to the response by the
/// authorization middleware (as far as it got).
#[derive(Debug, Clone, Default)]
pub(crate) struct Caller {
    pub actor: Option<String>,
    pub stack: Option<String>,
}

/// Middleware around every route: logs the request once it is answered.
pub(crate) async fn log_requests(
    Extension(state): Extension<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let level = state.config.log_level;
    if level < LogLevel::Warn {
        return next.run(req).await;
    }
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let started = Instant::now();
    let resp = next.run(req).await;
    if resp.extensions().get::<LeftOut>().is_some() {
        return resp;
    }
    let status = resp.status();
    let note = resp.extensions().get::<RefusalNote>();
    let refused = status.is_client_error() || note.is_some();
    if !refused && level < LogLevel::Info {
        return resp;
    }
    let caller = resp
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or_default();
    let mut line = format!(
        "{} level={} event={} status={} method={} path={}",
        airlock_core::time::rfc3339(airlock_store::now_ms()),
        if refused { "warn" } else { "info" },
        if refused { "refused" } else { "request" },
        status.as_u16(),
        quote(&bounded(&method, MAX_METHOD)),
        quote(&bounded(&path, MAX_PATH)),
    );
    if let Some(stack) = &caller.stack {
        line.push_str(&format!(" stack={}", quote(stack)));
    }
    if let Some(actor) = &caller.actor {
        line.push_str(&format!(" actor={}", quote(actor)));
    }
    if let Some(n) = note {
        line.push_str(&format!(" code={} reason={}", n.code, quote(&n.reason)));
    }
    line.push_str(&format!(" ms={}", started.elapsed().as_millis()));
    emit(&line);
    resp
}

/// Writes one log line. The server's log is its stderr; this is the only place it prints.
#[allow(clippy::print_stderr)]
pub(crate) fn emit(line: &str) {
    eprintln!("{line}");
}

/// `v` cut to at most `max` bytes (at a character boundary), saying how long it was: the
/// client's text (a method, a path) shown without letting it choose how much is kept.
pub(crate) fn bounded(v: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if v.len() <= max {
        return v.into();
    }
    let mut end = max;
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…({} bytes)", &v[..end], v.len()).into()
}

/// A logfmt value: bare when it is plain, otherwise quoted with every quote, backslash and
/// control character escaped.
pub(crate) fn quote(v: &str) -> String {
    let plain = !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:{}*@%+,".contains(c));
    if plain {
        v.to_owned()
    } else {
        format!("{v:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::{bounded, quote};

    #[test]
    fn client_text_is_shown_bounded() {
        assert_eq!(bounded("LOCK", 16), "LOCK");
        let huge = "A".repeat(300_000);
        let shown = bounded(&huge, 16);
        assert_eq!(shown, format!("{}…(300000 bytes)", "A".repeat(16)));
        assert_eq!(bounded("ééé", 3), "é…(6 bytes)");
    }

    #[test]
    fn quoting_cannot_forge_a_line_or_a_key() {
        assert_eq!(quote("/state/prod/app"), "/state/prod/app");
        assert_eq!(quote("ci (tok_1)"), "\"ci (tok_1)\"");
        assert_eq!(quote("a\nlevel=warn"), "\"a\\nlevel=warn\"");
        assert_eq!(quote("x\" y=\"z"), "\"x\\\" y=\\\"z\"");
        assert_eq!(quote(""), "\"\"");
    }
}
