//! The airlock binary: CLI entry point. Exit codes: 0 success, 1 error, 2 denied by policy or
//! firewall (and 3 from `check --fail-on review`).

mod cli;
mod commands;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

/// Writes to stdout; a closed pipe (`airlock state pull | head`) is not an error.
pub fn out(text: &str) {
    out_bytes(text.as_bytes());
}

/// Writes bytes to stdout, ignoring a closed pipe.
pub fn out_bytes(bytes: &[u8]) {
    let mut stdout = std::io::stdout().lock();
    if stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .is_err()
    {
        std::process::exit(0);
    }
}

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let result = match cli.command {
        cli::Command::Server(args) => commands::server::run(args),
        cli::Command::Token(cmd) => commands::token::run(cmd),
        cli::Command::User(cmd) => commands::token::run_user(cmd),
        cli::Command::Stack(cmd) => commands::stack::run(cmd),
        cli::Command::BackendConfig(args) => commands::stack::backend_config(args),
        cli::Command::State(cmd) => commands::state::run(cmd),
        cli::Command::Audit(args) => commands::audit::run(args),
        cli::Command::Whoami(args) => commands::audit::whoami(args),
        cli::Command::Check(args) => commands::check::run(args),
        cli::Command::Plan(args) => commands::run::plan(args),
        cli::Command::Runs(args) => commands::run::list(args),
        cli::Command::Run(cli::RunCommand::Show { id, client }) => {
            commands::run::show(&id, &client)
        }
        cli::Command::Approve(args) => commands::run::approve(args),
        cli::Command::Reject(args) => commands::run::reject(args),
        cli::Command::Apply(args) => commands::run::apply(args),
        cli::Command::Guard(cmd) => commands::guard::run(cmd),
        cli::Command::Backup(cmd) => commands::backup::run(cmd),
        cli::Command::Migrate(args) => commands::migrate::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            match err.downcast_ref::<commands::client::ServerRefused>() {
                Some(r) if r.status == 403 => ExitCode::from(2),
                _ => ExitCode::from(1),
            }
        }
    }
}
