//! The VioPay REST platform.
//!
//! HTTP/1.1 over rustls (plain HTTP only on loopback), the error catalogue of contract section 2
//! from one mapping function, backoffice authentication (section 3) with an embedded or a
//! Keycloak issuer, and the merchant and reseller API (section 9) over a durable SQLite store.
//! It never holds a clear key: device identity keys are made in keyd, which the API reaches
//! only through `keyd-proto`; the API keeps key ids and check values.

pub mod app;
pub mod auth;
pub mod authz;
pub mod backoffice;
pub mod call;
pub mod charges;
pub mod config;
pub mod db;
pub mod envelope;
pub mod error;
pub mod housekeeping;
pub mod http;
pub mod idem;
pub mod ids;
pub mod input;
pub mod jwt;
pub mod keyd;
pub mod keyd_ops;
pub mod locks;
pub mod metrics;
pub mod model;
pub mod openapi;
pub mod pos;
pub mod pos_charges;
pub mod processor;
pub mod replay;
pub mod routes;
pub mod store;
pub mod time;
pub mod wire;

pub use app::App;
pub use config::Config;
pub use error::{ApiError, Code};

/// A POS app version `MAJOR.MINOR.PATCH` as numbers (compared numerically, contract section 4).
pub fn pos_version(text: &str) -> Option<(u32, u32, u32)> {
    let mut parts = text.split('.');
    let mut next = || -> Option<u32> {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 9 || !p.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        p.parse().ok()
    };
    let version = (next()?, next()?, next()?);
    parts.next().is_none().then_some(version)
}
