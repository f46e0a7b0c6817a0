-- Drift reports (`airlock drift`, `airlock ci drift`): what a refresh-only plan found changed
-- outside Terraform, per stack, with history. A report is never updated or deleted: the current
-- status is the newest report, "drifted since" the first drifted report after the last in-sync one.
CREATE TABLE drift_reports (
    id          TEXT PRIMARY KEY,
    stack_id    BIGINT NOT NULL REFERENCES stacks(id),
    status      TEXT NOT NULL CHECK (status IN ('in_sync', 'drifted', 'unknown')),
    serial      BIGINT,
    drifted     BIGINT NOT NULL,
    findings    BIGINT NOT NULL,
    reported_by TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    report      TEXT NOT NULL
);
CREATE INDEX drift_reports_stack ON drift_reports(stack_id, created_at);

CREATE TRIGGER drift_reports_no_change BEFORE UPDATE OR DELETE ON drift_reports
    FOR EACH ROW EXECUTE FUNCTION airlock_refuse_change('drift reports');
CREATE TRIGGER drift_reports_no_truncate BEFORE TRUNCATE ON drift_reports
    FOR EACH STATEMENT EXECUTE FUNCTION airlock_refuse_change('drift reports');
