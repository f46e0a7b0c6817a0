-- Deleting a stack archives it: the row, its versions, runs and audit stay; these say when,
-- by whom and why. An archived stack takes no new writes, locks or runs, and keeps its name.
ALTER TABLE stacks ADD COLUMN archived_at BIGINT;
ALTER TABLE stacks ADD COLUMN archived_by TEXT;
ALTER TABLE stacks ADD COLUMN archive_reason TEXT;
