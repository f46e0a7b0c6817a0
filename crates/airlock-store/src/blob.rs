//! Content-addressed, deduplicated blob storage shared by both engines.
//!
//! A state version is cut into content-defined chunks (a gear rolling hash picks cut points
//! from the bytes themselves), each stored once, zstd-compressed, under its SHA-256. Successive
//! versions of a big state that differ in one resource share all chunks but the one or two
//! around the change, which is what keeps 1,000 versions of a 10 MB state small.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

/// Chunks are never smaller than this (except the last).
const MIN_CHUNK: usize = 8 * 1024;
/// Chunks are never larger than this.
const MAX_CHUNK: usize = 128 * 1024;
/// A cut happens where the rolling hash has these bits clear (14 bits: one cut per 16 KiB of
/// random bytes). The high bits are used because bit k of a gear hash depends only on the last
/// k+1 bytes: the top bits see a 64-byte window, the low bits only a few bytes (too little for
/// repetitive JSON). Pretty-printed JSON repeats many of its windows, so real states cut less
/// often than random bytes: the 1 MB benchmark state averages 33 KiB per chunk (30 chunks).
/// Every write hashes, compresses and stores the chunks it changed (the first, which holds the
/// serial, and the ones around each change): chunks four times that size (the 16-bit mask, 16
/// and 256 KiB bounds used before issue 17's third round) made a one-instance write store
/// ~250 KB instead of ~65 KB.
const CUT_MASK: u64 = 0x3FFF << 50;
/// zstd level: the fastest of the standard levels. On ~60 KB chunks of a Terraform state,
/// level 1 compresses about 1.8 times faster than level 3 and to the same size (153.4 vs
/// 154.2 KB for the 1 MB benchmark state's 17 chunks; issue 17).
const ZSTD_LEVEL: i32 = 1;

/// A chunk ready to be stored.
#[derive(Clone, Copy)]
pub struct Chunk<'a> {
    /// SHA-256 of the raw bytes.
    pub hash: [u8; 32],
    /// The raw bytes.
    pub raw: &'a [u8],
}

/// 256 pseudo-random 64-bit values for the gear hash, from a fixed splitmix64 sequence so that
/// cut points never change between releases (changing them would only cost dedup, never data).
fn gear_table() -> &'static [u64; 256] {
    static TABLE: std::sync::OnceLock<[u64; 256]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut state: u64 = 0x6169_726c_6f63_6b21; // "airlock!"
        let mut t = [0u64; 256];
        for slot in t.iter_mut() {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            *slot = z ^ (z >> 31);
        }
        t
    })
}

/// Splits `data` into content-defined chunks.
pub fn split(data: &[u8]) -> Vec<Chunk<'_>> {
    split_reusing(data, None).0
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Compresses a chunk for storage, with this thread's compression context (making one per
/// chunk allocated and cleared zstd's tables every time).
pub fn compress(raw: &[u8]) -> Vec<u8> {
    thread_local! {
        static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    COMPRESSOR
        .with(|c| {
            let mut c = c.try_borrow_mut().ok()?;
            if c.is_none() {
                *c = zstd::bulk::Compressor::new(ZSTD_LEVEL).ok();
            }
            c.as_mut()?.compress(raw).ok()
        })
        .unwrap_or_else(|| raw.to_vec())
}

/// Decompresses a stored chunk of known raw length.
pub fn decompress(stored: &[u8], raw_len: usize) -> std::io::Result<Vec<u8>> {
    zstd::bulk::decompress(stored, raw_len)
}

/// Joins chunk hashes into the stored chunk list.
pub fn chunk_list(chunks: &[Chunk<'_>]) -> Vec<u8> {
    chunks.iter().flat_map(|c| c.hash).collect()
}

/// Splits a stored chunk list back into hashes.
pub fn parse_chunk_list(list: &[u8]) -> Vec<[u8; 32]> {
    list.chunks_exact(32)
        .filter_map(|c| <[u8; 32]>::try_from(c).ok())
        .collect()
}

/// A state body with its SHA-256, computed once: the version's hash (and, for a body that
/// came with a `Content-MD5`, its MD5 in the same pass, to check it). The fields are private,
/// so the hash always belongs to these bytes. The bytes are shared, never changed: the server's
/// state reader keeps them (`airlock_core::state::ParsedState`) and this store's [`Recent`]
/// too, without copies.
///
/// [`StateBody::hashing`] hands the hashing to a kept thread and returns at once: a Terraform
/// write's hashes (1.9 ms per MB) then run beside the server's state reader and the store's
/// chunking and compression, instead of before them, and the first call that needs a digest
/// waits for it. The store checks [`StateBody::check_content_md5`] before its
/// transaction: no body whose MD5 differs from the one its client sent is ever written.
#[derive(Clone)]
pub struct StateBody {
    bytes: Arc<Vec<u8>>,
    digests: Arc<Digests>,
}

/// A body's SHA-256, and its MD5 when its client sent a `Content-MD5`.
type BodyDigests = ([u8; 32], Option<[u8; 16]>);

/// A body's digests: known, or being computed on their own thread.
struct Digests {
    /// The `Content-MD5` the client sent, to check the bytes against.
    sent_md5: Option<[u8; 16]>,
    done: std::sync::OnceLock<BodyDigests>,
    running: Mutex<Option<std::sync::mpsc::Receiver<BodyDigests>>>,
}

/// Threads kept for hashing state bodies beside the request that brought them
/// ([`StateBody::hashing`]): one per CPU, at most [`Hashers::MAX`], started on first use. A
/// body goes to one only if one is idle; otherwise its request hashes it itself, as it would
/// without them, so a busy server hashes in place and no body waits in a queue. Kept threads,
/// because a thread started per body first runs on its parent's CPU: a 1 MB hash beside 1.3 ms
/// of other work took 2.7 ms of wall time on a thread started for it, 2.0 ms on a kept one,
/// 3.1 ms in sequence (2 CPUs, issue 17).
struct Hashers {
    queue: Mutex<HashQueue>,
    wake: std::sync::Condvar,
}

struct HashQueue {
    /// Threads waiting for a body.
    idle: usize,
    jobs: VecDeque<HashJob>,
}

struct HashJob {
    bytes: Arc<Vec<u8>>,
    md5: bool,
    done: std::sync::mpsc::SyncSender<BodyDigests>,
}

impl Hashers {
    const MAX: usize = 4;

    fn get() -> &'static Hashers {
        static HASHERS: std::sync::OnceLock<Hashers> = std::sync::OnceLock::new();
        static STARTED: std::sync::Once = std::sync::Once::new();
        let hashers = HASHERS.get_or_init(|| Hashers {
            queue: Mutex::new(HashQueue {
                idle: 0,
                jobs: VecDeque::new(),
            }),
            wake: std::sync::Condvar::new(),
        });
        STARTED.call_once(|| {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get().min(Self::MAX));
            for _ in 0..n {
                // One that cannot start is one fewer: bodies are hashed in place instead.
                let _ = std::thread::Builder::new()
                    .name("airlock-hash".into())
                    .spawn(|| hashers.run());
            }
        });
        hashers
    }

    /// The digests of `bytes` from an idle hashing thread, or `None` if none is idle.
    fn hand_over(
        bytes: &Arc<Vec<u8>>,
        md5: bool,
    ) -> Option<std::sync::mpsc::Receiver<BodyDigests>> {
        let hashers = Self::get();
        let mut queue = hashers.queue.lock().ok()?;
        if queue.idle <= queue.jobs.len() {
            return None;
        }
        let (done, digests) = std::sync::mpsc::sync_channel(1);
        queue.jobs.push_back(HashJob {
            bytes: Arc::clone(bytes),
            md5,
            done,
        });
        hashers.wake.notify_one();
        Some(digests)
    }

    fn run(&self) {
        let Ok(mut queue) = self.queue.lock() else {
            return;
        };
        loop {
            queue.idle += 1;
            while queue.jobs.is_empty() {
                queue = match self.wake.wait(queue) {
                    Ok(q) => q,
                    Err(_) => return,
                };
            }
            queue.idle -= 1;
            let job = queue.jobs.pop_front();
            drop(queue);
            if let Some(HashJob { bytes, md5, done }) = job {
                let digests = digests(&bytes, md5);
                drop(bytes); // the body's owner may take its bytes back uncopied
                let _ = done.send(digests);
            }
            queue = match self.queue.lock() {
                Ok(q) => q,
                Err(_) => return,
            };
        }
    }
}

impl std::fmt::Debug for StateBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateBody")
            .field("len", &self.bytes.len())
            // Not waited for: a body may be printed while its hashing thread runs.
            .field("sha256", &self.digests.done.get().map(|d| hex::encode(d.0)))
            .finish()
    }
}

/// SHA-256 and MD5 of `bytes` in one pass, block by block. MD5 is one long chain of dependent
/// additions that leaves most of the core idle, and SHA-256 (SHA-NI) runs in those gaps, so
/// both cost little more than MD5 alone (1.9 ms vs 2.3 ms per MB here).
pub fn sha256_and_md5(bytes: &[u8]) -> ([u8; 32], [u8; 16]) {
    use sha2::digest::core_api::UpdateCore;
    use sha2::digest::generic_array::GenericArray;
    let (mut md5, _) = md5::Md5::new().decompose();
    let (mut sha, _) = Sha256::new().decompose();
    let mut blocks = bytes.chunks_exact(64);
    for b in &mut blocks {
        let b = GenericArray::from_slice(b);
        md5.update_blocks(std::slice::from_ref(b));
        sha.update_blocks(std::slice::from_ref(b));
    }
    let tail = blocks.remainder();
    let mut md5 = md5::Md5::from_core(md5);
    md5.update(tail);
    let mut sha = Sha256::from_core(sha);
    sha.update(tail);
    (sha.finalize().into(), md5.finalize().into())
}

/// SHA-256 of `bytes`, and their MD5 when `md5`.
fn digests(bytes: &[u8], md5: bool) -> BodyDigests {
    if !md5 {
        return (sha256(bytes), None);
    }
    let (sha, md5) = sha256_and_md5(bytes);
    (sha, Some(md5))
}

impl StateBody {
    /// Hashes `bytes`.
    pub fn new(bytes: Vec<u8>) -> StateBody {
        let done = std::sync::OnceLock::new();
        let _ = done.set(digests(&bytes, false));
        StateBody {
            bytes: Arc::new(bytes),
            digests: Arc::new(Digests {
                sent_md5: None,
                done,
                running: Mutex::new(None),
            }),
        }
    }

    /// Hands `bytes` to an idle hashing thread (see [`Hashers`]), to compute their SHA-256
    /// and, when `sent_md5` (the client's `Content-MD5`) is given, their MD5, and returns at
    /// once. With no idle hashing thread, the digests are computed where first needed.
    pub fn hashing(bytes: Vec<u8>, sent_md5: Option<[u8; 16]>) -> StateBody {
        let bytes = Arc::new(bytes);
        let running = Hashers::hand_over(&bytes, sent_md5.is_some());
        StateBody {
            bytes,
            digests: Arc::new(Digests {
                sent_md5,
                done: std::sync::OnceLock::new(),
                running: Mutex::new(running),
            }),
        }
    }

    /// The digests: waiting for the hashing thread that has them, or computed here (no thread
    /// took them, or it died).
    fn digests(&self) -> &BodyDigests {
        self.digests.done.get_or_init(|| {
            let running = self.digests.running.lock().ok().and_then(|mut r| r.take());
            running
                .and_then(|r| r.recv().ok())
                .unwrap_or_else(|| digests(&self.bytes, self.digests.sent_md5.is_some()))
        })
    }

    /// Whether the bytes are the ones their client sent: their MD5 against its `Content-MD5`
    /// (always, for a body that came without one).
    pub fn check_content_md5(&self) -> Result<(), String> {
        match (self.digests.sent_md5, self.digests().1) {
            (Some(sent), Some(md5)) if sent != md5 => Err("Content-MD5 does not match the body: the request was corrupted in transit; nothing was stored".into()),
            _ => Ok(()),
        }
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Their SHA-256.
    pub fn sha256(&self) -> &[u8; 32] {
        &self.digests().0
    }

    /// The bytes, shared (not copied).
    pub fn shared(&self) -> Arc<Vec<u8>> {
        Arc::clone(&self.bytes)
    }

    /// The bytes, giving up the hash (copied only if they are shared).
    pub fn into_bytes(self) -> Vec<u8> {
        Arc::try_unwrap(self.bytes).unwrap_or_else(|shared| shared.as_ref().clone())
    }

    /// The bytes, shared, giving up the hash.
    pub fn into_shared(self) -> Arc<Vec<u8>> {
        self.bytes
    }
}

/// Where the chunk that starts at `rest[0]` ends: the gear cut point (see [`split`]).
fn cut(rest: &[u8]) -> usize {
    if rest.len() <= MIN_CHUNK {
        return rest.len();
    }
    let gear = gear_table();
    let limit = rest.len().min(MAX_CHUNK);
    let mut h: u64 = 0;
    for (i, &b) in rest.iter().enumerate().take(limit).skip(MIN_CHUNK) {
        h = (h << 1).wrapping_add(gear[b as usize]);
        if h & CUT_MASK == 0 {
            return i + 1;
        }
    }
    limit
}

/// Bytes of a chunk's start that index it in [`Recent`]: enough that distinct chunks of real
/// (repetitive, indented) JSON rarely share them; chunks other than a body's last are longer.
const PREFIX: usize = 256;
/// Remembered chunks with the same start compared at most per lookup: bodies crafted with many
/// chunks sharing long prefixes cost at most this many extra passes over their bytes (an
/// unbounded search would be quadratic). Missing a match only costs hashing the chunk.
const MAX_CANDIDATES: usize = 4;

/// A body written recently and its chunks, so that the next write of the same stack finds its
/// unchanged chunks by comparing bytes instead of scanning and hashing them again.
///
/// Why a match is exactly the chunk [`split`] would cut: a cut point depends only on the bytes
/// from the chunk's start to the cut (the rolling hash restarts at every chunk), so bytes equal
/// to an earlier chunk end where it ended, unless that chunk ended with its body (it was cut by
/// the body's end, not by its bytes): such a chunk only matches at the end of the new body.
/// Equal bytes have equal SHA-256 hashes. Nothing here is trusted from a database: the bytes
/// and hashes are the ones this process computed.
pub struct Recent {
    body: Arc<Vec<u8>>,
    /// (start, end, SHA-256) of each chunk of `body`.
    chunks: Vec<(usize, usize, [u8; 32])>,
    /// Chunks by their first [`PREFIX`] bytes.
    by_prefix: HashMap<[u8; PREFIX], Vec<usize>>,
}

impl Recent {
    /// Remembers `body`, cut into `chunks` (their hashes, in order, as [`split`] made them).
    pub fn new(body: impl Into<Arc<Vec<u8>>>, hashes: &[(usize, [u8; 32])]) -> Recent {
        let body = body.into();
        let mut chunks = Vec::with_capacity(hashes.len());
        let mut by_prefix: HashMap<[u8; PREFIX], Vec<usize>> = HashMap::new();
        let mut start = 0;
        for &(len, hash) in hashes {
            let end = start + len;
            if let Some(p) = body.get(start..end).and_then(|c| c.get(..PREFIX)) {
                if let Ok(key) = <[u8; PREFIX]>::try_from(p) {
                    by_prefix.entry(key).or_default().push(chunks.len());
                }
            }
            chunks.push((start, end, hash));
            start = end;
        }
        Recent {
            body,
            chunks,
            by_prefix,
        }
    }

    /// The length and hash of the chunk [`split`] would cut at the start of `rest`, when it is
    /// one of the remembered chunks.
    fn find(&self, rest: &[u8]) -> Option<(usize, [u8; 32])> {
        let key = <[u8; PREFIX]>::try_from(rest.get(..PREFIX)?).ok()?;
        self.by_prefix
            .get(&key)?
            .iter()
            .take(MAX_CANDIDATES)
            .find_map(|&i| {
                let (start, end, hash) = self.chunks[i];
                let old = &self.body[start..end];
                let ended_with_body = end == self.body.len();
                (rest.starts_with(old) && (!ended_with_body || rest.len() == old.len()))
                    .then_some((old.len(), hash))
            })
    }
}

/// Splits `data` like [`split`], taking the chunks it shares with `recent` from there; the
/// flags say which chunks were taken.
pub fn split_reusing<'a>(data: &'a [u8], recent: Option<&Recent>) -> (Vec<Chunk<'a>>, Vec<bool>) {
    let (mut chunks, mut reused) = (Vec::new(), Vec::new());
    let mut rest = data;
    while !rest.is_empty() {
        let found = recent.and_then(|r| r.find(rest));
        reused.push(found.is_some());
        let (len, hash) = found.unwrap_or_else(|| {
            let len = cut(rest);
            (len, sha256(&rest[..len]))
        });
        let (raw, tail) = rest.split_at(len);
        chunks.push(Chunk { hash, raw });
        rest = tail;
    }
    (chunks, reused)
}

/// Recently written bodies by stack name, at most this many bytes in all (oldest dropped
/// first); a body above a quarter of it is not kept.
const RECENT_BYTES: usize = 64 << 20;

/// The last body each stack was written with through one store (see [`Recent`]).
#[derive(Default)]
pub struct RecentBodies(Mutex<RecentCache>);

#[derive(Default)]
struct RecentCache {
    map: HashMap<String, Arc<Recent>>,
    order: VecDeque<String>,
    bytes: usize,
}

impl RecentBodies {
    /// The body last remembered for `stack`, if still kept.
    pub fn get(&self, stack: &str) -> Option<Arc<Recent>> {
        self.0.lock().ok()?.map.get(stack).cloned()
    }

    /// Keeps `r` as `stack`'s recent body, replacing the one before.
    pub fn remember(&self, stack: &str, r: Recent) {
        let size = r.body.len();
        let Ok(mut cache) = self.0.lock() else {
            return;
        };
        if let Some(old) = cache.map.remove(stack) {
            cache.bytes -= old.body.len();
            cache.order.retain(|s| s != stack);
        }
        if size > RECENT_BYTES / 4 {
            return;
        }
        while cache.bytes + size > RECENT_BYTES {
            let Some(oldest) = cache.order.pop_front() else {
                break;
            };
            if let Some(old) = cache.map.remove(&oldest) {
                cache.bytes -= old.body.len();
            }
        }
        cache.bytes += size;
        cache.order.push_back(stack.to_owned());
        cache.map.insert(stack.to_owned(), Arc::new(r));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_json(n: usize, changed: Option<usize>) -> Vec<u8> {
        let mut s = String::from("{\"version\":4,\"resources\":[");
        for i in 0..n {
            let v = if Some(i) == changed {
                "CHANGED"
            } else {
                "same"
            };
            s.push_str(&format!("{{\"name\":\"r{i}\",\"attributes\":{{\"id\":\"{i:08}\",\"value\":\"{v}\",\"pad\":\"{}\"}}}},", "x".repeat(i % 97)));
        }
        s.push_str("]}");
        s.into_bytes()
    }

    #[test]
    fn chunks_reassemble_exactly() {
        for data in [
            Vec::new(),
            b"x".to_vec(),
            pseudo_json(10, None),
            pseudo_json(20_000, None),
        ] {
            let chunks = split(&data);
            let joined: Vec<u8> = chunks.iter().flat_map(|c| c.raw.iter().copied()).collect();
            assert_eq!(joined, data);
            assert!(chunks.iter().all(|c| c.raw.len() <= MAX_CHUNK));
        }
    }

    #[test]
    fn one_change_touches_few_chunks() {
        let a = pseudo_json(20_000, None);
        let b = pseudo_json(20_000, Some(10_000));
        let ha: std::collections::HashSet<_> = split(&a).iter().map(|c| c.hash).collect();
        let sb = split(&b);
        let sizes: Vec<_> = sb.iter().map(|c| c.raw.len()).collect();
        let new: Vec<_> = sb.into_iter().filter(|c| !ha.contains(&c.hash)).collect();
        assert!(sizes.len() > 20, "{sizes:?}");
        assert!(new.len() <= 2, "{} new chunks", new.len());
    }

    /// One pass for MD5 and SHA-256 gives both digests of every length (whole blocks, a tail).
    #[test]
    fn md5_and_sha256_in_one_pass_match_each_alone() {
        let data = pseudo_json(300, None);
        for n in [
            0,
            1,
            55,
            56,
            63,
            64,
            65,
            127,
            128,
            129,
            4096,
            4099,
            data.len(),
        ] {
            let bytes = data[..n].to_vec();
            let (sha, md5) = digests(&bytes, true);
            assert_eq!(
                md5,
                Some(<[u8; 16]>::from(md5::Md5::digest(&bytes))),
                "length {n}"
            );
            assert_eq!(sha, sha256(&bytes), "length {n}");
            let body = StateBody::hashing(bytes.clone(), md5);
            assert_eq!(body.check_content_md5(), Ok(()), "length {n}");
            assert_eq!(*body.sha256(), sha256(&bytes), "length {n}");
            assert_eq!(*StateBody::new(bytes.clone()).sha256(), sha256(&bytes));
            assert_eq!(body.into_bytes(), bytes);
        }
    }

    /// A body whose MD5 is not the one its client sent fails its check, whichever thread
    /// hashed it; its SHA-256 is still its own.
    #[test]
    fn a_body_that_does_not_match_its_content_md5_fails_its_check() {
        let bytes = pseudo_json(300, None);
        let mut sent = <[u8; 16]>::from(md5::Md5::digest(&bytes));
        sent[0] ^= 1;
        let body = StateBody::hashing(bytes.clone(), Some(sent));
        let err = body.check_content_md5().unwrap_err();
        assert!(err.contains("Content-MD5 does not match"), "{err}");
        assert_eq!(*body.sha256(), sha256(&bytes));
        assert_eq!(
            StateBody::hashing(bytes.clone(), None).check_content_md5(),
            Ok(())
        );
        assert_eq!(StateBody::new(bytes).check_content_md5(), Ok(()));
    }

    fn cuts(chunks: &[Chunk<'_>]) -> Vec<(usize, [u8; 32])> {
        chunks.iter().map(|c| (c.raw.len(), c.hash)).collect()
    }

    /// Chunks taken from the last body are exactly the chunks `split` cuts, whatever the edit:
    /// in the middle, at the start, at the end, grown, shrunk, the same body, an empty one,
    /// and bodies that end inside or exactly at the end of the old body's last chunk.
    #[test]
    fn chunks_reused_from_the_last_body_are_the_chunks_split_cuts() {
        let old = pseudo_json(20_000, None);
        let recent = Recent::new(old.clone(), &cuts(&split(&old)));
        let changed = pseudo_json(20_000, Some(10_000));
        let mut edits: Vec<Vec<u8>> = vec![
            old.clone(),
            changed.clone(),
            pseudo_json(20_000, Some(0)),
            pseudo_json(20_000, Some(19_999)),
            pseudo_json(21_000, None),
            pseudo_json(19_000, None),
            Vec::new(),
            b"{}".to_vec(),
        ];
        let mut grown = old.clone();
        grown.extend_from_slice(b"  ");
        edits.push(grown);
        for cut in [1, 100, 16 * 1024, old.len() / 2, old.len() - 1] {
            edits.push(old[..cut].to_vec());
            edits.push(old[cut..].to_vec());
            let mut inserted = old.clone();
            inserted.splice(cut..cut, b"inserted".iter().copied());
            edits.push(inserted);
        }
        let last = split(&old).last().map(|c| c.raw.len()).unwrap();
        edits.push(old[..old.len() - last].to_vec());
        for (i, new) in edits.iter().enumerate() {
            assert_eq!(
                cuts(&split_reusing(new, Some(&recent)).0),
                cuts(&split(new)),
                "edit {i}"
            );
        }
        // The unchanged chunks of a changed body are found (not hashed again): all but the
        // one or two around the change.
        let found = {
            let mut rest = &changed[..];
            let mut n = 0;
            while !rest.is_empty() {
                let len = match recent.find(rest) {
                    Some((len, _)) => {
                        n += 1;
                        len
                    }
                    None => cut(rest),
                };
                rest = &rest[len..];
            }
            n
        };
        assert!(
            found + 2 >= split(&changed).len(),
            "{found} of {}",
            split(&changed).len()
        );
    }

    /// However many remembered chunks share a start, a lookup compares at most a few.
    #[test]
    fn a_lookup_compares_a_bounded_number_of_chunks() {
        let chunk = |last: u8| {
            let mut c = vec![b'a'; 1000];
            c[999] = last;
            c
        };
        const _: () = assert!(PREFIX < 999);
        let body: Vec<u8> = (0..=MAX_CANDIDATES as u8).flat_map(chunk).collect();
        let table: Vec<(usize, [u8; 32])> = (0..=MAX_CANDIDATES as u8)
            .map(|i| (1000, sha256(&chunk(i))))
            .collect();
        let recent = Recent::new(body, &table);
        let mut rest = chunk(0);
        rest.extend_from_slice(b"more");
        assert_eq!(recent.find(&rest).map(|(len, _)| len), Some(1000));
        let mut rest = chunk(MAX_CANDIDATES as u8);
        rest.extend_from_slice(b"more");
        assert_eq!(recent.find(&rest), None);
    }

    #[test]
    fn recent_bodies_are_bounded() {
        let recent = RecentBodies::default();
        recent.remember("s", Recent::new(vec![b'x'; 100], &[(100, [1; 32])]));
        assert!(recent.get("s").is_some());
        // Too big to keep: the entry before it is dropped too (it is no longer the last body).
        recent.remember("s", Recent::new(vec![b'x'; RECENT_BYTES / 4 + 1], &[]));
        assert!(recent.get("s").is_none());
        // The oldest go first.
        for i in 0..5 {
            recent.remember(
                &i.to_string(),
                Recent::new(vec![b'x'; RECENT_BYTES / 4], &[]),
            );
        }
        assert!(recent.get("0").is_none());
        assert!((1..5).all(|i| recent.get(&i.to_string()).is_some()));
    }
}
