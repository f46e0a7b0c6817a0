-- Server-side Rego policy sets (`airlock policy add --stack GLOB DIR`): evaluated on every run
-- whose stack the glob matches. Versioned per glob; a new version replaces the active one. A
-- set is never updated except to record its removal (when, by whom, why); never deleted.
CREATE TABLE policy_sets (
    id             TEXT PRIMARY KEY,
    stack_glob     TEXT NOT NULL,
    version        BIGINT NOT NULL,
    files          TEXT NOT NULL,
    sha256         TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    created_by     TEXT NOT NULL,
    removed_at     BIGINT,
    removed_by     TEXT,
    removed_reason TEXT,
    UNIQUE (stack_glob, version)
);

CREATE TRIGGER policy_sets_no_delete BEFORE DELETE ON policy_sets
    FOR EACH ROW EXECUTE FUNCTION airlock_refuse_change('policy sets');
CREATE TRIGGER policy_sets_no_truncate BEFORE TRUNCATE ON policy_sets
    FOR EACH STATEMENT EXECUTE FUNCTION airlock_refuse_change('policy sets');
