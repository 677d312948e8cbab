//! Throw-away SoftHSM2 tokens for tests.
//!
//! Placeholder: this crate is planned in ARCHITECTURE.md and its issue; it builds so the workspace
//! layout is fixed from the start.
