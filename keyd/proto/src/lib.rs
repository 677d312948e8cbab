//! Wire types and a client for keyd's Unix-socket protocol.
//!
//! Placeholder: this crate is planned in ARCHITECTURE.md and its issue; it builds so the workspace
//! layout is fixed from the start.
