//! The audit hash chains: every event's hash covers the previous event's hash and the event's
//! canonical fields, so editing or deleting any record breaks every later link.
//!
//! Since migration 0010 the log is several chains: one per stack (its events, serialized by the
//! stack's row lock, so replicas writing different stacks never wait for each other) and one
//! global chain (events without a stack, and **seals**). A seal is an event of the global chain
//! that names the head (position and hash) of every stack chain that grew since the previous
//! seal, so dropping the tail of a stack chain, or a whole stack chain, is detected once it was
//! sealed; the global position `seq` is inside every hash, so records cannot be reordered.
//! Records written before 0010 (`chain` absent) form the legacy single chain, which must come
//! first and which the global chain continues.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The hash that precedes the first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The action of a seal record (see the module documentation).
pub const SEAL_ACTION: &str = "audit.seal";

/// The name of the global chain in [`AuditRecord::chain`].
pub const GLOBAL_CHAIN: &str = "";

/// One audit record as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the whole log, from 1: increasing in the order records were appended; since
    /// migration 0010 it may have gaps on PostgreSQL (a rolled-back transaction's number).
    pub seq: i64,
    /// The chain this record belongs to: a stack's name, or `""` for the global chain; absent
    /// for a record of the legacy single chain (written before migration 0010).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
    /// Position in its chain, from 1, without gaps; absent for a legacy record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_seq: Option<i64>,
    /// RFC 3339 UTC time.
    pub at: String,
    /// Who acted (token name and id), or `system`.
    pub actor: String,
    /// What happened, e.g. `state.write`, `lock.force_unlock`, `token.create`, `denied`.
    pub action: String,
    /// The stack concerned, if any.
    pub stack: Option<String>,
    /// `ok` or `denied`.
    pub outcome: String,
    /// Free-form JSON detail; never contains secrets.
    pub detail: serde_json::Value,
    /// Hash of the previous record of the same chain (hex), or [`GENESIS`] for a stack
    /// chain's first record; the global chain's first record follows the legacy chain's last.
    pub prev_hash: String,
    /// Hash of this record (hex).
    pub hash: String,
}

/// Computes a record's hash from its predecessor's hash and its own fields.
// The hash covers exactly these fields, each named at every call site; bundling them in a struct
// would only rename them.
#[allow(clippy::too_many_arguments)]
pub fn chain_hash(
    prev_hash: &str,
    seq: i64,
    at: &str,
    actor: &str,
    action: &str,
    stack: Option<&str>,
    outcome: &str,
    detail: &serde_json::Value,
) -> String {
    // serde_json writes object keys in sorted order (no preserve_order feature), so the
    // serialization of `detail` is canonical.
    let canonical = serde_json::json!([prev_hash, seq, at, actor, action, stack, outcome, detail]);
    let mut h = Sha256::new();
    h.update(canonical.to_string().as_bytes());
    hex::encode(h.finalize())
}

/// Where a record sits: its global position, its chain and its position there. The hash of a
/// chained record covers all three, so none can be changed without breaking it.
#[derive(Debug, Clone, Copy)]
pub struct Position<'a> {
    /// Global position.
    pub seq: i64,
    /// Chain name (a stack, or [`GLOBAL_CHAIN`]).
    pub chain: &'a str,
    /// Position in the chain, from 1.
    pub chain_seq: i64,
}

/// The hash of a chained record (format 2): like [`chain_hash`], with a domain tag and the
/// record's chain and position in it.
#[allow(clippy::too_many_arguments)]
pub fn chained_hash(
    prev_hash: &str,
    pos: Position<'_>,
    at: &str,
    actor: &str,
    action: &str,
    stack: Option<&str>,
    outcome: &str,
    detail: &serde_json::Value,
) -> String {
    let canonical = serde_json::json!([
        "airlock-audit/2",
        prev_hash,
        pos.seq,
        pos.chain,
        pos.chain_seq,
        at,
        actor,
        action,
        stack,
        outcome,
        detail
    ]);
    let mut h = Sha256::new();
    h.update(canonical.to_string().as_bytes());
    hex::encode(h.finalize())
}

impl AuditRecord {
    /// The hash this record should carry given its fields.
    pub fn expected_hash(&self) -> String {
        match (&self.chain, self.chain_seq) {
            (Some(chain), Some(chain_seq)) => chained_hash(
                &self.prev_hash,
                Position {
                    seq: self.seq,
                    chain,
                    chain_seq,
                },
                &self.at,
                &self.actor,
                &self.action,
                self.stack.as_deref(),
                &self.outcome,
                &self.detail,
            ),
            _ => chain_hash(
                &self.prev_hash,
                self.seq,
                &self.at,
                &self.actor,
                &self.action,
                self.stack.as_deref(),
                &self.outcome,
                &self.detail,
            ),
        }
    }

    /// The heads a seal record names: chain -> (position, hash). `None` for another record
    /// or a malformed seal.
    pub fn sealed_heads(&self) -> Option<Vec<(String, i64, String)>> {
        if self.action != SEAL_ACTION || self.chain.as_deref() != Some(GLOBAL_CHAIN) {
            return None;
        }
        let heads = self.detail.get("heads")?.as_object()?;
        heads
            .iter()
            .map(|(chain, h)| {
                Some((
                    chain.clone(),
                    h.get("chain_seq")?.as_i64()?,
                    h.get("hash")?.as_str()?.to_owned(),
                ))
            })
            .collect()
    }
}

/// A broken link: the global position of the first bad record and why.
pub type Broken = (i64, String);

/// Checks the whole log record by record, in global order (every record, from the first).
#[derive(Debug, Default)]
pub struct ChainVerifier {
    last_seq: i64,
    legacy_head: Option<String>,
    chained_seen: bool,
    /// Every chain's hashes by position (index = chain_seq - 1), for the seals' checks.
    chains: std::collections::HashMap<String, Vec<String>>,
    checked: u64,
    last_seal_seq: i64,
    unsealed: u64,
}

impl ChainVerifier {
    /// A verifier at the start of the log.
    pub fn new() -> ChainVerifier {
        ChainVerifier::default()
    }

    /// Checks the next record.
    pub fn push(&mut self, r: &AuditRecord) -> Result<(), Broken> {
        let broken = |why: &str| Err((r.seq, why.to_owned()));
        if r.seq <= self.last_seq {
            return broken("records are out of order: a position repeats or goes back");
        }
        if r.expected_hash() != r.hash {
            return broken("record content does not match its hash");
        }
        match (&r.chain, r.chain_seq) {
            (None, None) => {
                if self.chained_seen {
                    return broken("a legacy (single-chain) record after chained records");
                }
                if r.seq != self.last_seq + 1 {
                    return broken("sequence number gap: a record is missing");
                }
                let prev = self.legacy_head.as_deref().unwrap_or(GENESIS);
                if r.prev_hash != prev {
                    return broken("prev_hash does not match the previous record's hash");
                }
                self.legacy_head = Some(r.hash.clone());
            }
            (Some(chain), Some(chain_seq)) => {
                self.chained_seen = true;
                let hashes = self.chains.entry(chain.clone()).or_default();
                if chain_seq != hashes.len() as i64 + 1 {
                    return broken(&format!(
                        "chain {chain:?}: position {chain_seq} where {} was expected: a record of the chain is missing or repeated",
                        hashes.len() + 1
                    ));
                }
                let prev = match hashes.last() {
                    Some(h) => h.as_str(),
                    None if chain == GLOBAL_CHAIN => self.legacy_head.as_deref().unwrap_or(GENESIS),
                    None => GENESIS,
                };
                if r.prev_hash != prev {
                    return broken(&format!(
                        "chain {chain:?}: prev_hash does not match the previous record's hash"
                    ));
                }
                hashes.push(r.hash.clone());
                if r.action == SEAL_ACTION {
                    let Some(heads) = r.sealed_heads() else {
                        return broken("a malformed seal");
                    };
                    for (sealed, at, hash) in heads {
                        let present = self
                            .chains
                            .get(&sealed)
                            .and_then(|h| usize::try_from(at - 1).ok().and_then(|i| h.get(i)));
                        if present != Some(&hash) {
                            return broken(&format!(
                                "the seal names record {at} of chain {sealed:?} with a hash that is not there: sealed records were dropped or changed"
                            ));
                        }
                    }
                    self.last_seal_seq = r.seq;
                    self.unsealed = 0;
                }
            }
            _ => return broken("a record with a chain but no position, or the reverse"),
        }
        if r.chain.as_deref().is_some_and(|c| c != GLOBAL_CHAIN) {
            self.unsealed += 1;
        }
        self.last_seq = r.seq;
        self.checked += 1;
        Ok(())
    }

    /// Records checked so far.
    pub fn checked(&self) -> u64 {
        self.checked
    }

    /// Stack-chain records after the last seal: their truncation would not be detected yet.
    pub fn unsealed(&self) -> u64 {
        self.unsealed
    }
}

/// Verifies a whole log in global order, from its first record. Returns the global position
/// of the first broken record.
pub fn verify_chain<'a>(records: impl IntoIterator<Item = &'a AuditRecord>) -> Result<(), Broken> {
    let mut v = ChainVerifier::new();
    records.into_iter().try_for_each(|r| v.push(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The canonical form is part of every stored chain: if this hash changes (a serde_json
    /// feature such as `preserve_order` unified in by a dependency, a field order change), every
    /// existing audit log stops verifying. Never update the constant; fix the cause. The values
    /// were cross-checked outside Rust: SHA-256 of the JSON array with sorted keys, no spaces,
    /// UTF-8 unescaped (Python: `json.dumps(v, separators=(',', ':'), sort_keys=True,
    /// ensure_ascii=False)`).
    #[test]
    fn canonical_form_is_pinned() {
        let detail =
            serde_json::json!({"z": 1, "a": {"y": [1, "two", null], "b": true}, "m": "é\u{1}"});
        let h = chain_hash(
            GENESIS,
            7,
            "2026-11-30T21:00:00Z",
            "alice (tok_0123456789abcdef)",
            "state.write",
            Some("prod/app"),
            "ok",
            &detail,
        );
        assert_eq!(h, GOLDEN);
        let none = chain_hash(
            &h,
            8,
            "t",
            "system",
            "x",
            None,
            "denied",
            &serde_json::Value::Null,
        );
        assert_eq!(none, GOLDEN_NONE);
    }

    /// The chained form (format 2), pinned like [`GOLDEN`] and cross-checked the same way
    /// (Python: the JSON array starting with "airlock-audit/2").
    #[test]
    fn chained_form_is_pinned() {
        let h = chained_hash(
            GENESIS,
            Position {
                seq: 9,
                chain: "prod/app",
                chain_seq: 3,
            },
            "2026-12-01T03:00:00Z",
            "alice (tok_0123456789abcdef)",
            "state.write",
            Some("prod/app"),
            "ok",
            &serde_json::json!({"serial": 4}),
        );
        assert_eq!(h, GOLDEN_CHAINED);
    }

    const GOLDEN_CHAINED: &str = "15d5299914fc6822a8013085afc42c215468082a873b4b073b931e7e59275679";

    /// A log as the store writes it: two legacy records, then chains `a`, `b` and the global
    /// one, a seal of a@3 and b@2, and one unsealed record of `a`.
    fn log() -> Vec<AuditRecord> {
        let mut out: Vec<AuditRecord> = Vec::new();
        let legacy = |out: &mut Vec<AuditRecord>, action: &str| {
            let seq = out.len() as i64 + 1;
            let prev = out.last().map_or(GENESIS.to_owned(), |r| r.hash.clone());
            let mut r = record(seq, None, None, action, None, serde_json::Value::Null, prev);
            r.hash = r.expected_hash();
            out.push(r);
        };
        legacy(&mut out, "token.create");
        legacy(&mut out, "state.write");
        for (chain, action) in [
            ("a", "lock"),
            ("b", "lock"),
            ("a", "state.write"),
            ("", "token.create"),
            ("b", "state.write"),
            ("a", "unlock"),
        ] {
            push(&mut out, chain, action, serde_json::Value::Null);
        }
        let head = |out: &[AuditRecord], chain: &str| {
            let r = out
                .iter()
                .rev()
                .find(|r| r.chain.as_deref() == Some(chain))
                .unwrap();
            serde_json::json!({"chain_seq": r.chain_seq, "hash": r.hash})
        };
        let heads = serde_json::json!({"heads": {"a": head(&out, "a"), "b": head(&out, "b")}});
        push(&mut out, "", SEAL_ACTION, heads);
        push(&mut out, "a", "lock", serde_json::Value::Null);
        out
    }

    fn record(
        seq: i64,
        chain: Option<&str>,
        chain_seq: Option<i64>,
        action: &str,
        stack: Option<&str>,
        detail: serde_json::Value,
        prev_hash: String,
    ) -> AuditRecord {
        AuditRecord {
            seq,
            chain: chain.map(str::to_owned),
            chain_seq,
            at: format!("2026-12-01T03:00:{:02}Z", seq % 60),
            actor: "alice".into(),
            action: action.into(),
            stack: stack.map(str::to_owned),
            outcome: "ok".into(),
            detail,
            prev_hash,
            hash: String::new(),
        }
    }

    /// Appends to `chain` as the store does: after the chain's last record (the global chain
    /// after the legacy chain), at the next global position (here with a gap, as PostgreSQL's
    /// sequence may leave one).
    fn push(out: &mut Vec<AuditRecord>, chain: &str, action: &str, detail: serde_json::Value) {
        let last = out.iter().rev().find(|r| r.chain.as_deref() == Some(chain));
        let (chain_seq, prev) = match last {
            Some(r) => (r.chain_seq.unwrap() + 1, r.hash.clone()),
            None if chain.is_empty() => (
                1,
                out.iter()
                    .rev()
                    .find(|r| r.chain.is_none())
                    .map_or(GENESIS.to_owned(), |r| r.hash.clone()),
            ),
            None => (1, GENESIS.to_owned()),
        };
        let seq = out.last().map_or(1, |r| r.seq + 2);
        let stack = (!chain.is_empty()).then_some(chain);
        let mut r = record(
            seq,
            Some(chain),
            Some(chain_seq),
            action,
            stack,
            detail,
            prev,
        );
        r.hash = r.expected_hash();
        out.push(r);
    }

    fn broken_at(log: &[AuditRecord]) -> Option<(i64, String)> {
        verify_chain(log).err()
    }

    #[test]
    fn an_untouched_log_verifies_and_counts_its_unsealed_tail() {
        let log = log();
        let mut v = ChainVerifier::new();
        for r in &log {
            v.push(r).unwrap();
        }
        assert_eq!(v.checked(), log.len() as u64);
        assert_eq!(v.unsealed(), 1, "a@4 follows the seal");
    }

    #[test]
    fn attacks_dropping_a_record_are_detected() {
        let log = log();
        let find = |chain: &str, pos: i64| {
            log.iter()
                .position(|r| r.chain.as_deref() == Some(chain) && r.chain_seq == Some(pos))
                .unwrap()
        };
        for (what, i) in [
            ("a legacy record", 0),
            ("a record in the middle of a stack chain", find("a", 2)),
            ("a sealed stack chain's last record", find("b", 2)),
            ("a global record", find("", 1)),
        ] {
            let mut l = log.clone();
            l.remove(i);
            assert!(broken_at(&l).is_some(), "dropping {what} is detected");
        }
        // A whole sealed stack chain.
        let l: Vec<_> = log
            .iter()
            .filter(|r| r.chain.as_deref() != Some("b"))
            .cloned()
            .collect();
        let (_, why) = broken_at(&l).unwrap();
        assert!(why.contains("seal"), "{why}");
    }

    /// The window the design accepts: records after the last seal (at most a second old while
    /// the server runs) can be dropped from the tail of their chain undetected, as the newest
    /// records of the single chain always could.
    #[test]
    fn the_unsealed_tail_is_the_known_window() {
        let mut l = log();
        l.pop();
        assert_eq!(broken_at(&l), None);
    }

    #[test]
    fn attacks_reordering_or_moving_records_are_detected() {
        let log = log();
        // Swap the global positions of two records of different chains (a reorder of history).
        let mut l = log.clone();
        let (i, j) = (3, 4);
        let (si, sj) = (l[i].seq, l[j].seq);
        l[i].seq = sj;
        l[j].seq = si;
        l.swap(i, j);
        assert!(broken_at(&l).is_some(), "positions are inside the hash");
        // Re-hashing the swapped records does not help: each one's successor in its chain
        // names the old hash.
        let mut l = log.clone();
        l[i].seq = sj;
        l[j].seq = si;
        l.swap(i, j);
        l[i].hash = l[i].expected_hash();
        l[j].hash = l[j].expected_hash();
        assert!(
            broken_at(&l).is_some(),
            "a re-hashed record breaks the next link"
        );
        // Move a record to another chain.
        let mut l = log.clone();
        let k = l
            .iter()
            .position(|r| r.chain.as_deref() == Some("a"))
            .unwrap();
        l[k].chain = Some("b".into());
        l[k].hash = l[k].expected_hash();
        assert!(broken_at(&l).is_some());
        // Present the records out of global order.
        let mut l = log.clone();
        l.swap(3, 4);
        assert!(broken_at(&l).is_some());
    }

    #[test]
    fn attacks_forging_records_are_detected() {
        let log = log();
        // Edit a field without re-hashing.
        let mut l = log.clone();
        l[3].outcome = "denied".into();
        assert!(broken_at(&l).is_some());
        // A legacy-form record among chained ones (to escape the chain rules).
        let mut l = log.clone();
        let last = l.last().unwrap().clone();
        let mut r = record(
            last.seq + 1,
            None,
            None,
            "state.write",
            None,
            serde_json::Value::Null,
            log[1].hash.clone(),
        );
        r.hash = r.expected_hash();
        l.push(r);
        assert!(broken_at(&l).is_some());
        // A seal naming a head that is not there.
        let mut l = log.clone();
        let forged = serde_json::json!({"heads": {"a": {"chain_seq": 9, "hash": GENESIS}}});
        push(&mut l, "", SEAL_ACTION, forged);
        assert!(broken_at(&l).unwrap().1.contains("seal"));
        // A malformed seal.
        let mut l = log.clone();
        push(&mut l, "", SEAL_ACTION, serde_json::json!({"heads": [1]}));
        assert!(broken_at(&l).is_some());
        // A repeated global position.
        let mut l = log.clone();
        let mut dup = l.last().unwrap().clone();
        dup.chain_seq = dup.chain_seq.map(|s| s + 1);
        dup.prev_hash = l.last().unwrap().hash.clone();
        dup.hash = dup.expected_hash();
        l.push(dup);
        assert!(broken_at(&l).is_some());
    }

    const GOLDEN: &str = "ca60cf9a1522f3a1daebb5543158dced27f90242554996e2e46bdd90a84e6407";
    const GOLDEN_NONE: &str = "64cf2b21ce91526b5d933ed163a6da17e2b81c71074fd63814f6614e508c03a0";
}
