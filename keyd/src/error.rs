//! keyd's one error type, and the one place it becomes a wire status.

use std::fmt;

use keyd_proto::Status;

/// Everything that can go wrong inside keyd.
///
/// Messages name what failed but never carry key material, PINs or plaintext.
#[derive(Debug)]
pub enum Error {
    /// A MAC, signature, padding or key lookup failed. Deliberately without detail.
    Auth,
    /// The request is malformed or names something in the wrong form.
    BadRequest(String),
    /// A device, zone or key set does not exist (management operations).
    NotFound(&'static str),
    /// The object exists already or is in the wrong state.
    Conflict(&'static str),
    /// The key's own policy refuses the operation.
    Policy(&'static str),
    /// The peer may not call this operation.
    Forbidden,
    /// The HSM failed.
    Hsm(String),
    /// The key store failed.
    Store(String),
    /// The configuration is unusable.
    Config(String),
    /// A TR-31 block could not be built or opened.
    Tr31(tr31::Error),
    /// Any other I/O failure.
    Io(std::io::Error),
    /// A known-answer self-test gave a wrong answer: keyd serves nothing.
    SelfTest(&'static str),
    /// An officer account is locked after failed logins, until this Unix time.
    Locked(u64),
    /// A controlled action lacks its two officers' approvals.
    DualControl(String),
}

impl Error {
    /// The wire status for this error: the single mapping point between keyd's errors and its
    /// protocol.
    pub fn status(&self) -> Status {
        match self {
            Self::Auth | Self::Tr31(tr31::Error::Authentication) => Status::AUTH_FAILED,
            Self::BadRequest(_) => Status::BAD_REQUEST,
            Self::NotFound(_) => Status::NOT_FOUND,
            Self::Conflict(_) => Status::CONFLICT,
            Self::Policy(_) | Self::DualControl(_) => Status::POLICY,
            Self::Forbidden | Self::Locked(_) => Status::FORBIDDEN,
            Self::Hsm(_) | Self::Store(_) => Status::UNAVAILABLE,
            Self::Config(_) | Self::Tr31(_) | Self::Io(_) | Self::SelfTest(_) => Status::INTERNAL,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auth => f.write_str("authentication failed"),
            Self::BadRequest(why) => write!(f, "bad request: {why}"),
            Self::NotFound(what) => write!(f, "{what} not found"),
            Self::Conflict(why) => write!(f, "conflict: {why}"),
            Self::Policy(why) => write!(f, "refused by key policy: {why}"),
            Self::Forbidden => f.write_str("operation not allowed for this peer"),
            Self::Hsm(why) => write!(f, "HSM: {why}"),
            Self::Store(why) => write!(f, "key store: {why}"),
            Self::Config(why) => write!(f, "configuration: {why}"),
            Self::Tr31(e) => write!(f, "TR-31: {e}"),
            Self::Io(e) => write!(f, "I/O: {e}"),
            Self::Locked(until) => {
                write!(
                    f,
                    "the officer account is locked after repeated failed logins; try again in {} s",
                    until.saturating_sub(crate::unix_now())
                )
            }
            Self::DualControl(why) => write!(f, "dual control: {why}"),
            Self::SelfTest(name) => write!(
                f,
                "self-test {name} failed: this build's cryptography gives wrong answers; refusing to serve"
            ),
        }
    }
}

impl std::error::Error for Error {}

impl From<tr31::Error> for Error {
    fn from(e: tr31::Error) -> Self {
        Self::Tr31(e)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Self::Store(e.to_string())
    }
}

impl From<cryptoki::error::Error> for Error {
    fn from(e: cryptoki::error::Error) -> Self {
        Self::Hsm(e.to_string())
    }
}
