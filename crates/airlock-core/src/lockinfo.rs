//! Terraform's lock-info JSON (`statemgr.LockInfo`). The server stores the bytes verbatim and
//! reads only `ID` and `Operation` from them. Because those bytes are shown to people later
//! (`airlock stack show`, refusal messages, Terraform's "Lock Info:" block), no string in them
//! may carry a control character: an escape sequence in `Who` or `Info` would otherwise reach
//! an admin's terminal.

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
        let value: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| format!("lock info is not valid JSON lock info: {e}"))?;
        if let Some((field, c)) = control_character(&value, "") {
            return Err(format!(
                "lock info field {field} contains the control character U+{:04X}; lock info is shown on terminals, so it may hold printable text and tabs only",
                u32::from(c)
            ));
        }
        // Parsed again as the typed form: it refuses duplicate fields, which a `Value` hides.
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

/// The first control character (other than tab) in any string of `v`, keys included, with
/// the JSON path of the field that holds it.
fn control_character(v: &serde_json::Value, path: &str) -> Option<(String, char)> {
    let bad = |s: &str| s.chars().find(|c| c.is_control() && *c != '\t');
    match v {
        serde_json::Value::String(s) => bad(s).map(|c| (display_path(path), c)),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, x)| control_character(x, &format!("{path}[{i}]"))),
        serde_json::Value::Object(map) => map.iter().find_map(|(k, x)| {
            let here = format!("{path}.{}", k.escape_debug());
            bad(k)
                .map(|c| (display_path(&here), c))
                .or_else(|| control_character(x, &here))
        }),
        _ => None,
    }
}

fn display_path(path: &str) -> String {
    path.strip_prefix('.').unwrap_or(path).to_owned()
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

    #[test]
    fn refuses_control_characters_in_any_string() {
        for (bad, field) in [
            (&br#"{"ID":"x","Who":"root\u001b[2J@vm"}"#[..], "Who"),
            (br#"{"ID":"x","Info":"line\nbreak"}"#, "Info"),
            (br#"{"ID":"x","Info":"\u009b31m"}"#, "Info"),
            (br#"{"ID":"x","Path":"\u0007"}"#, "Path"),
            (
                br#"{"ID":"x","Extra":{"deep":["ok","\u007f"]}}"#,
                "Extra.deep[1]",
            ),
            (br#"{"ID":"x","\u001bkey":"v"}"#, r"\u{1b}key"),
        ] {
            let err = LockInfo::parse(bad).unwrap_err();
            assert!(
                err.contains(&format!("field {field} ")) && err.contains("control character"),
                "{err}"
            );
        }
    }

    #[test]
    fn accepts_tabs_and_non_ascii_text() {
        let body = "{\"ID\":\"x\",\"Who\":\"jos\u{e9}@h\u{f6}st\",\"Info\":\"a\\tb\"}";
        let info = LockInfo::parse(body.as_bytes()).unwrap();
        assert_eq!(info.who, "jos\u{e9}@h\u{f6}st");
    }
}
