//! `airlock ci plan` (being written; see the ci module).

use std::process::ExitCode;

use crate::cli::CiPlanArgs;

/// Runs `airlock ci plan`.
pub fn run(_args: CiPlanArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("airlock ci plan is not implemented yet")
}
