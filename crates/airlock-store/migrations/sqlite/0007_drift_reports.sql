-- Drift reports (`airlock drift`, `airlock ci drift`): what a refresh-only plan found changed
-- outside Terraform, per stack, with history. A report is never updated or deleted: the current
-- status is the newest report, "drifted since" the first drifted report after the last in-sync one.
CREATE TABLE drift_reports (
    id          TEXT PRIMARY KEY,
    stack_id    INTEGER NOT NULL REFERENCES stacks(id),
    status      TEXT NOT NULL CHECK (status IN ('in_sync', 'drifted', 'unknown')),
    serial      INTEGER,
    drifted     INTEGER NOT NULL,
    findings    INTEGER NOT NULL,
    reported_by TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    report      TEXT NOT NULL
);
CREATE INDEX drift_reports_stack ON drift_reports(stack_id, created_at);

CREATE TRIGGER drift_reports_no_update BEFORE UPDATE ON drift_reports
BEGIN SELECT RAISE(ABORT, 'drift reports are never changed'); END;
CREATE TRIGGER drift_reports_no_delete BEFORE DELETE ON drift_reports
BEGIN SELECT RAISE(ABORT, 'drift reports are never deleted'); END;
