//! airlock's plan gate: reads a Terraform/OpenTofu plan (`terraform show -json`) as a stream,
//! classifies every resource change, applies the built-in rules, the repository's `airlock.hcl`
//! and optional Rego policies, and returns a `Decision` as data.
//!
//! Pure: no I/O, never panics on any input (the plan reader is fuzzed).

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

pub mod analysis;
pub mod catalogue;
pub mod config;
pub mod drift;
pub mod gate;
pub mod plan;
pub mod planfile;
pub mod rego;
pub mod report;
