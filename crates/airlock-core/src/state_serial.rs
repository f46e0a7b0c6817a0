//! Rewriting a stored state's serial without touching any other byte: `airlock state restore`
//! must reproduce the old version exactly (numbers, key order, spacing), or the next plan shows
//! changes that nobody made.

use std::collections::BTreeMap;

use serde_json::value::RawValue;

use crate::state::StateError;

/// `body` with its top-level `serial` value replaced by `serial`; every other byte is kept.
pub fn replace_serial(body: &[u8], serial: u64) -> Result<Vec<u8>, StateError> {
    let text = std::str::from_utf8(body).map_err(|e| StateError(format!("not UTF-8: {e}")))?;
    let fields: BTreeMap<String, &RawValue> =
        serde_json::from_str(text).map_err(|e| StateError(format!("not a JSON object: {e}")))?;
    let raw = fields
        .get("serial")
        .ok_or_else(|| StateError("the state has no serial".into()))?
        .get();
    // `raw` borrows from `text`: its position is where the serial's digits are.
    let start = (raw.as_ptr() as usize).wrapping_sub(text.as_ptr() as usize);
    let end = start + raw.len();
    let (Some(before), Some(after)) = (body.get(..start), body.get(end..)) else {
        return Err(StateError("the serial is not inside the body".into()));
    };
    let mut out = Vec::with_capacity(body.len() + 20);
    out.extend_from_slice(before);
    out.extend_from_slice(serial.to_string().as_bytes());
    out.extend_from_slice(after);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_serial_changes() {
        let body = br#"{"version": 4, "serial":7,"lineage":"x","outputs":{"n":{"value":12345678901234567890.123456789e-3,"type":"number","serial":1}}}
"#;
        let out = replace_serial(body, 12).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            String::from_utf8(body.to_vec())
                .unwrap()
                .replacen("\"serial\":7", "\"serial\":12", 1)
        );
        assert!(replace_serial(b"[]", 1).is_err());
        assert!(replace_serial(br#"{"version":4}"#, 1).is_err());
    }
}
