//! `airlock ci init` (being written; see the ci module).

use std::process::ExitCode;

use crate::cli::CiInitArgs;

/// Runs `airlock ci init`.
pub fn run(_args: CiInitArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("airlock ci init is not implemented yet")
}
