//! One module per CLI noun; each exposes `run`.

pub mod audit;
pub mod backup;
pub mod check;
pub mod ci;
pub mod client;
pub mod guard;
pub mod mcp;
pub mod migrate;
pub mod policy;
pub mod run;
pub mod server;
pub mod stack;
pub mod state;
pub mod token;
