-- airlock as an OIDC issuer (`--public-url`): its signing keys. One key is active (active = 1,
-- UNIQUE, so two replicas starting at once cannot both add one); `airlock oidc rotate` retires
-- it (active NULL, retired_at set) and erases its private half, which never signs again; the
-- public half stays in the JWKS until every token it signed has expired.
CREATE TABLE oidc_keys (
    kid           TEXT PRIMARY KEY,
    alg           TEXT NOT NULL,
    public_jwk    TEXT NOT NULL,
    private_pkcs8 BLOB,
    active        INTEGER UNIQUE,
    created_at    INTEGER NOT NULL,
    retired_at    INTEGER
);

-- Forge OIDC issuers (GitHub Actions, GitLab CI) whose job ID tokens `airlock login --oidc`
-- exchanges for a short-lived airlock token (`airlock trust add`). Removal is recorded, never
-- deleted.
CREATE TABLE oidc_trusts (
    id          TEXT PRIMARY KEY,
    forge       TEXT NOT NULL,
    issuer      TEXT NOT NULL,
    audience    TEXT NOT NULL,
    repository  TEXT NOT NULL,
    git_ref     TEXT,
    environment TEXT,
    role        TEXT NOT NULL,
    stacks      TEXT NOT NULL,
    lifetime_ms INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    created_by  TEXT NOT NULL,
    removed_at  INTEGER,
    removed_by  TEXT
);
