//! `airlock ci apply` (being written; see the ci module).

use std::process::ExitCode;

use crate::cli::CiApplyArgs;

/// Runs `airlock ci apply`.
pub fn run(_args: CiApplyArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("airlock ci apply is not implemented yet")
}
