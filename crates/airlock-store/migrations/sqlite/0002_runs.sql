-- Governed runs: one proposed change to one stack, and its immutable artifacts.
CREATE TABLE runs (
    id          TEXT PRIMARY KEY,
    stack_id    INTEGER NOT NULL REFERENCES stacks(id),
    status      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    record      TEXT NOT NULL
);
CREATE INDEX runs_stack ON runs(stack_id, created_at);

CREATE TABLE run_artifacts (
    run_id   TEXT NOT NULL REFERENCES runs(id),
    name     TEXT NOT NULL,
    sha256   BLOB NOT NULL,
    raw_len  INTEGER NOT NULL,
    data     BLOB NOT NULL,
    PRIMARY KEY (run_id, name)
);
CREATE TRIGGER run_artifacts_no_update BEFORE UPDATE ON run_artifacts
BEGIN SELECT RAISE(ABORT, 'run artifacts are immutable'); END;
CREATE TRIGGER run_artifacts_no_delete BEFORE DELETE ON run_artifacts
BEGIN SELECT RAISE(ABORT, 'run artifacts are immutable'); END;
