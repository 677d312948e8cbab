//! The API's line to keyd: one shared, pipelined connection, made on first use and remade after
//! a transport failure. Every secret the platform needs lives behind it.

pub mod ops;

use std::path::PathBuf;

use keyd_proto::{Client, ClientError, Operation, Status};

use crate::error::{ApiError, Code};

/// What a keyd call can end in, besides its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeydError {
    /// keyd answered with this refusal.
    Refused(Status),
    /// keyd cannot be reached or broke the protocol.
    Unavailable,
}

impl KeydError {
    /// The wire answer when the caller has no more specific one: 503/`5030`.
    pub fn unavailable() -> ApiError {
        ApiError::new(Code::Unavailable, "key service unavailable")
    }
}

/// A keyd client that reconnects.
#[derive(Debug)]
pub struct Keyd {
    path: PathBuf,
    client: tokio::sync::Mutex<Option<Client>>,
}

impl Keyd {
    /// A client for the socket at `path` (nothing is connected yet).
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            client: tokio::sync::Mutex::new(None),
        }
    }

    async fn connection(&self) -> Result<Client, KeydError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let connected = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            Client::connect(&self.path),
        )
        .await;
        match connected {
            Ok(Ok(c)) => {
                *slot = Some(c.clone());
                Ok(c)
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot connect to keyd");
                Err(KeydError::Unavailable)
            }
            Err(_) => {
                tracing::warn!("connecting to keyd timed out");
                Err(KeydError::Unavailable)
            }
        }
    }

    /// One request. A transport failure drops the connection so the next call makes a new one.
    ///
    /// # Errors
    /// [`KeydError`].
    pub async fn call<O: Operation>(&self, request: &O) -> Result<O::Response, KeydError> {
        let client = self.connection().await?;
        match tokio::time::timeout(std::time::Duration::from_secs(10), client.call(request)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(ClientError::Status(status))) => Err(KeydError::Refused(status)),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "keyd call failed; reconnecting on next use");
                *self.client.lock().await = None;
                Err(KeydError::Unavailable)
            }
            Err(_) => {
                tracing::warn!("keyd call timed out");
                Err(KeydError::Unavailable)
            }
        }
    }
}
