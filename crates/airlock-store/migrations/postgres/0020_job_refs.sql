-- The git ref a forge login's job ran for (GitHub's `ref` claim, GitLab's ref as
-- `refs/heads/…` or `refs/tags/…`), verified with the login's ID token: every job a trust logs
-- in shares the trust's user, and the ref tells one pull request's jobs from another's. Tokens
-- minted from a login token carry it too. NULL for every other token. Never changes.
ALTER TABLE tokens ADD COLUMN job_ref TEXT;
