//! Command-line definitions (clap types only). Every subcommand's flags live here so help text
//! is generated from one place; behaviour lives in `commands/<noun>.rs`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// airlock: a state server, plan gate and governed runs for Terraform and OpenTofu.
#[derive(Debug, Parser)]
#[command(name = "airlock", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a plan for destructive or dangerous changes and apply policy.
    Check(CheckArgs),
}

/// Output format of `airlock check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CheckFormat {
    Text,
    Markdown,
    Json,
    Sarif,
}

/// Which decision makes `airlock check` exit non-zero besides `deny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FailOn {
    Review,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Plan to check: `terraform show -json` output, a binary plan file, or `-` for stdin.
    pub plan: String,
    /// Repository configuration (airlock.hcl).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Directory of Rego policies (conftest conventions: `deny`/`warn` rules).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = CheckFormat::Text)]
    pub format: CheckFormat,
    /// Also exit non-zero (3) when the decision is `review`.
    #[arg(long, value_enum)]
    pub fail_on: Option<FailOn>,
    /// Terraform binary used to read a binary plan file (e.g. `tofu`).
    #[arg(long, env = "AIRLOCK_TERRAFORM_BIN", default_value = "terraform")]
    pub terraform_bin: String,
}
