//! The key service: owns every terminal's keys through PKCS#11 and serves them over a Unix socket.
//!
//! Placeholder: this crate is planned in ARCHITECTURE.md and its issue; it builds so the workspace
//! layout is fixed from the start.
