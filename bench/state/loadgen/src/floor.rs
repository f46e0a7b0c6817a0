//! `floor-server`: the least a server of Terraform's `http` backend does per lock + write +
//! unlock cycle, to measure airlock's write path against (issue 17 §1 asks for the floor and what
//! limits it). Each request is read whole from a kept-alive connection and answered `200`; a state
//! write is hashed as airlock hashes it (SHA-256, the version's hash, and MD5 for `Content-MD5`,
//! in one pass: `blob::sha256_and_md5`), its MD5 checked, and made durable as a WAL commit is
//! (16 KiB appended, one `fdatasync`). No parsing, database, firewall, audit or async runtime:
//! a thread per connection, blocking reads. Loopback only, like the rest of the load generator.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use airlock_store::blob::sha256_and_md5;
use base64::Engine;

use crate::{Flags, Res};

/// What one write appends to the log before its `fdatasync` (a few changed chunks and a record).
const COMMIT_BYTES: usize = 16 * 1024;
/// The log starts over past this size.
const LOG_MAX: u64 = 64 << 20;
/// Largest request body read.
const BODY_MAX: usize = 64 << 20;

pub fn serve(f: &Flags) -> Res<()> {
    let listen = f.str("listen")?;
    if !listen.starts_with("127.0.0.1:") {
        return Err(format!("--listen {listen}: only 127.0.0.1 is served"));
    }
    let path = std::path::Path::new(f.str("dir")?).join("floor.log");
    let log = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let log = Arc::new(Mutex::new(log));
    let listener = TcpListener::bind(listen).map_err(|e| format!("{listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("listening on http://{addr}\nadmin token: floor");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let log = Arc::clone(&log);
        std::thread::spawn(move || {
            let _ = connection(stream, &log);
        });
    }
    Ok(())
}

fn connection(stream: TcpStream, log: &Mutex<std::fs::File>) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let request = line.trim_end().to_owned();
        let (mut len, mut md5) = (0usize, None);
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => len = value.trim().parse().unwrap_or(0),
                    "content-md5" => md5 = Some(value.trim().to_owned()),
                    _ => {}
                }
            }
        }
        if len > BODY_MAX {
            return Ok(());
        }
        // A fresh buffer per request, as a server that keeps the body does.
        let mut body = vec![0; len];
        reader.read_exact(&mut body)?;
        let status = if request.starts_with("POST /api/") {
            "201 Created"
        } else if request.starts_with("POST ") {
            write(body, md5.as_deref(), log)?
        } else {
            "200 OK"
        };
        out.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())?;
    }
}

/// Hashes, checks and commits a state write.
fn write(
    body: Vec<u8>,
    md5: Option<&str>,
    log: &Mutex<std::fs::File>,
) -> std::io::Result<&'static str> {
    let (_sha256, digest) = sha256_and_md5(&body);
    let sent = md5.and_then(|m| base64::engine::general_purpose::STANDARD.decode(m).ok());
    if sent.as_deref() != Some(&digest[..]) {
        return Ok("400 Bad Request");
    }
    let bytes = &body[..];
    let mut log = log
        .lock()
        .map_err(|_| std::io::Error::other("log lock poisoned"))?;
    if log.metadata()?.len() > LOG_MAX {
        log.set_len(0)?;
    }
    log.write_all(&bytes[..bytes.len().min(COMMIT_BYTES)])?;
    log.sync_data()?;
    Ok("200 OK")
}
