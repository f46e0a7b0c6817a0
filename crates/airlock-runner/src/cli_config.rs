//! The Terraform CLI configuration of the plan phase, so that a plan never runs a provider
//! program the checkout supplies.
//!
//! Without a `provider_installation` block, Terraform installs providers from implied local
//! mirror directories, among them `terraform.d/plugins` of the working directory, and it runs
//! whatever it finds in the working directory's `.terraform/providers` when the checkout's own
//! `.terraform.lock.hcl` vouches for it. Both are files an agent writes. So the plan phase runs
//! terraform with:
//!
//! - `TF_CLI_CONFIG_FILE`: a file airlock writes in the run's private scratch directory, holding
//!   `provider_installation { direct {} }` (any explicit block disables the implied mirrors);
//!   or, when the operator names one with `AIRLOCK_TF_CLI_CONFIG`, that file, if it lies outside
//!   the checkout, has its own `provider_installation` block and names no provider directory
//!   that is relative or inside the checkout;
//! - `TF_DATA_DIR`: a directory outside the checkout, so nothing under the checkout's
//!   `.terraform` is used: the stack directory's own kept data directory ([`kept_data_dir`]),
//!   or a fresh one in that scratch directory.

use std::path::{Path, PathBuf};

use hcl_edit::expr::Expression;
use hcl_edit::structure::{Body, Structure};

/// The variable naming an operator's own CLI configuration for the plan phase.
pub const OPERATOR_CONFIG_VAR: &str = "AIRLOCK_TF_CLI_CONFIG";

/// The CLI configuration airlock writes when the operator names none: providers come from
/// their registries only (verified against their signatures and the dependency lock file).
pub const DEFAULT_CONFIG: &str =
    "# Written by airlock for one plan: providers are installed from their registries only,\n\
# never from the checkout's terraform.d/plugins or other implied local mirror directories.\n\
provider_installation {\n  direct {}\n}\n";

/// The variables the plan phase sets for terraform (replacing any inherited value), for the
/// checkout at `root` and the run's private scratch directory `work`. `operator`: the value of
/// [`OPERATOR_CONFIG_VAR`], if set; `plugin_cache`: the inherited `TF_PLUGIN_CACHE_DIR`, if
/// set (Terraform installs from the cache too, so it must not be in the checkout either);
/// `kept`: the stack directory's [`kept_data_dir`], if it has one (else a fresh data directory
/// in `work`).
pub fn plan_env(
    root: &Path,
    work: &Path,
    operator: Option<&str>,
    plugin_cache: Option<&str>,
    kept: Option<&KeptDataDir>,
) -> Result<Vec<(String, String)>, String> {
    if let Some(cache) = plugin_cache.filter(|v| !v.is_empty()) {
        provider_dir(root, "TF_PLUGIN_CACHE_DIR", cache)?;
    }
    let config = match operator.filter(|v| !v.is_empty()) {
        Some(path) => operator_config(root, Path::new(path))?,
        None => {
            let path = work.join("terraformrc");
            std::fs::write(&path, DEFAULT_CONFIG)
                .map_err(|e| format!("writing {}: {e}", path.display()))?;
            path
        }
    };
    let data = match kept {
        Some(k) => k.path.clone(),
        None => {
            let data = work.join("terraform-data");
            std::fs::create_dir_all(&data)
                .map_err(|e| format!("creating {}: {e}", data.display()))?;
            data
        }
    };
    Ok(vec![
        ("TF_CLI_CONFIG_FILE".into(), config.display().to_string()),
        ("TF_DATA_DIR".into(), data.display().to_string()),
    ])
}

/// The variables [`plan_env`] sets; a child inherits none of them.
pub const PLAN_ENV_VARS: &[&str] = &["TF_CLI_CONFIG_FILE", "TF_DATA_DIR"];

/// A plan-phase data directory kept between the plans of one stack directory, so that `terraform
/// init` (backend, modules, providers) runs again only when terraform says it must, as in any
/// working directory. It lies outside the checkout, in the user's cache directory, private to
/// the user (created 0700, used only while owned by the user and closed to group and others),
/// and only `terraform init` from the plan phase's own CLI configuration writes it: it is
/// trusted as the plugin cache is. Held with an exclusive lock for one plan at a time.
#[derive(Debug)]
pub struct KeptDataDir {
    /// The directory (`TF_DATA_DIR`).
    pub path: PathBuf,
    /// Held while the directory is in use; released when dropped.
    _lock: std::fs::File,
}

/// How long a kept data directory unused by any plan stays ([`kept_data_dir`] removes older ones).
pub const KEPT_FOR: std::time::Duration = std::time::Duration::from_secs(14 * 24 * 3600);

/// The user's directory for kept plan-phase data directories: `$XDG_CACHE_HOME/airlock/plan-data`,
/// else `$HOME/.cache/airlock/plan-data` (absolute paths only).
pub fn kept_data_root(xdg_cache_home: Option<&str>, home: Option<&str>) -> Option<PathBuf> {
    let absolute = |v: Option<&str>| v.filter(|v| Path::new(v).is_absolute()).map(PathBuf::from);
    absolute(xdg_cache_home)
        .or_else(|| absolute(home).map(|h| h.join(".cache")))
        .map(|c| c.join("airlock").join("plan-data"))
}

/// The kept data directory `key` (a hex digest naming the stack directory and its backend)
/// under `kept_root` (see [`kept_data_root`]), locked for this plan. `None` (the caller uses a
/// fresh directory) when the root is inside the checkout at `root`, when a directory on the way
/// is not private to this user, or when another plan holds it. Also removes the kept
/// directories no plan has used for [`KEPT_FOR`].
pub fn kept_data_dir(kept_root: &Path, root: &Path, key: &str) -> Option<KeptDataDir> {
    if inside(root, kept_root) || key.is_empty() || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    private_dirs(kept_root).ok()?;
    let kept_root = &kept_root.canonicalize().ok()?;
    if inside(root, kept_root) || !ancestors_closed(kept_root) {
        return None;
    }
    let path = kept_root.join(key);
    private_dirs(&path).ok()?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(kept_root.join(format!("{key}.lock")))
        .ok()?;
    lock.try_lock().ok()?;
    // Its time of last use, for the removal of unused ones.
    let _ = lock.set_modified(std::time::SystemTime::now());
    prune_kept(kept_root, key);
    Some(KeptDataDir { path, _lock: lock })
}

/// Creates `path` (and missing parents) 0700 and checks that it is a directory owned by this
/// user that no one else may write or read.
fn private_dirs(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)?;
    let m = std::fs::symlink_metadata(path)?;
    if !m.is_dir() || m.uid() != rustix::process::getuid().as_raw() || m.mode() & 0o077 != 0 {
        return Err(std::io::Error::other("not a private directory"));
    }
    Ok(())
}

/// Whether no other user can replace `path` or a directory above it: each is owned by this user
/// or root and is not writable by group or others (or is sticky, as `/tmp` is).
fn ancestors_closed(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let me = rustix::process::getuid().as_raw();
    path.ancestors().skip(1).all(|a| {
        std::fs::metadata(a).is_ok_and(|m| {
            (m.uid() == me || m.uid() == 0) && (m.mode() & 0o022 == 0 || m.mode() & 0o1000 != 0)
        })
    })
}

/// Removes the kept data directories under `kept_root` unused for [`KEPT_FOR`] (but `keep`).
fn prune_kept(kept_root: &Path, keep: &str) {
    let Ok(entries) = std::fs::read_dir(kept_root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(key) = name.strip_suffix(".lock") else {
            continue;
        };
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > KEPT_FOR);
        if key == keep || !old {
            continue;
        }
        let Ok(lock) = std::fs::OpenOptions::new().write(true).open(e.path()) else {
            continue;
        };
        if lock.try_lock().is_ok() {
            let _ = std::fs::remove_dir_all(kept_root.join(key));
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Checks the operator's CLI configuration; its canonical path.
fn operator_config(root: &Path, path: &Path) -> Result<PathBuf, String> {
    let why = |m: String| format!("{OPERATOR_CONFIG_VAR}={}: {m}", path.display());
    if !path.is_absolute() {
        return Err(why("must be an absolute path".into()));
    }
    let real = path.canonicalize().map_err(|e| why(e.to_string()))?;
    if inside(root, &real) {
        return Err(why(format!(
            "is inside the checkout {}, which the agent may write",
            root.display()
        )));
    }
    let text = std::fs::read_to_string(&real).map_err(|e| why(e.to_string()))?;
    let body = hcl_edit::parser::parse_body(&text).map_err(|e| {
        why(format!(
            "not readable as HCL native syntax (line {}: {})",
            e.location().line(),
            e.message()
        ))
    })?;
    check_config(root, &body).map_err(why)?;
    Ok(real)
}

/// An operator configuration must install providers explicitly, and from nowhere the checkout
/// can write.
fn check_config(root: &Path, body: &Body) -> Result<(), String> {
    let mut explicit = false;
    for s in body.iter() {
        match s {
            Structure::Attribute(a) if a.key.as_str() == "plugin_cache_dir" => {
                provider_dir(
                    root,
                    "plugin_cache_dir",
                    string(&a.value, "plugin_cache_dir")?,
                )?;
            }
            Structure::Block(b) if b.ident.as_str() == "provider_installation" => {
                explicit = true;
                for m in b.body.iter() {
                    let Structure::Block(method) = m else {
                        continue;
                    };
                    match method.ident.as_str() {
                        "dev_overrides" => return Err("has dev_overrides, which run local provider builds with no version or checksum: not for governed plans".into()),
                        "filesystem_mirror" => {
                            if let Some(a) = method.body.get_attribute("path") {
                                let what = "filesystem_mirror path";
                                provider_dir(root, what, string(&a.value, what)?)?;
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if !explicit {
        return Err("has no provider_installation block, so Terraform would also install providers from implied local mirrors, the checkout's terraform.d/plugins among them".into());
    }
    Ok(())
}

fn string<'a>(value: &'a Expression, what: &str) -> Result<&'a str, String> {
    match value {
        Expression::String(s) => Ok(s.value().as_str()),
        _ => Err(format!("{what} must be a string")),
    }
}

/// A directory Terraform installs providers from: absolute (or starting with a variable or `~`,
/// expanded by Terraform) and not inside the checkout.
fn provider_dir(root: &Path, what: &str, p: &str) -> Result<(), String> {
    if p.starts_with('$') || p.starts_with('~') {
        return Ok(());
    }
    let path = Path::new(p);
    if !path.is_absolute() {
        return Err(format!(
            "{what} = {p:?} is relative, so it would resolve inside the checkout"
        ));
    }
    let real = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    if inside(root, &real) {
        return Err(format!(
            "{what} = {p:?} is inside the checkout {}",
            root.display()
        ));
    }
    Ok(())
}

fn inside(root: &Path, path: &Path) -> bool {
    let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    path.starts_with(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_configuration_is_written_privately_and_is_explicit() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, work) = (tmp.path().join("repo"), tmp.path().join("work"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        let env = plan_env(&root, &work, None, None, None).unwrap();
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, PLAN_ENV_VARS);
        let written = std::fs::read_to_string(&env[0].1).unwrap();
        assert_eq!(written, DEFAULT_CONFIG);
        let body = hcl_edit::parser::parse_body(&written).unwrap();
        check_config(&root, &body).unwrap();
        assert!(Path::new(&env[1].1).is_dir() && env[1].1.starts_with(work.to_str().unwrap()));
    }

    #[test]
    fn an_operator_configuration_must_be_outside_the_checkout_and_explicit() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, work) = (tmp.path().join("repo"), tmp.path().join("work"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        let outside = tmp.path().join("ops.tfrc");
        let mirror = tmp.path().join("mirror").display().to_string();
        let put = |p: &Path, text: &str| std::fs::write(p, text).unwrap();
        let run = |p: &Path| plan_env(&root, &work, Some(p.to_str().unwrap()), None, None);

        put(
            &outside,
            &format!("plugin_cache_dir = \"$HOME/.cache/tf\"\nprovider_installation {{\n  filesystem_mirror {{\n    path = \"{mirror}\"\n  }}\n  direct {{}}\n}}\n"),
        );
        let env = run(&outside).unwrap();
        assert_eq!(
            env[0].1,
            outside.canonicalize().unwrap().display().to_string()
        );

        let refused = |text: &str, word: &str| {
            put(&outside, text);
            let e = run(&outside).unwrap_err();
            assert!(e.contains(word), "{text}: {e}");
        };
        refused(
            "plugin_cache_dir = \"/tmp\"\n",
            "no provider_installation block",
        );
        refused(
            "provider_installation {\n  filesystem_mirror {\n    path = \"terraform.d/plugins\"\n  }\n}\n",
            "relative",
        );
        refused(
            &format!(
                "provider_installation {{\n  filesystem_mirror {{\n    path = \"{}\"\n  }}\n}}\n",
                root.join("mirror").display()
            ),
            "inside the checkout",
        );
        refused(
            "provider_installation {\n  dev_overrides {\n    x = \"/opt/x\"\n  }\n}\n",
            "dev_overrides",
        );
        refused(
            &format!(
                "plugin_cache_dir = \"{}\"\nprovider_installation {{\n  direct {{}}\n}}\n",
                root.join("cache").display()
            ),
            "inside the checkout",
        );
        refused("provider_installation {", "not readable as HCL");

        let planted = root.join("rc");
        put(&planted, DEFAULT_CONFIG);
        assert!(run(&planted).unwrap_err().contains("inside the checkout"));
        assert!(plan_env(&root, &work, Some("rc"), None, None)
            .unwrap_err()
            .contains("absolute"));
        // The inherited plugin cache is held to the same rule.
        let cache = |dir: &str| plan_env(&root, &work, None, Some(dir), None);
        assert!(cache("/var/cache/terraform").is_ok());
        assert!(cache("cache").unwrap_err().contains("relative"));
        let inside = root.join("cache").display().to_string();
        assert!(cache(&inside).unwrap_err().contains("inside the checkout"));
    }

    #[test]
    fn a_kept_data_directory_is_private_locked_outside_the_checkout_and_pruned() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let (repo, cache) = (tmp.path().join("repo"), tmp.path().join("cache"));
        std::fs::create_dir_all(&repo).unwrap();
        let root = kept_data_root(Some(cache.to_str().unwrap()), Some("/nowhere")).unwrap();
        assert_eq!(root, cache.join("airlock/plan-data"));
        assert_eq!(
            kept_data_root(None, Some("/home/u")),
            Some(PathBuf::from("/home/u/.cache/airlock/plan-data"))
        );
        assert_eq!(kept_data_root(Some("rel"), None), None);

        let kept = kept_data_dir(&root, &repo, "ab12").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&kept.path), 0o700);
        assert_eq!(mode(&root), 0o700);
        let env = plan_env(&repo, tmp.path(), None, None, Some(&kept)).unwrap();
        assert_eq!(env[1].1, kept.path.display().to_string());
        // One plan at a time: another gets none (and uses a fresh directory).
        assert!(kept_data_dir(&root, &repo, "ab12").is_none());
        drop(kept);
        assert!(kept_data_dir(&root, &repo, "ab12").is_some());
        // Only a digest names one: no path escapes the root.
        assert!(kept_data_dir(&root, &repo, "../ab").is_none());
        assert!(kept_data_dir(&root, &repo, "").is_none());
        // Never inside the checkout.
        let inside = repo.join(".cache/airlock/plan-data");
        assert!(kept_data_dir(&inside, &repo, "ab12").is_none());
        // Not one that others may write, nor under a directory others may write.
        std::fs::set_permissions(root.join("ab12"), std::fs::Permissions::from_mode(0o770))
            .unwrap();
        assert!(kept_data_dir(&root, &repo, "ab12").is_none());
        let open = tmp.path().join("open");
        std::fs::create_dir_all(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(kept_data_dir(&open.join("plan-data"), &repo, "ab12").is_none());
        // One unused for longer than KEPT_FOR goes when another plan starts.
        assert!(kept_data_dir(&root, &repo, "cd34").is_some());
        let lock = std::fs::File::options()
            .write(true)
            .open(root.join("cd34.lock"))
            .unwrap();
        let old = std::time::SystemTime::now() - KEPT_FOR - std::time::Duration::from_secs(60);
        lock.set_modified(old).unwrap();
        drop(lock);
        assert!(kept_data_dir(&root, &repo, "ef56").is_some());
        assert!(!root.join("cd34").exists() && !root.join("cd34.lock").exists());
        assert!(root.join("ef56").is_dir());
    }
}
