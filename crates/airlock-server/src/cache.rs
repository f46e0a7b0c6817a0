//! In-memory caches keyed by content hash. Versions are immutable, so an entry can never be
//! stale: this is safe with several replicas on one database.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_core::state::{ParsedState, StateSummary};
use airlock_store::TokenRecord;
use axum::body::Bytes;

/// Bounded map with first-in-first-out eviction by total weight.
struct Fifo<V> {
    map: HashMap<String, (V, usize)>,
    order: VecDeque<String>,
    weight: usize,
    max_weight: usize,
}

impl<V: Clone> Fifo<V> {
    fn new(max_weight: usize) -> Self {
        Fifo {
            map: HashMap::new(),
            order: VecDeque::new(),
            weight: 0,
            max_weight,
        }
    }

    fn get(&self, key: &str) -> Option<V> {
        self.map.get(key).map(|(v, _)| v.clone())
    }

    fn put(&mut self, key: String, value: V, weight: usize) {
        if weight > self.max_weight / 4 || self.map.contains_key(&key) {
            return;
        }
        while self.weight + weight > self.max_weight {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some((_, w)) = self.map.remove(&old) {
                self.weight -= w;
            }
        }
        self.weight += weight;
        self.order.push_back(key.clone());
        self.map.insert(key, (value, weight));
    }
}

/// The server's caches.
pub struct Caches {
    bytes: Mutex<Fifo<Bytes>>,
    summaries: Mutex<Fifo<Arc<StateSummary>>>,
    tokens: Mutex<TokenCache>,
    states: Mutex<RecentStates>,
}

/// Recent token lookups, and how many times they were all forgotten (a revocation).
#[derive(Default)]
struct TokenCache {
    map: HashMap<[u8; 32], (Instant, TokenRecord)>,
    generation: u64,
}

/// Memory the cached summaries of versions may hold in all ([`StateSummary::approx_bytes`]);
/// a summary above a quarter of it is not kept (a ~100 MB state's, ~140 MB, is).
const SUMMARIES_BYTES: usize = 1 << 30;

/// Memory the last written states of stacks may hold in all (bodies and summaries, see
/// [`ParsedState::approx_bytes`]); a state above half of it is not kept. A 100 MB state of
/// ~1 KB instances holds ~140 MB.
const RECENT_STATES_BYTES: usize = 384 << 20;

/// The state each stack was last written with through this process, read by this process:
/// the next write of the stack reads its body reusing what did not change, and its summary is
/// the stack's current one while no other version is written (the firewall's and the run
/// checks' "current state"). Keyed by stack, not by version: a reuse is exact against any body
/// its summary was read from, so a version written since by another replica only makes the
/// reuse find less (and the summary is looked up by the version's hash).
#[derive(Default)]
struct RecentStates {
    /// Stack → (its version's SHA-256 in hex, the state, its weight).
    map: HashMap<String, (String, Arc<ParsedState>, usize)>,
    order: VecDeque<String>,
    weight: usize,
}

/// How long a token lookup is reused. Revocations on this replica clear the cache at once;
/// other replicas see a revocation within this time.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(1);
/// Entries kept at most (the cache is cleared when full).
const TOKEN_CACHE_MAX: usize = 10_000;

impl Default for Caches {
    fn default() -> Self {
        Caches {
            bytes: Mutex::new(Fifo::new(256 << 20)),
            summaries: Mutex::new(Fifo::new(SUMMARIES_BYTES)),
            tokens: Mutex::new(TokenCache::default()),
            states: Mutex::new(RecentStates::default()),
        }
    }
}

impl Caches {
    /// Cached bytes of the version with this SHA-256.
    pub fn bytes(&self, sha: &str) -> Option<Bytes> {
        self.bytes.lock().ok()?.get(sha)
    }

    /// Remembers a version's bytes.
    pub fn put_bytes(&self, sha: &str, bytes: Bytes) {
        if let Ok(mut c) = self.bytes.lock() {
            let len = bytes.len();
            c.put(sha.to_owned(), bytes, len);
        }
    }

    /// Cached summary of the version with this SHA-256.
    pub fn summary(&self, sha: &str) -> Option<Arc<StateSummary>> {
        self.summaries.lock().ok()?.get(sha)
    }

    /// Remembers a version's summary.
    pub fn put_summary(&self, sha: &str, summary: Arc<StateSummary>) {
        if let Ok(mut c) = self.summaries.lock() {
            let weight = sha.len() + summary.approx_bytes();
            c.put(sha.to_owned(), summary, weight);
        }
    }

    /// The state `stack` was last written with through this process, if still kept.
    pub fn recent_state(&self, stack: &str) -> Option<Arc<ParsedState>> {
        Some(Arc::clone(&self.states.lock().ok()?.map.get(stack)?.1))
    }

    /// The summary of `stack`'s version with this SHA-256, if it is the state last written
    /// through this process (a stack's current version, in the common case).
    pub fn recent_summary(&self, stack: &str, sha: &str) -> Option<Arc<StateSummary>> {
        let c = self.states.lock().ok()?;
        let (kept, parsed, _) = c.map.get(stack)?;
        (kept == sha).then(|| Arc::clone(parsed.summary()))
    }

    /// Keeps `parsed` as `stack`'s last written state, the version with SHA-256 `sha`,
    /// replacing the one before (oldest stacks' dropped first when the total would pass
    /// [`RECENT_STATES_BYTES`]). The version's summary is not put in the summary cache too: a
    /// written version's summary is wanted while it is current, and is here until then
    /// (keeping every written version's there filled it with superseded ones, 1 GiB of them).
    pub fn put_recent_state(&self, stack: &str, sha: &str, parsed: Arc<ParsedState>) {
        let weight = parsed.approx_bytes();
        // States dropped here are freed after the lock is released (a large one takes a while).
        let mut dropped = Vec::new();
        let Ok(mut c) = self.states.lock() else {
            return;
        };
        if let Some((_, old, w)) = c.map.remove(stack) {
            c.weight -= w;
            c.order.retain(|s| s != stack);
            dropped.push(old);
        }
        if weight > RECENT_STATES_BYTES / 2 {
            return;
        }
        while c.weight + weight > RECENT_STATES_BYTES {
            let Some(oldest) = c.order.pop_front() else {
                break;
            };
            if let Some((_, old, w)) = c.map.remove(&oldest) {
                c.weight -= w;
                dropped.push(old);
            }
        }
        c.weight += weight;
        c.order.push_back(stack.to_owned());
        c.map
            .insert(stack.to_owned(), (sha.to_owned(), parsed, weight));
        drop(c);
        drop(dropped);
    }

    /// A recent lookup of the token with this secret hash.
    pub fn token(&self, hash: &[u8; 32]) -> Option<TokenRecord> {
        let c = self.tokens.lock().ok()?;
        c.map
            .get(hash)
            .filter(|(at, _)| at.elapsed() < TOKEN_CACHE_TTL)
            .map(|(_, t)| t.clone())
    }

    /// The token cache's generation: read it before looking a token up in the store, and hand
    /// it to [`Caches::put_token`].
    pub fn token_generation(&self) -> u64 {
        self.tokens.lock().map_or(0, |c| c.generation)
    }

    /// Remembers a successful lookup made after [`Caches::token_generation`] said `generation`,
    /// unless the cache was forgotten since: the record may have been read before a revocation
    /// that committed meanwhile, and caching it would make the revoked token work again.
    pub fn put_token(&self, hash: [u8; 32], token: TokenRecord, generation: u64) {
        if let Ok(mut c) = self.tokens.lock() {
            if c.generation != generation {
                return;
            }
            if c.map.len() >= TOKEN_CACHE_MAX {
                c.map.clear();
            }
            c.map.insert(hash, (Instant::now(), token));
        }
    }

    /// Forgets every cached token (after a revocation).
    pub fn forget_tokens(&self) {
        if let Ok(mut c) = self.tokens.lock() {
            c.map.clear();
            c.generation += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small body whose summary is large: one resource under a module path with a long key,
    /// on many instances (each holds the path twice). ~35 KB of body, ~10 MB of summary.
    fn crafted_summary() -> Arc<StateSummary> {
        let instances: Vec<String> = (0..1000)
            .map(|i| format!(r#"{{"index_key":{i},"attributes":{{}}}}"#))
            .collect();
        let body = format!(
            r#"{{"version":4,"serial":1,"lineage":"l","resources":[{{"module":"module.m[\"{}\"]","mode":"managed","type":"terraform_data","name":"r","provider":"provider[\"terraform.io/builtin/terraform\"]","instances":[{}]}}]}}"#,
            "x".repeat(4000),
            instances.join(",")
        );
        Arc::new(StateSummary::parse(body.as_bytes()).expect("a valid state"))
    }

    #[test]
    fn the_summary_cache_is_bounded_by_what_summaries_hold_not_by_their_count() {
        // Any reader makes the server cache the summary of each version it shows; a writer
        // chooses how much a summary holds per body byte. 200 such versions hold ~2 GB.
        let caches = Caches::default();
        let summary = crafted_summary();
        // The address of each instance, a lower bound of what it holds.
        let held: usize = summary.instances.iter().map(|i| i.address.len()).sum();
        assert!(held > 3 << 20, "the crafted summary holds {held} B");
        for n in 0..200 {
            caches.put_summary(&format!("{n:064x}"), Arc::clone(&summary));
        }
        assert!(
            caches.summary(&format!("{:064x}", 0)).is_none(),
            "200 summaries of {held} B each are all kept"
        );
        assert!(caches.summary(&format!("{:064x}", 199)).is_some());
    }

    /// A lookup that read the token from the store before a revocation committed, and caches
    /// it after the revocation cleared the cache, would serve the revoked token as valid for
    /// up to [`TOKEN_CACHE_TTL`] on the revoking server.
    #[test]
    fn a_lookup_that_read_the_token_before_a_revocation_does_not_cache_it() {
        let caches = Caches::default();
        let hash = [7u8; 32];
        let record = TokenRecord {
            id: "tok_1".into(),
            name: "ci".into(),
            role: airlock_core::Role::Ci,
            stacks: Vec::new(),
            created_at: 0,
            expires_at: None,
            revoked_at: None,
            created_by: "test".into(),
            run_id: None,
            user: "tok_1".into(),
            parent_id: None,
            read_stacks: Vec::new(),
            minted_by: None,
            job_ref: None,
            revoked_reason: None,
        };
        // authenticate: the generation, then the store's (unrevoked) record ...
        let seen = caches.token_generation();
        // ... meanwhile the revocation commits and clears the cache ...
        caches.forget_tokens();
        // ... then the lookup caches what it read.
        caches.put_token(hash, record.clone(), seen);
        assert!(
            caches.token(&hash).is_none(),
            "a token read before its revocation was cached after it"
        );
        // A lookup that began after the revocation is cached as usual.
        caches.put_token(hash, record, caches.token_generation());
        assert!(caches.token(&hash).is_some());
    }

    #[test]
    fn a_written_versions_summary_is_found_while_it_is_the_stacks_last_write_and_held_once() {
        let caches = Caches::default();
        let state = |serial: u64| {
            let body = format!(r#"{{"version":4,"serial":{serial},"lineage":"l","resources":[]}}"#);
            Arc::new(ParsedState::parse(body.into_bytes(), None).expect("a valid state"))
        };
        caches.put_recent_state("prod/db", "sha-1", state(1));
        caches.put_recent_state("prod/db", "sha-2", state(2));
        let found = caches
            .recent_summary("prod/db", "sha-2")
            .expect("the last write's summary");
        assert_eq!(found.serial, 2);
        // A superseded version's is not kept, in either place, nor another stack's by its hash.
        assert!(caches.recent_summary("prod/db", "sha-1").is_none());
        assert!(caches.summary("sha-1").is_none() && caches.summary("sha-2").is_none());
        assert!(caches.recent_summary("dev/db", "sha-2").is_none());
    }
}
