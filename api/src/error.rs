//! The error catalogue of contract section 2, and the one function that turns an error into an
//! HTTP answer.

use serde_json::{Value, json};

/// An API error: a catalogue code, a message for people (never a secret), optional details.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    code: Code,
    message: String,
    details: Option<Value>,
}

/// The catalogue. Numbers are the contract's `code` strings; each has one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Code {
    /// 400/4000: body invalid (`details.fields`).
    BodyInvalid,
    /// 400/4001: a required header is missing or malformed.
    HeaderInvalid,
    /// 400/4002: body is not JSON, or too large.
    BodyUnreadable,
    /// 401/4010: no or invalid bearer token.
    Unauthenticated,
    /// 403/4030: role does not allow the action.
    Forbidden,
    /// 404/4040: not found (also outside the caller's tenant).
    NotFound,
    /// 405/4050: method not allowed on this path.
    MethodNotAllowed,
    /// 429/4290: rate limited.
    RateLimited,
    /// 500/5000: internal error.
    Internal,
    /// 503/5030: key service or storage unavailable.
    Unavailable,
}

impl Code {
    /// The contract's code string.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BodyInvalid => "4000",
            Self::HeaderInvalid => "4001",
            Self::BodyUnreadable => "4002",
            Self::Unauthenticated => "4010",
            Self::Forbidden => "4030",
            Self::NotFound => "4040",
            Self::MethodNotAllowed => "4050",
            Self::RateLimited => "4290",
            Self::Internal => "5000",
            Self::Unavailable => "5030",
        }
    }

    /// The HTTP status the contract pairs with the code.
    pub const fn status(self) -> u16 {
        match self {
            Self::BodyInvalid | Self::HeaderInvalid | Self::BodyUnreadable => 400,
            Self::Unauthenticated => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::RateLimited => 429,
            Self::Internal => 500,
            Self::Unavailable => 503,
        }
    }
}

impl ApiError {
    /// An error with a message.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: None,
        }
    }

    /// Adds details (a JSON object).
    #[must_use]
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// The catalogue code.
    pub const fn code(&self) -> Code {
        self.code
    }

    /// The error body of contract section 2, carrying the request's id as `trace_id`.
    pub fn body(&self, trace_id: &str) -> Value {
        let mut error =
            json!({ "code": self.code.as_str(), "message": self.message, "trace_id": trace_id });
        if let (Some(details), Some(map)) = (&self.details, error.as_object_mut()) {
            map.insert("details".into(), details.clone());
        }
        json!({ "error": error })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_have_the_contract_shape() {
        let e = ApiError::new(Code::NotFound, "not found");
        assert_eq!(
            e.body("req-1"),
            json!({"error":{"code":"4040","message":"not found","trace_id":"req-1"}})
        );
        let e = ApiError::new(Code::BodyInvalid, "body invalid")
            .with_details(json!({"fields":[{"field":"amount.value","reason":"required"}]}));
        assert_eq!(
            e.body("r")["error"]["details"]["fields"][0]["field"],
            "amount.value"
        );
        for (code, status) in [
            (Code::HeaderInvalid, 400),
            (Code::MethodNotAllowed, 405),
            (Code::Unavailable, 503),
        ] {
            assert_eq!(code.status(), status);
        }
    }
}
