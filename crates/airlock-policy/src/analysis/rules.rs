//! Rule identifiers, stable across releases (they appear in JSON and SARIF output).

/// A critical resource is destroyed without an `allow_destroy` declaration.
pub const CRITICAL_DESTROY: &str = "critical-destroy";
/// A critical resource is destroyed, as declared by `allow_destroy`.
pub const DECLARED_DESTROY: &str = "declared-destroy";
/// An `allow_destroy` declaration matches nothing the plan destroys.
pub const UNUSED_DECLARATION: &str = "unused-allow-destroy";
/// A protection attribute is turned off or weakened.
pub const PROTECTION_WEAKENED: &str = "protection-weakened";
/// A resource is deleted while its protection is on: the apply will fail.
pub const PROTECTED_DELETE: &str = "protected-delete";
/// A resource is deleted and the provider deletes its backups with it.
pub const BACKUPS_DELETED: &str = "backups-deleted";
/// More instances are destroyed than the mass-destruction limits allow.
pub const MASS_DESTRUCTION: &str = "mass-destruction";
/// Something is destroyed in a production stack.
pub const PRODUCTION_DESTROY: &str = "production-destroy";
/// A whole module call was removed.
pub const MODULE_REMOVED: &str = "module-removed";
/// A `count` index or `for_each` key was removed.
pub const INSTANCE_KEY_REMOVED: &str = "instance-key-removed";
/// A replacement was requested with `-replace`.
pub const REPLACE_REQUESTED: &str = "replace-requested";
/// A tainted object is replaced.
pub const TAINTED_REPLACE: &str = "tainted-replace";
/// An object is removed from state without being destroyed.
pub const FORGET: &str = "forget";
/// An action list airlock does not know.
pub const UNKNOWN_ACTION: &str = "unknown-action";
/// The plan is errored (partial) and cannot be applied.
pub const PLAN_ERRORED: &str = "plan-errored";
