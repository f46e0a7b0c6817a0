//! A minimal HTTP/1.1 keep-alive client over `std::net::TcpStream`, for loopback load only.
//!
//! A general-purpose client (ureq) costs more CPU per request than the server path being
//! measured on a 2-core machine, so the load generator speaks just enough HTTP itself: one
//! request at a time per connection, `Content-Length` or chunked response bodies, reconnect when
//! the server closes the connection.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Every socket read or write gives up after this long, so no benchmark loop can hang.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// `http://host:port` split into what a connection needs.
#[derive(Clone, Debug)]
pub struct Target {
    /// `host:port` to connect to and send as `Host`.
    pub authority: String,
}

impl Target {
    /// Parses `http://host:port[/]`; anything else (https, paths) is refused.
    pub fn parse(url: &str) -> Result<Target, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url}: only http:// URLs on loopback are supported"))?;
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(format!("{url}: expected http://HOST:PORT"));
        }
        Ok(Target {
            authority: authority.to_owned(),
        })
    }
}

/// One keep-alive connection to one server.
pub struct Conn {
    target: Target,
    auth: String,
    stream: Option<BufReader<TcpStream>>,
    head: Vec<u8>,
}

impl Conn {
    /// A connection that authenticates with `token` as Bearer (connects lazily).
    pub fn new(target: &Target, token: &str) -> Conn {
        Conn {
            target: target.clone(),
            auth: format!("Bearer {token}"),
            stream: None,
            head: Vec::with_capacity(512),
        }
    }

    fn connect(&mut self) -> io::Result<&mut BufReader<TcpStream>> {
        if self.stream.is_none() {
            let s = TcpStream::connect(&self.target.authority)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            s.set_write_timeout(Some(IO_TIMEOUT))?;
            self.stream = Some(BufReader::with_capacity(64 * 1024, s));
        }
        self.stream
            .as_mut()
            .ok_or_else(|| io::Error::other("no connection"))
    }

    /// Sends one request and reads the whole response body into `out`; returns the status.
    /// A request on a reused connection that the server had closed is retried once on a new
    /// connection (only when nothing of a response was read, so it was never processed).
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        extra_headers: &[(&str, &str)],
        body: &[u8],
        out: &mut Vec<u8>,
    ) -> io::Result<u16> {
        let reused = self.stream.is_some();
        match self.try_request(method, path, extra_headers, body, out) {
            Ok(status) => Ok(status),
            Err(RequestError::BeforeResponse(_)) if reused => {
                self.stream = None;
                self.try_request(method, path, extra_headers, body, out)
                    .map_err(RequestError::into_io)
            }
            Err(e) => {
                self.stream = None;
                Err(e.into_io())
            }
        }
    }

    fn try_request(
        &mut self,
        method: &str,
        path: &str,
        extra_headers: &[(&str, &str)],
        body: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<u16, RequestError> {
        self.head.clear();
        write!(
            self.head,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\nContent-Length: {}\r\n",
            self.target.authority,
            self.auth,
            body.len()
        )
        .map_err(RequestError::BeforeResponse)?;
        for (k, v) in extra_headers {
            write!(self.head, "{k}: {v}\r\n").map_err(RequestError::BeforeResponse)?;
        }
        self.head.extend_from_slice(b"\r\n");
        let head = std::mem::take(&mut self.head);
        let result = self.exchange(&head, body, out);
        self.head = head;
        result
    }

    fn exchange(
        &mut self,
        head: &[u8],
        body: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<u16, RequestError> {
        let stream = self.connect().map_err(RequestError::BeforeResponse)?;
        let sent = (|| {
            let w = stream.get_mut();
            w.write_all(head)?;
            if !body.is_empty() {
                w.write_all(body)?;
            }
            w.flush()
        })();
        sent.map_err(RequestError::BeforeResponse)?;
        let (status, close) = read_response(stream, out)?;
        if close {
            self.stream = None;
        }
        Ok(status)
    }
}

enum RequestError {
    /// Failed before any byte of a response arrived.
    BeforeResponse(io::Error),
    /// Failed while reading a response.
    During(io::Error),
}

impl RequestError {
    fn into_io(self) -> io::Error {
        match self {
            RequestError::BeforeResponse(e) | RequestError::During(e) => e,
        }
    }
}

fn bad(msg: String) -> RequestError {
    RequestError::During(io::Error::new(io::ErrorKind::InvalidData, msg))
}

/// Reads status line, headers and body; returns (status, server asked to close).
fn read_response(
    r: &mut BufReader<TcpStream>,
    out: &mut Vec<u8>,
) -> Result<(u16, bool), RequestError> {
    let mut line = String::new();
    let n = r
        .read_line(&mut line)
        .map_err(RequestError::BeforeResponse)?;
    if n == 0 {
        return Err(RequestError::BeforeResponse(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        )));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad status line {line:?}")))?;
    let (mut length, mut chunked, mut close) = (None, false, false);
    for _ in 0..200 {
        line.clear();
        if r.read_line(&mut line).map_err(RequestError::During)? == 0 {
            return Err(bad("connection closed inside the response head".into()));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        match k.as_str() {
            "content-length" => length = v.parse::<usize>().ok(),
            "transfer-encoding" => chunked = v.to_ascii_lowercase().contains("chunked"),
            "connection" => close = v.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    out.clear();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line).map_err(RequestError::During)?;
            let size_text = line.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| bad(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                // Trailers, then the final empty line.
                for _ in 0..100 {
                    line.clear();
                    if r.read_line(&mut line).map_err(RequestError::During)? == 0
                        || line.trim().is_empty()
                    {
                        break;
                    }
                }
                break;
            }
            let start = out.len();
            out.resize(start + size, 0);
            r.read_exact(&mut out[start..])
                .map_err(RequestError::During)?;
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf).map_err(RequestError::During)?;
        }
    } else if let Some(len) = length {
        out.resize(len, 0);
        r.read_exact(out).map_err(RequestError::During)?;
    } else if status != 204 && status != 304 && !(100..200).contains(&status) {
        // No length: the body runs to the end of the connection.
        r.read_to_end(out).map_err(RequestError::During)?;
        close = true;
    }
    Ok((status, close))
}
