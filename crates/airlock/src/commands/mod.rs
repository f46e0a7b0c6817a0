//! One module per CLI noun; each exposes `run`.

pub mod check;
