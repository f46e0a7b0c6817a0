//! `airlock ci affected` (being written; see the ci module).

use std::process::ExitCode;

use crate::cli::CiAffectedArgs;

/// Runs `airlock ci affected`.
pub fn run(_args: CiAffectedArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("airlock ci affected is not implemented yet")
}
