//! End-to-end tests and the pos-sim device simulator.
//!
//! Placeholder: this crate is planned in ARCHITECTURE.md and its issue; it builds so the workspace
//! layout is fixed from the start.
