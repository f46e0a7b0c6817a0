//! In-process protocol, firewall and authorization tests of the state server: the real router
//! on a real SQLite store, driven with `tower::ServiceExt::oneshot`.
//!
//! - `protocol`: every status code of the Terraform `http` backend contract and malformed input;
//! - `auth`: Bearer, Basic, and every way a credential can be bad;
//! - `firewall`: invariant 2, the lock rules by operation, grants and protection;
//! - `matrix`: every route × every role against docs/design.md's matrix, default deny, token scope;
//! - `serving`: the real listener over TCP: slow clients, the connection cap, login bodies
//!   trickled in, huge methods, bodies read only after authorization and within the caller's
//!   role's limit, lock info with control characters.
//! - `identity`: users own tokens; phase tokens die with their parent; scoped admins stay inside.
//! - `console`: the web console at `/ui/`: every console route × role, headers, sessions, CSRF,
//!   hostile text.
//! - `plan_reports`: a plan-phase token lives while its minter reports, and only its minter.
//! - `policies`: server Rego policy sets: admin-only changes, bounds, versions, audit.
//! - `mcp`: the MCP endpoint: tool lists per role, transport rules, hostile arguments, audit.
//! - `run_uploads`: hostile streamed run uploads (truncated, altered, bombs, wrong type).
//! - `attacks_tier2`, `attacks_tier3`, `attacks_tier4`, `attacks_review8`: adversarial reviews,
//!   one attack per test.
//! - `read_stacks`: a plan-phase token's read stacks (`terraform_remote_state`): never wider than
//!   its minter, state reads only.
//! - `state_reuse`: a state write reads only the resource elements that changed.
//! - `revoked_approvals`: an approval revoked while the apply starts never counts after it.
//! - `scoped_mint`: a stack-scoped admin mints only for people wholly within its scope, and a
//!   person holding its tokens is not given rights beyond that scope until they are revoked.

#[path = "http/attacks_review8.rs"]
mod attacks_review8;
#[path = "http/attacks_tier2.rs"]
mod attacks_tier2;
#[path = "http/attacks_tier3.rs"]
mod attacks_tier3;
#[path = "http/attacks_tier4.rs"]
mod attacks_tier4;
#[path = "http/auth.rs"]
mod auth;
#[path = "http/console.rs"]
mod console;
#[path = "http/firewall.rs"]
mod firewall;
#[path = "http/identity.rs"]
mod identity;
#[path = "http/matrix.rs"]
mod matrix;
#[path = "http/mcp.rs"]
mod mcp;
#[path = "http/plan_reports.rs"]
mod plan_reports;
#[path = "http/policies.rs"]
mod policies;
#[path = "http/protocol.rs"]
mod protocol;
#[path = "http/read_stacks.rs"]
mod read_stacks;
#[path = "http/revoked_approvals.rs"]
mod revoked_approvals;
#[path = "http/run_uploads.rs"]
mod run_uploads;
#[path = "http/scoped_mint.rs"]
mod scoped_mint;
#[path = "http/serving.rs"]
mod serving;
#[path = "http/state_reuse.rs"]
mod state_reuse;
#[path = "http/support.rs"]
mod support;
