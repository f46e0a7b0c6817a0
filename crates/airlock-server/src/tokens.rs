//! Token secrets: 256 random bits shown once; the store keeps only their SHA-256.

use airlock_store::MintLimit;
use sha2::{Digest, Sha256};

/// Plan-phase tokens one user may mint per hour, across all replicas (counted in the
/// database). A plan takes one: 60 an hour is far more than a team's real rate, and keeps a
/// runaway or hostile agent from minting without bound. Run-bound apply tokens are not
/// limited: each needs an approved run.
pub const PHASE_TOKEN_LIMIT: MintLimit = MintLimit {
    max: 60,
    window_ms: 3_600_000,
};

/// Prefix that makes airlock secrets recognisable to secret scanners.
pub const SECRET_PREFIX: &str = "airlock_";

/// A freshly generated token: public id and secret.
pub struct Generated {
    /// Public identifier (`tok_` + 16 hex).
    pub id: String,
    /// The secret, shown once.
    pub secret: String,
    /// SHA-256 of the secret, stored.
    pub hash: [u8; 32],
}

/// Random bytes from the OS.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // The OS RNG failing is unrecoverable for a server that mints credentials.
    #[allow(clippy::expect_used)]
    getrandom::fill(&mut b).expect("the operating system's random number generator failed");
    b
}

/// A random identifier with a prefix, e.g. `grant_3f2a...`.
pub fn random_id(prefix: &str) -> String {
    format!("{prefix}{}", hex::encode(random_bytes::<8>()))
}

/// Generates a new token.
pub fn generate() -> Generated {
    let secret = format!("{SECRET_PREFIX}{}", hex::encode(random_bytes::<32>()));
    Generated {
        id: random_id("tok_"),
        hash: hash_secret(&secret),
        secret,
    }
}

/// The stored hash of a secret.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}
