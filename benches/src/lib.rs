//! Load drivers and whole-system benchmarks.
//!
//! Placeholder: this crate is planned in ARCHITECTURE.md and its issue; it builds so the workspace
//! layout is fixed from the start.
