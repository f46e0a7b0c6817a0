-- Audit chains per stack (issue 17 §2): a record belongs to its stack's chain, or to the global
-- chain ('') for events without a stack and for seals; records before this migration keep
-- chain and chain_seq NULL (the legacy single chain, which the global chain continues).
-- Appends to different chains no longer take turns on one lock: each chain's head row is locked
-- (FOR UPDATE) until commit, and the global position comes from a sequence (gaps allowed).
ALTER TABLE audit ADD COLUMN chain TEXT;
ALTER TABLE audit ADD COLUMN chain_seq BIGINT;
CREATE UNIQUE INDEX audit_chain_position ON audit (chain, chain_seq);
-- The head of each chain: its last position and hash. The global chain starts after the legacy
-- chain's last record (position 0 = no chained record yet).
CREATE TABLE audit_heads (
    chain  TEXT PRIMARY KEY,
    seq    BIGINT NOT NULL,
    hash   TEXT NOT NULL
);
INSERT INTO audit_heads (chain, seq, hash)
    SELECT '', 0, COALESCE((SELECT hash FROM audit ORDER BY seq DESC LIMIT 1), repeat('0', 64));
-- What the last seal covered of each stack chain (only the sealer, holding the global head, writes it).
CREATE TABLE audit_sealed (
    chain  TEXT PRIMARY KEY,
    seq    BIGINT NOT NULL
);
CREATE SEQUENCE audit_seq;
SELECT setval('audit_seq', COALESCE((SELECT MAX(seq) FROM audit), 0) + 1, false);
