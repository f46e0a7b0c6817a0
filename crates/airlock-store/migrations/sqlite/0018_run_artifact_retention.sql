-- Run artifact retention. A run's binary plan (`plan.tfplan`, what `terraform plan -out`
-- writes: the whole prior state and every planned value, sensitive ones included) can never be
-- applied once its run is terminal, so its bytes are purged in the transaction that makes the
-- run terminal (`core::update_run`); a tombstone stays: name, SHA-256 and length (what was
-- applied remains identifiable by hash) and the purge time. The plan JSON, the logs and every
-- other artifact are kept for good.
ALTER TABLE run_artifacts ADD COLUMN purged_at INTEGER;

-- The one change ever allowed to an artifact row is that purge: a terminal run's binary plan,
-- not purged before, loses its bytes and gains a purge time, its run, name, hash and length
-- unchanged. Deletes stay refused (run_artifacts_no_delete, 0002).
DROP TRIGGER run_artifacts_no_update;
CREATE TRIGGER run_artifacts_only_purge BEFORE UPDATE ON run_artifacts
WHEN NOT (
    OLD.purged_at IS NULL AND NEW.purged_at IS NOT NULL
    AND typeof(NEW.data) = 'blob' AND length(NEW.data) = 0
    AND NEW.run_id IS OLD.run_id AND NEW.name IS OLD.name
    AND NEW.sha256 IS OLD.sha256 AND NEW.raw_len IS OLD.raw_len
    AND OLD.name = 'plan.tfplan'
    AND (SELECT status FROM runs WHERE id = OLD.run_id) IN
        ('applied', 'failed', 'rejected', 'superseded', 'expired', 'denied', 'no_changes', 'withdrawn')
)
BEGIN SELECT RAISE(ABORT, 'run artifacts are immutable: only a terminal run''s binary plan may be purged, keeping its name, hash and length'); END;

-- A tombstone is inserted only as what that purge leaves (a terminal run created or imported).
CREATE TRIGGER run_artifacts_tombstones_of_terminal_runs BEFORE INSERT ON run_artifacts
WHEN NEW.purged_at IS NOT NULL AND NOT (
    typeof(NEW.data) = 'blob' AND length(NEW.data) = 0
    AND NEW.name = 'plan.tfplan'
    AND (SELECT status FROM runs WHERE id = NEW.run_id) IN
        ('applied', 'failed', 'rejected', 'superseded', 'expired', 'denied', 'no_changes', 'withdrawn')
)
BEGIN SELECT RAISE(ABORT, 'run artifacts are immutable: only a terminal run''s binary plan may be a tombstone'); END;

-- The binary plans of runs that are terminal already, their freed pages zeroed (as
-- `core::purge_plan` does with `Sql::erase_freed`).
PRAGMA secure_delete = ON;
UPDATE run_artifacts SET data = X'', purged_at = CAST(strftime('%s', 'now') AS INTEGER) * 1000
WHERE name = 'plan.tfplan' AND purged_at IS NULL AND run_id IN (
    SELECT id FROM runs WHERE status IN
        ('applied', 'failed', 'rejected', 'superseded', 'expired', 'denied', 'no_changes', 'withdrawn')
);
PRAGMA secure_delete = OFF;
