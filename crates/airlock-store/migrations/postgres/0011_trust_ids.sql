-- A trust is pinned to the forge's immutable ids, not only to the repository's path (a path can
-- be re-registered by someone else after a rename or deletion): GitHub `repository_id` and
-- `repository_owner_id`, GitLab `project_id` and `namespace_id`, as decimal text. Trusts added
-- before this migration have neither: logins through them are refused until an admin pins them
-- (`airlock trust pin`).
ALTER TABLE oidc_trusts ADD COLUMN repository_id TEXT;
ALTER TABLE oidc_trusts ADD COLUMN owner_id TEXT;
