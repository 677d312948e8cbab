//! The VioPay REST platform: backoffice, POS lifecycle and charges; every crypto step goes to keyd.
//!
//! Placeholder: this crate is planned in ARCHITECTURE.md and its issue; it builds so the workspace
//! layout is fixed from the start.
