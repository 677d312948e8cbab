//! The VioPay REST platform.
//!
//! HTTP/1.1 over rustls (plain HTTP only on loopback), the error catalogue of contract section 2
//! from one mapping function, backoffice authentication (section 3) with an embedded or a
//! Keycloak issuer, and the merchant and reseller API (section 9) over a durable SQLite store.
//! It never holds a clear key: device identity keys are made in keyd, which the API reaches
//! only through `keyd-proto`; the API keeps key ids and check values.

pub mod app;
pub mod auth;
pub mod backoffice;
pub mod config;
pub mod domain;
pub mod error;
pub mod housekeeping;
pub mod http;
pub mod keyd;
pub mod portal;
pub mod pos;
pub mod request;
pub mod store;
pub mod webhooks;
pub mod wire;

pub use config::Config;
pub use error::{ApiError, Code};
