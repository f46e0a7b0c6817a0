//! A refusal: a request airlock will not carry out, with the reason a user can act on.
//! Refusals are data, produced by the firewall and authorization; the server maps `kind` to an
//! HTTP status.

use std::fmt;

/// The category of a refusal; decides the HTTP status and the CLI exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// Not authenticated (401).
    Unauthenticated,
    /// Authenticated but not allowed, or a protected removal without a grant (403).
    Forbidden,
    /// The request is malformed (400).
    BadRequest,
    /// The body is larger than allowed (413).
    TooLarge,
    /// The thing does not exist (404 on the API).
    NotFound,
    /// The stack is locked by someone else, or the lock ID does not match (423).
    Locked,
    /// Conflicts with the stored state: lineage, serial, existing stack (409).
    Conflict,
    /// The stack does not exist (422 on the state backend, where 404 would mean "empty").
    UnknownStack,
    /// The route exists but not with this method (405).
    MethodNotAllowed,
    /// A rate limit is reached, e.g. phase tokens minted per user (429).
    TooManyRequests,
    /// It existed and was removed for good: a terminal run's purged binary plan (410).
    Gone,
}

/// A refused request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Category.
    pub kind: RefusalKind,
    /// What happened, why, and what to do next.
    pub message: String,
}

impl Refusal {
    /// Builds a refusal.
    pub fn new(kind: RefusalKind, message: impl Into<String>) -> Refusal {
        Refusal {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Refusal {}
