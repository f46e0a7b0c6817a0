//! `airlock ci affected`: which stacks a change affects and why (`airlock_runner::affected`),
//! as text for people or as the `AffectedSet` JSON. Also the helpers `airlock ci plan` and
//! `apply` share: where the repository root is and which base a change is compared with.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use airlock_core::inputs::CONFIG_PATH;
use airlock_runner::affected::{affected, AffectedSet};
use airlock_runner::git;
use anyhow::{bail, Context};

use crate::cli::{CiAffectedArgs, OutputFormat};

/// The repository root: the nearest directory at or above `dir` holding `airlock.hcl`.
pub fn find_root(dir: &Path) -> anyhow::Result<PathBuf> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("{} is not a directory", dir.display()))?;
    match dir.ancestors().find(|d| d.join(CONFIG_PATH).is_file()) {
        Some(root) => Ok(root.to_path_buf()),
        None => bail!(
            "no {CONFIG_PATH} in {} or its parents: airlock ci needs one at the repository root, \
             with a `stack \"NAME\" {{ dir = \"...\" }}` block per stack (docs/airlock-hcl.md)",
            dir.display()
        ),
    }
}

fn resolves(root: &Path, reference: &str) -> bool {
    git::run(
        root,
        &[
            "rev-parse",
            "--verify",
            "-q",
            "--end-of-options",
            &format!("{reference}^{{commit}}"),
        ],
    )
    .is_ok()
}

/// The base a change is compared with: `explicit`, else the pull request's target in CI
/// (GitHub: `origin/$GITHUB_BASE_REF`; GitLab: `$CI_MERGE_REQUEST_DIFF_BASE_SHA`), else the
/// remote's default branch (`origin/HEAD`).
pub fn base_ref(explicit: Option<&str>, root: &Path) -> anyhow::Result<String> {
    if let Some(b) = explicit {
        return Ok(b.to_owned());
    }
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let Some(branch) = var("GITHUB_BASE_REF") {
        let r = format!("origin/{branch}");
        if !resolves(root, &r) {
            bail!(
                "the pull request's base branch {r} is not in this clone; check out with \
                 actions/checkout `fetch-depth: 0`, or pass --base"
            );
        }
        return Ok(r);
    }
    if let Some(sha) = var("CI_MERGE_REQUEST_DIFF_BASE_SHA") {
        return Ok(sha);
    }
    if resolves(root, "origin/HEAD") {
        return Ok("origin/HEAD".into());
    }
    let detached = git::run(root, &["symbolic-ref", "-q", "HEAD"]).is_err();
    if detached {
        bail!(
            "HEAD is detached (as in a CI checkout) and the base is unknown (no origin/HEAD, not \
             in a pull-request pipeline): pass --base with the branch the change goes into, e.g. \
             --base origin/main"
        )
    }
    bail!(
        "the base is unknown (no origin/HEAD, not in a pull-request pipeline): pass --base with \
         the branch the change goes into, e.g. --base origin/main"
    )
}

/// The affected set, as people read it: removed stacks first, then each affected stack with
/// its reasons, then notes.
pub fn render_text(set: &AffectedSet, base_ref: &str, head_ref: &str) -> String {
    let short = |s: &str| s.get(..12).unwrap_or(s).to_owned();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Changes from {} (merge base of {base_ref} and {head_ref}) to {}: {} stack(s) affected{}.",
        short(&set.base),
        short(&set.head),
        set.stacks.len(),
        match set.removed.len() {
            0 => String::new(),
            n => format!(", {n} removed"),
        }
    );
    for r in &set.removed {
        let _ = writeln!(
            out,
            "\nTHIS REMOVES STACK {} (its directory {} is deleted).",
            r.name, r.dir
        );
        if r.declared {
            let _ = writeln!(
                out,
                "  Its removal was declared (destroy = true) before this change: check that the \
                 destroy was applied (airlock state show {}).",
                r.name
            );
        } else {
            let _ = writeln!(
                out,
                "  Nothing is destroyed: its resources keep existing and its state stays on the \
                 server. To destroy them, restore the directory, set destroy = true in its stack \
                 block, have that destroy reviewed and applied, then delete the directory."
            );
        }
    }
    for s in &set.stacks {
        let _ = writeln!(
            out,
            "\n{} ({}){}",
            s.name,
            s.dir,
            if s.destroy {
                ": DESTROY (destroy = true in airlock.hcl: planned with -destroy)"
            } else {
                ""
            }
        );
        for r in &s.reasons {
            let _ = writeln!(out, "  - {r}");
        }
    }
    if set.stacks.is_empty() {
        let _ = writeln!(out, "\nNo stack is affected.");
    }
    if !set.notes.is_empty() {
        let _ = writeln!(out, "\nNotes:");
        for n in &set.notes {
            let _ = writeln!(out, "  - {n}");
        }
    }
    out
}

/// Runs `airlock ci affected`.
pub fn run(args: CiAffectedArgs) -> anyhow::Result<ExitCode> {
    let root = find_root(&args.dir)?;
    let base = base_ref(args.base.as_deref(), &root)?;
    let set = affected(&root, &base, &args.head)?;
    match args.format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&set)?),
        OutputFormat::Text => print!("{}", render_text(&set, &base, &args.head)),
    }
    Ok(ExitCode::SUCCESS)
}
