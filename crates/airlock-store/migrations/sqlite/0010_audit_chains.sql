-- Audit chains per stack (issue 17 §2); see the PostgreSQL migration of the same number. On
-- SQLite the single writer serializes appends anyway; the global position stays gapless.
ALTER TABLE audit ADD COLUMN chain TEXT;
ALTER TABLE audit ADD COLUMN chain_seq INTEGER;
CREATE UNIQUE INDEX audit_chain_position ON audit (chain, chain_seq);
CREATE TABLE audit_heads (
    chain  TEXT PRIMARY KEY,
    seq    INTEGER NOT NULL,
    hash   TEXT NOT NULL
);
INSERT INTO audit_heads (chain, seq, hash)
    SELECT '', 0, COALESCE((SELECT hash FROM audit ORDER BY seq DESC LIMIT 1), '0000000000000000000000000000000000000000000000000000000000000000');
CREATE TABLE audit_sealed (
    chain  TEXT PRIMARY KEY,
    seq    INTEGER NOT NULL
);
