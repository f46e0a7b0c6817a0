//! Terraform's lock-info JSON (`statemgr.LockInfo`). The server stores the bytes verbatim and
//! reads only `ID` and `Operation` from them.

use serde::Deserialize;

/// Largest lock-info body accepted, in bytes. Terraform's are ~200 bytes.
pub const MAX_LOCK_INFO_LEN: usize = 16 * 1024;

/// The fields of a lock request the server acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockInfo {
    /// Lock ID chosen by the client (a UUID for Terraform).
    pub id: String,
    /// What the lock is for: `OperationTypePlan`, `OperationTypeApply`, `state-push`, ...
    pub operation: String,
    /// `user@host` of the requester.
    pub who: String,
}

#[derive(Deserialize)]
struct Wire {
    #[serde(rename = "ID", alias = "id", alias = "Id")]
    id: Option<String>,
    #[serde(rename = "Operation", alias = "operation", default)]
    operation: Option<String>,
    #[serde(rename = "Who", alias = "who", default)]
    who: Option<String>,
}

/// The operation Terraform sends for `plan`: the only one a principal without write
/// permission may lock for.
pub const OPERATION_PLAN: &str = "OperationTypePlan";

impl LockInfo {
    /// Parses a lock-info body. The ID must be non-empty printable ASCII of at most 256 bytes.
    pub fn parse(body: &[u8]) -> Result<LockInfo, String> {
        if body.len() > MAX_LOCK_INFO_LEN {
            return Err(format!(
                "lock info is larger than {MAX_LOCK_INFO_LEN} bytes"
            ));
        }
        let wire: Wire = serde_json::from_slice(body)
            .map_err(|e| format!("lock info is not valid JSON lock info: {e}"))?;
        let id = wire.id.unwrap_or_default();
        if id.is_empty() {
            return Err("lock info has no ID".into());
        }
        if id.len() > 256 || !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("lock ID must be at most 256 printable ASCII characters".into());
        }
        Ok(LockInfo {
            id,
            operation: wire.operation.unwrap_or_default(),
            who: wire.who.unwrap_or_default(),
        })
    }

    /// Is this lock only for planning (no state write will follow)?
    pub fn is_plan_only(&self) -> bool {
        self.operation == OPERATION_PLAN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_terraform_lock_info() {
        let body = br#"{"ID":"77babd8a-24ed-4b43-6884-b77feac41866","Operation":"OperationTypeApply","Info":"","Who":"root@vm","Version":"1.11.4","Created":"2026-11-24T03:09:07.006165048Z","Path":""}"#;
        let info = LockInfo::parse(body).unwrap();
        assert_eq!(info.id, "77babd8a-24ed-4b43-6884-b77feac41866");
        assert!(!info.is_plan_only());
    }

    #[test]
    fn refuses_bad_lock_info() {
        for bad in [
            &b""[..],
            b"{",
            b"[]",
            b"{}",
            br#"{"ID":""}"#,
            br#"{"ID":"a b"}"#,
            br#"{"ID":5}"#,
        ] {
            assert!(
                LockInfo::parse(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
