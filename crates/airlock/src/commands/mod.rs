//! One module per CLI noun; each exposes `run`.

pub mod audit;
pub mod backup;
pub mod check;
pub mod ci;
pub mod client;
pub mod doctor;
pub mod drift;
pub mod guard;
pub mod mcp;
pub mod migrate;
pub mod oidc;
pub mod policy;
pub mod run;
pub mod server;
pub mod stack;
pub mod state;
pub mod token;
// The local-test-cloud demo (issue 14).
pub mod demo;

/// For commands that run terraform: SIGINT and SIGTERM (a terminal's Ctrl-C, a CI job being
/// cancelled, an MCP client ending its server) are handed to the running terraform as one
/// interrupt each, and airlock waits for it to cancel, so that it releases its state lock and
/// airlock reports the run's end (`airlock_runner::interrupt`). With no terraform running,
/// airlock removes its scratch directories (plan files) and exits at once with 128 + the
/// signal's number, as it would without a handler.
pub fn forward_interrupts() {
    std::thread::spawn(|| {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            loop {
                let code = tokio::select! {
                    _ = int.recv() => 130,
                    _ = term.recv() => 143,
                };
                if !airlock_runner::interrupt() {
                    run::remove_scratch_dirs();
                    std::process::exit(code);
                }
            }
        });
    });
}
