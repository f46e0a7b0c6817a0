-- Nothing to do: SQLite's 0014 moves its chunks out of a WITHOUT ROWID table; PostgreSQL's
-- chunks are a heap table with a primary-key index on the hash and their data TOASTed out of
-- line already. (The file keeps both engines' migration numbers the same.)
SELECT 1;
