//! Wire formats shared by every layer: JSON as the API reads it from untrusted clients.

pub mod json;
