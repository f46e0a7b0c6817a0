//! `airlock guard install DIR`: a `terraform` shim for an agent's PATH that passes read-only
//! subcommands to the real binary and refuses everything that changes state or
//! infrastructure. It is a courtesy that fails early with a useful message; the server's token
//! scopes are the wall.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};

use crate::cli::GuardCommand;

/// The real terraform: the first on PATH that is not inside `shim_dir`.
fn find_terraform(shim_dir: &Path) -> Option<PathBuf> {
    let shim_dir = shim_dir.canonicalize().ok();
    std::env::split_paths(&std::env::var_os("PATH")?)
        .filter(|d| d.canonicalize().ok() != shim_dir)
        .map(|d| d.join("terraform"))
        .find(|p| p.is_file())
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

pub fn run(cmd: GuardCommand) -> anyhow::Result<ExitCode> {
    let GuardCommand::Install { dir, terraform_bin } = cmd;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let real = match terraform_bin {
        Some(p) => p,
        None => find_terraform(&dir).context(
            "no terraform found on PATH outside the guard directory; pass --terraform-bin",
        )?,
    };
    let real = real
        .canonicalize()
        .with_context(|| format!("{} does not exist", real.display()))?;
    if real.starts_with(dir.canonicalize()?) {
        bail!("the real terraform cannot live inside the guard directory");
    }
    let script = format!(
        r#"#!/bin/sh
# airlock guard: read-only terraform for AI agents (installed by `airlock guard install`).
# Agents may read, plan and propose; they never change state or infrastructure.
REAL={real}
refuse() {{
  echo "airlock guard: \`terraform $*\` is not available here: it changes state or infrastructure." >&2
  echo "Propose the change instead: run \`airlock plan\`, and a human reviews and approves it." >&2
  exit 2
}}
# Skip global options such as -chdir=DIR to find the subcommand.
sub=""
for a in "$@"; do
  case "$a" in
    -chdir=*) ;;
    -*) [ -z "$sub" ] && sub="$a" && break ;;
    *) sub="$a"; break ;;
  esac
done
next=""
found=0
for a in "$@"; do
  if [ "$found" = 1 ]; then
    case "$a" in -*) ;; *) next="$a"; break ;; esac
  fi
  [ "$a" = "$sub" ] && found=1
done
case "$sub" in
  ""|init|validate|fmt|plan|show|output|providers|version|graph|-version|--version|-v|-help|--help|-h|console|metadata)
    exec "$REAL" "$@" ;;
  state)
    case "$next" in list|show|pull) exec "$REAL" "$@" ;; *) refuse "$@" ;; esac ;;
  workspace)
    case "$next" in show|list) exec "$REAL" "$@" ;; *) refuse "$@" ;; esac ;;
  *)
    refuse "$@" ;;
esac
"#,
        real = shell_quote(&real.to_string_lossy())
    );
    let path = dir.join("terraform");
    std::fs::write(&path, script).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    }
    crate::out(&format!(
        "installed {} (wrapping {})\nput it first on the agent's PATH: export PATH={}:$PATH\n",
        path.display(),
        real.display(),
        dir.display()
    ));
    Ok(ExitCode::SUCCESS)
}
