//! Content-addressed, deduplicated blob storage shared by both engines.
//!
//! A state version is cut into content-defined chunks (a gear rolling hash picks cut points
//! from the bytes themselves), each stored once, zstd-compressed, under its SHA-256. Successive
//! versions of a big state that differ in one resource share all chunks but the one or two
//! around the change, which is what keeps 1,000 versions of a 10 MB state small.

use sha2::{Digest, Sha256};

/// Chunks are never smaller than this (except the last).
const MIN_CHUNK: usize = 16 * 1024;
/// Chunks are never larger than this.
const MAX_CHUNK: usize = 256 * 1024;
/// A cut happens where the rolling hash has these bits clear: average chunk ≈ 64 KiB. The high
/// bits are used because bit k of a gear hash depends only on the last k+1 bytes: the top 16
/// bits see a 64-byte window, the low 16 bits only 16 bytes (too little for repetitive JSON).
const CUT_MASK: u64 = 0xFFFF << 48;
/// zstd level: fast to write, good on JSON.
const ZSTD_LEVEL: i32 = 3;

/// A chunk ready to be stored.
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
    let gear = gear_table();
    let mut chunks = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let len = if rest.len() <= MIN_CHUNK {
            rest.len()
        } else {
            let limit = rest.len().min(MAX_CHUNK);
            let mut h: u64 = 0;
            let mut cut = limit;
            for (i, &b) in rest.iter().enumerate().take(limit).skip(MIN_CHUNK) {
                h = (h << 1).wrapping_add(gear[b as usize]);
                if h & CUT_MASK == 0 {
                    cut = i + 1;
                    break;
                }
            }
            cut
        };
        let (raw, tail) = rest.split_at(len);
        chunks.push(Chunk {
            hash: sha256(raw),
            raw,
        });
        rest = tail;
    }
    chunks
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Compresses a chunk for storage.
pub fn compress(raw: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(raw, ZSTD_LEVEL).unwrap_or_else(|_| raw.to_vec())
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
}
