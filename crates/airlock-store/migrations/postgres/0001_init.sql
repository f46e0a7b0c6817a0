-- airlock schema v1 for PostgreSQL: the same logical schema as migrations/sqlite/0001_init.sql.
-- Forward-only: never edit a migration that has shipped. Applied in one transaction.
CREATE TABLE stacks (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    production  BOOLEAN NOT NULL,
    lineage     TEXT,
    settings    TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE chunks (
    hash     BYTEA PRIMARY KEY,
    data     BYTEA NOT NULL,
    raw_len  BIGINT NOT NULL
);
-- Chunks are zstd-compressed already: keep PostgreSQL from trying to compress them again.
ALTER TABLE chunks ALTER COLUMN data SET STORAGE EXTERNAL;

CREATE TABLE versions (
    stack_id       BIGINT NOT NULL REFERENCES stacks(id),
    serial         BIGINT NOT NULL,
    lineage        TEXT NOT NULL,
    sha256         BYTEA NOT NULL,
    size           BIGINT NOT NULL,
    chunks         BYTEA NOT NULL,
    author         TEXT NOT NULL,
    lock_id        TEXT,
    run_id         TEXT,
    reason         TEXT,
    restored_from  BIGINT,
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (stack_id, serial)
);

-- History is append-only: the database itself refuses updates and deletes of versions and
-- audit records (TRUNCATE too, which row triggers do not see).
CREATE FUNCTION airlock_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% are immutable', TG_ARGV[0] USING ERRCODE = 'restrict_violation';
END;
$$;

CREATE TRIGGER versions_no_update BEFORE UPDATE OR DELETE ON versions
    FOR EACH ROW EXECUTE FUNCTION airlock_refuse_change('state versions');
CREATE TRIGGER versions_no_truncate BEFORE TRUNCATE ON versions
    FOR EACH STATEMENT EXECUTE FUNCTION airlock_refuse_change('state versions');

CREATE TABLE locks (
    stack_id     BIGINT PRIMARY KEY REFERENCES stacks(id),
    lock_id      TEXT NOT NULL,
    info         BYTEA NOT NULL,
    operation    TEXT NOT NULL,
    owner_token  TEXT NOT NULL,
    owner        TEXT NOT NULL,
    created_at   BIGINT NOT NULL
);

CREATE TABLE tokens (
    id           TEXT PRIMARY KEY,
    secret_hash  BYTEA NOT NULL UNIQUE,
    name         TEXT NOT NULL,
    role         TEXT NOT NULL,
    stacks       TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT,
    revoked_at   BIGINT,
    created_by   TEXT NOT NULL,
    run_id       TEXT
);

CREATE TABLE grants (
    id           TEXT PRIMARY KEY,
    stack_id     BIGINT NOT NULL REFERENCES stacks(id),
    addresses    TEXT NOT NULL,
    reason       TEXT NOT NULL,
    created_by   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    consumed_at  BIGINT,
    run_id       TEXT
);
CREATE INDEX grants_stack ON grants(stack_id, consumed_at);

CREATE TABLE audit (
    seq        BIGINT PRIMARY KEY,
    at         TEXT NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    stack      TEXT,
    outcome    TEXT NOT NULL,
    detail     TEXT NOT NULL,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL
);
CREATE TRIGGER audit_no_update BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION airlock_refuse_change('audit records');
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION airlock_refuse_change('audit records');
