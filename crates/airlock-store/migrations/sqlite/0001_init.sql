-- airlock schema v1. Forward-only: never edit a migration that has shipped.
CREATE TABLE stacks (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    production  INTEGER NOT NULL,
    lineage     TEXT,
    settings    TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE chunks (
    hash     BLOB PRIMARY KEY,
    data     BLOB NOT NULL,
    raw_len  INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE versions (
    stack_id       INTEGER NOT NULL REFERENCES stacks(id),
    serial         INTEGER NOT NULL,
    lineage        TEXT NOT NULL,
    sha256         BLOB NOT NULL,
    size           INTEGER NOT NULL,
    chunks         BLOB NOT NULL,
    author         TEXT NOT NULL,
    lock_id        TEXT,
    run_id         TEXT,
    reason         TEXT,
    restored_from  INTEGER,
    created_at     INTEGER NOT NULL,
    PRIMARY KEY (stack_id, serial)
);

-- History is append-only: the database itself refuses updates and deletes of versions.
CREATE TRIGGER versions_no_update BEFORE UPDATE ON versions
BEGIN SELECT RAISE(ABORT, 'state versions are immutable'); END;
CREATE TRIGGER versions_no_delete BEFORE DELETE ON versions
BEGIN SELECT RAISE(ABORT, 'state versions are immutable'); END;

CREATE TABLE locks (
    stack_id     INTEGER PRIMARY KEY REFERENCES stacks(id),
    lock_id      TEXT NOT NULL,
    info         BLOB NOT NULL,
    operation    TEXT NOT NULL,
    owner_token  TEXT NOT NULL,
    owner        TEXT NOT NULL,
    created_at   INTEGER NOT NULL
);

CREATE TABLE tokens (
    id           TEXT PRIMARY KEY,
    secret_hash  BLOB NOT NULL UNIQUE,
    name         TEXT NOT NULL,
    role         TEXT NOT NULL,
    stacks       TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER,
    revoked_at   INTEGER,
    created_by   TEXT NOT NULL,
    run_id       TEXT
);

CREATE TABLE grants (
    id           TEXT PRIMARY KEY,
    stack_id     INTEGER NOT NULL REFERENCES stacks(id),
    addresses    TEXT NOT NULL,
    reason       TEXT NOT NULL,
    created_by   TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    consumed_at  INTEGER,
    run_id       TEXT
);
CREATE INDEX grants_stack ON grants(stack_id, consumed_at);

CREATE TABLE audit (
    seq        INTEGER PRIMARY KEY,
    at         TEXT NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    stack      TEXT,
    outcome    TEXT NOT NULL,
    detail     TEXT NOT NULL,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL
);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'audit records are immutable'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'audit records are immutable'); END;
