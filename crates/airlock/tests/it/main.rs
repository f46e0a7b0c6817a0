//! Integration tests: spawn the real `airlock` binary (and real `terraform`).

mod attacks;
mod attacks_tier2;
mod attacks_tier3;
mod attacks_tier4;
mod check;
mod ci_affected;
mod ci_init;
mod ci_pr;
mod client;
mod console;
mod doctor;
mod firewall_identity;
mod forge;
mod git_repo;
mod hints;
mod mcp;
mod oidc;
mod policies;
mod readme;
mod reliability;
mod retention;
mod runs;
mod stack_undo;
mod state_server;
mod support;
mod token_minters;
mod ux;
// The local test cloud (crates/airlock-testcloud): harness, provider, incident replay.
mod cloud_provider;
mod incident;
mod testcloud;
// drift detection (issue 14 part 2)
mod drift;
mod drift_cloud;
// drift accepted through a governed run (`airlock drift --propose`, issue 14)
mod drift_propose;
// real configurations through the governed flow (outputs, tfvars, modules, moved/removed/import, ...)
mod realworld;
// the apply's plan check gates the state lock (issue 17 §3)
mod attacks_apply_gate;
// review 5: attacks on issue 17 work (apply gate, drift hashes, drift proposals)
mod attacks_tier5;
// review 7: the promises governed runs make, attacked with low-privilege credentials
mod attacks_review7;
// an applying run lives while its applier reports; a lost applier's run is closed
mod apply_liveness;
// a plan-phase token lives while its planner reports
mod plan_liveness;
