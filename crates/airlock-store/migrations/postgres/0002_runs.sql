-- Governed runs for PostgreSQL: the same logical schema as migrations/sqlite/0002_runs.sql.
-- One proposed change to one stack, and its immutable artifacts.
CREATE TABLE runs (
    id          TEXT PRIMARY KEY,
    stack_id    BIGINT NOT NULL REFERENCES stacks(id),
    status      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    record      TEXT NOT NULL
);
CREATE INDEX runs_stack ON runs(stack_id, created_at);

CREATE TABLE run_artifacts (
    run_id   TEXT NOT NULL REFERENCES runs(id),
    name     TEXT NOT NULL,
    sha256   BYTEA NOT NULL,
    raw_len  BIGINT NOT NULL,
    data     BYTEA NOT NULL,
    PRIMARY KEY (run_id, name)
);
-- Artifacts are zstd-compressed already: keep PostgreSQL from trying to compress them again.
ALTER TABLE run_artifacts ALTER COLUMN data SET STORAGE EXTERNAL;

-- An artifact is what was approved: the database refuses to change or remove one (TRUNCATE
-- too, which row triggers do not see). airlock_refuse_change comes from 0001_init.sql.
CREATE TRIGGER run_artifacts_no_update BEFORE UPDATE OR DELETE ON run_artifacts
    FOR EACH ROW EXECUTE FUNCTION airlock_refuse_change('run artifacts');
CREATE TRIGGER run_artifacts_no_truncate BEFORE TRUNCATE ON run_artifacts
    FOR EACH STATEMENT EXECUTE FUNCTION airlock_refuse_change('run artifacts');
