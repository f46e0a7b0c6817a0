-- Identities: tokens belong to users, and phase tokens record the token that minted them.
--
-- Existing tokens keep exactly their old behaviour, where each token was its own identity:
-- each becomes its own user, named by its id (`tok_…`, a prefix no explicit user may take);
-- the first-start admin token (created by `system`) belongs to the user `admin`. Plan-phase
-- and run-bound tokens get the minting token (named in their `created_by`) as parent and
-- belong to their root's user; they are clamped to their ancestors' expiry, and those whose
-- ancestor is revoked are revoked now, as a revocation would have done.

CREATE TABLE users (
    name         TEXT PRIMARY KEY,
    created_at   INTEGER NOT NULL,
    created_by   TEXT NOT NULL
);

ALTER TABLE tokens ADD COLUMN user_name TEXT NOT NULL DEFAULT '';
ALTER TABLE tokens ADD COLUMN parent_id TEXT;

-- created_by is "NAME (tok_XXXXXXXXXXXXXXXX)": the id is the 20 characters before the ')'.
UPDATE tokens SET parent_id = substr(created_by, length(created_by) - 20, 20)
 WHERE (name LIKE 'plan for %' OR run_id IS NOT NULL)
   AND created_by LIKE '%(tok\_%)' ESCAPE '\'
   AND substr(created_by, length(created_by) - 20, 20) IN (SELECT id FROM tokens);

UPDATE tokens SET user_name = id;
UPDATE tokens SET user_name = 'admin'
 WHERE created_by = 'system' AND name = 'bootstrap-admin' AND parent_id IS NULL;
INSERT INTO users (name, created_at, created_by)
    SELECT 'admin', MIN(created_at), 'migration' FROM tokens WHERE user_name = 'admin'
    HAVING COUNT(*) > 0;

WITH RECURSIVE chain(id, user_name, exp) AS (
    SELECT id, user_name, expires_at FROM tokens WHERE parent_id IS NULL
    UNION
    SELECT t.id, c.user_name,
           CASE WHEN c.exp IS NULL THEN t.expires_at
                WHEN t.expires_at IS NULL OR t.expires_at > c.exp THEN c.exp
                ELSE t.expires_at END
      FROM tokens t JOIN chain c ON t.parent_id = c.id
)
UPDATE tokens
   SET user_name = COALESCE((SELECT MIN(c.user_name) FROM chain c WHERE c.id = tokens.id), user_name),
       expires_at = (SELECT MIN(c.exp) FROM chain c WHERE c.id = tokens.id)
 WHERE parent_id IS NOT NULL AND id IN (SELECT id FROM chain);

WITH RECURSIVE dead(id, at) AS (
    SELECT id, revoked_at FROM tokens WHERE revoked_at IS NOT NULL
    UNION
    SELECT t.id, d.at FROM tokens t JOIN dead d ON t.parent_id = d.id
)
UPDATE tokens SET revoked_at = (SELECT MIN(d.at) FROM dead d WHERE d.id = tokens.id)
 WHERE revoked_at IS NULL AND id IN (SELECT id FROM dead);

CREATE INDEX tokens_by_user ON tokens (user_name, created_at);
CREATE INDEX tokens_by_parent ON tokens (parent_id);
