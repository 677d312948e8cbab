//! The VioPay REST platform.
//!
//! This first part is the service skeleton of the API issue: HTTP/1.1 over rustls (or plain
//! HTTP on loopback when the config says so), graceful shutdown, header timeouts, `X-Request-Id`
//! on every answer, the error body and code catalogue of contract section 2 from one mapping
//! function, 404/405 handling, and `/health/live` and `/health/ready` (keyd reachable).
//!
//! What it does not do (yet): storage, authentication, the backoffice and POS endpoints. It will
//! never hold a clear key: every cryptographic step goes to keyd through `keyd-proto`.

pub mod config;
pub mod error;
pub mod http;

pub use config::Config;
pub use error::{ApiError, Code};
