//! The error catalogue of contract section 2, and the one function that turns an error into an
//! HTTP answer.

use serde_json::{Value, json};

/// An API error: a catalogue code, a message for people (never a secret), optional details.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    code: Code,
    message: String,
    details: Option<Value>,
    retry_after: Option<u64>,
    allow: Option<String>,
    /// `(limit, remaining, reset)` of a rate limit, for the `RateLimit-*` headers.
    quota: Option<(u32, u32, u32)>,
}

/// The catalogue. Numbers are the contract's `code` strings; each has one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Code {
    /// 400/4000: body invalid (`details.fields`).
    BodyInvalid,
    /// 400/4001: a required header is missing or malformed.
    HeaderInvalid,
    /// 400/4002: body is not JSON, or too large.
    BodyUnreadable,
    /// 400/4003: POS app version below the minimum supported.
    AppVersion,
    /// 400/4004: an MSK envelope cannot be opened (one message).
    EnvelopeInvalid,
    /// 400/4005: `key_kcv` is not the KCV of the MSK in use.
    KcvMismatch,
    /// 400/4006: pairing code expired.
    PairingExpired,
    /// 400/4007: activation preconditions not met.
    ActivationPreconditions,
    /// 401/4010: no or invalid bearer token.
    Unauthenticated,
    /// 401/4011: signature invalid, key unknown or revoked, terminal unknown (one message).
    SignatureInvalid,
    /// 401/4012: `X-Timestamp` outside the window.
    TimestampWindow,
    /// 401/4013: nonce already used.
    NonceReused,
    /// 401/4014: attestation token missing, unknown, expired or foreign (one message).
    AttestationInvalid,
    /// 401/4015: session not initiated.
    NoSession,
    /// 401/4016: client credentials invalid.
    ClientCredentials,
    /// 401/4017: client locked after repeated failures.
    ClientLocked,
    /// 403/4030: role does not allow the action.
    Forbidden,
    /// 404/4040: not found (also outside the caller's tenant).
    NotFound,
    /// 405/4050: method not allowed on this path.
    MethodNotAllowed,
    /// 414/4140: the request target is too long (beyond the contract's catalogue: HTTP itself
    /// needs it, and every answer keeps the catalogue's body shape).
    UriTooLong,
    /// 415/4150: a body sent with a `Content-Type` other than JSON (beyond the catalogue).
    UnsupportedMediaType,
    /// 431/4310: the request's headers are too large (beyond the catalogue).
    HeadersTooLarge,
    /// 409/4090: state conflict.
    Conflict,
    /// 409/4091: pairing code already used.
    PairingUsed,
    /// 409/4092: device not in the state this call needs.
    DeviceState,
    /// 409/4093: idempotent request still in progress.
    InProgress,
    /// 409/4094: charge not refundable or cancellable in its state.
    ChargeState,
    /// 409/4095: charge can no longer be voided: refund it instead.
    NotVoidable,
    /// 422/4220: `Idempotency-Key` reused with a different request.
    IdempotencyMismatch,
    /// 422/4221: refund exceeds the refundable amount.
    RefundExceeds,
    /// 429/4290: rate limited.
    RateLimited,
    /// 500/5000: internal error.
    Internal,
    /// 502/5020: payment processor failed or timed out.
    ProcessorFailed,
    /// 503/5030: key service or storage unavailable.
    Unavailable,
}

impl Code {
    /// Every code, in catalogue order.
    pub const ALL: &[Self] = &[
        Self::BodyInvalid,
        Self::HeaderInvalid,
        Self::BodyUnreadable,
        Self::AppVersion,
        Self::EnvelopeInvalid,
        Self::KcvMismatch,
        Self::PairingExpired,
        Self::ActivationPreconditions,
        Self::Unauthenticated,
        Self::SignatureInvalid,
        Self::TimestampWindow,
        Self::NonceReused,
        Self::AttestationInvalid,
        Self::NoSession,
        Self::ClientCredentials,
        Self::ClientLocked,
        Self::Forbidden,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::UriTooLong,
        Self::UnsupportedMediaType,
        Self::HeadersTooLarge,
        Self::Conflict,
        Self::PairingUsed,
        Self::DeviceState,
        Self::InProgress,
        Self::ChargeState,
        Self::NotVoidable,
        Self::IdempotencyMismatch,
        Self::RefundExceeds,
        Self::RateLimited,
        Self::Internal,
        Self::ProcessorFailed,
        Self::Unavailable,
    ];

    /// The code for a contract code string.
    pub fn parse(code: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.as_str() == code)
    }

    /// The contract's code string.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BodyInvalid => "4000",
            Self::HeaderInvalid => "4001",
            Self::BodyUnreadable => "4002",
            Self::AppVersion => "4003",
            Self::EnvelopeInvalid => "4004",
            Self::KcvMismatch => "4005",
            Self::PairingExpired => "4006",
            Self::ActivationPreconditions => "4007",
            Self::Unauthenticated => "4010",
            Self::SignatureInvalid => "4011",
            Self::TimestampWindow => "4012",
            Self::NonceReused => "4013",
            Self::AttestationInvalid => "4014",
            Self::NoSession => "4015",
            Self::ClientCredentials => "4016",
            Self::ClientLocked => "4017",
            Self::Forbidden => "4030",
            Self::NotFound => "4040",
            Self::MethodNotAllowed => "4050",
            Self::UriTooLong => "4140",
            Self::UnsupportedMediaType => "4150",
            Self::HeadersTooLarge => "4310",
            Self::Conflict => "4090",
            Self::PairingUsed => "4091",
            Self::DeviceState => "4092",
            Self::InProgress => "4093",
            Self::ChargeState => "4094",
            Self::NotVoidable => "4095",
            Self::IdempotencyMismatch => "4220",
            Self::RefundExceeds => "4221",
            Self::RateLimited => "4290",
            Self::Internal => "5000",
            Self::ProcessorFailed => "5020",
            Self::Unavailable => "5030",
        }
    }

    /// The HTTP status the contract pairs with the code.
    pub const fn status(self) -> u16 {
        match self {
            Self::BodyInvalid => 400,
            Self::HeaderInvalid => 400,
            Self::BodyUnreadable => 400,
            Self::AppVersion => 400,
            Self::EnvelopeInvalid => 400,
            Self::KcvMismatch => 400,
            Self::PairingExpired => 400,
            Self::ActivationPreconditions => 400,
            Self::Unauthenticated => 401,
            Self::SignatureInvalid => 401,
            Self::TimestampWindow => 401,
            Self::NonceReused => 401,
            Self::AttestationInvalid => 401,
            Self::NoSession => 401,
            Self::ClientCredentials => 401,
            Self::ClientLocked => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::UriTooLong => 414,
            Self::UnsupportedMediaType => 415,
            Self::HeadersTooLarge => 431,
            Self::Conflict => 409,
            Self::PairingUsed => 409,
            Self::DeviceState => 409,
            Self::InProgress => 409,
            Self::ChargeState => 409,
            Self::NotVoidable => 409,
            Self::IdempotencyMismatch => 422,
            Self::RefundExceeds => 422,
            Self::RateLimited => 429,
            Self::Internal => 500,
            Self::ProcessorFailed => 502,
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
            retry_after: None,
            allow: None,
            quota: None,
        }
    }

    /// Adds details (a JSON object).
    #[must_use]
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// Adds a `Retry-After` (seconds) to the answer (rate limits, lockouts).
    #[must_use]
    pub const fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// Adds a rate limit's state for the `RateLimit-Limit`, `RateLimit-Remaining` and
    /// `RateLimit-Reset` headers.
    #[must_use]
    pub const fn with_quota(mut self, limit: u32, remaining: u32, reset: u32) -> Self {
        self.quota = Some((limit, remaining, reset));
        self
    }

    /// The rate limit's `(limit, remaining, reset)`, if any.
    pub const fn quota(&self) -> Option<(u32, u32, u32)> {
        self.quota
    }

    /// The `Retry-After` seconds, if any.
    pub const fn retry_after(&self) -> Option<u64> {
        self.retry_after
    }

    /// Adds the `Allow` header of a 405.
    #[must_use]
    pub fn with_allow(mut self, methods: String) -> Self {
        self.allow = Some(methods);
        self
    }

    /// The methods a 405 names.
    pub fn allow(&self) -> Option<&str> {
        self.allow.as_deref()
    }

    /// The message for people.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// A bad request body naming one field (400/`4000`).
    pub fn field(field: &str, reason: &str) -> Self {
        Self::new(Code::BodyInvalid, "body invalid")
            .with_details(json!({"fields": [{"field": field, "reason": reason}]}))
    }

    /// Not found (404/`4040`), the one answer for "absent" and "not yours".
    pub fn not_found() -> Self {
        Self::new(Code::NotFound, "not found")
    }

    /// Role does not allow the action (403/`4030`).
    pub fn forbidden() -> Self {
        Self::new(Code::Forbidden, "your role does not allow this action")
    }

    /// Internal error; the cause goes to the log, never to the client.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(Code::Internal, "internal error")
    }

    /// What an idempotency record keeps of an error: code, message, details.
    pub fn stored(&self) -> Value {
        json!({"code": self.code.as_str(), "message": self.message, "details": self.details})
    }

    /// An error rebuilt from [`ApiError::stored`] (replays carry the new request's trace id).
    pub fn from_stored(v: &Value) -> Self {
        let code = v
            .get("code")
            .and_then(Value::as_str)
            .and_then(Code::parse)
            .unwrap_or(Code::Internal);
        let message = v.get("message").and_then(Value::as_str).unwrap_or("error");
        let mut e = Self::new(code, message);
        if let Some(d) = v.get("details").filter(|d| !d.is_null()) {
            e.details = Some(d.clone());
        }
        e
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
        for code in Code::ALL {
            assert_eq!(code.as_str().len(), 4);
            assert!(code.as_str().starts_with(&code.status().to_string()[..2]));
        }
        for (code, status) in [
            (Code::HeaderInvalid, 400),
            (Code::MethodNotAllowed, 405),
            (Code::Unavailable, 503),
        ] {
            assert_eq!(code.status(), status);
        }
    }
}
