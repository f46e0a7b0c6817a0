//! A table of hostile HTTP input: each request gets a 4xx with a message and nothing is stored.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{history, lock_body, state_body};
use crate::support::*;

// ---- (d) hostile input at the HTTP layer ----

/// Sends raw bytes on a fresh connection and reads the response until the server closes it.
/// Returns (status, raw head, body); status 0 if the server closed without answering.
fn send_raw(addr: &str, request: &[u8]) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    // The server may answer (and close) before reading everything, e.g. on an oversized body.
    let _ = stream.write_all(request);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

/// A request with Host, Connection: close and Content-Length added (unless `raw_headers`
/// sets its own framing).
fn request(method: &str, target: &str, token: &str, headers: &[String], body: &[u8]) -> Vec<u8> {
    let mut r = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    if !token.is_empty() {
        r.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    let framed = headers.iter().any(|h| {
        h.to_ascii_lowercase().starts_with("transfer-encoding")
            || h.to_ascii_lowercase().starts_with("content-length")
    });
    for h in headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    if !framed {
        r.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    r.push_str("\r\n");
    let mut bytes = r.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

struct Case {
    name: &'static str,
    request: Vec<u8>,
    /// Statuses accepted (all 4xx).
    expect: &'static [u16],
    /// Whether the refusal is airlock's (JSON body with a message). Requests hyper refuses
    /// before they reach airlock (malformed HTTP framing) get a bare 400.
    message: bool,
}

fn md5_b64_of_other() -> &'static str {
    // MD5 of "something else", base64: a well-formed but wrong Content-MD5.
    "bTj4Ho1j5uYl3b0tZ8Mj3w=="
}

#[test]
fn hostile_http_input_gets_a_4xx_with_a_message_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_on(
        &Backing::Dir(dir.path().join("data")),
        None,
        &["--max-state-mib", "1"],
        &[("AIRLOCK_REQUEST_TIMEOUT_SECS", "2")],
    );
    let t = s.admin.clone();
    s.ok(&t, &["stack", "create", "dev/bad"]);
    let lineage = "0b2c9d4e-bad-input-lineage-0000000000001";
    let stack_url = s.state_url("dev/bad");
    let (code, _) = raw("LOCK", &stack_url, &t, &lock_body("bad-lock"));
    assert_eq!(code, 200);
    let (code, body) = raw(
        "POST",
        &format!("{stack_url}?ID=bad-lock"),
        &t,
        &state_body(lineage, 1, 2, 10),
    );
    assert_eq!(code, 200, "{body}");
    let baseline = history(&s, "dev/bad");

    let w = "/state/dev/bad?ID=bad-lock";
    let valid2 = state_body(lineage, 2, 2, 10);
    let with_serial = |serial: &str| {
        format!(r#"{{"version":4,"terraform_version":"1.11.4","serial":{serial},"lineage":"{lineage}","outputs":{{}},"resources":[]}}"#).into_bytes()
    };
    let instance = r#"{"mode":"managed","type":"terraform_data","name":"a","provider":"provider[\"terraform.io/builtin/terraform\"]","instances":[{"schema_version":0,"attributes":{"id":"x"}}]}"#;
    let duplicate = format!(
        r#"{{"version":4,"terraform_version":"1.11.4","serial":2,"lineage":"{lineage}","outputs":{{}},"resources":[{instance},{instance}]}}"#
    );
    let deep = format!(
        r#"{{"version":4,"terraform_version":"1.11.4","serial":2,"lineage":"{lineage}","outputs":{{"o":{{"value":{}{}}}}},"resources":[]}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let version3 = String::from_utf8(with_serial("2"))
        .unwrap()
        .replacen("\"version\":4", "\"version\":3", 1)
        .into_bytes();
    let mut bad_utf8 = with_serial("2");
    let at = bad_utf8.iter().position(|b| *b == b'1').unwrap();
    bad_utf8.splice(at..at, [0xff, 0xfe, 0xc3]);
    let oversized = {
        let mut b = with_serial("2");
        b.truncate(b.len() - 1);
        b.extend_from_slice(br#","pad":""#);
        b.extend(std::iter::repeat_n(b'x', 1024 * 1024));
        b.extend_from_slice(br#""}"#);
        b
    };
    let chunked_oversized = {
        let mut b = Vec::new();
        for _ in 0..20 {
            b.extend_from_slice(format!("{:x}\r\n", 64 * 1024).as_bytes());
            b.extend(std::iter::repeat_n(b' ', 64 * 1024));
            b.extend_from_slice(b"\r\n");
        }
        b.extend_from_slice(b"0\r\n\r\n");
        b
    };
    let h = |s: &str| vec![s.to_owned()];
    let no: &[String] = &[];
    let c = |name, request, expect, message| Case {
        name,
        request,
        expect,
        message,
    };
    let cases = vec![
        // bodies
        c(
            "oversized body",
            request("POST", w, &t, no, &oversized),
            &[413],
            true,
        ),
        c(
            "oversized chunked body",
            request(
                "POST",
                w,
                &t,
                &h("Transfer-Encoding: chunked"),
                &chunked_oversized,
            ),
            &[413],
            true,
        ),
        c("empty body", request("POST", w, &t, no, b""), &[400], true),
        c(
            "truncated JSON",
            request("POST", w, &t, no, &valid2[..valid2.len() / 2]),
            &[400],
            true,
        ),
        c(
            "malformed JSON",
            request("POST", w, &t, no, br#"{"version":4,,"serial":2}"#),
            &[400],
            true,
        ),
        c(
            "JSON array instead of a state",
            request("POST", w, &t, no, b"[1,2,3]"),
            &[400],
            true,
        ),
        c(
            "state format version 3",
            request("POST", w, &t, no, &version3),
            &[400],
            true,
        ),
        c(
            "unknown top-level field",
            request(
                "POST",
                w,
                &t,
                no,
                format!(r#"{{"version":4,"serial":2,"lineage":"{lineage}","evil":1}}"#).as_bytes(),
            ),
            &[400],
            true,
        ),
        c(
            "wrong Content-MD5",
            request(
                "POST",
                w,
                &t,
                &h(&format!("Content-MD5: {}", md5_b64_of_other())),
                &valid2,
            ),
            &[400],
            true,
        ),
        c(
            "Content-MD5 not base64",
            request("POST", w, &t, &h("Content-MD5: !!not-base64!!"), &valid2),
            &[400],
            true,
        ),
        c(
            "duplicate instances",
            request("POST", w, &t, no, duplicate.as_bytes()),
            &[400],
            true,
        ),
        c(
            "negative serial",
            request("POST", w, &t, no, &with_serial("-1")),
            &[400],
            true,
        ),
        c(
            "non-integer serial",
            request("POST", w, &t, no, &with_serial("2.5")),
            &[400],
            true,
        ),
        c(
            "string serial",
            request("POST", w, &t, no, &with_serial("\"2\"")),
            &[400],
            true,
        ),
        c(
            "serial 2^64",
            request("POST", w, &t, no, &with_serial("18446744073709551616")),
            &[400],
            true,
        ),
        c(
            "serial 1e400",
            request("POST", w, &t, no, &with_serial("1e400")),
            &[400],
            true,
        ),
        c(
            "serial above i64::MAX",
            request("POST", w, &t, no, &with_serial("9223372036854775808")),
            &[400, 409],
            true,
        ),
        c(
            "serial u64::MAX",
            request("POST", w, &t, no, &with_serial("18446744073709551615")),
            &[400, 409],
            true,
        ),
        c(
            "serial not greater than stored",
            request("POST", w, &t, no, &with_serial("1")),
            &[409],
            true,
        ),
        c(
            "other lineage",
            request("POST", w, &t, no, &state_body("other-lineage", 2, 1, 1)),
            &[409],
            true,
        ),
        c(
            "deep nesting",
            request("POST", w, &t, no, deep.as_bytes()),
            &[400],
            true,
        ),
        c(
            "invalid UTF-8",
            request("POST", w, &t, no, &bad_utf8),
            &[400],
            true,
        ),
        c(
            "write without the lock ID",
            request("POST", "/state/dev/bad", &t, no, &valid2),
            &[423],
            true,
        ),
        c(
            "write with another lock ID",
            request("POST", "/state/dev/bad?ID=someone-else", &t, no, &valid2),
            &[423],
            true,
        ),
        c(
            "bad percent-encoding in the query",
            request("POST", "/state/dev/bad?ID=%zz", &t, no, &valid2),
            &[400, 423],
            true,
        ),
        // lock bodies
        c(
            "LOCK with malformed JSON",
            request("LOCK", "/state/dev/bad", &t, no, b"{\"ID\":"),
            &[400],
            true,
        ),
        c(
            "LOCK without an ID",
            request(
                "LOCK",
                "/state/dev/bad",
                &t,
                no,
                br#"{"Operation":"OperationTypeApply"}"#,
            ),
            &[400],
            true,
        ),
        c(
            "LOCK body too large",
            request(
                "LOCK",
                "/state/dev/bad",
                &t,
                no,
                format!(r#"{{"ID":"x","Info":"{}"}}"#, "i".repeat(20_000)).as_bytes(),
            ),
            &[413],
            true,
        ),
        c(
            "UNLOCK with malformed JSON",
            request("UNLOCK", "/state/dev/bad", &t, no, b"{not json"),
            &[400],
            true,
        ),
        // stack names in the path
        c(
            "path ..",
            request("GET", "/state/..", &t, no, b""),
            &[400, 404],
            true,
        ),
        c(
            "path dev/..",
            request("POST", "/state/dev/..?ID=bad-lock", &t, no, &valid2),
            &[400],
            true,
        ),
        c(
            "path %2e%2e",
            request("GET", "/state/%2e%2e", &t, no, b""),
            &[400],
            true,
        ),
        c(
            "path dev/%2e%2e/bad",
            request("POST", "/state/dev/%2e%2e/bad?ID=bad-lock", &t, no, &valid2),
            &[400],
            true,
        ),
        c(
            "path %2F",
            request("POST", "/state/dev%2Fbad?ID=bad-lock", &t, no, &valid2),
            &[400],
            true,
        ),
        c(
            "path double slash",
            request("POST", "/state/dev//bad?ID=bad-lock", &t, no, &valid2),
            &[400],
            true,
        ),
        c(
            "path leading double slash",
            request("POST", "/state//dev/bad?ID=bad-lock", &t, no, &valid2),
            &[400],
            true,
        ),
        c(
            "path trailing slash",
            request("POST", "/state/dev/bad/?ID=bad-lock", &t, no, &valid2),
            &[400],
            true,
        ),
        c(
            "path uppercase",
            request("POST", "/state/DEV/Bad?ID=bad-lock", &t, no, &valid2),
            &[400],
            true,
        ),
        c(
            "path 5 segments",
            request("POST", "/state/a/b/c/d/e?ID=bad-lock", &t, no, &valid2),
            &[400],
            true,
        ),
        c(
            "path NUL",
            request("GET", "/state/dev/%00", &t, no, b""),
            &[400],
            true,
        ),
        c(
            "path escaping to the API",
            request("GET", "/state/../api/v1/tokens", &t, no, b""),
            &[400],
            true,
        ),
        c(
            "path with a space",
            request("GET", "/state/dev/bad%20x", &t, no, b""),
            &[400],
            true,
        ),
        c(
            "empty stack",
            request("GET", "/state/", &t, no, b""),
            &[400, 404],
            true,
        ),
        // methods
        c(
            "DELETE state",
            request("DELETE", "/state/dev/bad", &t, no, b""),
            &[405],
            true,
        ),
        c(
            "PATCH state",
            request("PATCH", "/state/dev/bad", &t, no, &valid2),
            &[405],
            true,
        ),
        c(
            "made-up method",
            request("FROB", "/state/dev/bad", &t, no, b""),
            &[405],
            true,
        ),
        c(
            "LOCK on the API",
            request("LOCK", "/api/v1/stacks", &t, no, &lock_body("x")),
            &[404, 405],
            false,
        ),
        c(
            "POST on /healthz",
            request("POST", "/healthz", &t, no, b""),
            &[404, 405],
            false,
        ),
        // authentication and headers
        c(
            "no credentials",
            request("POST", w, "", no, &valid2),
            &[401],
            true,
        ),
        c(
            "garbage Authorization",
            request("POST", w, "", &h("Authorization: Negotiate abc"), &valid2),
            &[401],
            true,
        ),
        c(
            "Basic auth that is not base64",
            request("POST", w, "", &h("Authorization: Basic %%%"), &valid2),
            &[401],
            true,
        ),
        c(
            "unknown token",
            request("POST", w, "not-a-token", no, &valid2),
            &[401],
            true,
        ),
        c(
            "CRLF in the lock ID (JSON-escaped)",
            request(
                "LOCK",
                "/state/dev/bad",
                &t,
                no,
                br#"{"ID":"a\r\nSet-Cookie: pwn=1","Operation":"OperationTypeApply"}"#,
            ),
            &[400],
            true,
        ),
        c(
            "CRLF in the ?ID= (percent-encoded)",
            request(
                "POST",
                "/state/dev/bad?ID=x%0d%0aSet-Cookie:%20pwn=1",
                &t,
                no,
                &valid2,
            ),
            &[423],
            true,
        ),
        c(
            "bare CR in a header value",
            request("POST", w, &t, &h("X-Note: a\rSet-Cookie: pwn=1"), &valid2),
            &[400],
            false,
        ),
        c(
            "obsolete header folding",
            request(
                "POST",
                w,
                &t,
                &h("X-Note: a\r\n Set-Cookie: pwn=1"),
                &valid2,
            ),
            &[400],
            false,
        ),
        c(
            "two different Content-Lengths",
            request(
                "POST",
                w,
                &t,
                &[
                    "Content-Length: 3".to_owned(),
                    "Content-Length: 400".to_owned(),
                ],
                &valid2,
            ),
            &[400],
            false,
        ),
        c(
            "bad chunk size",
            request(
                "POST",
                w,
                &t,
                &h("Transfer-Encoding: chunked"),
                b"zz\r\nabc\r\n0\r\n\r\n",
            ),
            &[400],
            false,
        ),
        c(
            "garbage request line",
            b"GARBAGE\r\n\r\n".to_vec(),
            &[400],
            false,
        ),
    ];

    let mut failures = Vec::new();
    for case in &cases {
        let (status, head, body) = send_raw(&s.addr(), &case.request);
        let ok_status = case.expect.contains(&status);
        let has_message = !case.message
            || serde_json::from_str::<Value>(&body).ok().and_then(|v| {
                v.pointer("/error/message")
                    .and_then(Value::as_str)
                    .map(|m| !m.is_empty())
            }) == Some(true);
        let injected = head
            .lines()
            .any(|l| l.to_ascii_lowercase().starts_with("set-cookie"));
        if !ok_status || !has_message || injected {
            failures.push(format!(
                "{}: got {status} (want {:?}), message: {has_message}, injected header: {injected}\n{head}\n{}",
                case.name,
                case.expect,
                body.chars().take(300).collect::<String>()
            ));
        }
        // The server keeps serving, and nothing was stored.
        let (code, _) = raw("GET", &format!("{}/healthz", s.url), &t, b"");
        assert_eq!(code, 200, "after {}: /healthz", case.name);
        assert_eq!(
            history(&s, "dev/bad"),
            baseline,
            "after {}: something was stored",
            case.name
        );
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );

    // Slow clients: one sends headers and then stalls on its body, one stalls in its headers.
    // Others are served meanwhile; the stalled upload gets a 408 when its time is up.
    let mut stalled_body = TcpStream::connect(s.addr()).unwrap();
    stalled_body
        .write_all(&request("POST", w, &t, &h("Content-Length: 5000"), b"")[..])
        .unwrap();
    stalled_body.write_all(br#"{"version":4,"serial""#).unwrap();
    let mut stalled_head = TcpStream::connect(s.addr()).unwrap();
    stalled_head
        .write_all(b"POST /state/dev/bad HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthor")
        .unwrap();
    let began = Instant::now();
    for _ in 0..20 {
        let t0 = Instant::now();
        let (code, _) = raw("GET", &stack_url, &t, b"");
        assert_eq!(code, 200);
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "a read waited on a stalled client"
        );
    }
    stalled_body
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = stalled_body.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("gave up on this request"), "{answer}");
    assert!(began.elapsed() < Duration::from_secs(10));
    drop(stalled_head);
    assert_eq!(history(&s, "dev/bad"), baseline);
    let (code, _) = raw("GET", &format!("{}/healthz", s.url), &t, b"");
    assert_eq!(code, 200);
}
