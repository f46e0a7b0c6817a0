//! Integration tests: spawn the real `airlock` binary (and real `terraform`).

mod attacks;
mod check;
mod client;
mod firewall_identity;
mod hints;
mod mcp;
mod policies;
mod readme;
mod reliability;
mod runs;
mod stack_undo;
mod state_server;
mod support;
mod ux;
