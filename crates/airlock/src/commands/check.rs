//! `airlock check`: plan safety analysis (placeholder until the plan gate lands).

use std::process::ExitCode;

use crate::cli::CheckArgs;

pub fn run(_args: CheckArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("airlock check is not implemented yet")
}
