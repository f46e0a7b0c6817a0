//! The audit hash chain: every event's hash covers the previous event's hash and the event's
//! canonical fields, so editing or deleting any record breaks every later link.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The hash that precedes the first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audit record as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the chain, from 1.
    pub seq: i64,
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
    /// Hash of the previous record (hex).
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

impl AuditRecord {
    /// The hash this record should carry given its fields.
    pub fn expected_hash(&self) -> String {
        chain_hash(
            &self.prev_hash,
            self.seq,
            &self.at,
            &self.actor,
            &self.action,
            self.stack.as_deref(),
            &self.outcome,
            &self.detail,
        )
    }
}

/// Verifies a chain in order. Returns the sequence number of the first broken record.
pub fn verify_chain<'a>(
    records: impl IntoIterator<Item = &'a AuditRecord>,
    mut prev: String,
) -> Result<(), (i64, String)> {
    let mut expected_seq: Option<i64> = None;
    for r in records {
        if expected_seq.is_some_and(|s| s != r.seq) {
            return Err((r.seq, "sequence number gap: a record is missing".into()));
        }
        expected_seq = Some(r.seq + 1);
        if r.prev_hash != prev {
            return Err((
                r.seq,
                "prev_hash does not match the previous record's hash".into(),
            ));
        }
        if r.expected_hash() != r.hash {
            return Err((r.seq, "record content does not match its hash".into()));
        }
        prev = r.hash.clone();
    }
    Ok(())
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

    const GOLDEN: &str = "ca60cf9a1522f3a1daebb5543158dced27f90242554996e2e46bdd90a84e6407";
    const GOLDEN_NONE: &str = "64cf2b21ce91526b5d933ed163a6da17e2b81c71074fd63814f6614e508c03a0";
}
