-- Run artifact retention for PostgreSQL: the same logical schema as
-- migrations/sqlite/0018_run_artifact_retention.sql. A terminal run's binary plan
-- (`plan.tfplan`: the whole prior state and every planned value, sensitive ones included) is
-- purged in the transaction that makes the run terminal (`core::update_run`), leaving a
-- tombstone: name, SHA-256, length and the purge time.
ALTER TABLE run_artifacts ADD COLUMN purged_at BIGINT;

CREATE FUNCTION airlock_run_artifact_is_terminal_plan(run TEXT, name TEXT) RETURNS BOOLEAN
LANGUAGE sql STABLE AS $$
    SELECT name = 'plan.tfplan' AND EXISTS (
        SELECT 1 FROM runs WHERE id = run AND status IN
            ('applied', 'failed', 'rejected', 'superseded', 'expired', 'denied', 'no_changes', 'withdrawn'))
$$;

-- The one change ever allowed to an artifact row is that purge: a terminal run's binary plan,
-- not purged before, loses its bytes and gains a purge time, its run, name, hash and length
-- unchanged. Deletes and TRUNCATE stay refused.
CREATE FUNCTION airlock_run_artifact_purge_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.purged_at IS NULL AND NEW.purged_at IS NOT NULL AND octet_length(NEW.data) = 0
        AND NEW.run_id = OLD.run_id AND NEW.name = OLD.name
        AND NEW.sha256 = OLD.sha256 AND NEW.raw_len = OLD.raw_len
        AND airlock_run_artifact_is_terminal_plan(OLD.run_id, OLD.name)
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'run artifacts are immutable: only a terminal run''s binary plan may be purged, keeping its name, hash and length'
        USING ERRCODE = 'restrict_violation';
END;
$$;

-- A tombstone is inserted only as what that purge leaves (a terminal run created or imported).
CREATE FUNCTION airlock_run_artifact_tombstone_check() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.purged_at IS NULL OR (octet_length(NEW.data) = 0
        AND airlock_run_artifact_is_terminal_plan(NEW.run_id, NEW.name))
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'run artifacts are immutable: only a terminal run''s binary plan may be a tombstone'
        USING ERRCODE = 'restrict_violation';
END;
$$;

DROP TRIGGER run_artifacts_no_update ON run_artifacts;
CREATE TRIGGER run_artifacts_no_delete BEFORE DELETE ON run_artifacts
    FOR EACH ROW EXECUTE FUNCTION airlock_refuse_change('run artifacts');
CREATE TRIGGER run_artifacts_only_purge BEFORE UPDATE ON run_artifacts
    FOR EACH ROW EXECUTE FUNCTION airlock_run_artifact_purge_only();
CREATE TRIGGER run_artifacts_tombstones_of_terminal_runs BEFORE INSERT ON run_artifacts
    FOR EACH ROW EXECUTE FUNCTION airlock_run_artifact_tombstone_check();

-- The binary plans of runs that are terminal already.
UPDATE run_artifacts SET data = ''::bytea,
    purged_at = (extract(epoch FROM clock_timestamp()) * 1000)::bigint
WHERE name = 'plan.tfplan' AND purged_at IS NULL AND run_id IN (
    SELECT id FROM runs WHERE status IN
        ('applied', 'failed', 'rejected', 'superseded', 'expired', 'denied', 'no_changes', 'withdrawn'));
