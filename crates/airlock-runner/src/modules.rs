//! The one reader of a stack's module graph: `module` blocks parsed with a real HCL parser
//! (`.tf`) or JSON (`.tf.json`), local sources (`./`, `../`, and `.\`, `..\` as Terraform reads
//! them) followed transitively, over any
//! [`Tree`] (the checkout on disk for fingerprints, a git commit for change detection), so the
//! fingerprint's input files and `airlock ci affected` follow the same graph.
//!
//! Registry, git, http and every other source are not local and not followed. A local source
//! that leaves the repository root, names a directory that does not exist, or closes a cycle is
//! an error naming the file and line.
//!
//! A directory's input files are every file under it (what `file()` and `templatefile()` read
//! too), not only configuration; a symbolic link to a file inside the root is followed (link and
//! target are inputs), any other link is an error.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::rc::Rc;

use airlock_core::inputs;
use hcl_edit::expr::Expression;
use hcl_edit::structure::{BlockLabel, Structure};
use hcl_edit::Span;

/// Largest configuration file whose module blocks are read (Terraform files are small; this
/// bounds the parser's memory on a hostile checkout).
pub const MAX_TF_FILE: usize = 16 << 20;
/// Deepest bracket nesting a `.tf` file may have before it is parsed (the parser recurses).
const MAX_NESTING: usize = 256;
/// Most module directories one stack may reach.
pub const MAX_MODULE_DIRS: usize = 10_000;
/// Most files under one directory (a stack's or a module's), each an input.
pub const MAX_STACK_FILES: usize = inputs::MAX_FILES;

/// One `module` block's `source`, with where it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleCall {
    /// The `source` string as written.
    pub source: String,
    /// 1-based line of the `source` attribute (0 in `.tf.json`, which has no line positions).
    pub line: usize,
}

impl ModuleCall {
    /// The local path the source names ([`local_path`]).
    pub fn local_path(&self) -> Option<String> {
        local_path(&self.source)
    }

    /// Whether the source is a local path ([`local_path`]), the only kind followed.
    pub fn is_local(&self) -> bool {
        self.local_path().is_some()
    }
}

/// The local path a module `source` names, `/`-separated, or `None` for any other source. As
/// in Terraform (`addrs.ParseModuleSource`) a local source starts with `./`, `../`, `.\` or
/// `..\`, and every `\` in it is a `/`.
pub fn local_path(source: &str) -> Option<String> {
    ["./", "../", ".\\", "..\\"]
        .iter()
        .any(|p| source.starts_with(p))
        .then(|| source.replace('\\', "/"))
}

/// Why a stack's module graph could not be read. Displays as `file:line: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleError {
    /// Path of the file at fault, relative to the repository root.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for ModuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) if l > 0 => write!(f, "{}:{}: {}", self.file, l, self.message),
            _ => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for ModuleError {}

fn error(file: &str, line: Option<usize>, message: impl Into<String>) -> ModuleError {
    ModuleError {
        file: file.to_owned(),
        line,
        message: message.into(),
    }
}

/// The `module` blocks' sources of one configuration file (`.tf` or `.tf.json` by its name).
/// `file` names it in errors. Blocks without a literal `source` are skipped: Terraform itself
/// rejects them, and they call nothing local.
pub fn module_calls(file: &str, content: &[u8]) -> Result<Vec<ModuleCall>, ModuleError> {
    if content.len() > MAX_TF_FILE {
        return Err(error(
            file,
            None,
            format!(
                "{} bytes is more than the {} MiB a configuration file may have",
                content.len(),
                MAX_TF_FILE >> 20
            ),
        ));
    }
    let text = std::str::from_utf8(content)
        .map_err(|_| error(file, None, "not UTF-8 text, as Terraform requires"))?;
    if file.ends_with(".tf.json") {
        return json_module_calls(file, text);
    }
    if let Some(line) = too_deep(text) {
        return Err(error(
            file,
            Some(line),
            format!("nested more than {MAX_NESTING} levels deep"),
        ));
    }
    let body = hcl_edit::parser::parse_body(text).map_err(|e| {
        error(
            file,
            Some(e.location().line()),
            format!("invalid HCL: {}", e.message()),
        )
    })?;
    let newlines: Vec<usize> = newline_offsets(text);
    let line_of = |span: Option<std::ops::Range<usize>>| {
        span.map(|r| newlines.partition_point(|&n| n < r.start) + 1)
            .unwrap_or(0)
    };
    let mut out = Vec::new();
    for s in body.iter() {
        let Structure::Block(block) = s else { continue };
        if block.ident.as_str() != "module" {
            continue;
        }
        let name = match block.labels.first() {
            Some(BlockLabel::String(s)) => s.value().to_string(),
            Some(BlockLabel::Ident(i)) => i.as_str().to_string(),
            None => continue,
        };
        let Some(attr) = block.body.get_attribute("source") else {
            continue;
        };
        let source = match &attr.value {
            Expression::String(s) => s.value().to_string(),
            _ => {
                return Err(error(
                    file,
                    Some(line_of(attr.span())),
                    format!(
                        "module \"{name}\": `source` must be a string literal, as Terraform \
                         requires"
                    ),
                ))
            }
        };
        out.push(ModuleCall {
            source,
            line: line_of(attr.span()),
        });
    }
    Ok(out)
}

/// Byte offsets of every newline, to turn a span into a line without rescanning the text.
fn newline_offsets(text: &str) -> Vec<usize> {
    text.bytes()
        .enumerate()
        .filter(|&(_, b)| b == b'\n')
        .map(|(i, _)| i)
        .collect()
}

/// The line where bracket nesting first exceeds [`MAX_NESTING`] (counting every bracket, in
/// strings too: conservative, and no real configuration comes close).
pub(crate) fn too_deep(text: &str) -> Option<usize> {
    let (mut depth, mut line) = (0usize, 1usize);
    for b in text.bytes() {
        match b {
            b'{' | b'[' | b'(' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Some(line);
                }
            }
            b'}' | b']' | b')' => depth = depth.saturating_sub(1),
            b'\n' => line += 1,
            _ => {}
        }
    }
    None
}

/// `{"module": {"NAME": {"source": "..."}}}`; a block may also be a list of objects.
fn json_module_calls(file: &str, text: &str) -> Result<Vec<ModuleCall>, ModuleError> {
    // serde_json refuses nesting deeper than 128 itself.
    let v: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| error(file, Some(e.line()), format!("invalid JSON: {e}")))?;
    let mut out = Vec::new();
    let Some(modules) = v.get("module") else {
        return Ok(out);
    };
    let blocks: Vec<&serde_json::Value> = match modules {
        serde_json::Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    for block in blocks {
        let Some(named) = block.as_object() else {
            return Err(error(
                file,
                None,
                "`module` must be an object of named blocks",
            ));
        };
        for (name, body) in named {
            let bodies: Vec<&serde_json::Value> = match body {
                serde_json::Value::Array(items) => items.iter().collect(),
                other => vec![other],
            };
            for b in bodies {
                match b.get("source") {
                    None => {}
                    Some(serde_json::Value::String(s)) => out.push(ModuleCall {
                        source: s.clone(),
                        line: 0,
                    }),
                    Some(_) => {
                        return Err(error(
                            file,
                            None,
                            format!("module \"{name}\": `source` must be a string"),
                        ))
                    }
                }
            }
        }
    }
    Ok(out)
}

/// A Terraform configuration file, whose `module` blocks are read.
pub use airlock_core::inputs::is_config_file;

/// A variable file (`*.tfvars`, `*.tfvars.json`).
pub fn is_var_file(name: &str) -> bool {
    name.ends_with(".tfvars") || name.ends_with(".tfvars.json")
}

/// What a directory entry is (symbolic links are not followed when listing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// Anything else: a git submodule, a FIFO, a socket, a device.
    Other,
}

/// A directory tree to read a stack from. Paths are relative to the repository root,
/// `/`-separated, normalized (`.` is the root).
pub trait Tree {
    /// The entries directly in `dir` (name and kind), or `None` when `dir` is not a directory.
    fn entries(&mut self, dir: &str) -> Result<Option<Vec<(String, Kind)>>, ModuleError>;
    /// Names of the regular files directly in `dir`, or `None` when `dir` is not a directory.
    fn files(&mut self, dir: &str) -> Result<Option<Vec<String>>, ModuleError> {
        Ok(self.entries(dir)?.map(|e| {
            e.into_iter()
                .filter(|(_, k)| *k == Kind::File)
                .map(|(n, _)| n)
                .collect()
        }))
    }
    /// The content of a file listed by [`Tree::files`].
    fn read(&mut self, path: &str) -> Result<Vec<u8>, ModuleError>;
    /// The target a symbolic link names, as written in the link.
    fn read_link(&mut self, path: &str) -> Result<String, ModuleError>;
    /// A key identifying the content of `path` for caching its parse (e.g. a git blob id), if
    /// the tree has one.
    fn content_key(&mut self, _path: &str) -> Option<String> {
        None
    }
    /// A hint that these files will be read soon (a tree may read them in one batch).
    fn prefetch(&mut self, _paths: &[String]) {}
    /// Whether `path` is a symbolic link (a module directory through one is refused: git stores
    /// a link as a link, so a checkout and a commit agree only on real directories).
    fn is_symlink(&mut self, path: &str) -> bool;
    /// Whether `path` is a git submodule of a commit (a checkout has its files; the commit only
    /// names the submodule's commit).
    fn is_submodule(&mut self, _path: &str) -> bool {
        false
    }
    /// Whether this is a checkout, where `terraform init` writes a `.terraform` directory (left
    /// out of the inputs). In a commit such a directory is an error: files there could be read
    /// with `file()` without being inputs.
    fn is_checkout(&self) -> bool {
        true
    }
}

/// What one directory contributes: its input files and the local module directories it calls.
#[derive(Debug)]
struct DirInfo {
    /// Input files (paths relative to the root, sorted): every regular file under the directory,
    /// its subdirectories included, except a `.terraform` directory directly in it; for a
    /// symbolic link to a file, the link and its target.
    files: Vec<String>,
    /// Local calls: (target directory, file, line), in file then line order, targets unique.
    calls: Vec<(String, String, usize)>,
}

/// A stack's inputs found by [`Walker::stack`]: each input file (relative to the root) with the
/// module directories leading from the stack to it (empty for the stack's own files).
pub type StackFiles = BTreeMap<String, Vec<String>>;

/// Walks stacks' module graphs over one [`Tree`], reading each directory once (many stacks
/// call the same modules). A parse cache keyed by content can be shared between walkers.
pub struct Walker<'t, T: Tree> {
    tree: &'t mut T,
    dirs: HashMap<String, Rc<DirInfo>>,
    parsed: &'t mut HashMap<String, Rc<Vec<ModuleCall>>>,
}

impl<'t, T: Tree> Walker<'t, T> {
    /// A walker over `tree`; `parsed` caches module calls by [`Tree::content_key`].
    pub fn new(tree: &'t mut T, parsed: &'t mut HashMap<String, Rc<Vec<ModuleCall>>>) -> Self {
        Walker {
            tree,
            dirs: HashMap::new(),
            parsed,
        }
    }

    /// Whether `dir` is a directory of the tree.
    pub fn is_dir(&mut self, dir: &str) -> Result<bool, ModuleError> {
        Ok(self.tree.files(dir)?.is_some())
    }

    fn dir(&mut self, dir: &str) -> Result<Option<Rc<DirInfo>>, ModuleError> {
        if let Some(d) = self.dirs.get(dir) {
            return Ok(Some(d.clone()));
        }
        let Some(mut entries) = self.tree.entries(dir)? else {
            return Ok(None);
        };
        entries.sort();
        // Configuration files Terraform loads from the directory: regular files, and symbolic
        // links to files (read at their target, their module sources relative to `dir`).
        let mut configs: Vec<(String, String)> = Vec::new();
        for (name, kind) in entries.iter().filter(|(n, _)| is_config_file(n)) {
            let path = inputs::join(dir, name);
            match kind {
                Kind::File => configs.push((path.clone(), path)),
                Kind::Symlink => {
                    let target = self.follow(&path)?;
                    configs.push((path, target));
                }
                Kind::Dir | Kind::Other => {}
            }
        }
        let mut calls: Vec<(String, String, usize)> = Vec::new();
        for (path, content_path) in &configs {
            let path = path.clone();
            let key = self.tree.content_key(content_path);
            let parsed = match key.as_ref().and_then(|k| self.parsed.get(k)) {
                Some(p) => p.clone(),
                None => {
                    let content = self.tree.read(content_path)?;
                    let p = Rc::new(module_calls(&path, &content)?);
                    if let Some(k) = key {
                        self.parsed.insert(k, p.clone());
                    }
                    p
                }
            };
            for (call, local) in parsed.iter().filter_map(|c| Some((c, c.local_path()?))) {
                let target = inputs::join(dir, &local);
                if target == ".." || target.starts_with("../") {
                    return Err(error(
                        &path,
                        Some(call.line),
                        format!(
                            "module source \"{}\" leaves the repository root (the directory of \
                             airlock.hcl); keep every module the stacks call inside it",
                            call.source
                        ),
                    ));
                }
                if !calls.iter().any(|(t, _, _)| *t == target) {
                    calls.push((target, path.clone(), call.line));
                }
            }
        }
        let files = self.files_under(dir, entries)?;
        let info = Rc::new(DirInfo { files, calls });
        self.dirs.insert(dir.to_owned(), info.clone());
        Ok(Some(info))
    }

    /// Every input file under `dir` (whose own entries are `top`): regular files at any depth,
    /// except a `.terraform` directory directly in `dir` (what `terraform init` writes there)
    /// and any `.git` entry (a checkout's repository metadata, absent from a commit); a symbolic
    /// link to a file counts as itself and its target. Anything else (a link to a directory, a
    /// submodule, a FIFO) is an error: a file Terraform may read that the inputs cannot hold.
    fn files_under(
        &mut self,
        dir: &str,
        top: Vec<(String, Kind)>,
    ) -> Result<Vec<String>, ModuleError> {
        let mut out = Vec::new();
        let mut pending = vec![(dir.to_owned(), top)];
        while let Some((d, entries)) = pending.pop() {
            for (name, kind) in entries {
                let path = inputs::join(&d, &name);
                if d == dir && name == ".terraform" && kind == Kind::Dir {
                    if self.tree.is_checkout() {
                        continue;
                    }
                    return Err(error(
                        &path,
                        None,
                        "committed, but it is what `terraform init` writes, left out of a run's \
                         inputs: remove it from the repository (`git rm -r --cached`) and list \
                         it in .gitignore",
                    ));
                }
                if name == ".git" {
                    continue;
                }
                match kind {
                    Kind::File => out.push(path),
                    Kind::Dir => {
                        if let Some(sub) = self.tree.entries(&path)? {
                            pending.push((path, sub));
                        }
                    }
                    Kind::Symlink => {
                        let target = self.follow(&path)?;
                        out.push(path);
                        out.push(target);
                    }
                    Kind::Other => return Err(neither_file_nor_directory(&path)),
                }
                if out.len() > MAX_STACK_FILES {
                    return Err(error(
                        dir,
                        None,
                        format!(
                            "more than {MAX_STACK_FILES} files under the directory, each an input \
                             of the stack; move what the configuration does not read elsewhere"
                        ),
                    ));
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// The input files at `path` (relative to the root) by the rules of [`Walker::stack`]'s
    /// directories, module calls not read: a file itself, a symbolic link to a file with its
    /// target, or every file under a directory; `Ok(None)` when nothing is there. For what a run
    /// lists besides its stack: `airlock.hcl` and `policy/`.
    pub fn files_at(&mut self, path: &str) -> Result<Option<Vec<String>>, ModuleError> {
        let path = inputs::join(".", path);
        let (parent, name) = path.rsplit_once('/').unwrap_or((".", &path));
        let kind = self
            .tree
            .entries(parent)?
            .and_then(|e| e.into_iter().find(|(n, _)| n == name).map(|(_, k)| k));
        match kind {
            None => Ok(None),
            Some(Kind::File) => Ok(Some(vec![path])),
            Some(Kind::Symlink) => {
                let target = self.follow(&path)?;
                Ok(Some(vec![path, target]))
            }
            Some(Kind::Dir) => {
                let entries = self.tree.entries(&path)?.unwrap_or_default();
                self.files_under(&path, entries).map(Some)
            }
            Some(Kind::Other) => Err(neither_file_nor_directory(&path)),
        }
    }

    /// The file the symbolic link `link` points to, which must be a regular file inside the
    /// repository root reached without another link (so the checkout and the commit agree on
    /// it, and it is an input like any other).
    fn follow(&mut self, link: &str) -> Result<String, ModuleError> {
        let target = self.tree.read_link(link)?;
        let refuse = |why: String| {
            error(
                link,
                None,
                format!(
                    "a symbolic link to {target:?}, {why}; airlock follows a link only to a \
                     file inside the repository root: replace the link by what it names"
                ),
            )
        };
        if target.starts_with('/') {
            return Err(refuse("an absolute path".into()));
        }
        let parent = link.rsplit_once('/').map_or(".", |(p, _)| p);
        let resolved = inputs::join(parent, &target);
        if resolved == ".." || resolved.starts_with("../") || resolved == "." {
            return Err(refuse("which leaves the repository root".into()));
        }
        if resolved
            .split('/')
            .any(|seg| seg == ".git" || seg == ".terraform")
        {
            return Err(refuse(
                "inside .git or .terraform, which are not in a commit's files".into(),
            ));
        }
        let mut prefix = String::new();
        for seg in resolved.split('/') {
            prefix = inputs::join(&prefix, seg);
            if self.tree.is_symlink(&prefix) {
                return Err(refuse(format!("through {prefix}, itself a symbolic link")));
            }
        }
        let (dir, name) = resolved.rsplit_once('/').unwrap_or((".", &resolved));
        let is_file = self
            .tree
            .entries(dir)?
            .is_some_and(|e| e.iter().any(|(n, k)| n == name && *k == Kind::File));
        if !is_file {
            return Err(refuse(format!("{resolved}, which is not a file")));
        }
        Ok(resolved)
    }

    /// Reads the directories of many stacks and of the modules they call, level by level, each
    /// level's configuration files prefetched in one batch. Errors are left for [`Walker::stack`]
    /// to report with the stack they belong to.
    pub fn preload(&mut self, stack_dirs: &[&str]) {
        let mut level: Vec<String> = stack_dirs.iter().map(|d| inputs::join(".", d)).collect();
        while !level.is_empty() && self.dirs.len() < MAX_MODULE_DIRS {
            level.sort();
            level.dedup();
            level.retain(|d| !self.dirs.contains_key(d));
            let mut wanted = Vec::new();
            for d in &level {
                if let Ok(Some(names)) = self.tree.files(d) {
                    for n in names.iter().filter(|n| is_config_file(n)) {
                        let path = inputs::join(d, n);
                        let cached = self
                            .tree
                            .content_key(&path)
                            .is_some_and(|k| self.parsed.contains_key(&k));
                        if !cached {
                            wanted.push(path);
                        }
                    }
                }
            }
            self.tree.prefetch(&wanted);
            let mut next = Vec::new();
            for d in &level {
                if let Ok(Some(info)) = self.dir(d) {
                    next.extend(info.calls.iter().map(|(t, _, _)| t.clone()));
                }
            }
            next.retain(|d| !self.dirs.contains_key(d));
            level = next;
        }
    }

    /// The input files of the stack whose root module is `dir` (relative to the root): every
    /// file under it and under every local module directory it calls, transitively (what
    /// `file()` and `templatefile()` read, not only configuration), as [`DirInfo`] says.
    /// `Ok(None)` when `dir` is not a directory.
    pub fn stack(&mut self, dir: &str) -> Result<Option<StackFiles>, ModuleError> {
        let start = inputs::join(".", dir);
        let Some(root) = self.dir(&start)? else {
            return Ok(None);
        };
        // Depth-first over directories, iterative, to find cycles: `path` holds (dir, info, next
        // call index); `reached` is every directory found.
        let mut reached: std::collections::BTreeSet<String> = [start.clone()].into();
        let mut path: Vec<(String, Rc<DirInfo>, usize)> = vec![(start.clone(), root, 0)];
        while let Some((_, info, next)) = path.last_mut() {
            let Some((target, file, line)) = info.calls.get(*next).cloned() else {
                path.pop();
                continue;
            };
            *next += 1;
            if let Some(p) = path.iter().position(|(d, _, _)| *d == target) {
                let mut cycle: Vec<&str> = path
                    .get(p..)
                    .unwrap_or_default()
                    .iter()
                    .map(|(d, _, _)| d.as_str())
                    .collect();
                cycle.push(&target);
                return Err(error(
                    &file,
                    Some(line),
                    format!(
                        "module cycle: {}; a module cannot call itself, directly or through \
                         others",
                        cycle.join(" -> ")
                    ),
                ));
            }
            if reached.contains(&target) {
                continue; // reached before by another path (a diamond, not a cycle)
            }
            if reached.len() >= MAX_MODULE_DIRS {
                return Err(error(
                    &file,
                    Some(line),
                    format!("the stack reaches more than {MAX_MODULE_DIRS} module directories"),
                ));
            }
            let mut prefix = String::new();
            for seg in target.split('/') {
                prefix = inputs::join(&prefix, seg);
                if self.tree.is_symlink(&prefix) {
                    return Err(error(
                        &file,
                        Some(line),
                        format!(
                            "module directory {target}: {prefix} is a symbolic link, which airlock \
                             does not follow (a commit stores the link, not the files); point \
                             `source` at the real directory"
                        ),
                    ));
                }
                if self.tree.is_submodule(&prefix) {
                    return Err(error(
                        &file,
                        Some(line),
                        format!(
                            "module directory {target}: {prefix} is a git submodule, whose files \
                             change detection cannot read from the commit; vendor the module into \
                             the repository or call it with a git source"
                        ),
                    ));
                }
            }
            let Some(info) = self.dir(&target)? else {
                return Err(error(
                    &file,
                    Some(line),
                    format!(
                        "module directory {target} does not exist; fix the module's `source` \
                         or add the module"
                    ),
                ));
            };
            reached.insert(target.clone());
            path.push((target, info, 0));
        }
        // Breadth-first from the stack: each directory's shortest module chain.
        let mut via: BTreeMap<String, Vec<String>> = BTreeMap::new();
        via.insert(start.clone(), Vec::new());
        let mut queue = std::collections::VecDeque::from([start.clone()]);
        let mut out = StackFiles::new();
        while let Some(dir) = queue.pop_front() {
            let (Some(info), Some(chain)) = (self.dirs.get(&dir).cloned(), via.get(&dir).cloned())
            else {
                continue;
            };
            for f in &info.files {
                out.insert(f.clone(), chain.clone());
            }
            for (target, _, _) in &info.calls {
                if !via.contains_key(target) {
                    let mut c = chain.clone();
                    c.push(target.clone());
                    via.insert(target.clone(), c);
                    queue.push_back(target.clone());
                }
            }
            if out.len() > MAX_STACK_FILES {
                return Err(error(
                    &start,
                    None,
                    format!(
                        "the stack and its modules hold more than {MAX_STACK_FILES} files, each \
                         an input; move what the configuration does not read elsewhere"
                    ),
                ));
            }
        }
        Ok(Some(out))
    }
}

/// Why a submodule, FIFO, socket or device under an input directory is refused.
fn neither_file_nor_directory(path: &str) -> ModuleError {
    error(
        path,
        None,
        "neither a file nor a directory (a git submodule, a FIFO, a socket or a device), so it \
         cannot be a reviewed input although Terraform may read it; vendor its files into the \
         repository or remove it",
    )
}

/// At most `limit` bytes of the file at `path`, counted as they are read: a length from
/// metadata is not trusted (procfs files and devices say 0).
pub(crate) fn read_at_most(path: &std::path::Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    std::fs::File::open(path)?
        .take(limit)
        .read_to_end(&mut out)?;
    Ok(out)
}

/// The checkout on disk under `root`.
pub struct FsTree<'a> {
    /// Repository root.
    pub root: &'a std::path::Path,
}

impl Tree for FsTree<'_> {
    fn entries(&mut self, dir: &str) -> Result<Option<Vec<(String, Kind)>>, ModuleError> {
        let abs = self.root.join(dir);
        let io = |e: std::io::Error| error(dir, None, format!("cannot list the directory: {e}"));
        let entries = match std::fs::read_dir(&abs) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let mut out = Vec::new();
        for e in entries {
            let e = e.map_err(io)?;
            let t = e.file_type().map_err(io)?;
            let kind = if t.is_file() {
                Kind::File
            } else if t.is_dir() {
                Kind::Dir
            } else if t.is_symlink() {
                Kind::Symlink
            } else {
                Kind::Other
            };
            out.push((e.file_name().to_string_lossy().into_owned(), kind));
        }
        Ok(Some(out))
    }

    fn read(&mut self, path: &str) -> Result<Vec<u8>, ModuleError> {
        // One byte past the limit, so `module_calls` refuses the file as too large.
        read_at_most(&self.root.join(path), MAX_TF_FILE as u64 + 1)
            .map_err(|e| error(path, None, format!("cannot read: {e}")))
    }

    fn read_link(&mut self, path: &str) -> Result<String, ModuleError> {
        std::fs::read_link(self.root.join(path))
            .map(|t| t.to_string_lossy().replace('\\', "/"))
            .map_err(|e| error(path, None, format!("cannot read the symbolic link: {e}")))
    }

    fn is_symlink(&mut self, path: &str) -> bool {
        std::fs::symlink_metadata(self.root.join(path)).is_ok_and(|m| m.file_type().is_symlink())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An in-memory tree: path -> content.
    struct Mem(BTreeMap<String, String>);

    impl Tree for Mem {
        fn entries(&mut self, dir: &str) -> Result<Option<Vec<(String, Kind)>>, ModuleError> {
            let prefix = if dir == "." {
                String::new()
            } else {
                format!("{dir}/")
            };
            let mut found = false;
            let mut out = Vec::new();
            for (p, c) in &self.0 {
                if let Some(rest) = p.strip_prefix(&prefix) {
                    found = true;
                    let entry = match rest.split_once('/') {
                        Some((d, _)) => (d.to_owned(), Kind::Dir),
                        None if c.starts_with("SYMLINK") => (rest.to_owned(), Kind::Symlink),
                        None if c == "FIFO" => (rest.to_owned(), Kind::Other),
                        None => (rest.to_owned(), Kind::File),
                    };
                    if !out.contains(&entry) {
                        out.push(entry);
                    }
                }
            }
            Ok(found.then_some(out))
        }
        fn read(&mut self, path: &str) -> Result<Vec<u8>, ModuleError> {
            Ok(self.0.get(path).cloned().unwrap_or_default().into_bytes())
        }
        fn read_link(&mut self, path: &str) -> Result<String, ModuleError> {
            let c = self.0.get(path).cloned().unwrap_or_default();
            Ok(c.strip_prefix("SYMLINK:").unwrap_or_default().to_owned())
        }
        fn is_symlink(&mut self, path: &str) -> bool {
            self.0.get(path).is_some_and(|c| c.starts_with("SYMLINK"))
        }
    }

    fn mem(files: &[(&str, &str)]) -> Mem {
        Mem(files
            .iter()
            .map(|(p, c)| (p.to_string(), c.to_string()))
            .collect())
    }

    fn walk(t: &mut Mem, dir: &str) -> Result<Option<StackFiles>, ModuleError> {
        let mut cache = HashMap::new();
        Walker::new(t, &mut cache).stack(dir)
    }

    /// Each file of a walk with the module directories it is in, as borrowed text.
    fn listed(files: &StackFiles) -> Vec<(&str, Vec<&str>)> {
        files
            .iter()
            .map(|(p, v)| (p.as_str(), v.iter().map(String::as_str).collect()))
            .collect()
    }

    #[test]
    fn reads_module_blocks_not_lines() {
        let tf = r#"
# source = "./commented"
locals { source = "./not-a-module" }
module "a" {
  source = "../a"
}
module "b" { source = "./b" }
module "remote" { source = "hashicorp/consul/aws" }
module "git" { source = "git::https://example.com/x.git" }
module "http" { source = "https://example.com/x.zip" }
module "dotslash_in_middle" { source = "github.com/x/y//./z" }
module "heredoc" {
  description = <<EOT
  source = "./inside-heredoc"
EOT
  source = "./c"
}
"#;
        let calls = module_calls("main.tf", tf.as_bytes()).unwrap();
        let local: Vec<(&str, usize)> = calls
            .iter()
            .filter(|c| c.is_local())
            .map(|c| (c.source.as_str(), c.line))
            .collect();
        assert_eq!(local, [("../a", 5), ("./b", 7), ("./c", 16)]);
        assert_eq!(calls.len(), 7);
    }

    #[test]
    fn json_configuration() {
        let j = r#"{"module": {"a": {"source": "./a"}, "b": [{"source": "../b"}], "r": {"source": "x/y/z"}}}"#;
        let calls = module_calls("main.tf.json", j.as_bytes()).unwrap();
        let s: Vec<&str> = calls.iter().map(|c| c.source.as_str()).collect();
        assert_eq!(s, ["./a", "../b", "x/y/z"]);
        assert!(module_calls("x.tf.json", br#"{"module": {"a": {"source": 1}}}"#).is_err());
        assert!(module_calls("x.tf.json", br#"{"module": "x"}"#).is_err());
        assert!(module_calls("x.tf.json", b"{").is_err());
        let deep = "[".repeat(10_000);
        assert!(module_calls("x.tf.json", deep.as_bytes()).is_err());
    }

    #[test]
    fn hostile_files_are_errors_not_crashes() {
        let cases: Vec<(String, &str)> = vec![
            (
                "module \"a\" {\n  source = \n}\n".into(),
                "main.tf:2: invalid HCL",
            ),
            ("module \"a\" {\n".into(), "main.tf:1: invalid HCL"),
            (
                "module \"a\" {\n  source = \"${var.x}/m\"\n}\n".into(),
                "main.tf:2: module \"a\": `source` must be a string literal",
            ),
            (
                "module \"a\" {\n  source = var.x\n}\n".into(),
                "main.tf:2: module \"a\": `source` must be a string literal",
            ),
            (
                format!("x = {}1{}\n", "[".repeat(100_000), "]".repeat(100_000)),
                "main.tf:1: nested more than 256 levels deep",
            ),
            (
                format!("x = {}\n", "(".repeat(300)),
                "main.tf:1: nested more than 256 levels deep",
            ),
        ];
        for (src, want) in cases {
            let e = module_calls("main.tf", src.as_bytes()).unwrap_err();
            assert!(e.to_string().starts_with(want), "{e} (wanted {want})");
        }
        let e = module_calls("main.tf", &[0xff, 0xfe]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "main.tf: not UTF-8 text, as Terraform requires"
        );
        let huge = vec![b'#'; MAX_TF_FILE + 1];
        assert!(module_calls("main.tf", &huge)
            .unwrap_err()
            .message
            .contains("MiB"));
        // Big but legal: 20,000 module blocks parse.
        let many: String = (0..20_000)
            .map(|i| format!("module \"m{i}\" {{ source = \"./m{i}\" }}\n"))
            .collect();
        assert_eq!(
            module_calls("main.tf", many.as_bytes()).unwrap().len(),
            20_000
        );
        // Nesting within the limit is fine.
        let ok = format!("x = {}1{}\n", "[".repeat(50), "]".repeat(50));
        assert!(module_calls("main.tf", ok.as_bytes()).is_ok());
        // No module blocks, odd but valid HCL.
        for src in [
            "",
            "module {}\n",
            "module \"x\" {}\n",
            "resource \"a\" \"b\" { source = \"./x\" }\n",
        ] {
            let calls = module_calls("main.tf", src.as_bytes()).unwrap();
            assert!(calls.iter().all(|c| !c.is_local()), "{src}");
        }
    }

    /// 3,000 reproducible mutations of each seed: the reader answers (calls or an error), never
    /// panics or hangs.
    #[test]
    fn reader_survives_mutations() {
        let seeds: [(&str, &[u8]); 2] = [
            (
                "main.tf",
                b"module \"a\" {\n  source = \"../a\"\n  x = [1, {b = \"${var.c}\"}]\n}\n\
                  locals { h = <<EOT\nsource = \"./x\"\nEOT\n}\n# c\n/* d */ module \"b\" { source = \"./b\" }\n",
            ),
            (
                "main.tf.json",
                br#"{"module": {"a": {"source": "./a"}, "b": [{"source": "../b", "n": [1, {"x": null}]}]}}"#,
            ),
        ];
        let interesting = b"{}[]()\"=\n$%<>#/*\\.:,~!?";
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for (name, seed) in seeds {
            for _ in 0..3000 {
                let mut b = seed.to_vec();
                for _ in 0..=(next() % 4) {
                    let len = b.len().max(1) as u64;
                    let at = (next() % len) as usize;
                    match next() % 4 {
                        0 if !b.is_empty() => b[at] = interesting[(next() % 20) as usize],
                        1 => b.insert(at.min(b.len()), interesting[(next() % 20) as usize]),
                        2 if !b.is_empty() => {
                            let end = (at + (next() % 8) as usize).min(b.len());
                            b.drain(at..end);
                        }
                        _ => {
                            let end = (at + (next() % 16) as usize).min(b.len());
                            let piece = b[at..end].to_vec();
                            b.splice(at..at, piece);
                        }
                    }
                }
                let _ = module_calls(name, &b);
            }
        }
    }

    #[test]
    fn walks_transitive_local_modules_with_their_chain() {
        let mut t = mem(&[
            ("stacks/app/main.tf", "module \"net\" { source = \"../../modules/net\" }\nmodule \"r\" { source = \"terraform-aws-modules/vpc/aws\" }"),
            ("stacks/app/prod.tfvars", "x = 1"),
            ("stacks/app/README.md", "docs"),
            ("stacks/app/.terraform.lock.hcl", "# lock"),
            ("stacks/app/.terraform/providers/p", "what terraform init wrote"),
            ("stacks/app/.git", "gitdir: elsewhere"),
            ("stacks/app/sub/user_data.tpl", "read by templatefile()"),
            ("stacks/app/sub/.terraform/kept", "not directly in the stack's directory"),
            ("modules/net/main.tf", "module \"sub\" { source = \"./subnet\" }\nmodule \"tags\" { source = \"../tags\" }"),
            ("modules/net/subnet/main.tf", "module \"tags\" { source = \"../../tags\" }"),
            ("modules/tags/main.tf.json", "{}"),
        ]);
        let files = walk(&mut t, "stacks/app").unwrap().unwrap();
        let got = listed(&files);
        assert_eq!(
            got,
            [
                ("modules/net/main.tf", vec!["modules/net"]),
                (
                    "modules/net/subnet/main.tf",
                    vec!["modules/net", "modules/net/subnet"]
                ),
                (
                    "modules/tags/main.tf.json",
                    vec!["modules/net", "modules/tags"]
                ),
                ("stacks/app/.terraform.lock.hcl", vec![]),
                ("stacks/app/README.md", vec![]),
                ("stacks/app/main.tf", vec![]),
                ("stacks/app/prod.tfvars", vec![]),
                ("stacks/app/sub/.terraform/kept", vec![]),
                ("stacks/app/sub/user_data.tpl", vec![]),
            ]
        );
        assert!(walk(&mut t, "stacks/nope").unwrap().is_none());
    }

    /// Terraform takes `.\` and `..\` as local sources and reads every `\` as `/`
    /// (`addrs.ParseModuleSource`), so such a module is an input like any other.
    #[test]
    fn backslash_local_sources_are_followed_as_terraform_normalizes_them() {
        let mut t = mem(&[
            (
                "stacks/app/main.tf",
                r#"module "net" { source = "..\\..\\modules\\net" }"#,
            ),
            (
                "stacks/app/more.tf.json",
                r#"{"module": {"x": {"source": ".\\x"}}}"#,
            ),
            ("stacks/app/x/main.tf", ""),
            (
                "modules/net/main.tf",
                r#"module "sub" { source = ".\\sub/deeper" }"#,
            ),
            ("modules/net/sub/deeper/main.tf", ""),
        ]);
        let files = walk(&mut t, "stacks/app").unwrap().unwrap();
        let got = listed(&files);
        assert_eq!(
            got,
            [
                ("modules/net/main.tf", vec!["modules/net"]),
                (
                    "modules/net/sub/deeper/main.tf",
                    vec!["modules/net", "modules/net/sub/deeper"]
                ),
                ("stacks/app/main.tf", vec![]),
                ("stacks/app/more.tf.json", vec![]),
                ("stacks/app/x/main.tf", vec!["stacks/app/x"]),
            ]
        );
        let e = walk(
            &mut mem(&[("s/main.tf", r#"module "up" { source = "..\\..\\out" }"#)]),
            "s",
        )
        .unwrap_err();
        assert!(e.to_string().contains("leaves the repository root"), "{e}");
    }

    #[test]
    fn cycles_escapes_and_missing_modules_are_errors() {
        let mut t = mem(&[
            (
                "stacks/a/main.tf",
                "module \"x\" {\n  source = \"../../modules/x\"\n}\n",
            ),
            ("modules/x/main.tf", "module \"y\" { source = \"../y\" }"),
            ("modules/y/main.tf", "\nmodule \"x\" { source = \"../x\" }"),
        ]);
        let e = walk(&mut t, "stacks/a").unwrap_err();
        assert_eq!(
            e.to_string(),
            "modules/y/main.tf:2: module cycle: modules/x -> modules/y -> modules/x; a module \
             cannot call itself, directly or through others"
        );
        let mut t = mem(&[("stacks/a/main.tf", "module \"me\" { source = \"./\" }")]);
        assert!(walk(&mut t, "stacks/a")
            .unwrap_err()
            .message
            .contains("module cycle: stacks/a -> stacks/a"));
        let mut t = mem(&[("a/main.tf", "module \"up\" { source = \"../../outside\" }")]);
        let e = walk(&mut t, "a").unwrap_err();
        assert!(e.message.contains("leaves the repository root"), "{e}");
        let mut t = mem(&[("main.tf", "module \"up\" { source = \"../x\" }")]);
        assert!(walk(&mut t, ".").unwrap_err().message.contains("leaves"));
        let mut t = mem(&[("a/main.tf", "module \"m\" {\n source = \"./gone\"\n}")]);
        assert_eq!(
            walk(&mut t, "a").unwrap_err().to_string(),
            "a/main.tf:2: module directory a/gone does not exist; fix the module's `source` or \
             add the module"
        );
        // A module directory through a symbolic link is refused, in any tree alike.
        let mut t = mem(&[
            (
                "a/main.tf",
                "module \"m\" {\n source = \"../linked/net\"\n}",
            ),
            ("linked", "SYMLINK"),
        ]);
        assert!(walk(&mut t, "a")
            .unwrap_err()
            .to_string()
            .starts_with("a/main.tf:2: module directory linked/net: linked is a symbolic link"));
        // A diamond is not a cycle.
        let mut t = mem(&[
            (
                "s/main.tf",
                "module \"a\" { source = \"../a\" }\nmodule \"b\" { source = \"../b\" }",
            ),
            ("a/main.tf", "module \"c\" { source = \"../c\" }"),
            ("b/main.tf", "module \"c\" { source = \"../c\" }"),
            ("c/main.tf", ""),
        ]);
        assert_eq!(walk(&mut t, "s").unwrap().unwrap().len(), 4);
    }

    /// A symbolic link among a stack's files is followed to a file inside the root: the link
    /// and its target are both inputs, and a linked `.tf` file's modules are followed. Any
    /// other link, and anything neither file nor directory, is an error saying what to do.
    #[test]
    fn symbolic_links_to_files_are_followed_inside_the_root() {
        let mut t = mem(&[
            ("s/main.tf", ""),
            ("s/extra.tf", "SYMLINK:../shared/extra.tf"),
            ("shared/extra.tf", "module \"m\" { source = \"./m\" }"),
            (
                "s/m/main.tf",
                "# the module, relative to the link's directory",
            ),
        ]);
        let files = walk(&mut t, "s").unwrap().unwrap();
        let got: Vec<&str> = files.keys().map(String::as_str).collect();
        assert_eq!(
            got,
            ["s/extra.tf", "s/m/main.tf", "s/main.tf", "shared/extra.tf"]
        );
        let refused = |link: &str, extra: &[(&str, &str)]| {
            let mut files = vec![("s/main.tf", ""), ("s/x.txt", link)];
            files.extend_from_slice(extra);
            walk(&mut mem(&files), "s").unwrap_err().to_string()
        };
        for (link, extra, why) in [
            ("SYMLINK:/etc/passwd", vec![], "an absolute path"),
            (
                "SYMLINK:../../outside",
                vec![],
                "leaves the repository root",
            ),
            ("SYMLINK:../d", vec![("d/f", "")], "d, which is not a file"),
            ("SYMLINK:../gone", vec![], "gone, which is not a file"),
            (
                "SYMLINK:../.git/config",
                vec![(".git/config", "")],
                "inside .git or .terraform",
            ),
            (
                "SYMLINK:.terraform/x",
                vec![("s/.terraform/x", "")],
                "inside .git or .terraform",
            ),
            (
                "SYMLINK:../l/f",
                vec![("l", "SYMLINK:d"), ("d/f", "")],
                "through l, itself a symbolic link",
            ),
        ] {
            let e = refused(link, &extra);
            assert!(
                e.starts_with("s/x.txt: a symbolic link to ")
                    && e.contains(why)
                    && e.ends_with("replace the link by what it names"),
                "{e}"
            );
        }
        let e = walk(&mut mem(&[("s/main.tf", ""), ("s/pipe", "FIFO")]), "s").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("s/pipe: neither a file nor a directory"),
            "{e}"
        );
    }
}
