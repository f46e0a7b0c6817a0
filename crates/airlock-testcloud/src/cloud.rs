//! The cloud itself: a directory of JSON files, one per object, that anyone may read, edit or
//! delete behind Terraform's back.
//!
//! Layout (documented in the crate doc and the README):
//! `DIR/<type>/<file>.json`, where `<type>` is a resource type (`aws_vpc`, ...) or
//! `rds_automated_backup`, and `<file>` is the object's `id` with every byte outside
//! `[A-Za-z0-9_-]` written `%XX` (so ARNs and S3 keys are file names too). The file holds
//! the object's attributes as a JSON object — the same names and values Terraform reads back.
//! Writes go to a temporary file renamed into place, so a reader never sees half an object.

use serde_json::{Map, Value as Json};
use std::fs;
use std::io::ErrorKind;
use std::path::PathBuf;

/// One object's attributes, as stored.
pub type Object = Map<String, Json>;

/// The object type for automated backups of a database (not a Terraform resource).
pub const AUTOMATED_BACKUP: &str = "rds_automated_backup";

/// Longest id the cloud accepts once encoded into a file name (Linux allows 255 bytes).
pub const MAX_ENCODED_ID: usize = 240;

#[derive(Clone, Debug)]
pub struct Cloud {
    dir: PathBuf,
}

impl Cloud {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn path(&self, kind: &str, id: &str) -> PathBuf {
        self.dir.join(kind).join(format!("{}.json", encode_id(id)))
    }

    /// The object of type `kind` with this id, `None` when the cloud does not hold it.
    pub fn get(&self, kind: &str, id: &str) -> Result<Option<Object>, String> {
        let path = self.path(kind, id);
        match fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Json>(&bytes) {
                Ok(Json::Object(obj)) => Ok(Some(obj)),
                Ok(_) | Err(_) => Err(format!(
                    "the cloud's file {} is not a JSON object (edited by hand?)",
                    path.display()
                )),
            },
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    pub fn exists(&self, kind: &str, id: &str) -> bool {
        self.path(kind, id).is_file()
    }

    /// Stores (creates or replaces) an object.
    pub fn put(&self, kind: &str, id: &str, obj: &Object) -> Result<(), String> {
        if encode_id(id).len() > MAX_ENCODED_ID {
            return Err(format!(
                "id too long for the test cloud: {} bytes",
                id.len()
            ));
        }
        let dir = self.dir.join(kind);
        fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let path = self.path(kind, id);
        let tmp = dir.join(format!(".{}.{}.tmp", encode_id(id), std::process::id()));
        let bytes = serde_json::to_vec_pretty(obj).map_err(|e| e.to_string())?;
        fs::write(&tmp, bytes).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        fs::rename(&tmp, &path).map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    /// Deletes an object; `false` when it was not there.
    pub fn delete(&self, kind: &str, id: &str) -> Result<bool, String> {
        let path = self.path(kind, id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(format!("cannot delete {}: {e}", path.display())),
        }
    }

    /// Every object of a type, in file-name order.
    pub fn list(&self, kind: &str) -> Result<Vec<Object>, String> {
        let dir = self.dir.join(kind);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(format!("cannot list {}: {e}", dir.display())),
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
            .collect();
        names.sort();
        let mut out = Vec::new();
        for name in names {
            let id = decode_id(name.trim_end_matches(".json"));
            if let Some(obj) = self.get(kind, &id)? {
                out.push(obj);
            }
        }
        Ok(out)
    }

    /// The object types present (directories), sorted.
    pub fn kinds(&self) -> Result<Vec<String>, String> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(format!("cannot list {}: {e}", self.dir.display())),
        };
        let mut kinds: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        kinds.sort();
        Ok(kinds)
    }
}

/// An id as a file name: bytes outside `[A-Za-z0-9_-]` become `%XX`.
pub fn encode_id(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode_id(name: &str) -> String {
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&name[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_file_names() {
        for id in [
            "vpc-0a1b",
            "arn:aws:ecs:us-east-1:1:cluster/prod",
            "b/dir/ü key.txt",
            "%41",
        ] {
            let enc = encode_id(id);
            assert!(enc
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-%".contains(&b)));
            assert_eq!(decode_id(&enc), id);
        }
    }

    #[test]
    fn objects_are_stored_read_listed_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let cloud = Cloud::new(dir.path());
        assert_eq!(cloud.get("aws_vpc", "vpc-1").unwrap(), None);
        let mut obj = Object::new();
        obj.insert("id".into(), "vpc-1".into());
        cloud.put("aws_vpc", "vpc-1", &obj).unwrap();
        assert_eq!(cloud.get("aws_vpc", "vpc-1").unwrap(), Some(obj.clone()));
        assert_eq!(cloud.list("aws_vpc").unwrap(), vec![obj]);
        assert!(cloud.delete("aws_vpc", "vpc-1").unwrap());
        assert!(!cloud.delete("aws_vpc", "vpc-1").unwrap());
        std::fs::write(dir.path().join("aws_vpc/bad.json"), "not json").unwrap();
        assert!(cloud
            .get("aws_vpc", "bad")
            .unwrap_err()
            .contains("not a JSON object"));
    }
}
