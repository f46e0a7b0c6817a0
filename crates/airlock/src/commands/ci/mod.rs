//! `airlock ci`: the pull-request workflow.
//!
//! - `affected`: which stacks a change affects and why;
//! - `init`: the CI workflow files for GitHub Actions and GitLab CI;
//! - `plan`: governed runs for the affected stacks, the sticky comment, statuses;
//! - `apply`: after merge, the approved runs whose inputs are the checkout's;
//! - `forge`: the GitHub and GitLab REST clients (comments, statuses, drift issues);
//! - `drift`: scheduled drift checks, one forge issue per drifted stack, never an apply.

use std::process::ExitCode;

use crate::cli::CiCommand;

pub mod affected;
pub mod apply;
pub mod comment;
pub mod drift;
pub mod flow;
pub mod forge;
pub mod init;
pub mod plan;

/// Runs one `airlock ci` command.
pub fn run(cmd: CiCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CiCommand::Init(args) => init::run(args),
        CiCommand::Affected(args) => affected::run(args),
        CiCommand::Plan(args) => plan::run(args),
        CiCommand::Apply(args) => apply::run(args),
        CiCommand::Drift(args) => drift::run(args),
    }
}
