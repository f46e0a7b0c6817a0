//! `airlock check` end-to-end tests.
