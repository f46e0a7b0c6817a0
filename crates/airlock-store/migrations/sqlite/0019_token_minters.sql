-- The token that minted a token, as a column (it was read from the trailing ` (tok_…)` of the
-- `created_by` display text): NULL for the operator's offline `airlock token create`, the
-- bootstrap token and forge logins. Existing rows are filled in the same transaction, after
-- this script, by `core::minted_by_backfill` (the one reader of old `created_by` text,
-- `minter_id`), since SQLite has no way to split on the last ` (`.
-- Once set, a token's minter never changes (a corrupt or edited one must not hide who minted).
ALTER TABLE tokens ADD COLUMN minted_by TEXT REFERENCES tokens(id);
-- Why the server revoked a token itself (`Store::revoke_unsafe_mints`); NULL for revocations
-- an admin made (the audit names who).
ALTER TABLE tokens ADD COLUMN revoked_reason TEXT;
CREATE TRIGGER tokens_minted_by_fixed BEFORE UPDATE OF minted_by ON tokens
    WHEN OLD.minted_by IS NOT NULL AND NEW.minted_by IS NOT OLD.minted_by
BEGIN SELECT RAISE(ABORT, 'token minters are immutable'); END;
