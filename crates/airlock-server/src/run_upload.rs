//! The run upload format (`POST /api/v1/stacks/{stack}/runs` with [`CONTENT_TYPE`]): the run's
//! metadata and artifacts as raw bytes in one zstd-compressed stream, so `airlock plan` sends the
//! binary plan while `terraform show -json` still runs and pipes the plan JSON in as it comes,
//! and the server checks the binary plan before the JSON has arrived.
//!
//! The decompressed stream is a sequence of parts, in this order: `run.json` (the metadata),
//! `plan.tfplan`, `terraform.lock.hcl` (only when the checkout has one), `plan.json`, `end`
//! (empty). A part is its name (one length byte, then ASCII), its content as chunks (a 4-byte
//! big-endian length, then the bytes; a zero length ends the content) and the SHA-256 of the
//! content (32 bytes). The `end` part makes a stream cut at a zstd frame boundary a truncated
//! upload, not a shorter one.
//!
//! **Invariant:** decoding never holds more than the caller's budget of decompressed bytes (a
//! decompression bomb is refused as too large, after at most that many bytes) and a zstd window
//! of at most [`MAX_WINDOW_LOG`]; every part's content is checked against its SHA-256.

use std::io::{self, Read, Write};

pub use axum::body::Bytes;
use sha2::{Digest, Sha256};

/// The media type of a run upload in this format.
pub const CONTENT_TYPE: &str = "application/vnd.airlock.run-upload+zstd";
/// The part names, in the order they are sent.
pub const META: &str = "run.json";
/// The binary plan (`terraform plan -out`).
pub const PLAN: &str = "plan.tfplan";
/// The dependency lock file, when the checkout has one.
pub const LOCKFILE: &str = "terraform.lock.hcl";
/// `terraform show -json` of the binary plan.
pub const PLAN_JSON: &str = "plan.json";
/// The last part (empty).
pub const END: &str = "end";

/// Largest zstd window the server accepts (8 MiB): the memory a frame can make the decoder
/// allocate. `airlock plan` compresses at a level whose window is smaller.
pub const MAX_WINDOW_LOG: u32 = 23;
/// The compression level `airlock plan` uses (fast; plans are very repetitive).
pub const LEVEL: i32 = 3;
/// Largest chunk the writer sends.
const CHUNK: usize = 64 * 1024;

/// Why a stream could not be read.
#[derive(Debug)]
pub enum UploadError {
    /// More decompressed bytes than the budget.
    TooLarge,
    /// Not this format, cut short, or a part that is not what it claims.
    Malformed(String),
}

impl std::fmt::Display for UploadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UploadError::TooLarge => f.write_str("the upload decompresses to more than its limit"),
            UploadError::Malformed(m) => f.write_str(m),
        }
    }
}

/// Writes a run upload to `W` (the request body).
pub struct Writer<W: Write> {
    zstd: zstd::Encoder<'static, W>,
}

/// Padding [`Writer::push`] sends: more than one chunk of the HTTP client's chunked body (ureq
/// sends at most 16 KiB per chunk and holds a partial one until it fills).
const PUSH_PADDING: usize = 16 * 1024;

impl<W: Write> Writer<W> {
    /// Starts a stream.
    pub fn new(out: W) -> io::Result<Self> {
        Ok(Writer {
            zstd: zstd::Encoder::new(out, LEVEL)?,
        })
    }

    /// Makes sure everything written so far leaves the HTTP client now, though more will follow
    /// only later (the plan JSON, while `terraform show -json` runs): ends the zstd frame and
    /// sends a skippable frame (which decoders skip) as padding. Costs 16 KiB on the wire.
    pub fn push(self) -> io::Result<Self> {
        let mut out = self.zstd.finish()?;
        out.write_all(&0x184D_2A50u32.to_le_bytes())?;
        out.write_all(&(PUSH_PADDING as u32).to_le_bytes())?;
        out.write_all(&[0u8; PUSH_PADDING])?;
        out.flush()?;
        Writer::new(out)
    }

    /// Writes one part whose content is in memory.
    pub fn part(&mut self, name: &str, content: &[u8]) -> io::Result<()> {
        self.part_from(name, &mut &content[..]).map(|_| ())
    }

    /// Writes one part whose content is read from `from` to its end (a child's stdout, say),
    /// sending each piece as it arrives. Returns the number of content bytes.
    pub fn part_from(&mut self, name: &str, from: &mut dyn Read) -> io::Result<u64> {
        let len = u8::try_from(name.len()).map_err(|_| io::Error::other("part name too long"))?;
        self.zstd.write_all(&[len])?;
        self.zstd.write_all(name.as_bytes())?;
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        let mut total = 0u64;
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let piece = buf.get(..n).unwrap_or_default();
            hash.update(piece);
            self.zstd.write_all(&(n as u32).to_be_bytes())?;
            self.zstd.write_all(piece)?;
            // Lets the server start on what it has (the binary plan before the JSON).
            self.zstd.flush()?;
            total += n as u64;
        }
        self.zstd.write_all(&0u32.to_be_bytes())?;
        self.zstd.write_all(&hash.finalize())?;
        self.zstd.flush()?;
        Ok(total)
    }

    /// Writes the `end` part and finishes the zstd stream.
    pub fn finish(mut self) -> io::Result<W> {
        self.part(END, &[])?;
        self.zstd.finish()
    }
}

/// Reads a run upload from `R`, within a budget of decompressed bytes.
pub struct Reader<R: Read> {
    zstd: zstd::Decoder<'static, io::BufReader<R>>,
    /// Decompressed bytes still allowed.
    budget: u64,
}

impl<R: Read> Reader<R> {
    /// Starts reading `input`, allowing at most `budget` decompressed bytes in all.
    pub fn new(input: R, budget: u64) -> Result<Self, UploadError> {
        let mut zstd = zstd::Decoder::new(input).map_err(io_error)?;
        zstd.window_log_max(MAX_WINDOW_LOG).map_err(io_error)?;
        Ok(Reader { zstd, budget })
    }

    fn exact(&mut self, buf: &mut [u8]) -> Result<(), UploadError> {
        let n = buf.len() as u64;
        if n > self.budget {
            return Err(UploadError::TooLarge);
        }
        self.budget -= n;
        self.zstd.read_exact(buf).map_err(io_error)
    }

    /// The next part: its name and its content, checked against its SHA-256.
    pub fn next_part(&mut self) -> Result<(String, Vec<u8>), UploadError> {
        let mut len = [0u8; 1];
        self.exact(&mut len)?;
        let mut name = vec![0u8; usize::from(len[0])];
        self.exact(&mut name)?;
        let name = String::from_utf8(name)
            .ok()
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| UploadError::Malformed("a part name is not printable ASCII".into()))?;
        let mut content = Vec::new();
        loop {
            let mut n = [0u8; 4];
            self.exact(&mut n)?;
            let n = u64::from(u32::from_be_bytes(n));
            if n == 0 {
                break;
            }
            if n > self.budget {
                return Err(UploadError::TooLarge);
            }
            self.budget -= n;
            // Grows with what arrives, never by the length a hostile stream declares.
            let got = (&mut self.zstd)
                .take(n)
                .read_to_end(&mut content)
                .map_err(io_error)?;
            if got as u64 != n {
                return Err(truncated());
            }
        }
        let mut sha = [0u8; 32];
        self.exact(&mut sha)?;
        if Sha256::digest(&content).as_slice() != sha {
            return Err(UploadError::Malformed(format!(
                "part {name}: its content does not match its SHA-256 (corrupted or altered upload)"
            )));
        }
        Ok((name, content))
    }

    /// The next part, which must be `name`.
    pub fn expect(&mut self, name: &str) -> Result<Vec<u8>, UploadError> {
        let (got, content) = self.next_part()?;
        if got != name {
            return Err(UploadError::Malformed(format!(
                "expected part {name}, got {got:?} (parts are run.json, plan.tfplan, terraform.lock.hcl if any, plan.json, end)"
            )));
        }
        Ok(content)
    }

    /// Reads the `end` part and checks that nothing follows it.
    pub fn end(mut self) -> Result<(), UploadError> {
        self.expect(END)?;
        let mut rest = [0u8; 1];
        match self.zstd.read(&mut rest).map_err(io_error)? {
            0 => Ok(()),
            _ => Err(UploadError::Malformed("data after the end part".into())),
        }
    }
}

/// The error a body reader gives when the (compressed) body passes its size limit.
#[derive(Debug)]
pub struct BodyTooLarge;

impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body passed its size limit")
    }
}

impl std::error::Error for BodyTooLarge {}

/// A [`Read`] over a sequence of chunks (a request body as it arrives, a child's output).
pub struct Chunks<I> {
    chunks: I,
    current: Bytes,
}

impl<I> Chunks<I> {
    /// Reads `chunks` in order; an error item ends the stream with that error.
    pub fn new(chunks: I) -> Self {
        Chunks {
            chunks,
            current: Bytes::new(),
        }
    }
}

impl<I: Iterator<Item = io::Result<Bytes>>> Read for Chunks<I> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.next() {
                Some(chunk) => self.current = chunk?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        let piece = self.current.split_to(n);
        buf.get_mut(..n)
            .ok_or_else(|| io::Error::other("short buffer"))?
            .copy_from_slice(&piece);
        Ok(n)
    }
}

fn truncated() -> UploadError {
    UploadError::Malformed("the upload is truncated".into())
}

fn io_error(e: io::Error) -> UploadError {
    if e.get_ref().is_some_and(|inner| inner.is::<BodyTooLarge>()) {
        return UploadError::TooLarge;
    }
    match e.kind() {
        io::ErrorKind::UnexpectedEof => truncated(),
        _ => UploadError::Malformed(format!("the upload is not a valid zstd run upload: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upload(parts: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = Writer::new(Vec::new()).unwrap();
        for (name, content) in parts {
            w.part(name, content).unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn round_trip() {
        let big = vec![7u8; 300 * 1024];
        let body = upload(&[(META, b"{}"), (PLAN, &big), (PLAN_JSON, b"[1]")]);
        assert!(body.len() < 10 * 1024, "compressed");
        // With a push between parts, as airlock plan sends it.
        let mut w = Writer::new(Vec::new()).unwrap();
        w.part(META, b"{}").unwrap();
        w.part(PLAN, &big).unwrap();
        let mut w = w.push().unwrap();
        w.part(PLAN_JSON, b"[1]").unwrap();
        let pushed = w.finish().unwrap();
        assert!(pushed.len() > PUSH_PADDING);
        let mut r = Reader::new(&pushed[..], 1 << 20).unwrap();
        assert_eq!(r.expect(META).unwrap(), b"{}");
        assert_eq!(r.expect(PLAN).unwrap(), big);
        assert_eq!(r.expect(PLAN_JSON).unwrap(), b"[1]");
        r.end().unwrap();
        let mut r = Reader::new(&body[..], 1 << 20).unwrap();
        assert_eq!(r.expect(META).unwrap(), b"{}");
        assert_eq!(r.expect(PLAN).unwrap(), big);
        assert_eq!(
            r.next_part().unwrap(),
            (PLAN_JSON.to_owned(), b"[1]".to_vec())
        );
        r.end().unwrap();
    }

    #[test]
    fn a_bomb_stops_at_the_budget() {
        // 1 GiB of zeros compresses to about 30 KiB.
        let mut w = Writer::new(Vec::new()).unwrap();
        w.part_from(PLAN, &mut io::repeat(0).take(1 << 30)).unwrap();
        let body = w.finish().unwrap();
        assert!(body.len() < 1 << 20, "{}", body.len());
        let mut r = Reader::new(&body[..], 8 << 20).unwrap();
        assert!(matches!(r.next_part(), Err(UploadError::TooLarge)));
    }

    #[test]
    fn cut_or_altered_streams_are_refused() {
        let body = upload(&[(META, b"{\"a\":1}"), (PLAN, b"plan")]);
        for cut in [1, body.len() / 2, body.len() - 1] {
            let mut r = Reader::new(&body[..cut], 1 << 20).unwrap();
            let res = r
                .expect(META)
                .and_then(|_| r.expect(PLAN))
                .and_then(|_| r.end());
            assert!(
                matches!(res, Err(UploadError::Malformed(_))),
                "cut at {cut}"
            );
        }
        // A stream that stops at a frame boundary before `end`.
        let mut w = Writer::new(Vec::new()).unwrap();
        w.part(META, b"{}").unwrap();
        let early = w.zstd.finish().unwrap();
        let mut r = Reader::new(&early[..], 1 << 20).unwrap();
        r.expect(META).unwrap();
        assert!(matches!(r.end(), Err(UploadError::Malformed(m)) if m.contains("truncated")));
        // Not zstd at all.
        assert!(Reader::new(&b"{\"plan_b64\":1}"[..], 1 << 20)
            .and_then(|mut r| r.next_part())
            .is_err());
    }

    #[test]
    fn a_content_that_is_not_its_hash_is_refused() {
        // Hand-made: part "plan.tfplan", content "abc", the hash of "abd".
        let mut raw = vec![PLAN.len() as u8];
        raw.extend(PLAN.as_bytes());
        raw.extend(3u32.to_be_bytes());
        raw.extend(b"abc");
        raw.extend(0u32.to_be_bytes());
        raw.extend(Sha256::digest(b"abd"));
        let body = zstd::encode_all(&raw[..], 3).unwrap();
        let mut r = Reader::new(&body[..], 1 << 20).unwrap();
        assert!(matches!(r.next_part(), Err(UploadError::Malformed(m)) if m.contains("SHA-256")));
    }
}
