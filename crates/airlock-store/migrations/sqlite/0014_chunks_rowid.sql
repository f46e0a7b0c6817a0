-- Chunks move out of a WITHOUT ROWID table. There every row, its compressed data (~10 KB)
-- included, was a record of the primary key's b-tree: interior pages held whole records as
-- dividers, so a lookup walked a deep tree of overflowing records and an insert rebalanced
-- them. Now the data lives in a rowid table (appended in insertion order) and lookups walk a
-- small unique index of the 32-byte hashes. Every chunk is copied as it is: hashes, data and
-- raw lengths, so every version's chunk list still resolves.
CREATE TABLE chunks_0014 (
    id       INTEGER PRIMARY KEY,
    hash     BLOB NOT NULL,
    data     BLOB NOT NULL,
    raw_len  INTEGER NOT NULL
);
INSERT INTO chunks_0014 (hash, data, raw_len) SELECT hash, data, raw_len FROM chunks;
DROP TABLE chunks;
ALTER TABLE chunks_0014 RENAME TO chunks;
CREATE UNIQUE INDEX chunks_hash ON chunks (hash);
