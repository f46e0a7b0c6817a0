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
//! - `TF_DATA_DIR`: a fresh directory in that scratch directory, so nothing under the
//!   checkout's `.terraform` is used.

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
/// set (Terraform installs from the cache too, so it must not be in the checkout either).
pub fn plan_env(
    root: &Path,
    work: &Path,
    operator: Option<&str>,
    plugin_cache: Option<&str>,
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
    let data = work.join("terraform-data");
    std::fs::create_dir_all(&data).map_err(|e| format!("creating {}: {e}", data.display()))?;
    Ok(vec![
        ("TF_CLI_CONFIG_FILE".into(), config.display().to_string()),
        ("TF_DATA_DIR".into(), data.display().to_string()),
    ])
}

/// The variables [`plan_env`] sets; a child inherits none of them.
pub const PLAN_ENV_VARS: &[&str] = &["TF_CLI_CONFIG_FILE", "TF_DATA_DIR"];

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
        let env = plan_env(&root, &work, None, None).unwrap();
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
        let run = |p: &Path| plan_env(&root, &work, Some(p.to_str().unwrap()), None);

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
        assert!(plan_env(&root, &work, Some("rc"), None)
            .unwrap_err()
            .contains("absolute"));
        // The inherited plugin cache is held to the same rule.
        let cache = |dir: &str| plan_env(&root, &work, None, Some(dir));
        assert!(cache("/var/cache/terraform").is_ok());
        assert!(cache("cache").unwrap_err().contains("relative"));
        let inside = root.join("cache").display().to_string();
        assert!(cache(&inside).unwrap_err().contains("inside the checkout"));
    }
}
