//! Reads a repository for `airlock doctor`: every directory through `modules::FsTree` (the
//! walker's own view of a checkout), symbolic links never followed (so a loop cannot trap it),
//! `.git` and tool caches skipped, every read bounded. A file that cannot be read is reported
//! with its line and the rest is analysed.

use std::collections::BTreeMap;
use std::path::Path;

use airlock_core::inputs;
use serde::Serialize;

use super::config::{self, Block};
use super::{Evidence, Verdict};
use crate::modules::{FsTree, Kind, Tree, MAX_TF_FILE};

/// Most directory entries looked at; past it the scan stops and says so.
pub const MAX_ENTRIES: usize = 500_000;
/// Largest workflow or script read (a CI file is small).
pub const MAX_SCRIPT: u64 = 1 << 20;
/// Most bytes read in all.
pub const MAX_TOTAL: u64 = 1 << 30;
/// Directories never entered: repository metadata and tool caches.
const SKIP_DIRS: &[&str] = &[".git", "node_modules", ".terragrunt-cache", ".venv"];

/// A Terraform or Terragrunt file read.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    /// Path relative to the root.
    pub path: String,
    /// Its directory (`.` for the root).
    pub dir: String,
    /// Its top-level blocks.
    pub blocks: Vec<Block>,
}

/// A CI file's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CiKind {
    /// `.github/workflows/*.yml`.
    GitHub,
    /// `.gitlab-ci.yml` or a file under `.gitlab/`.
    GitLab,
    /// A shell script, Makefile or Jenkinsfile.
    Script,
}

/// A CI file read.
#[derive(Debug, Clone)]
pub struct CiFile {
    /// Path relative to the root.
    pub path: String,
    /// What it is.
    pub kind: CiKind,
    /// Its text.
    pub text: String,
}

/// What was looked at.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Counts {
    /// Directory entries seen.
    pub entries: usize,
    /// Terraform configuration files parsed.
    pub terraform_files: usize,
    /// Terragrunt files parsed.
    pub terragrunt_files: usize,
    /// CI workflows and scripts read.
    pub ci_files: usize,
    /// Symbolic links seen and not followed.
    pub symlinks_skipped: usize,
}

/// The repository as the rules see it.
#[derive(Debug, Default)]
pub struct Repo {
    /// `.tf` and `.tf.json` files (not under `.terraform/`).
    pub terraform: Vec<ConfigFile>,
    /// `terragrunt.hcl` and `root.hcl` files.
    pub terragrunt: Vec<ConfigFile>,
    /// State files and workspace state directories lying in the tree.
    pub state_files: Vec<String>,
    /// `.terraform/terraform.tfstate` files (the backend cache `terraform init` writes), by the
    /// directory they belong to, with the backend type they name.
    pub backend_caches: BTreeMap<String, (String, Option<String>)>,
    /// Partial backend configuration files (`*.tfbackend`, `backend.hcl`, `*.s3.tfbackend`).
    pub backend_files: Vec<String>,
    /// Variable files, by directory.
    pub var_files: BTreeMap<String, Vec<String>>,
    /// CI files.
    pub ci: Vec<CiFile>,
    /// Files that could not be analysed.
    pub errors: Vec<Evidence>,
    /// What was looked at.
    pub counts: Counts,
    /// Buckets declared in the repository by (type, literal name): (file, block) indexes into
    /// `terraform`, built once on first use (every root's state bucket is looked up in it).
    pub buckets: std::cell::OnceCell<std::collections::HashMap<(String, String), (usize, usize)>>,
}

fn read_error(path: &str, line: usize, message: impl Into<String>) -> Evidence {
    Evidence {
        file: path.to_owned(),
        line,
        message: message.into(),
        verdict: Verdict::Unknown,
        rule: "file.unreadable",
    }
}

fn ci_kind(path: &str, name: &str) -> Option<CiKind> {
    let yaml = name.ends_with(".yml") || name.ends_with(".yaml");
    if yaml && (path.starts_with(".github/workflows/") || path.contains("/.github/workflows/")) {
        return Some(CiKind::GitHub);
    }
    if name == ".gitlab-ci.yml" || (yaml && path.starts_with(".gitlab/")) {
        return Some(CiKind::GitLab);
    }
    if name.ends_with(".sh")
        || name.ends_with(".bash")
        || name == "Makefile"
        || name.ends_with(".mk")
        || name == "Jenkinsfile"
    {
        return Some(CiKind::Script);
    }
    None
}

/// Reads the repository at `root`.
pub fn scan(root: &Path) -> Repo {
    let mut repo = Repo::default();
    let mut tree = FsTree { root };
    let mut total: u64 = 0;
    let mut pending = vec![".".to_owned()];
    while let Some(dir) = pending.pop() {
        let entries = match tree.entries(&dir) {
            Ok(Some(e)) => e,
            Ok(None) => continue,
            Err(e) => {
                repo.errors.push(read_error(&dir, 0, e.message));
                continue;
            }
        };
        let mut entries = entries;
        entries.sort();
        for (name, kind) in entries {
            repo.counts.entries += 1;
            if repo.counts.entries > MAX_ENTRIES {
                repo.errors.push(read_error(
                    &dir,
                    0,
                    format!("more than {MAX_ENTRIES} entries; the scan stopped here"),
                ));
                return repo;
            }
            let path = inputs::join(&dir, &name);
            match kind {
                Kind::Symlink => repo.counts.symlinks_skipped += 1,
                Kind::Other => {}
                Kind::Dir => {
                    if name == ".terraform" {
                        backend_cache(root, &dir, &path, &mut repo);
                    } else if name == "terraform.tfstate.d" {
                        repo.state_files.push(path);
                    } else if !SKIP_DIRS.contains(&name.as_str()) {
                        pending.push(path);
                    }
                }
                Kind::File => {
                    let size = std::fs::metadata(root.join(&path)).map_or(0, |m| m.len());
                    if name.ends_with(".tfstate") || name.ends_with(".tfstate.backup") {
                        repo.state_files.push(path);
                        continue;
                    }
                    if name.ends_with(".tfvars") || name.ends_with(".tfvars.json") {
                        repo.var_files.entry(dir.clone()).or_default().push(path);
                        continue;
                    }
                    if name.ends_with(".tfbackend") || name == "backend.hcl" {
                        repo.backend_files.push(path);
                        continue;
                    }
                    let is_tf = crate::modules::is_config_file(&name);
                    let is_tg = name == "terragrunt.hcl" || name == "root.hcl";
                    let ci = ci_kind(&path, &name);
                    if !is_tf && !is_tg && ci.is_none() {
                        continue;
                    }
                    let limit = if is_tf || is_tg {
                        MAX_TF_FILE as u64
                    } else {
                        MAX_SCRIPT
                    };
                    if size > limit {
                        repo.errors.push(read_error(
                            &path,
                            0,
                            format!("{size} bytes, more than the {limit} this file kind may have; not analysed"),
                        ));
                        continue;
                    }
                    total += size;
                    if total > MAX_TOTAL {
                        repo.errors.push(read_error(
                            &path,
                            0,
                            format!(
                                "more than {} MiB read in all; the scan stopped here",
                                MAX_TOTAL >> 20
                            ),
                        ));
                        return repo;
                    }
                    let content = match tree.read(&path) {
                        Ok(c) => c,
                        Err(e) => {
                            repo.errors.push(read_error(&path, 0, e.message));
                            continue;
                        }
                    };
                    if is_tf || is_tg {
                        match config::parse(&name, &content) {
                            Ok(blocks) => {
                                let f = ConfigFile {
                                    path,
                                    dir: dir.clone(),
                                    blocks,
                                };
                                if is_tf {
                                    repo.counts.terraform_files += 1;
                                    repo.terraform.push(f);
                                } else {
                                    repo.counts.terragrunt_files += 1;
                                    repo.terragrunt.push(f);
                                }
                            }
                            Err(e) => repo.errors.push(read_error(&path, e.line, e.message)),
                        }
                    } else if let Some(kind) = ci {
                        match String::from_utf8(content) {
                            Ok(text) => {
                                repo.counts.ci_files += 1;
                                repo.ci.push(CiFile { path, kind, text });
                            }
                            Err(_) => {
                                // A binary named like a script is not a script.
                                if kind != CiKind::Script {
                                    repo.errors.push(read_error(&path, 0, "not UTF-8 text"));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    repo.terraform.sort_by(|a, b| a.path.cmp(&b.path));
    repo.terragrunt.sort_by(|a, b| a.path.cmp(&b.path));
    repo.ci.sort_by(|a, b| a.path.cmp(&b.path));
    repo.state_files.sort();
    repo
}

/// `.terraform/terraform.tfstate`: not state, the backend settings `terraform init` recorded
/// (a partial configuration's values end up here).
fn backend_cache(root: &Path, dir: &str, terraform_dir: &str, repo: &mut Repo) {
    let path = inputs::join(terraform_dir, "terraform.tfstate");
    let Ok(meta) = std::fs::symlink_metadata(root.join(&path)) else {
        return;
    };
    if !meta.is_file() || meta.len() > MAX_SCRIPT {
        return;
    }
    let kind = std::fs::read(root.join(&path))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| {
            v.pointer("/backend/type")
                .and_then(|t| t.as_str())
                .map(str::to_owned)
        });
    repo.backend_caches.insert(dir.to_owned(), (path, kind));
}
