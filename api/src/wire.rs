//! Wire formats shared by every layer: identifiers, times, request-body reading, and JSON as
//! the API reads it from untrusted clients.

pub mod ids;
pub mod input;
pub mod json;
pub mod time;
pub mod url;
