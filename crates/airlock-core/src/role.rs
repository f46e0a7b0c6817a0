//! Roles and the fixed permission matrix of docs/design.md. Authorization decisions are made from
//! this table only; per-stack settings may narrow or widen direct writes, but never for agents
//! or readers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What kind of caller a principal is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrincipalKind {
    /// A person.
    Human,
    /// A CI pipeline.
    Ci,
    /// An AI coding agent.
    Agent,
}

/// A fixed set of permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including token and stack management.
    Admin,
    /// Reviews: approve/reject runs, restore versions, force-unlock.
    Approver,
    /// Pipelines: plan and apply approved runs.
    Ci,
    /// AI agents: read and plan only.
    Agent,
    /// Read only.
    Reader,
}

/// One permission of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// Read state, history and runs.
    Read,
    /// Take and release one's own lock (without write permission: only for planning).
    Lock,
    /// Create a run (plan).
    CreateRun,
    /// Approve or reject a run (never one's own).
    Approve,
    /// Apply an approved run.
    ApplyRun,
    /// Write state outside a run (further limited by the stack's `direct_writes`).
    WriteState,
    /// Restore an old version as a new one.
    Restore,
    /// Release someone else's lock.
    ForceUnlock,
    /// Manage tokens and stack settings.
    Admin,
    /// Upload a drift report (its "in sync" clears a stack's drift status, so agents, whose
    /// report could hide drift, may run drift checks but not record them).
    ReportDrift,
    /// Download a run's plan files (`plan.tfplan`, its `terraform show -json`): Terraform writes
    /// every root variable's value into them in clear, sensitive ones included (a provider
    /// credential of whoever planned), which the state never holds.
    ReadPlan,
}

impl Permission {
    /// The permission's name as shown in denial messages.
    pub fn name(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Lock => "lock",
            Permission::CreateRun => "create-run",
            Permission::Approve => "approve",
            Permission::ApplyRun => "apply-run",
            Permission::WriteState => "write-state",
            Permission::Restore => "restore",
            Permission::ForceUnlock => "force-unlock",
            Permission::Admin => "admin",
            Permission::ReportDrift => "report-drift",
            Permission::ReadPlan => "read-plan",
        }
    }
}

impl Role {
    /// Every role, in matrix order.
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::Approver,
        Role::Ci,
        Role::Agent,
        Role::Reader,
    ];

    /// Does this role carry `permission`? This is the docs/design.md matrix, verbatim.
    pub fn has(self, permission: Permission) -> bool {
        use Permission as P;
        use Role as R;
        match permission {
            P::Read => true,
            P::Lock | P::CreateRun => !matches!(self, R::Reader),
            P::Approve | P::Restore | P::ForceUnlock => matches!(self, R::Admin | R::Approver),
            P::ApplyRun => matches!(self, R::Admin | R::Ci),
            P::WriteState | P::Admin => matches!(self, R::Admin),
            P::ReportDrift | P::ReadPlan => matches!(self, R::Admin | R::Approver | R::Ci),
        }
    }

    /// Could this role ever write state directly, if a stack's settings named it?
    /// Agents and readers never can: not by configuration, not by an admin.
    pub fn may_be_granted_direct_writes(self) -> bool {
        matches!(self, Role::Admin | Role::Approver | Role::Ci)
    }

    /// The kind of principal that holds this role.
    pub fn kind(self) -> PrincipalKind {
        match self {
            Role::Ci => PrincipalKind::Ci,
            Role::Agent => PrincipalKind::Agent,
            Role::Admin | Role::Approver | Role::Reader => PrincipalKind::Human,
        }
    }

    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Approver => "approver",
            Role::Ci => "ci",
            Role::Agent => "agent",
            Role::Reader => "reader",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!("unknown role {s:?}: expected one of admin, approver, ci, agent, reader")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_can_never_write_approve_apply_restore_or_force_unlock() {
        for p in [
            Permission::WriteState,
            Permission::Approve,
            Permission::ApplyRun,
            Permission::Restore,
            Permission::ForceUnlock,
            Permission::Admin,
        ] {
            assert!(!Role::Agent.has(p), "{p:?}");
        }
        assert!(!Role::Agent.may_be_granted_direct_writes());
        assert!(!Role::Reader.may_be_granted_direct_writes());
    }

    #[test]
    fn roles_round_trip() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
        }
        assert!("root".parse::<Role>().is_err());
    }
}
