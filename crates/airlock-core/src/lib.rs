//! airlock's domain model: stack names, the Terraform state v4 reader, roles and permissions,
//! glob matching, lock info and the audit hash chain. Pure: no I/O, never panics on input.

#![deny(clippy::print_stdout, clippy::print_stderr)]
#![deny(missing_docs)]
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod address;
pub mod attr_diff;
pub mod audit;
pub mod glob;
pub mod inputs;
pub mod lockinfo;
pub mod role;
pub mod stack;
pub mod state;
pub mod state_serial;

pub use role::{Permission, PrincipalKind, Role};
pub use stack::StackName;
pub mod refusal;
pub mod text;
pub mod time;
