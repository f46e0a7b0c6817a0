//! The airlock binary: CLI entry point, and the one place exit codes are decided ([`exit`]).

/// jemalloc, not glibc's malloc: see `tikv-jemallocator` in Cargo.toml.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod cli;
mod commands;

use std::io::Write;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

/// The exit codes, one per class of outcome. Documented in `--help` ([`EXIT_CODES_HELP`]) and
/// the README; tests run the real binary against each.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// An error: bad input, not found, the server unreachable, Terraform failed.
    pub const ERROR: u8 = 1;
    /// Refused: the server said no for a reason of policy (HTTP 403 permission or firewall,
    /// 409 conflict with the stored state or a run, 423 locked), `check`/`plan` decided `deny`,
    /// or `apply` refused a plan that is not the reviewed one.
    pub const DENIED: u8 = 2;
    /// `check --fail-on review`: the plan needs human review; `doctor --fail-on`: a question is
    /// at least that bad.
    pub const REVIEW: u8 = 3;
    /// Not authenticated: no token, or the server does not accept it (HTTP 401: unknown,
    /// expired or revoked).
    pub const UNAUTHENTICATED: u8 = 4;
    /// The command line is wrong (unknown flag, missing argument): EX_USAGE.
    pub const USAGE: u8 = 64;
}

/// The `--help` footer listing [`exit`].
const EXIT_CODES_HELP: &str = "Exit codes: 0 ok, 1 error, 2 refused (permission, firewall, lock, conflict, policy deny), 3 review needed (check --fail-on review) or a doctor question at least as bad as --fail-on, 4 not authenticated (no, unknown, expired or revoked token), 64 usage error.";

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
    let matches = match cli::Cli::command()
        .after_help(EXIT_CODES_HELP)
        .try_get_matches()
    {
        Ok(m) => m,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    let json = json_requested(&matches);
    let cli = match cli::Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(exit::USAGE);
        }
    };
    if matches!(
        cli.command,
        cli::Command::Plan(_)
            | cli::Command::Apply(_)
            | cli::Command::Ci(_)
            | cli::Command::Mcp(_)
            | cli::Command::Drift(_)
    ) {
        commands::forward_interrupts();
    }
    let result = match cli.command {
        cli::Command::Server(args) => commands::server::run(args),
        cli::Command::Token(cmd) => commands::token::run(cmd),
        cli::Command::User(cmd) => commands::token::run_user(cmd),
        cli::Command::Stack(cmd) => commands::stack::run(cmd),
        cli::Command::Policy(cmd) => commands::policy::run(cmd),
        cli::Command::BackendConfig(args) => commands::stack::backend_config(args),
        cli::Command::State(cmd) => commands::state::run(cmd),
        cli::Command::Audit(args) => commands::audit::run(args),
        cli::Command::Why(args) => commands::audit::why(args),
        cli::Command::Whoami(args) => commands::audit::whoami(args),
        cli::Command::Check(args) => commands::check::run(args),
        cli::Command::Plan(args) => commands::run::plan(args),
        cli::Command::Runs(args) => commands::run::list(args),
        cli::Command::Run(cli::RunCommand::Show { id, client }) => {
            commands::run::show(&id, &client)
        }
        cli::Command::Run(cli::RunCommand::Withdraw { id, client }) => {
            commands::run::withdraw(&id, &client)
        }
        cli::Command::Approve(args) => commands::run::approve(args),
        cli::Command::Reject(args) => commands::run::reject(args),
        cli::Command::Apply(args) => commands::run::apply(args),
        cli::Command::Ci(cmd) => commands::ci::run(cmd),
        cli::Command::Mcp(args) => commands::mcp::run(args),
        cli::Command::Guard(cmd) => commands::guard::run(cmd),
        cli::Command::Backup(cmd) => commands::backup::run(cmd),
        cli::Command::Migrate(args) => commands::migrate::run(args),
        cli::Command::Drift(args) => commands::drift::run(args),
        cli::Command::Oidc(cmd) => commands::oidc::rotate(cmd),
        cli::Command::Trust(cmd) => commands::oidc::trust(cmd),
        cli::Command::Login(args) => commands::oidc::login(args),
        cli::Command::Doctor(args) => commands::doctor::run(args),
        cli::Command::Demo(cli::DemoCommand::Incident {
            without_airlock,
            keep,
        }) => commands::demo::incident(without_airlock, keep),
        cli::Command::RegoEval => commands::policy::rego_eval(),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            let (code, class) = classify(&err);
            if json {
                let body = match err.downcast_ref::<commands::client::ServerRefused>() {
                    Some(r) => {
                        serde_json::json!({"error": {"code": class, "message": r.message, "status": r.status}})
                    }
                    None => {
                        serde_json::json!({"error": {"code": class, "message": format!("{err:#}")}})
                    }
                };
                eprintln!("{body}");
            } else {
                eprintln!("error: {err:#}");
            }
            ExitCode::from(code)
        }
    }
}

/// Whether the (sub)command was asked for `--format json`: its errors are JSON too.
fn json_requested(matches: &clap::ArgMatches) -> bool {
    let mut m = matches;
    while let Some((_, sub)) = m.subcommand() {
        m = sub;
    }
    m.try_get_raw("format")
        .ok()
        .flatten()
        .is_some_and(|mut v| v.any(|x| x == "json"))
}

/// The exit code and the JSON error code of a failed command.
fn classify(err: &anyhow::Error) -> (u8, String) {
    if let Some(r) = err.downcast_ref::<commands::client::ServerRefused>() {
        let code = match r.status {
            401 => exit::UNAUTHENTICATED,
            403 | 409 | 423 => exit::DENIED,
            _ => exit::ERROR,
        };
        return (code, r.code.clone());
    }
    if err.downcast_ref::<commands::client::NoToken>().is_some() {
        return (exit::UNAUTHENTICATED, "unauthenticated".into());
    }
    (exit::ERROR, "error".into())
}
