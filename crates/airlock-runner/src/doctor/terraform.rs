//! The configuration questions: where state lives (per root module and Terragrunt unit), what
//! protects critical resources, and whether databases have an independent backup. Critical
//! types and their protection attributes come from `airlock_policy::catalogue`, the plan gate's
//! list. Values are literals, variables' literal defaults, or literal module-call arguments
//! followed down the module graph `modules::Walker` reads; anything else is "unknown".

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use airlock_core::inputs;
use airlock_policy::catalogue::{self, Class, ProtectRule, Protection};

use super::config::{Attr, Block, BlockBody, Val};
use super::scan::{ConfigFile, Repo};
use super::{finding, Finding, QuestionId as Q, Verdict as V};
use crate::modules::{FsTree, Walker};

/// Path segments that mark examples and tests, not live infrastructure.
const EXAMPLE_SEGMENTS: &[&str] = &[
    "examples",
    "example",
    "test",
    "tests",
    "testdata",
    "fixtures",
    "_examples",
];

/// Whether `dir` is an example or test directory (not judged as live infrastructure).
pub fn is_example(dir: &str) -> bool {
    dir.split('/').any(|s| EXAMPLE_SEGMENTS.contains(&s))
}

/// One directory's configuration.
#[derive(Default)]
struct Dir<'r> {
    files: Vec<&'r ConfigFile>,
}

impl<'r> Dir<'r> {
    fn blocks(
        &self,
        ident: &'static str,
    ) -> impl Iterator<Item = (&'r ConfigFile, &'r Block)> + '_ {
        self.files.iter().flat_map(move |f| {
            f.blocks
                .iter()
                .filter(move |b| b.ident == ident)
                .map(move |b| (*f, b))
        })
    }
    fn backend(&self) -> Option<(&'r ConfigFile, &'r Block)> {
        self.files.iter().find_map(|f| {
            f.blocks
                .iter()
                .filter(|b| b.ident == "terraform")
                .find_map(|t| {
                    t.body
                        .blocks
                        .iter()
                        .find(|b| b.ident == "backend" || b.ident == "cloud")
                })
                .map(|b| (*f, b))
        })
    }
    fn has(&self, ident: &'static str) -> bool {
        self.blocks(ident).next().is_some()
    }
    fn required_variables(&self) -> bool {
        self.blocks("variable")
            .any(|(_, b)| b.body.attr("default").is_none())
    }
    fn first_line(&self) -> (&'r str, usize) {
        self.files.first().map_or(("", 0), |f| {
            (f.path.as_str(), f.blocks.first().map_or(0, |b| b.line))
        })
    }
}

/// A local module call's target directory, if `source` is local.
fn local_target(dir: &str, source: &str) -> Option<String> {
    // Terragrunt and go-getter's `//` subdirectory syntax: `../modules//vpc`.
    let source = crate::modules::local_path(source)?.replace("//", "/");
    let t = inputs::join(dir, &source);
    (t != ".." && !t.starts_with("../")).then_some(t)
}

/// Every finding about state, protections and backups.
pub fn findings(repo: &Repo) -> Vec<Finding> {
    findings_at(repo, None)
}

/// [`findings`], with the repository root for following module calls through the walker.
pub fn findings_at(repo: &Repo, root: Option<&Path>) -> Vec<Finding> {
    let mut dirs: BTreeMap<&str, Dir> = BTreeMap::new();
    for f in &repo.terraform {
        dirs.entry(f.dir.as_str()).or_default().files.push(f);
    }
    let mut called: BTreeSet<String> = BTreeSet::new();
    for (dir, d) in &dirs {
        for (_, m) in d.blocks("module") {
            if let Some(Attr {
                value: Val::Str(s), ..
            }) = m.body.attr("source")
            {
                called.extend(local_target(dir, s));
            }
        }
    }
    for tg in &repo.terragrunt {
        for b in tg.blocks.iter().filter(|b| b.ident == "terraform") {
            if let Some(Attr {
                value: Val::Str(s), ..
            }) = b.body.attr("source")
            {
                called.extend(local_target(&tg.dir, s));
            }
        }
    }
    let mut out = Vec::new();
    let mut roots: Vec<&str> = Vec::new();
    for (dir, d) in &dirs {
        if is_example(dir) {
            continue;
        }
        let has_backend = d.backend().is_some();
        let reusable = dir.split('/').any(|s| s == "modules")
            || (!d.has("provider") && !repo.var_files.contains_key(*dir) && d.required_variables());
        let resources = d.has("resource");
        if has_backend || (resources && !called.contains(*dir) && !reusable) {
            roots.push(dir);
            out.extend(state_of_root(repo, dir, d));
        }
    }
    out.extend(terragrunt_units(repo));
    for s in &repo.state_files {
        out.push(
            finding(Q::State, V::Fragile, "state.file_in_tree", s, 0, format!(
                "state lying in the repository tree ({s}): anyone with the checkout has it, and a stale copy can be pushed over the real one"
            ))
            .todo(format!("Remove {s} from the repository and ignore `*.tfstate*`; move the state to a remote backend")),
        );
    }
    if roots.is_empty() && repo.terragrunt.is_empty() && !dirs.is_empty() {
        let any = dirs.keys().find(|d| !is_example(d)).copied().unwrap_or(".");
        out.push(finding(Q::State, V::Unknown, "state.no_root", any, 0,
            "no root module found (only reusable modules, examples or tests): where their callers keep state cannot be known from here"));
    }
    out.extend(protections(repo, &dirs, &roots, root));
    out
}

fn attr_is(body: &BlockBody, name: &str, want: &Val) -> Option<bool> {
    match body.attr(name).map(|a| &a.value) {
        None => Some(false),
        Some(Val::Expr(_)) => None,
        Some(v) => Some(v == want),
    }
}

/// Whether the repository passes backend settings from outside the code.
fn partial_backend(repo: &Repo, dir: &str) -> bool {
    !repo.backend_files.is_empty()
        || repo.backend_caches.contains_key(dir)
        || repo.ci.iter().any(|c| c.text.contains("-backend-config"))
}

fn state_of_root(repo: &Repo, dir: &str, d: &Dir) -> Vec<Finding> {
    let Some((file, backend)) = d.backend() else {
        let (f, line) = d.first_line();
        return vec![finding(Q::State, V::Fragile, "state.local", f, line, format!(
            "root module {dir} has no backend: its state is a local file on whichever machine runs terraform (a new machine sees no state and plans to create everything)"
        ))
        .todo(format!("Give {dir} a remote backend (airlock: `airlock backend-config STACK > {dir}/backend.tf`)"))];
    };
    let kind = if backend.ident == "cloud" {
        "remote".to_owned()
    } else {
        backend.labels.first().cloned().unwrap_or_default()
    };
    judge_backend(repo, dir, &kind, &backend.body, &file.path, backend.line)
}

fn judge_backend(
    repo: &Repo,
    dir: &str,
    kind: &str,
    body: &BlockBody,
    file: &str,
    line: usize,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let partial = partial_backend(repo, dir);
    let f = |v, rule, msg: String| finding(Q::State, v, rule, file, line, msg);
    match kind {
        "local" => out.push(
            f(V::Fragile, "state.local", format!("root module {dir} uses the `local` backend: state is a file on one machine"))
                .todo(format!("Move {dir}'s state to a remote backend (airlock: `airlock backend-config STACK`)")),
        ),
        "http" => {
            let address = match body.attr("address").map(|a| &a.value) {
                Some(Val::Str(s)) => Some(s.clone()),
                _ => None,
            };
            let locks = body.attr("lock_address").is_some();
            match address {
                Some(a) if a.contains("/state/") && locks => out.push(f(V::Enforced, "state.airlock", format!(
                    "root module {dir} keeps state on an airlock server ({a}): remote, locked, versioned, every write checked by the firewall"
                ))),
                Some(a) if !locks => out.push(f(V::Discipline, "state.http_unlocked", format!(
                    "root module {dir}: `http` backend {a} without `lock_address`: two applies can write at once"
                )).todo(format!("Set lock_address for {dir}'s http backend, or use airlock"))),
                _ if partial => out.push(f(V::Unknown, "state.partial", format!(
                    "root module {dir}: `http` backend configured partly outside the code (-backend-config): where it points cannot be known from here"
                ))),
                _ => out.push(f(V::Unknown, "state.http", format!(
                    "root module {dir}: `http` backend whose address is not a literal: cannot be known from here"
                ))),
            }
        }
        "s3" => {
            let lock = match (
                attr_is(body, "use_lockfile", &Val::Bool(true)),
                body.attr("dynamodb_table").is_some(),
            ) {
                (_, true) | (Some(true), _) => Some(true),
                (None, _) => None,
                (Some(false), false) => Some(false),
            };
            let encrypt = attr_is(body, "encrypt", &Val::Bool(true));
            let mut weak = Vec::new();
            let mut unknown = Vec::new();
            for (what, v) in [("no locking (`use_lockfile = true` or `dynamodb_table`)", lock), ("no `encrypt = true`", encrypt)] {
                match v {
                    Some(true) => {}
                    Some(false) if partial => unknown.push(what),
                    Some(false) => weak.push(what),
                    None => unknown.push(what),
                }
            }
            if !weak.is_empty() {
                out.push(f(V::Discipline, "state.s3_settings", format!("root module {dir}: s3 backend with {}", weak.join(" and ")))
                    .todo(format!("Set `use_lockfile = true` and `encrypt = true` in {dir}'s s3 backend")));
            }
            if !unknown.is_empty() {
                out.push(f(V::Unknown, "state.partial", format!(
                    "root module {dir}: s3 backend settings given outside the code or as expressions; cannot tell whether it has {}",
                    unknown.join(", ")
                )));
            }
            out.extend(bucket_versioning(repo, dir, body, "bucket", "aws_s3_bucket", file, line));
            if weak.is_empty() && unknown.is_empty() && out.is_empty() {
                out.push(f(V::Enforced, "state.remote", format!("root module {dir}: s3 backend, locked and encrypted")));
            }
        }
        "gcs" => {
            out.extend(bucket_versioning(repo, dir, body, "bucket", "google_storage_bucket", file, line));
            if out.is_empty() {
                out.push(f(V::Enforced, "state.remote", format!("root module {dir}: gcs backend (locked natively)")));
            }
        }
        "azurerm" => out.push(f(V::Enforced, "state.remote", format!("root module {dir}: azurerm backend (locked by blob lease)"))),
        "remote" => out.push(f(V::Enforced, "state.remote", format!("root module {dir}: HCP Terraform / Terraform Enterprise: remote, locked, versioned"))),
        other => out.push(f(V::Unknown, "state.other", format!(
            "root module {dir}: `{other}` backend: its locking and history depend on how it is run; cannot be known from here"
        ))),
    }
    out
}

/// The state bucket's versioning, when the bucket is declared in this repository.
#[allow(clippy::too_many_arguments)]
fn bucket_versioning(
    repo: &Repo,
    dir: &str,
    backend: &BlockBody,
    attr: &str,
    bucket_type: &str,
    file: &str,
    line: usize,
) -> Vec<Finding> {
    let bucket = match backend.attr(attr) {
        Some(Attr {
            value: Val::Str(b), ..
        }) => b.clone(),
        Some(a) => {
            return vec![finding(Q::State, V::Unknown, "state.bucket_versioning", file, line, format!(
                "the state bucket of {dir} is {}: whether it keeps versions cannot be known from here",
                a.value.show()
            ))]
        }
        None => return Vec::new(),
    };
    let bucket = &bucket;
    let Some(entry) = catalogue::entry(bucket_type) else {
        return Vec::new();
    };
    // The repository's buckets by (type, literal name), indexed once for every root.
    let index = repo.buckets.get_or_init(|| {
        let mut m = HashMap::new();
        for (fi, f) in repo.terraform.iter().enumerate() {
            for (bi, b) in f.blocks.iter().enumerate() {
                let (Some(t), true) = (b.labels.first(), b.ident == "resource") else {
                    continue;
                };
                let attr = match t.as_str() {
                    "aws_s3_bucket" => "bucket",
                    "google_storage_bucket" => "name",
                    _ => continue,
                };
                if let Some(Attr {
                    value: Val::Str(n), ..
                }) = b.body.attr(attr)
                {
                    m.entry((t.clone(), n.clone())).or_insert((fi, bi));
                }
            }
        }
        m
    });
    let found = index
        .get(&(bucket_type.to_owned(), bucket.clone()))
        .and_then(|&(fi, bi)| {
            repo.terraform
                .get(fi)
                .and_then(|f| f.blocks.get(bi).map(|b| (f, b)))
        });
    if let Some((f, r)) = found {
        {
            let same_dir: Vec<&ConfigFile> =
                repo.terraform.iter().filter(|g| g.dir == f.dir).collect();
            let ctx = Ctx::default();
            let held = entry
                .companions
                .iter()
                .filter(|c| c.name == "versioning")
                .map(|c| companion_holds(c, r, &same_dir, &ctx))
                .max();
            return match held {
                Some(Some(true)) | None => vec![finding(Q::State, V::Enforced, "state.bucket_versioning", &f.path, r.line,
                    format!("the state bucket {bucket} of {dir} keeps versions"))],
                Some(None) => vec![finding(Q::State, V::Unknown, "state.bucket_versioning", &f.path, r.line,
                    format!("the state bucket {bucket} of {dir}: versioning is not a literal; cannot be known from here"))],
                Some(Some(false)) => vec![finding(Q::State, V::Discipline, "state.bucket_versioning", &f.path, r.line,
                    format!("the state bucket {bucket} of {dir} is declared here without versioning: an overwritten or deleted state cannot be recovered"))
                    .todo(format!("Enable versioning on the state bucket {bucket}"))],
            };
        }
    }
    vec![finding(Q::State, V::Unknown, "state.bucket_versioning", file, line, format!(
        "the state bucket {bucket} of {dir} is not declared in this repository: whether it keeps versions cannot be known from here"
    ))]
}

/// Terragrunt units: each `terragrunt.hcl` with a `terraform` or `include` block is a root; its
/// state is its own `remote_state`, or that of the nearest parent file that has one.
fn terragrunt_units(repo: &Repo) -> Vec<Finding> {
    let mut out = Vec::new();
    let remote_state = |f: &ConfigFile| {
        f.blocks
            .iter()
            .find(|b| b.ident == "remote_state")
            .map(|b| (f.path.clone(), b.clone()))
    };
    let by_dir: HashMap<&str, Vec<&ConfigFile>> =
        repo.terragrunt.iter().fold(HashMap::new(), |mut m, f| {
            m.entry(f.dir.as_str()).or_default().push(f);
            m
        });
    for unit in repo
        .terragrunt
        .iter()
        .filter(|f| f.path.ends_with("terragrunt.hcl") && !is_example(&f.dir))
    {
        let is_unit = unit
            .blocks
            .iter()
            .any(|b| b.ident == "terraform" || b.ident == "include");
        if !is_unit {
            continue;
        }
        let mut found = remote_state(unit);
        let mut d = unit.dir.clone();
        while found.is_none() && d != "." {
            d = d
                .rsplit_once('/')
                .map_or(".".to_owned(), |(p, _)| p.to_owned());
            found = by_dir
                .get(d.as_str())
                .and_then(|fs| fs.iter().find_map(|f| remote_state(f)));
        }
        let Some((file, rs)) = found else {
            out.push(finding(Q::State, V::Fragile, "state.local", &unit.path, unit.blocks.first().map_or(0, |b| b.line), format!(
                "Terragrunt unit {} has no `remote_state` (its own or a parent's): state is local", unit.dir
            )).todo(format!("Give Terragrunt unit {} a remote_state", unit.dir)));
            continue;
        };
        let kind = match rs.body.attr("backend").map(|a| &a.value) {
            Some(Val::Str(k)) => k.clone(),
            _ => String::new(),
        };
        let config = match rs.body.attr("config").map(|a| &a.value) {
            Some(Val::Obj(m)) => BlockBody {
                attrs: m
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            Attr {
                                value: v.clone(),
                                line: rs.line,
                            },
                        )
                    })
                    .collect(),
                blocks: Vec::new(),
            },
            _ => BlockBody::default(),
        };
        let mut f = judge_backend(repo, &unit.dir, &kind, &config, &file, rs.line);
        for x in &mut f {
            x.evidence.message = x.evidence.message.replace("root module", "Terragrunt unit");
        }
        out.extend(f);
    }
    out
}

/// A value as the rules see it: a literal (and where it came from), or unknown (and why).
#[derive(Debug, Clone)]
enum Resolved {
    Lit(Val, String),
    Unknown(String),
}

/// The variables of one module instance.
#[derive(Debug, Clone, Default)]
struct Ctx {
    vars: HashMap<String, Resolved>,
    /// How this instance is reached (`module "db" at live/main.tf:3`), empty for a root.
    via: String,
}

fn resolve(v: &Val, ctx: &Ctx) -> Resolved {
    if v.is_literal() {
        return Resolved::Lit(v.clone(), String::new());
    }
    match v.variable().and_then(|n| ctx.vars.get(n).map(|r| (n, r))) {
        Some((n, Resolved::Lit(x, from))) => Resolved::Lit(x.clone(), format!("var.{n}{from}")),
        Some((_, u @ Resolved::Unknown(_))) => u.clone(),
        None => Resolved::Unknown(format!("{} is not a literal", v.show())),
    }
}

fn ctx_of(files: &[&ConfigFile]) -> Ctx {
    let mut ctx = Ctx::default();
    for f in files {
        for b in f.blocks.iter().filter(|b| b.ident == "variable") {
            let Some(name) = b.labels.first() else {
                continue;
            };
            let r = match b.body.attr("default") {
                Some(a) if a.value.is_literal() => Resolved::Lit(
                    a.value.clone(),
                    format!(" (default at {}:{})", f.path, a.line),
                ),
                Some(a) => Resolved::Unknown(format!(
                    "var.{name}'s default {} is not a literal",
                    a.value.show()
                )),
                None => Resolved::Unknown(format!(
                    "var.{name} has no default; its value is given at plan time"
                )),
            };
            ctx.vars.insert(name.clone(), r);
        }
    }
    ctx
}

/// Whether `v` is protective under `rule`: `Some(true)`, `Some(false)`, or `None` when the value
/// has the wrong type to tell.
fn protective(rule: ProtectRule, v: &Val) -> Option<bool> {
    let num = match v {
        Val::Num(n) => Some(*n),
        Val::Str(s) => s.parse::<f64>().ok(),
        _ => None,
    };
    let boolean = match v {
        Val::Bool(b) => Some(*b),
        Val::Str(s) if s == "true" || s == "false" => Some(s == "true"),
        _ => None,
    };
    match rule {
        ProtectRule::True => boolean,
        ProtectRule::False => boolean.map(|b| !b),
        ProtectRule::Positive => num.map(|n| n > 0.0),
        ProtectRule::NoShrink => num.map(|_| true),
        ProtectRule::Set => Some(!matches!(v, Val::Null) && v != &Val::Str(String::new())),
        ProtectRule::Equals(s) => Some(matches!(v, Val::Str(x) if x == s)),
        ProtectRule::NotEquals(s) => Some(!matches!(v, Val::Str(x) if x == s)),
    }
}

fn default_val(d: &str) -> Val {
    match d {
        "true" => Val::Bool(true),
        "false" => Val::Bool(false),
        other => other
            .parse::<f64>()
            .map_or_else(|_| Val::Str(other.to_owned()), Val::Num),
    }
}

/// Whether a companion protection holds for resource `r`: `Some(true/false)`, `None` unknown.
fn companion_holds(
    c: &catalogue::Companion,
    r: &Block,
    files: &[&ConfigFile],
    ctx: &Ctx,
) -> Option<bool> {
    let check = |body: &BlockBody| -> Option<bool> {
        match body.lookup(c.protection.attribute) {
            None => Some(false),
            Some(a) => match resolve(&a.value, ctx) {
                Resolved::Lit(v, _) => protective(c.protection.rule, &v),
                Resolved::Unknown(_) => None,
            },
        }
    };
    let Some(t) = c.resource_type else {
        return check(&r.body);
    };
    let (rtype, rname) = (r.labels.first()?, r.labels.get(1)?);
    let reference = format!("{rtype}.{rname}");
    let own_name = r.body.attr(c.link).map(|a| a.value.clone());
    let mut result = Some(false);
    for f in files {
        for b in f
            .blocks
            .iter()
            .filter(|b| b.ident == "resource" && b.labels.first().map(String::as_str) == Some(t))
        {
            let links = match b.body.attr(c.link).map(|a| &a.value) {
                Some(Val::Expr(e)) => {
                    e.contains(&format!("{reference}.")) || e.contains(&format!("{reference}["))
                }
                Some(v @ Val::Str(_)) => own_name.as_ref() == Some(v),
                _ => false,
            };
            if links {
                match check(&b.body) {
                    Some(true) => return Some(true),
                    None => result = None,
                    Some(false) => {}
                }
            }
        }
    }
    result
}

fn protections(
    repo: &Repo,
    dirs: &BTreeMap<&str, Dir>,
    roots: &[&str],
    root: Option<&Path>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    // Each module directory with the contexts it is analysed in: per root that reaches it (its
    // variables bound by the module calls on the way), or standalone when no root reaches it.
    let mut reached: BTreeMap<String, Vec<Ctx>> = BTreeMap::new();
    let mut cache = HashMap::new();
    let mut fs_tree = root.map(|r| FsTree { root: r });
    // One walker for every root: each directory is read once however many roots call it.
    let mut walker = fs_tree.as_mut().map(|t| Walker::new(t, &mut cache));
    for r in roots {
        let files_of = |d: &str| dirs.get(d).map(|x| x.files.clone()).unwrap_or_default();
        let root_ctx = ctx_of(&files_of(r));
        reached
            .entry((*r).to_owned())
            .or_default()
            .push(root_ctx.clone());
        let Some(walker) = walker.as_mut() else {
            continue;
        };
        let stack = match walker.stack(r) {
            Ok(Some(s)) => s,
            Ok(None) => continue,
            Err(e) => {
                out.push(finding(Q::Protections, V::Unknown, "protect.module_graph", &e.file, e.line.unwrap_or(0),
                    format!("the modules of {r} could not be followed: {}; they are judged on their own", e.message)));
                continue;
            }
        };
        // Each module directory's chain from the root (the walker's shortest one).
        let mut chains: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for chain in stack.values().filter(|c| !c.is_empty()) {
            if let Some(last) = chain.last() {
                chains.entry(last.clone()).or_insert_with(|| chain.clone());
            }
        }
        for (dir, chain) in chains {
            let mut ctx = root_ctx.clone();
            let mut caller = (*r).to_owned();
            for step in &chain {
                let mut next = ctx_of(&files_of(step));
                let call = files_of(&caller).into_iter().find_map(|f| {
                    f.blocks.iter().find(|b| {
                        b.ident == "module"
                            && matches!(b.body.attr("source").map(|a| &a.value), Some(Val::Str(s)) if local_target(&caller, s).as_deref() == Some(step.as_str()))
                    }).map(|b| (f, b))
                });
                if let Some((f, b)) = call {
                    for (name, a) in &b.body.attrs {
                        if next.vars.contains_key(name) {
                            let r = match resolve(&a.value, &ctx) {
                                Resolved::Lit(v, from) => Resolved::Lit(
                                    v,
                                    format!(
                                        " (argument at {}:{}{})",
                                        f.path,
                                        a.line,
                                        if from.is_empty() {
                                            String::new()
                                        } else {
                                            format!(" from {from}")
                                        }
                                    ),
                                ),
                                u => u,
                            };
                            next.vars.insert(name.clone(), r);
                        }
                    }
                    next.via = format!(
                        "module \"{}\" at {}:{}",
                        b.labels.first().map_or("", String::as_str),
                        f.path,
                        b.line
                    );
                }
                ctx = next;
                caller = step.clone();
            }
            reached.entry(dir).or_default().push(ctx);
        }
    }
    for (dir, d) in dirs {
        if is_example(dir) || reached.contains_key(*dir) {
            continue;
        }
        if d.has("resource") {
            reached
                .entry((*dir).to_owned())
                .or_default()
                .push(ctx_of(&d.files));
        }
    }
    // Independent backup plans by cloud (the type's prefix).
    let mut backup_plans: BTreeMap<&str, (String, usize, String)> = BTreeMap::new();
    for f in &repo.terraform {
        for b in f.blocks.iter().filter(|b| b.ident == "resource") {
            let Some(t) = b.labels.first() else { continue };
            if catalogue::entry(t).is_some_and(|e| e.category == "backup-plan") {
                let cloud = t.split('_').next().unwrap_or("");
                backup_plans.entry(cloud).or_insert_with(|| {
                    (
                        f.path.clone(),
                        b.line,
                        format!("{t}.{}", b.labels.get(1).map_or("", String::as_str)),
                    )
                });
            }
        }
    }
    let mut databases_seen = BTreeSet::new();
    for (dir, ctxs) in &reached {
        let Some(d) = dirs.get(dir.as_str()) else {
            continue;
        };
        for ctx in ctxs {
            for (f, r) in d.blocks("resource") {
                out.extend(judge_resource(f, r, &d.files, ctx));
                let (Some(t), Some(n)) = (r.labels.first(), r.labels.get(1)) else {
                    continue;
                };
                let Some(entry) = catalogue::entry(t) else {
                    continue;
                };
                if entry.class != Class::Critical
                    || entry.category != "database"
                    || !databases_seen.insert((f.path.clone(), r.line))
                {
                    continue;
                }
                let cloud = t.split('_').next().unwrap_or("");
                out.push(match backup_plans.get(cloud) {
                    Some((pf, pl, pname)) => finding(Q::Backups, V::Unknown, "backups.plan_declared", &f.path, r.line, format!(
                        "{t}.{n}: an independent backup is declared ({pname} at {pf}:{pl}); whether it covers this database and whether restores work cannot be known from the repository"
                    )),
                    None => finding(Q::Backups, V::Fragile, "backups.none", &f.path, r.line, format!(
                        "{t}.{n}: no independent backup declared in the repository (an AWS Backup plan and selection, a GCP Backup and DR plan, an Azure Backup policy): the provider's automated backups can be deleted with the instance"
                    )).todo(format!("Back up {t}.{n} independently of the instance (a backup plan in another account or vault)")),
                });
            }
        }
    }
    out
}

fn judge_resource(f: &ConfigFile, r: &Block, files: &[&ConfigFile], ctx: &Ctx) -> Vec<Finding> {
    let mut out = Vec::new();
    let (Some(t), Some(n)) = (r.labels.first(), r.labels.get(1)) else {
        return out;
    };
    let Some(entry) = catalogue::entry(t) else {
        return out;
    };
    if entry.class != Class::Critical {
        return out;
    }
    let name = format!("{t}.{n}");
    let via = if ctx.via.is_empty() {
        String::new()
    } else {
        format!(" [via {}]", ctx.via)
    };
    let mut ok: Vec<String> = Vec::new();
    let mut bad = 0usize;
    for p in &entry.protections {
        let (line, value) = match r.body.lookup(p.attribute) {
            Some(a) => (
                if a.line > 0 { a.line } else { r.line },
                Some(resolve(&a.value, ctx)),
            ),
            None => (r.line, None),
        };
        let mut push = |v, rule, msg: String, todo: Option<String>| {
            bad += 1;
            let mut x = finding(
                Q::Protections,
                v,
                rule,
                &f.path,
                line,
                format!("{name}: {msg}{via}"),
            );
            x.todo = todo;
            out.push(x);
        };
        match value {
            Some(Resolved::Lit(v, from)) => {
                let from = if from.is_empty() {
                    String::new()
                } else {
                    format!(" from {from}")
                };
                match (protective(p.rule, &v), p.rule, p.default) {
                    (Some(true), ProtectRule::NoShrink, Some(d)) => {
                        if let (Val::Num(x), Val::Num(min)) = (&v, default_val(d)) {
                            if *x < min {
                                push(
                                    V::Discipline,
                                    "protect.short_window",
                                    format!(
                                        "{} = {}{from}, shorter than the default {d}",
                                        p.attribute,
                                        v.show()
                                    ),
                                    Some(format!(
                                        "Lengthen {name}'s {} to at least {d}",
                                        p.attribute
                                    )),
                                );
                                continue;
                            }
                        }
                        ok.push(p.attribute.to_owned());
                    }
                    (Some(true), _, _) => ok.push(p.attribute.to_owned()),
                    (Some(false), _, _) => push(
                        V::Fragile,
                        rule_id(p),
                        format!("{} = {}{from} {}", p.attribute, v.show(), weak_words(p)),
                        Some(fix_words(&name, p)),
                    ),
                    (None, _, _) => push(
                        V::Unknown,
                        "protect.unknown",
                        format!(
                            "{} = {}{from}: not a value this rule can read",
                            p.attribute,
                            v.show()
                        ),
                        None,
                    ),
                }
            }
            Some(Resolved::Unknown(why)) => push(
                V::Unknown,
                "protect.unknown",
                format!("{}: {why}; cannot be known from here", p.attribute),
                None,
            ),
            None => match (p.default, p.rule) {
                (Some(d), _) if protective(p.rule, &default_val(d)) == Some(false) => push(
                    V::Fragile,
                    rule_id(p),
                    format!(
                        "{} not set: the provider's default is {d} {}",
                        p.attribute,
                        weak_words(p)
                    ),
                    Some(fix_words(&name, p)),
                ),
                (Some(_), _) => ok.push(format!("{} (default)", p.attribute)),
                (None, ProtectRule::Set) if !skips_snapshot_check(p, &r.body, ctx) => push(
                    V::Discipline,
                    rule_id(p),
                    format!("{} not set {}", p.attribute, weak_words(p)),
                    Some(fix_words(&name, p)),
                ),
                (None, _) => {}
            },
        }
    }
    // Companion protections, one verdict per name.
    let mut names: Vec<&str> = entry.companions.iter().map(|c| c.name).collect();
    names.dedup();
    for cname in names {
        let alts: Vec<_> = entry
            .companions
            .iter()
            .filter(|c| c.name == cname)
            .collect();
        let each: Vec<Option<bool>> = alts
            .iter()
            .map(|c| companion_holds(c, r, files, ctx))
            .collect();
        let held = if each.contains(&Some(true)) {
            Some(true)
        } else if each.contains(&None) {
            None
        } else {
            Some(false)
        };
        match held {
            Some(true) => ok.push(cname.to_owned()),
            None => {
                bad += 1;
                out.push(finding(
                    Q::Protections,
                    V::Unknown,
                    "protect.unknown",
                    &f.path,
                    r.line,
                    format!("{name}: {cname} is not a literal; cannot be known from here{via}"),
                ));
            }
            Some(false) => {
                bad += 1;
                let how: Vec<String> = alts
                    .iter()
                    .map(|c| match c.resource_type {
                        Some(t) => format!("{t} with {}", show_protection(&c.protection)),
                        None => show_protection(&c.protection),
                    })
                    .collect();
                out.push(finding(Q::Protections, V::Fragile, "protect.companion", &f.path, r.line, format!(
                    "{name}: no {cname} ({}): what is deleted or overwritten cannot be recovered{via}", how.join(", or ")
                )).todo(format!("Turn on {cname} for {name}")));
            }
        }
    }
    match r.body.lookup("lifecycle.prevent_destroy").map(|a| a.value) {
        Some(Val::Bool(true)) => ok.push("prevent_destroy".into()),
        Some(Val::Expr(e)) => {
            bad += 1;
            out.push(finding(
                Q::Protections,
                V::Unknown,
                "protect.unknown",
                &f.path,
                r.line,
                format!("{name}: prevent_destroy = {e} (Terraform requires a literal here)"),
            ));
        }
        _ => {
            bad += 1;
            out.push(finding(Q::Protections, V::Discipline, "protect.prevent_destroy", &f.path, r.line, format!(
                "{name}: no `lifecycle {{ prevent_destroy = true }}`: Terraform destroys it whenever a plan says so{via}"
            )).todo(format!("Add `lifecycle {{ prevent_destroy = true }}` to {name}")));
        }
    }
    if bad == 0 {
        out.push(finding(
            Q::Protections,
            V::Enforced,
            "protect.ok",
            &f.path,
            r.line,
            format!("{name}: protected ({}){via}", ok.join(", ")),
        ));
    }
    out
}

/// `final_snapshot_identifier` is moot when the snapshot is skipped (reported there).
fn skips_snapshot_check(p: &Protection, body: &BlockBody, ctx: &Ctx) -> bool {
    p.attribute.starts_with("final_snapshot")
        && matches!(
            body.attr("skip_final_snapshot")
                .map(|a| resolve(&a.value, ctx)),
            Some(Resolved::Lit(Val::Bool(true), _))
        )
}

fn rule_id(p: &Protection) -> &'static str {
    match p.attribute {
        "deletion_protection" | "deletion_protection_enabled" | "enable_deletion_protection" => {
            "protect.deletion_protection"
        }
        "skip_final_snapshot" | "final_snapshot_identifier" => "protect.final_snapshot",
        "delete_automated_backups" => "protect.automated_backups",
        "backup_retention_period" => "protect.backup_retention",
        "force_destroy" => "protect.force_destroy",
        _ => "protect.attribute",
    }
}

fn weak_words(p: &Protection) -> &'static str {
    match p.attribute {
        "delete_automated_backups" => "(automated backups are deleted with the instance)",
        "skip_final_snapshot" => "(no snapshot is taken when it is destroyed)",
        "final_snapshot_identifier" => "(no final snapshot can be taken when it is destroyed)",
        "force_destroy" => "(it is deleted with everything in it)",
        "backup_retention_period" => "(no automated backups)",
        _ if p.blocks_delete => "(the provider deletes it when asked)",
        _ => "(unprotected)",
    }
}

fn show_protection(p: &Protection) -> String {
    match p.rule {
        ProtectRule::True => format!("{} = true", p.attribute),
        ProtectRule::False => format!("{} = false", p.attribute),
        ProtectRule::Positive => format!("{} > 0", p.attribute),
        ProtectRule::NoShrink => format!("{} (not shortened)", p.attribute),
        ProtectRule::Set => format!("{} set", p.attribute),
        ProtectRule::Equals(v) => format!("{} = \"{v}\"", p.attribute),
        ProtectRule::NotEquals(v) => format!("{} != \"{v}\"", p.attribute),
    }
}

fn fix_words(name: &str, p: &Protection) -> String {
    format!("Set {} on {name}", show_protection(p))
}
