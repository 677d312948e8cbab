//! Wire formats shared by every layer: identifiers, times, typed request bodies, and JSON as
//! the API reads it from untrusted clients.

pub mod body;
pub mod fields;
pub mod ids;
pub mod json;
pub mod outbound;
pub mod reply;
pub mod time;
pub mod url;
