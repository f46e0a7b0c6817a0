//! Change detection for the pull-request workflow: which stacks of `airlock.hcl` a change
//! (merge base of `base` and `head` → `head`) affects, and why.
//!
//! A stack is affected when a changed path is one of its input files at head or at the merge
//! base (every file under its directory and under the local modules it calls, transitively: the
//! files the fingerprint uses, [`crate::modules`]), when its `stack`
//! block changed (compared parsed, not as text), or when a changed path matches one of its
//! `also_when_changed` globs. A stack whose directory the change deletes is reported apart,
//! never as something to destroy. Everything is read from the two commits with the real `git`;
//! the working tree is not looked at.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

use airlock_core::{glob::glob_match, inputs};
use airlock_policy::config::{self, Config, ConfigError};
use serde::Serialize;

use crate::git::{self, Change, GitFailure, GitTree};
use crate::modules::{self, ModuleError, StackFiles, Walker};

/// Largest `airlock.hcl` read from a commit.
const MAX_CONFIG: usize = 4 << 20;

/// The stacks a change affects.
#[derive(Debug, Clone, Serialize)]
pub struct AffectedSet {
    /// The merge-base commit (full sha) of the base ref and the head ref.
    pub base: String,
    /// The head commit (full sha).
    pub head: String,
    /// Affected stacks in dependency order: a stack after those it `depends_on`.
    pub stacks: Vec<AffectedStack>,
    /// Stacks whose directory the change deletes, by name.
    pub removed: Vec<RemovedStack>,
    /// Changes that affect no stack by themselves, and stacks that cannot be followed, in words.
    pub notes: Vec<String>,
}

/// One affected stack.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AffectedStack {
    /// Stack name.
    pub name: String,
    /// Its directory at head, relative to the repository root.
    pub dir: String,
    /// `airlock.hcl` declares its removal (`destroy = true`): plan it with `-destroy`.
    pub destroy: bool,
    /// Why it is affected, the stack block first, then by changed path.
    pub reasons: Vec<Reason>,
}

/// A stack whose directory the change deletes. It is never destroyed because of this.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RemovedStack {
    /// Stack name (its block at the merge base).
    pub name: String,
    /// The deleted directory.
    pub dir: String,
    /// Its removal was declared before this change (`destroy = true` at the merge base), so its
    /// resources were meant to be destroyed by an earlier governed run.
    pub declared: bool,
}

/// Why a stack is affected.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    /// A file under the stack's directory changed (configuration, lock file, template, ...).
    File {
        /// The changed path.
        path: String,
    },
    /// A file of a local module the stack calls changed.
    Module {
        /// The changed path.
        path: String,
        /// Module directories from the stack to the one holding the file.
        via: Vec<String>,
    },
    /// A variable file of the stack's directory changed.
    VarFile {
        /// The changed path.
        path: String,
    },
    /// Its `stack` block in `airlock.hcl` was added or changed.
    StackBlock,
    /// A changed path matches one of its `also_when_changed` globs.
    AlsoWhenChanged {
        /// The glob.
        glob: String,
        /// The changed path.
        path: String,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::File { path } => write!(f, "{path} changed"),
            Reason::Module { path, via } => {
                write!(f, "{path} changed, in module {}", via.join(" -> "))
            }
            Reason::VarFile { path } => write!(f, "variable file {path} changed"),
            Reason::StackBlock => write!(f, "its stack block in airlock.hcl changed"),
            Reason::AlsoWhenChanged { glob, path } => {
                write!(
                    f,
                    "{path} changed, which matches also_when_changed \"{glob}\""
                )
            }
        }
    }
}

/// Why the affected set could not be computed; each message says what to do.
#[derive(Debug, Clone)]
pub enum AffectedError {
    /// The root is not inside a git work tree.
    NotARepository {
        /// The repository root given.
        root: String,
        /// What git said.
        detail: String,
    },
    /// A ref does not name a commit of this clone.
    UnknownRef {
        /// `base` or `head`.
        which: &'static str,
        /// The ref as given.
        reference: String,
    },
    /// No merge base between the two commits.
    NoMergeBase {
        /// Base ref as given.
        base: String,
        /// Head ref as given.
        head: String,
        /// The clone is shallow (the usual cause in CI).
        shallow: bool,
    },
    /// Another git failure.
    Git(GitFailure),
    /// The head commit has no `airlock.hcl` at the root.
    NoConfig {
        /// Head commit.
        head: String,
    },
    /// `airlock.hcl` at head does not parse.
    Config(ConfigError),
    /// A stack's module graph could not be read at head.
    Module {
        /// The stack.
        stack: String,
        /// What is wrong.
        error: ModuleError,
    },
    /// A stack block's `dir` does not exist at head, and did not at the merge base either.
    MissingStackDir {
        /// The stack.
        stack: String,
        /// Its `dir`.
        dir: String,
    },
    /// A stack declared `destroy = true` while the change deletes its directory.
    DestroyWithoutDir {
        /// The stack.
        stack: String,
        /// The deleted directory.
        dir: String,
    },
}

impl fmt::Display for AffectedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AffectedError::NotARepository { root, detail } => write!(
                f,
                "{root} is not inside a git repository ({detail}); run airlock ci in a clone of \
                 the infrastructure repository"
            ),
            AffectedError::UnknownRef { which, reference } => write!(
                f,
                "the {which} ref {reference:?} is not a commit of this clone; fetch it (e.g. \
                 `git fetch origin main`, or actions/checkout with fetch-depth: 0) or pass \
                 another --{which} (e.g. origin/main)"
            ),
            AffectedError::NoMergeBase {
                base,
                head,
                shallow: true,
            } => write!(
                f,
                "{base} and {head} have no merge base in this clone because it is shallow; fetch \
                 the whole history: set fetch-depth: 0 on actions/checkout (GitHub) or \
                 GIT_DEPTH: 0 (GitLab), or run `git fetch --unshallow`"
            ),
            AffectedError::NoMergeBase { base, head, .. } => write!(
                f,
                "{base} and {head} have no common history; pass the branch this change will be \
                 merged into as --base"
            ),
            AffectedError::Git(g) => write!(f, "{} failed: {}", g.command, g.detail),
            AffectedError::NoConfig { head } => write!(
                f,
                "commit {head} has no airlock.hcl at the repository root; add one with a \
                 `stack \"NAME\" {{ dir = \"...\" }}` block per stack (docs/airlock-hcl.md)"
            ),
            AffectedError::Config(e) => write!(f, "{e}"),
            AffectedError::Module { stack, error } => {
                write!(f, "stack \"{stack}\": {error}")
            }
            AffectedError::MissingStackDir { stack, dir } => write!(
                f,
                "stack \"{stack}\": its dir \"{dir}\" does not exist in the head commit; fix \
                 `dir` in airlock.hcl, or remove the stack block"
            ),
            AffectedError::DestroyWithoutDir { stack, dir } => write!(
                f,
                "stack \"{stack}\" declares destroy = true but this change deletes its directory \
                 {dir}; a destroy is planned from the stack's code: keep the directory until the \
                 destroy is applied, then delete it and the stack block in a later change"
            ),
        }
    }
}

impl std::error::Error for AffectedError {}

/// Resolves `reference` to a full commit sha.
fn commit(root: &Path, which: &'static str, reference: &str) -> Result<String, AffectedError> {
    let spec = format!("{reference}^{{commit}}");
    let unknown = || AffectedError::UnknownRef {
        which,
        reference: reference.to_owned(),
    };
    if reference.is_empty() || reference.starts_with('-') {
        return Err(unknown());
    }
    let out = git::run(
        root,
        &["rev-parse", "--verify", "-q", "--end-of-options", &spec],
    )
    .map_err(|_| unknown())?;
    Ok(String::from_utf8_lossy(&out).trim().to_owned())
}

/// The stacks the change from the merge base of `base_ref` and `head_ref` to `head_ref`
/// affects, for the repository whose root (the directory of `airlock.hcl`) is `repo_root`; it
/// may be a subdirectory of the git work tree. Uses the `git` on PATH.
pub fn affected(
    repo_root: &Path,
    base_ref: &str,
    head_ref: &str,
) -> Result<AffectedSet, AffectedError> {
    let prefix = git::run(repo_root, &["rev-parse", "--show-prefix"]).map_err(|e| {
        AffectedError::NotARepository {
            root: repo_root.display().to_string(),
            detail: e.detail,
        }
    })?;
    let prefix = String::from_utf8_lossy(&prefix).trim().to_owned();
    let head = commit(repo_root, "head", head_ref)?;
    let base_tip = commit(repo_root, "base", base_ref)?;
    let base = match git::run(repo_root, &["merge-base", &base_tip, &head]) {
        Ok(out) => String::from_utf8_lossy(&out).trim().to_owned(),
        Err(e) if e.code == Some(1) => {
            let shallow = git::run(repo_root, &["rev-parse", "--is-shallow-repository"])
                .map(|o| o.starts_with(b"true"))
                .unwrap_or(false);
            return Err(AffectedError::NoMergeBase {
                base: base_ref.to_owned(),
                head: head_ref.to_owned(),
                shallow,
            });
        }
        Err(e) => return Err(AffectedError::Git(e)),
    };
    let changes = git::changes(repo_root, &base, &head).map_err(AffectedError::Git)?;
    let mut head_tree = GitTree::new(repo_root, &head, &prefix).map_err(AffectedError::Git)?;
    let mut base_tree = GitTree::new(repo_root, &base, &prefix).map_err(AffectedError::Git)?;
    compute(&mut base_tree, &mut head_tree, base, head, &changes)
}

fn read_config(tree: &mut GitTree, commit: &str) -> Result<Option<Config>, AffectedError> {
    if !tree.has_file(inputs::CONFIG_PATH) {
        return Ok(None);
    }
    let file = format!("{} (commit {})", inputs::CONFIG_PATH, short(commit));
    let bytes = tree
        .read_limited(inputs::CONFIG_PATH, MAX_CONFIG)
        .map_err(|e| {
            AffectedError::Config(ConfigError {
                file: file.clone(),
                line: None,
                message: e.message,
            })
        })?;
    let text = String::from_utf8(bytes).map_err(|_| {
        AffectedError::Config(ConfigError {
            file: file.clone(),
            line: None,
            message: "not UTF-8 text".into(),
        })
    })?;
    config::parse(&text, &file)
        .map(Some)
        .map_err(AffectedError::Config)
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

/// Which stacks each changed path concerns, with the module chain: path -> [(stack, via)].
type Index = HashMap<String, Vec<(String, Vec<String>)>>;

fn index_into(index: &mut Index, stack: &str, files: StackFiles) {
    for (path, via) in files {
        index.entry(path).or_default().push((stack.to_owned(), via));
    }
}

fn compute(
    base_tree: &mut GitTree,
    head_tree: &mut GitTree,
    base: String,
    head: String,
    changes: &[Change],
) -> Result<AffectedSet, AffectedError> {
    let head_cfg = read_config(head_tree, &head)?
        .ok_or_else(|| AffectedError::NoConfig { head: head.clone() })?;
    let mut notes = Vec::new();
    let base_cfg = match read_config(base_tree, &base) {
        Ok(c) => c.unwrap_or_default(),
        Err(e) => {
            notes.push(format!(
                "airlock.hcl at the merge base does not parse ({e}): every stack block counts as \
                 changed"
            ));
            Config::default()
        }
    };
    let order = config::dependency_order(&head_cfg.stacks).map_err(|cycle| {
        AffectedError::Config(ConfigError {
            file: inputs::CONFIG_PATH.into(),
            line: None,
            message: format!("depends_on forms a cycle: {}", cycle.join(" -> ")),
        })
    })?;

    // Module graphs at head (errors are the change's to fix) and at the merge base (to see
    // deletions; a graph that cannot be read there falls back to the stack's directory).
    let mut parsed = HashMap::new();
    let mut head_index = Index::new();
    let mut removed = Vec::new();
    let base_has_dir = |tree: &mut GitTree, dir: &str| {
        modules::Tree::files(tree, &inputs::join(".", dir)).map(|f| f.is_some())
    };
    {
        let mut walker = Walker::new(head_tree, &mut parsed);
        let dirs: Vec<&str> = order.iter().filter_map(|s| s.dir.as_deref()).collect();
        walker.preload(&dirs);
        for s in &order {
            let Some(dir) = &s.dir else {
                notes.push(format!(
                    "stack \"{}\" has no dir in airlock.hcl: changes never affect it",
                    s.name
                ));
                continue;
            };
            let module_err = |error| AffectedError::Module {
                stack: s.name.clone(),
                error,
            };
            match walker.stack(dir).map_err(module_err)? {
                Some(files) => index_into(&mut head_index, &s.name, files),
                None => {
                    let was_there = base_has_dir(base_tree, dir).unwrap_or(false);
                    if !was_there {
                        return Err(AffectedError::MissingStackDir {
                            stack: s.name.clone(),
                            dir: dir.clone(),
                        });
                    }
                    if s.destroy {
                        return Err(AffectedError::DestroyWithoutDir {
                            stack: s.name.clone(),
                            dir: dir.clone(),
                        });
                    }
                    notes.push(format!(
                        "stack \"{}\" still has a stack block in airlock.hcl although this change \
                         deletes its directory; remove the block too",
                        s.name
                    ));
                }
            }
        }
    }
    let mut base_index = Index::new();
    let mut base_dirs: BTreeMap<String, String> = BTreeMap::new();
    {
        let mut walker = Walker::new(base_tree, &mut parsed);
        let dirs: Vec<&str> = base_cfg
            .stacks
            .iter()
            .filter_map(|s| s.dir.as_deref())
            .collect();
        walker.preload(&dirs);
        for s in &base_cfg.stacks {
            let Some(dir) = &s.dir else { continue };
            match walker.stack(dir) {
                Ok(Some(files)) => {
                    index_into(&mut base_index, &s.name, files);
                    base_dirs.insert(s.name.clone(), inputs::join(".", dir));
                }
                Ok(None) => {}
                Err(e) => {
                    notes.push(format!(
                        "stack \"{}\": its modules could not be read at the merge base ({e}); \
                         deletions there count only under its directory",
                        s.name
                    ));
                    base_dirs.insert(s.name.clone(), inputs::join(".", dir));
                    let prefix = format!("{}/", inputs::join(".", dir));
                    for c in changes.iter().filter(|c| c.path.starts_with(&prefix)) {
                        base_index
                            .entry(c.path.clone())
                            .or_default()
                            .push((s.name.clone(), Vec::new()));
                    }
                }
            }
        }
    }
    // Removed: the directory existed at the merge base and is gone at head, and the stack is not
    // at head somewhere else.
    for (name, dir) in &base_dirs {
        let gone = !modules::Tree::files(head_tree, dir)
            .map(|f| f.is_some())
            .unwrap_or(true);
        let moved = head_cfg.stack(name).is_some_and(|h| {
            h.dir
                .as_deref()
                .is_some_and(|d| inputs::join(".", d) != *dir)
        });
        if gone && !moved {
            removed.push(RemovedStack {
                name: name.clone(),
                dir: dir.clone(),
                declared: base_cfg.stack(name).is_some_and(|s| s.destroy),
            });
        }
    }
    for s in &base_cfg.stacks {
        if head_cfg.stack(&s.name).is_none() && !removed.iter().any(|r| r.name == s.name) {
            notes.push(format!(
                "the stack block \"{}\" was removed from airlock.hcl but its directory stays: \
                 airlock no longer plans it; its state on the server is untouched",
                s.name
            ));
        }
    }

    let mut paths: Vec<&Change> = changes.iter().collect();
    paths.sort_by(|a, b| a.path.cmp(&b.path));
    if paths.iter().any(|c| c.path == inputs::CONFIG_PATH) && !same_rules(&base_cfg, &head_cfg) {
        notes.push(
            "airlock.hcl changed outside stack blocks (protect, allow_destroy, credentials, \
             mass_destruction): this affects no stack by itself; the next plan of each stack is \
             judged by it"
                .into(),
        );
    }
    if let Some(p) = paths
        .iter()
        .find(|c| c.path.starts_with(inputs::POLICY_DIR))
    {
        notes.push(format!(
            "{} changed: policies judge every plan, but a policy change affects no stack by \
             itself; the next plan of each stack is judged by it",
            p.path
        ));
    }

    let mut stacks = Vec::new();
    for s in &order {
        let Some(dir) = &s.dir else { continue };
        if !head_index_has_dir(head_tree, dir) {
            continue;
        }
        let mut reasons = Vec::new();
        if !base_cfg.stack(&s.name).is_some_and(|b| b.same_settings(s)) {
            reasons.push(Reason::StackBlock);
        }
        for c in &paths {
            let found = head_index
                .get(&c.path)
                .and_then(|v| v.iter().find(|(n, _)| *n == s.name))
                .or_else(|| {
                    base_index
                        .get(&c.path)
                        .and_then(|v| v.iter().find(|(n, _)| *n == s.name))
                });
            if let Some((_, via)) = found {
                let name = c.path.rsplit('/').next().unwrap_or(&c.path);
                let r = if !via.is_empty() {
                    Reason::Module {
                        path: c.path.clone(),
                        via: via.clone(),
                    }
                } else if modules::is_var_file(name) {
                    Reason::VarFile {
                        path: c.path.clone(),
                    }
                } else {
                    Reason::File {
                        path: c.path.clone(),
                    }
                };
                push_unique(&mut reasons, r);
            }
            for g in s
                .also_when_changed
                .iter()
                .filter(|g| glob_match(g, &c.path))
            {
                push_unique(
                    &mut reasons,
                    Reason::AlsoWhenChanged {
                        glob: g.clone(),
                        path: c.path.clone(),
                    },
                );
            }
        }
        if !reasons.is_empty() {
            stacks.push(AffectedStack {
                name: s.name.clone(),
                dir: inputs::join(".", dir),
                destroy: s.destroy,
                reasons,
            });
        }
    }
    Ok(AffectedSet {
        base,
        head,
        stacks,
        removed,
        notes,
    })
}

fn head_index_has_dir(tree: &mut GitTree, dir: &str) -> bool {
    modules::Tree::files(tree, &inputs::join(".", dir)).is_ok_and(|f| f.is_some())
}

fn push_unique(reasons: &mut Vec<Reason>, r: Reason) {
    if !reasons.contains(&r) {
        reasons.push(r);
    }
}

/// Whether the parts of two configurations other than stack blocks say the same.
fn same_rules(a: &Config, b: &Config) -> bool {
    let destroys = |c: &Config| -> Vec<(String, String)> {
        c.allow_destroy
            .iter()
            .map(|d| (d.address.clone(), d.reason.clone()))
            .collect()
    };
    a.protect == b.protect
        && destroys(a) == destroys(b)
        && a.credentials == b.credentials
        && a.mass_destruction == b.mass_destruction
}
