//! What the platform does, apart from how it is asked: the records and their tenancy, the
//! charge engine with recovery and settlement, idempotency, per-object locks, and the payment
//! processor behind its trait.

pub mod audit;
pub mod charges;
pub mod credentials;
pub mod events;
pub mod idem;
pub mod lease;
pub mod locks;
pub mod model;
pub mod processor;
pub mod replay;
pub mod replies;
pub mod settlement;
pub mod webhooks;
pub mod websessions;
