-- Who planned each run (its record's `author_user`), as a column, so the server can count a
-- user's runs of the last hour without reading records (`Store::runs_planned_since`: an agent
-- plans at most so many runs an hour, and a run's artifacts are never deleted). Runs stored
-- before this have none: they are older than any window counted.
ALTER TABLE runs ADD COLUMN author_user TEXT;
CREATE INDEX runs_author_user ON runs(author_user, created_at);
