//! Which request and reply types each operation has: the one place that ties the route table
//! to the types, so `/openapi.json` describes bodies with the same declarations that read and
//! write them. The match is exhaustive: a new operation does not compile until it says what
//! it takes and answers.

use serde_json::{Value, json};

use crate::backoffice::{
    api_clients, app_versions, audit, branding, charges as bc, devices, fee_templates, locations,
    merchants, resellers, sessions, users, webhooks,
};
use crate::domain::events::EventReply;
use crate::domain::replies as r;
use crate::domain::webhooks::{WebhookDeliveryReply, WebhookEndpointReply};
use crate::http::routes::Op;
use crate::pos::replies as p;
use crate::request::RefundRequest;
use crate::wire::body::Body;
use crate::wire::reply::{Page, Shape};

/// What an operation's body must be.
#[derive(Debug)]
pub enum Request {
    /// No body.
    None,
    /// A JSON body of this schema; `required` says whether it may be left out.
    Json {
        /// The schema.
        schema: Value,
        /// Whether a body must be sent.
        required: bool,
    },
}

fn body<T: Body>() -> Request {
    Request::Json {
        schema: T::object_schema(),
        required: true,
    }
}

fn optional<T: Body>() -> Request {
    Request::Json {
        schema: T::object_schema(),
        required: false,
    }
}

fn envelope(payload: Option<Value>) -> Request {
    Request::Json {
        schema: p::request_envelope_schema(payload),
        required: true,
    }
}

fn free_object() -> Value {
    json!({"type": "object", "description": "A JSON object of terminal parameters; later \
                                             levels override earlier ones member by member."})
}

/// Whether an operation takes no body (computed once from [`request`], which builds schemas).
pub fn bodiless(op: Op) -> bool {
    static BODILESS: std::sync::OnceLock<Vec<Op>> = std::sync::OnceLock::new();
    BODILESS
        .get_or_init(|| {
            crate::http::routes::ROUTES
                .iter()
                .map(|r| r.op)
                .filter(|op| matches!(request(*op), Request::None))
                .collect()
        })
        .contains(&op)
}

/// The request an operation takes.
pub fn request(op: Op) -> Request {
    use Op as O;
    match op {
        O::HealthLive
        | O::HealthReady
        | O::Metrics
        | O::OpenApi
        | O::Jwks
        | O::ResellerList
        | O::ResellerGet
        | O::ResellerDelete
        | O::ResellerHierarchy
        | O::FeeTemplateList
        | O::FeeTemplateGet
        | O::FeeTemplateDelete
        | O::BrandingGet
        | O::DomainsGet
        | O::ResellerUserList
        | O::ResellerUserGet
        | O::ResellerUserDelete
        | O::MerchantList
        | O::MerchantGet
        | O::LocationList
        | O::LocationGet
        | O::LocationDelete
        | O::DeviceList
        | O::DeviceGet
        | O::DeviceDisable
        | O::DeviceEnable
        | O::DeviceIdentityKey
        | O::DeviceRotateKeys
        | O::UserList
        | O::UserGet
        | O::UserDelete
        | O::ApiClientList
        | O::ApiClientDelete
        | O::PosBootstrap
        | O::PosPairingCode
        | O::PosStatus
        | O::PosAttest
        | O::PosKeys
        | O::PosConfig
        | O::PosTerminalParameters
        | O::PosCancel
        | O::PosReverse
        | O::ChargeList
        | O::ChargeGet
        | O::ChargeCancel
        | O::SettlementCreate
        | O::SettlementList
        | O::TransactionList
        | O::TransactionGet
        | O::EventList
        | O::AuditList
        | O::AuditVerify
        | O::AppVersionList
        | O::EventGet
        | O::MerchantWebhookList
        | O::MerchantWebhookGet
        | O::MerchantWebhookDelete
        | O::MerchantWebhookDeliveries
        | O::MerchantWebhookResend
        | O::ResellerWebhookList
        | O::ResellerWebhookGet
        | O::ResellerWebhookDelete
        | O::ResellerWebhookDeliveries
        | O::ResellerWebhookResend => Request::None,
        O::SessionInitiate => body::<sessions::SessionInitiate>(),
        O::ClientSession | O::AuthToken => body::<sessions::ClientCredentials>(),
        O::ResellerCreate => body::<resellers::ResellerCreate>(),
        O::ResellerPatch => body::<resellers::ResellerPatch>(),
        O::FeeTemplateCreate => body::<fee_templates::FeeTemplateCreate>(),
        O::FeeTemplatePatch => body::<fee_templates::FeeTemplatePatch>(),
        O::BrandingPut => body::<branding::Branding>(),
        O::DomainsPut => body::<branding::Domains>(),
        O::ResellerUserCreate => body::<users::ResellerUserCreate>(),
        O::ResellerUserPatch => body::<users::ResellerUserPatch>(),
        O::MerchantCreate => body::<merchants::MerchantCreate>(),
        O::MerchantPatch => body::<merchants::MerchantPatch>(),
        O::LocationCreate => body::<locations::LocationCreate>(),
        O::LocationPatch => body::<locations::LocationPatch>(),
        O::DeviceCreate => body::<devices::DeviceCreate>(),
        O::DevicePatch => body::<devices::DevicePatch>(),
        O::UserCreate => body::<users::MerchantUserCreate>(),
        O::UserPatch => body::<users::MerchantUserPatch>(),
        O::UserPassword | O::ResellerUserPassword => body::<users::PasswordPut>(),
        O::ApiClientCreate => optional::<api_clients::ApiClientCreate>(),
        O::MerchantParameters | O::DeviceParameters => Request::Json {
            schema: free_object(),
            required: true,
        },
        O::PosClaim => body::<crate::pos::Claim>(),
        O::PosActivate => envelope(Some(json!({
            "type": "object",
            "required": ["emv_ready", "keys_installed", "network_ok"],
            "properties": {
                "emv_ready": {"type": "boolean"},
                "keys_installed": {"type": "boolean"},
                "network_ok": {"type": "boolean"},
            },
        }))),
        O::PosCharge => envelope(Some(crate::pos::charges::PosCharge::object_schema())),
        O::PosRefund => envelope(Some(RefundRequest::object_schema())),
        O::ChargeCreate => body::<bc::ChargeCreate>(),
        O::ChargeRefund => optional::<RefundRequest>(),
        O::AppVersionPut => body::<app_versions::AppVersionPut>(),
        O::PosHeartbeat => envelope(Some(crate::pos::heartbeats::Heartbeat::object_schema())),
        O::PosUpdateCheck => envelope(Some(crate::pos::heartbeats::UpdateCheck::object_schema())),
        O::MerchantWebhookCreate | O::ResellerWebhookCreate => body::<webhooks::EndpointCreate>(),
        O::MerchantWebhookPatch | O::ResellerWebhookPatch => body::<webhooks::EndpointPatch>(),
        O::MerchantWebhookRotate | O::ResellerWebhookRotate => optional::<webhooks::SecretRotate>(),
    }
}

fn jwks() -> Value {
    json!({
        "type": "object",
        "required": ["keys"],
        "properties": {"keys": {"type": "array", "items": {
            "type": "object",
            "required": ["kty", "crv", "x", "y", "kid", "use", "alg"],
            "properties": {
                "kty": {"const": "EC"}, "crv": {"const": "P-256"},
                "x": {"type": "string"}, "y": {"type": "string"},
                "kid": {"type": "string"}, "use": {"const": "sig"}, "alg": {"const": "ES256"},
            },
        }}},
    })
}

fn live() -> Value {
    json!({"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}})
}

fn ready() -> Value {
    json!({
        "type": "object",
        "required": ["status", "checks"],
        "properties": {
            "status": {"const": "ready"},
            "checks": {
                "type": "object",
                "required": ["storage", "keyd"],
                "properties": {"storage": {"type": "string"}, "keyd": {"type": "string"}},
            },
        },
    })
}

/// The schema of an operation's success answer; `None` for an answer that is not JSON.
pub fn reply(op: Op) -> Option<Value> {
    use Op as O;
    Some(match op {
        O::Metrics => return None,
        O::HealthLive => live(),
        O::HealthReady => ready(),
        O::OpenApi => json!({"type": "object", "required": ["openapi", "paths"]}),
        O::Jwks => jwks(),
        O::SessionInitiate => sessions::SessionReply::schema(),
        O::ClientSession | O::AuthToken => sessions::TokenReply::schema(),
        O::ResellerCreate | O::ResellerGet | O::ResellerPatch => r::ResellerReply::schema(),
        O::ResellerList => Page::<r::ResellerReply<'_>>::schema(),
        O::ResellerHierarchy => json!({"$ref": "#/components/schemas/ResellerNode"}),
        O::FeeTemplateCreate | O::FeeTemplateGet | O::FeeTemplatePatch => {
            r::FeeTemplateReply::schema()
        }
        O::FeeTemplateList => Page::<r::FeeTemplateReply<'_>>::schema(),
        O::BrandingGet | O::BrandingPut => branding::BrandingReply::schema(),
        O::DomainsGet | O::DomainsPut => branding::DomainsReply::schema(),
        O::ResellerUserCreate
        | O::ResellerUserGet
        | O::ResellerUserPatch
        | O::UserCreate
        | O::UserGet
        | O::UserPatch
        | O::UserPassword
        | O::ResellerUserPassword => r::UserReply::schema(),
        O::ResellerUserList | O::UserList => Page::<r::UserReply<'_>>::schema(),
        O::ResellerDelete
        | O::FeeTemplateDelete
        | O::ResellerUserDelete
        | O::LocationDelete
        | O::UserDelete
        | O::ApiClientDelete => crate::backoffice::Deleted::schema(),
        O::MerchantCreate | O::MerchantGet | O::MerchantPatch => r::MerchantReply::schema(),
        O::MerchantList => Page::<r::MerchantReply<'_>>::schema(),
        O::LocationCreate | O::LocationGet | O::LocationPatch => r::LocationReply::schema(),
        O::LocationList => Page::<r::LocationReply<'_>>::schema(),
        O::DeviceCreate => devices::DeviceCreated::schema(),
        O::DeviceGet | O::DevicePatch | O::DeviceDisable | O::DeviceEnable => {
            r::DeviceReply::schema()
        }
        O::DeviceList => Page::<r::DeviceReply<'_>>::schema(),
        O::DeviceIdentityKey => devices::IdentityKeyReplaced::schema(),
        O::DeviceRotateKeys => devices::rotation_schema(),
        O::ApiClientCreate => api_clients::ApiClientCreated::schema(),
        O::ApiClientList => Page::<r::ApiClientReply<'_>>::schema(),
        O::MerchantParameters | O::DeviceParameters => free_object(),
        O::PosBootstrap => p::BootstrapReply::schema(),
        O::PosPairingCode => p::PairingCodeReply::schema(),
        O::PosStatus => p::StatusReply::schema(),
        O::PosClaim => p::ClaimReply::schema(),
        O::PosAttest => p::AttestReply::schema(),
        O::PosKeys => p::KeysReply::schema(),
        O::PosConfig
        | O::PosTerminalParameters
        | O::PosActivate
        | O::PosCharge
        | O::PosRefund
        | O::PosCancel
        | O::PosReverse => p::envelope_schema(),
        O::ChargeCreate | O::ChargeGet | O::ChargeCancel => r::ChargeReply::schema(),
        O::ChargeList => Page::<r::ChargeReply<'_>>::schema(),
        O::ChargeRefund => r::RefundReply::schema(),
        O::SettlementCreate => r::SettlementReply::schema(),
        O::SettlementList => Page::<r::SettlementReply<'_>>::schema(),
        O::TransactionList => Page::<r::TxnReply<'_>>::schema(),
        O::TransactionGet => r::TxnReply::schema(),
        O::EventList => Page::<EventReply<'_>>::schema(),
        O::AuditList => Page::<audit::AuditEventReply<'_>>::schema(),
        O::AuditVerify => audit::AuditVerification::schema(),
        O::AppVersionPut => app_versions::AppVersionReply::schema(),
        O::AppVersionList => Page::<app_versions::AppVersionReply<'_>>::schema(),
        O::PosHeartbeat | O::PosUpdateCheck => p::envelope_schema(),
        O::EventGet => EventReply::schema(),
        O::MerchantWebhookCreate
        | O::ResellerWebhookCreate
        | O::MerchantWebhookRotate
        | O::ResellerWebhookRotate => webhooks::EndpointWithSecret::schema(),
        O::MerchantWebhookList | O::ResellerWebhookList => {
            Page::<WebhookEndpointReply<'_>>::schema()
        }
        O::MerchantWebhookGet
        | O::ResellerWebhookGet
        | O::MerchantWebhookPatch
        | O::ResellerWebhookPatch => WebhookEndpointReply::schema(),
        O::MerchantWebhookDelete | O::ResellerWebhookDelete => crate::backoffice::Deleted::schema(),
        O::MerchantWebhookDeliveries | O::ResellerWebhookDeliveries => {
            Page::<WebhookDeliveryReply<'_>>::schema()
        }
        O::MerchantWebhookResend | O::ResellerWebhookResend => WebhookDeliveryReply::schema(),
    })
}

/// The `ResellerNode` component: a hierarchy node contains nodes, so it is referred to by
/// `$ref`.
pub fn reseller_node() -> Value {
    resellers::HierarchyNode::schema()
}
