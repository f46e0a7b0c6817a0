//! A governed run's inputs: the files that decide what a plan does (every file under the stack's
//! directory and its local modules' directories: configuration, variable files, the provider
//! lock file, templates; `airlock.hcl` and the repository's Rego policies), each with its
//! SHA-256, and the fingerprint over them.
//!
//! The CLI lists the files (`airlock_runner::input_files`); the server recomputes the fingerprint
//! from the list it is sent, checks that the `airlock.hcl` and policies it judges with are the
//! listed ones, and at apply compares the applying checkout's list with the reviewed one, file by
//! file. Paths are relative to the repository root (the directory of `airlock.hcl`), `/`-separated.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Path of the airlock configuration among the inputs.
pub const CONFIG_PATH: &str = "airlock.hcl";
/// Directory of the repository's Rego policies among the inputs.
pub const POLICY_DIR: &str = "policy/";
/// Most files a run may list.
pub const MAX_FILES: usize = 50_000;

/// A Terraform configuration file (`*.tf`, `*.tf.json`) as Terraform picks them: it ignores
/// names starting with `.` (`configs.IsIgnoredFile`; its `~` and `#...#` cases never end in
/// `.tf`). The one rule for the module walker, the server's and the apply's embedded-config
/// checks; an ignored file is still an input.
pub fn is_config_file(name: &str) -> bool {
    !name.starts_with('.') && (name.ends_with(".tf") || name.ends_with(".tf.json"))
}

/// One input file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputFile {
    /// Path relative to the repository root.
    pub path: String,
    /// SHA-256 of the content, lowercase hex.
    pub sha256: String,
}

impl InputFile {
    /// The entry for `content` at `path`.
    pub fn of(path: &str, content: &[u8]) -> InputFile {
        InputFile {
            path: path.to_owned(),
            sha256: hex::encode(Sha256::digest(content)),
        }
    }
}

/// Whether `path` is a Rego policy file the plan gate evaluates (`policy/**.rego`, not tests).
pub fn is_policy_path(path: &str) -> bool {
    path.starts_with(POLICY_DIR) && path.ends_with(".rego") && !path.ends_with("_test.rego")
}

/// `rel` joined to `base` (both `/`-separated and relative) and normalized: `.` segments
/// dropped, `..` popping a real segment (leading `..` are kept: a module outside the root).
pub fn join(base: &str, rel: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for seg in base.split('/').chain(rel.split('/')) {
        match seg {
            "" | "." => {}
            ".." if out.last().is_some_and(|l| *l != "..") => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    if out.is_empty() {
        ".".into()
    } else {
        out.join("/")
    }
}

/// The fingerprint over `files` (sorted, unique) and the Terraform version.
pub fn fingerprint(terraform_version: &str, files: &[InputFile]) -> String {
    let mut h = Sha256::new();
    h.update(b"airlock-fingerprint-v2\0terraform\0");
    h.update(terraform_version.as_bytes());
    h.update(b"\0");
    for f in files {
        h.update(f.path.as_bytes());
        h.update(b"\0");
        h.update(f.sha256.as_bytes());
        h.update(b"\0");
    }
    hex::encode(h.finalize())
}

/// Checks a list sent by a client: sorted, unique, bounded, well-formed.
pub fn validate(files: &[InputFile]) -> Result<(), String> {
    if files.len() > MAX_FILES {
        return Err(format!("more than {MAX_FILES} input files"));
    }
    for f in files {
        let ok_path = !f.path.is_empty()
            && f.path.len() <= 1024
            && !f.path.starts_with('/')
            && !f.path.chars().any(|c| c.is_control() || c == '\\');
        if !ok_path {
            return Err(format!("input path {:?} is not a relative path", f.path));
        }
        if f.sha256.len() != 64
            || !f
                .sha256
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(format!("input {} has no lowercase hex SHA-256", f.path));
        }
    }
    if files
        .windows(2)
        .any(|w| matches!(w, [a, b] if a.path >= b.path))
    {
        return Err("input files must be sorted by path, each once".into());
    }
    Ok(())
}

/// Files that differ between `reviewed` and `now`: changed, added or missing, in path order.
pub fn differences(reviewed: &[InputFile], now: &[InputFile]) -> Vec<String> {
    use std::collections::BTreeMap;
    let a: BTreeMap<&str, &str> = reviewed
        .iter()
        .map(|f| (f.path.as_str(), f.sha256.as_str()))
        .collect();
    let b: BTreeMap<&str, &str> = now
        .iter()
        .map(|f| (f.path.as_str(), f.sha256.as_str()))
        .collect();
    let mut out = Vec::new();
    for (p, h) in &a {
        match b.get(p) {
            None => out.push(format!("{p} (removed)")),
            Some(h2) if h2 != h => out.push(format!("{p} (changed)")),
            Some(_) => {}
        }
    }
    for p in b.keys().filter(|p| !a.contains_key(*p)) {
        out.push(format!("{p} (added)"));
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_files_are_the_ones_terraform_reads() {
        for name in ["main.tf", "x.tf.json", "a_override.tf", "#x.tf"] {
            assert!(is_config_file(name), "{name}");
        }
        for name in [
            ".disabled.tf",
            ".#main.tf",
            "main.tf~",
            "x.tfvars",
            "tf",
            "main.tf.bak",
        ] {
            assert!(!is_config_file(name), "{name}");
        }
    }

    #[test]
    fn fingerprint_and_differences() {
        let a = vec![
            InputFile::of("airlock.hcl", b"x"),
            InputFile::of("app/main.tf", b"y"),
        ];
        assert!(validate(&a).is_ok());
        let mut b = a.clone();
        b[0] = InputFile::of("airlock.hcl", b"weaker");
        assert_ne!(fingerprint("1.11.4", &a), fingerprint("1.11.4", &b));
        assert_ne!(fingerprint("1.11.4", &a), fingerprint("1.11.5", &a));
        assert_eq!(differences(&a, &b), ["airlock.hcl (changed)"]);
        let reversed: Vec<InputFile> = a.iter().rev().cloned().collect();
        assert!(validate(&reversed).is_err());
        assert!(validate(&[InputFile {
            path: "/etc/x".into(),
            sha256: "0".repeat(64)
        }])
        .is_err());
        assert!(is_policy_path("policy/deny.rego") && !is_policy_path("policy/deny_test.rego"));
        assert_eq!(
            join("stacks/app", "../../modules/net/main.tf"),
            "modules/net/main.tf"
        );
        assert_eq!(join(".", "main.tf"), "main.tf");
        assert_eq!(join("app", "../../shared/x.tf"), "../shared/x.tf");
        assert_eq!(join("a/./b", ""), "a/b");
    }
}
