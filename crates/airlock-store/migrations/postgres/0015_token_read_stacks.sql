-- A plan-phase token may read the state of a few named other stacks ("read stacks", for
-- Terraform's `terraform_remote_state`): a JSON array of exact stack names, each readable by the
-- token that minted it. Read-only and state-only: authorization admits exactly
-- `GET /state/{stack}` for them (`auth::check`). Every token before this one reads none.
ALTER TABLE tokens ADD COLUMN read_stacks TEXT NOT NULL DEFAULT '[]';
