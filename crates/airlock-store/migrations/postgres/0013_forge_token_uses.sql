-- Forge ID tokens (GitHub Actions, GitLab CI) already exchanged by `airlock login --oidc`: one
-- row per (issuer, jti), so a token logs in once, whichever replica it reaches (the insert is
-- the check). `exp` is the token's own expiry (ms); a row is deleted once the token could no
-- longer be accepted anyway, so the table holds only tokens still alive. Ephemeral: not in
-- backups.
CREATE TABLE forge_token_uses (
    issuer  TEXT NOT NULL,
    jti     TEXT NOT NULL,
    exp     BIGINT NOT NULL,
    used_at BIGINT NOT NULL,
    PRIMARY KEY (issuer, jti)
);
CREATE INDEX forge_token_uses_exp ON forge_token_uses (exp);
