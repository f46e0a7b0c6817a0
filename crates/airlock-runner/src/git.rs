//! The real `git`, for change detection: resolving refs, the merge base, the changed paths, and
//! a commit's tree read as a [`Tree`] (listing from `git ls-tree`, contents from one long-lived
//! `git cat-file --batch`), so a commit is read without checking it out.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use crate::modules::{Kind, ModuleError, Tree};

/// A failed git command: what was run and what git said.
#[derive(Debug, Clone)]
pub struct GitFailure {
    /// `git ARGS`, as run.
    pub command: String,
    /// git's stderr (trimmed), or why it could not run.
    pub detail: String,
    /// Exit code, when it ran.
    pub code: Option<i32>,
}

fn command(root: &Path) -> Command {
    let mut c = Command::new("git");
    c.arg("-C")
        .arg(root)
        // Never prompt, never take a lock for a read, same output whatever the user's config.
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_OPTIONAL_LOCKS", "0")
        .env("LC_ALL", "C")
        .stdin(Stdio::null());
    c
}

/// Runs `git -C root ARGS` and returns its stdout.
pub fn run(root: &Path, args: &[&str]) -> Result<Vec<u8>, GitFailure> {
    let shown = format!("git {}", args.join(" "));
    let out = command(root).args(args).output().map_err(|e| GitFailure {
        command: shown.clone(),
        detail: format!("cannot run git: {e}; install git"),
        code: None,
    })?;
    if !out.status.success() {
        return Err(GitFailure {
            command: shown,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            code: out.status.code(),
        });
    }
    Ok(out.stdout)
}

/// One changed path between two commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Path relative to the repository root.
    pub path: String,
    /// Whether the path exists at the head commit (false: deleted, or a rename's old path).
    pub at_head: bool,
}

/// `git diff --name-status -z -M base head`, relative to `root` (paths outside it are left
/// out). A rename yields its old path (not at head) and its new path.
pub fn changes(root: &Path, base: &str, head: &str) -> Result<Vec<Change>, GitFailure> {
    let out = run(
        root,
        &[
            "diff",
            "--name-status",
            "-z",
            "-M",
            "--no-ext-diff",
            "--no-textconv",
            "--relative",
            base,
            head,
            "--",
        ],
    )?;
    let mut fields = out.split(|&b| b == 0).filter(|f| !f.is_empty());
    let mut changes = Vec::new();
    let text = |f: &[u8]| String::from_utf8_lossy(f).into_owned();
    while let Some(status) = fields.next() {
        let kind = status.first().copied().unwrap_or(b'?');
        let Some(first) = fields.next() else { break };
        match kind {
            b'R' | b'C' => {
                let Some(second) = fields.next() else { break };
                changes.push(Change {
                    path: text(first),
                    at_head: kind == b'C',
                });
                changes.push(Change {
                    path: text(second),
                    at_head: true,
                });
            }
            b'D' => changes.push(Change {
                path: text(first),
                at_head: false,
            }),
            _ => changes.push(Change {
                path: text(first),
                at_head: true,
            }),
        }
    }
    Ok(changes)
}

/// A long-lived `git cat-file --batch`: one process for every blob read.
struct CatFile {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl CatFile {
    fn start(root: &Path) -> Result<CatFile, GitFailure> {
        let fail = |detail: String| GitFailure {
            command: "git cat-file --batch".into(),
            detail,
            code: None,
        };
        let mut child = command(root)
            .args(["cat-file", "--batch"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| fail(format!("cannot run git: {e}")))?;
        let stdin = child.stdin.take();
        let stdout = child
            .stdout
            .take()
            .map(BufReader::new)
            .ok_or_else(|| fail("no stdout".into()))?;
        Ok(CatFile {
            child,
            stdin,
            stdout,
        })
    }

    fn read(&mut self, oid: &str, limit: usize) -> Result<Vec<u8>, String> {
        let mut out = self.read_many(&[oid.to_owned()], limit)?;
        out.pop()
            .unwrap_or_else(|| Err("git cat-file: no answer".into()))
    }

    /// Reads many blobs in one exchange: a thread writes the requests while this one reads the
    /// answers (one round trip per blob would make the wall time the sum of scheduler
    /// latencies). The outer error means the stream is out of step; an inner one is one blob's.
    #[allow(clippy::type_complexity)]
    fn read_many(
        &mut self,
        oids: &[String],
        limit: usize,
    ) -> Result<Vec<Result<Vec<u8>, String>>, String> {
        let stdin = self.stdin.as_mut().ok_or("git cat-file has exited")?;
        let stdout = &mut self.stdout;
        let child = &mut self.child;
        std::thread::scope(|scope| {
            let writer = scope.spawn(move || -> std::io::Result<()> {
                let mut w = std::io::BufWriter::new(stdin);
                for oid in oids {
                    writeln!(w, "{oid}")?;
                }
                w.flush()
            });
            let mut out = Vec::with_capacity(oids.len());
            for _ in oids {
                match read_answer(stdout, limit) {
                    Ok(a) => out.push(a),
                    Err(e) => {
                        // Out of step: end cat-file so the writer cannot block on a full pipe.
                        let _ = child.kill();
                        let _ = writer.join();
                        return Err(e);
                    }
                }
            }
            writer
                .join()
                .map_err(|_| "git cat-file: writer failed".to_owned())?
                .map_err(|e| format!("git cat-file: {e}"))?;
            Ok(out)
        })
    }
}

/// One `cat-file --batch` answer: "<oid> blob <size>\n<content>\n" or "<oid> missing\n".
fn read_answer(
    stdout: &mut BufReader<ChildStdout>,
    limit: usize,
) -> Result<Result<Vec<u8>, String>, String> {
    let mut header = String::new();
    stdout
        .read_line(&mut header)
        .map_err(|e| format!("git cat-file: {e}"))?;
    let mut parts = header.split_whitespace();
    let (_, kind, size) = (parts.next(), parts.next(), parts.next());
    let size: usize = match (kind, size.and_then(|s| s.parse().ok())) {
        (Some("blob"), Some(size)) => size,
        (Some("missing"), _) => return Ok(Err("not in the clone".into())),
        _ => {
            return Err(format!(
                "git cat-file: unexpected answer {:?}",
                header.trim()
            ))
        }
    };
    if size > limit {
        // Read past it so the stream stays in step, then refuse.
        std::io::copy(&mut stdout.take(size as u64 + 1), &mut std::io::sink())
            .map_err(|e| format!("git cat-file: {e}"))?;
        return Ok(Err(format!(
            "{size} bytes is more than the {} MiB a configuration file may have",
            limit >> 20
        )));
    }
    let mut content = vec![0u8; size + 1];
    stdout
        .read_exact(&mut content)
        .map_err(|e| format!("git cat-file: {e}"))?;
    content.pop(); // the trailing newline
    Ok(Ok(content))
}

impl Drop for CatFile {
    fn drop(&mut self) {
        drop(self.stdin.take()); // EOF: cat-file exits
        let _ = self.child.wait();
    }
}

/// A commit's tree under the repository root, read through git.
pub struct GitTree {
    /// Directory -> regular files in it: (name, blob id).
    dirs: HashMap<String, Vec<(String, String)>>,
    /// Every directory (ancestors of every entry, the root included when not empty).
    all_dirs: BTreeSet<String>,
    /// Directory -> every entry directly in it, with its kind.
    listing: HashMap<String, Vec<(String, Kind)>>,
    /// Symbolic links (mode 120000): path -> blob id (the blob holds the link's target).
    symlinks: HashMap<String, String>,
    /// Submodules (mode 160000).
    submodules: BTreeSet<String>,
    cat: Option<CatFile>,
    root: std::path::PathBuf,
    /// Blobs read ahead by [`Tree::prefetch`], by id, until read.
    ahead: HashMap<String, Result<Vec<u8>, String>>,
}

impl GitTree {
    /// The tree of `commit` under `prefix` (the root's path inside the git work tree, with a
    /// trailing `/`, or empty), paths made relative to the root.
    pub fn new(root: &Path, commit: &str, prefix: &str) -> Result<GitTree, GitFailure> {
        let mut args = vec!["ls-tree", "-r", "-z", "--full-tree", commit];
        if !prefix.is_empty() {
            args.extend(["--", prefix]);
        }
        let out = run(root, &args)?;
        let mut dirs: HashMap<String, Vec<(String, String)>> = HashMap::new();
        let mut all_dirs = BTreeSet::new();
        let mut listing: HashMap<String, Vec<(String, Kind)>> = HashMap::new();
        let mut symlinks = HashMap::new();
        let mut submodules = BTreeSet::new();
        for entry in out.split(|&b| b == 0).filter(|e| !e.is_empty()) {
            // "<mode> SP <type> SP <oid> TAB <path>"
            let entry = String::from_utf8_lossy(entry);
            let Some((meta, path)) = entry.split_once('\t') else {
                continue;
            };
            let Some(path) = path.strip_prefix(prefix) else {
                continue;
            };
            let mut meta = meta.split(' ');
            let (mode, oid) = (meta.next().unwrap_or(""), meta.nth(1).unwrap_or(""));
            let (dir, name) = match path.rsplit_once('/') {
                Some((d, n)) => (d.to_owned(), n.to_owned()),
                None => (".".to_owned(), path.to_owned()),
            };
            let mut d = dir.as_str();
            loop {
                if !all_dirs.insert(d.to_owned()) {
                    break;
                }
                let (parent, child) = match d.rsplit_once('/') {
                    Some((parent, child)) => (parent, child),
                    None if d != "." => (".", d),
                    None => break,
                };
                listing
                    .entry(parent.to_owned())
                    .or_default()
                    .push((child.to_owned(), Kind::Dir));
                d = parent;
            }
            let kind = match mode {
                "120000" => {
                    symlinks.insert(path.to_owned(), oid.to_owned());
                    Kind::Symlink
                }
                "160000" => {
                    submodules.insert(path.to_owned());
                    Kind::Other
                }
                "100644" | "100755" => Kind::File,
                _ => Kind::Other,
            };
            listing
                .entry(dir.clone())
                .or_default()
                .push((name.clone(), kind));
            if mode == "100644" || mode == "100755" {
                dirs.entry(dir).or_default().push((name, oid.to_owned()));
            }
        }
        Ok(GitTree {
            dirs,
            all_dirs,
            listing,
            symlinks,
            submodules,
            cat: None,
            root: root.to_path_buf(),
            ahead: HashMap::new(),
        })
    }

    /// Whether `path` is a regular file of the tree.
    pub fn has_file(&self, path: &str) -> bool {
        self.oid(path).is_some()
    }

    fn oid(&self, path: &str) -> Option<&str> {
        let (dir, name) = path.rsplit_once('/').unwrap_or((".", path));
        self.dirs
            .get(dir)?
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, o)| o.as_str())
    }

    /// The content of a file, bounded by `limit` bytes.
    pub fn read_limited(&mut self, path: &str, limit: usize) -> Result<Vec<u8>, ModuleError> {
        let oid = self
            .oid(path)
            .ok_or_else(|| ModuleError {
                file: path.to_owned(),
                line: None,
                message: "not a file of the commit".into(),
            })?
            .to_owned();
        self.blob(path, &oid, limit)
    }

    /// The blob `oid` (read ahead, or through cat-file), `path` naming it in errors.
    fn blob(&mut self, path: &str, oid: &str, limit: usize) -> Result<Vec<u8>, ModuleError> {
        let err = |message: String| ModuleError {
            file: path.to_owned(),
            line: None,
            message,
        };
        let oid = oid.to_owned();
        if let Some(r) = self.ahead.remove(&oid) {
            return r.map_err(err);
        }
        if self.cat.is_none() {
            self.cat = Some(CatFile::start(&self.root).map_err(|e| err(e.detail))?);
        }
        let cat = self
            .cat
            .as_mut()
            .ok_or_else(|| err("git cat-file".into()))?;
        cat.read(&oid, limit).map_err(|m| {
            self.cat = None; // out of step after an error: start afresh next time
            err(m)
        })
    }
}

impl Tree for GitTree {
    fn entries(&mut self, dir: &str) -> Result<Option<Vec<(String, Kind)>>, ModuleError> {
        if !self.all_dirs.contains(dir) {
            return Ok(None);
        }
        Ok(Some(self.listing.get(dir).cloned().unwrap_or_default()))
    }

    fn files(&mut self, dir: &str) -> Result<Option<Vec<String>>, ModuleError> {
        if !self.all_dirs.contains(dir) {
            return Ok(None);
        }
        Ok(Some(
            self.dirs
                .get(dir)
                .map(|f| f.iter().map(|(n, _)| n.clone()).collect())
                .unwrap_or_default(),
        ))
    }

    fn read_link(&mut self, path: &str) -> Result<String, ModuleError> {
        let oid = self
            .symlinks
            .get(path)
            .cloned()
            .ok_or_else(|| ModuleError {
                file: path.to_owned(),
                line: None,
                message: "not a symbolic link of the commit".into(),
            })?;
        let target = self.blob(path, &oid, crate::modules::MAX_TF_FILE)?;
        Ok(String::from_utf8_lossy(&target).into_owned())
    }

    fn read(&mut self, path: &str) -> Result<Vec<u8>, ModuleError> {
        self.read_limited(path, crate::modules::MAX_TF_FILE)
    }

    fn content_key(&mut self, path: &str) -> Option<String> {
        self.oid(path).map(str::to_owned)
    }

    fn is_symlink(&mut self, path: &str) -> bool {
        self.symlinks.contains_key(path)
    }

    fn is_submodule(&mut self, path: &str) -> bool {
        self.submodules.contains(path)
    }

    fn is_checkout(&self) -> bool {
        false
    }

    fn prefetch(&mut self, paths: &[String]) {
        let mut oids: Vec<String> = paths
            .iter()
            .filter_map(|p| self.oid(p).map(str::to_owned))
            .filter(|o| !self.ahead.contains_key(o))
            .collect();
        oids.sort();
        oids.dedup();
        if oids.is_empty() {
            return;
        }
        if self.cat.is_none() {
            self.cat = CatFile::start(&self.root).ok();
        }
        let Some(cat) = self.cat.as_mut() else { return };
        match cat.read_many(&oids, crate::modules::MAX_TF_FILE) {
            Ok(blobs) => self.ahead.extend(oids.into_iter().zip(blobs)),
            Err(_) => self.cat = None, // out of step: reads fall back to one at a time
        }
    }
}
