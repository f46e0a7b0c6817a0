//! `airlock mcp`: the Model Context Protocol over stdio (being written).

use std::process::ExitCode;

use crate::cli::McpArgs;

/// Runs `airlock mcp`.
pub fn run(_args: McpArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("airlock mcp is not implemented yet")
}
