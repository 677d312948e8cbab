//! The route table: every endpoint once, with how it is authenticated and what it answers on
//! success. Routing, the 404/405 rule, metrics labels and `/openapi.json` all read this table, so
//! an endpoint cannot exist without being described.

use crate::error::{ApiError, Code};

/// How a route authenticates its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No authentication.
    Public,
    /// Bearer token and an initiated session.
    Bearer,
    /// Bearer token only (`/session/initiate`).
    BearerNoSession,
    /// A terminal: POS headers and the call's own scheme (activation, signature, attestation
    /// token), checked by the handler in the contract's order.
    Pos,
}

/// The operation a route runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(
    missing_docs,
    reason = "each variant is named after its route, described in ROUTES"
)]
pub enum Op {
    HealthLive,
    HealthReady,
    Metrics,
    OpenApi,
    Jwks,
    SessionInitiate,
    ClientSession,
    AuthToken,
    ResellerCreate,
    ResellerList,
    ResellerGet,
    ResellerPatch,
    ResellerDelete,
    ResellerHierarchy,
    FeeTemplateCreate,
    FeeTemplateList,
    FeeTemplateGet,
    FeeTemplatePatch,
    FeeTemplateDelete,
    BrandingGet,
    BrandingPut,
    DomainsGet,
    DomainsPut,
    ResellerUserCreate,
    ResellerUserList,
    ResellerUserGet,
    ResellerUserPatch,
    ResellerUserPassword,
    ResellerUserDelete,
    MerchantCreate,
    MerchantList,
    MerchantGet,
    MerchantPatch,
    LocationCreate,
    LocationList,
    LocationGet,
    LocationPatch,
    LocationDelete,
    DeviceCreate,
    DeviceList,
    DeviceGet,
    DevicePatch,
    DeviceDisable,
    DeviceEnable,
    DeviceIdentityKey,
    DeviceRotateKeys,
    UserCreate,
    UserList,
    UserGet,
    UserPatch,
    UserPassword,
    UserDelete,
    ApiClientCreate,
    ApiClientList,
    ApiClientDelete,
    MerchantParameters,
    DeviceParameters,
    PosBootstrap,
    PosPairingCode,
    PosStatus,
    PosClaim,
    PosAttest,
    PosKeys,
    PosConfig,
    PosTerminalParameters,
    PosActivate,
    PosCharge,
    PosRefund,
    PosCancel,
    PosReverse,
    ChargeCreate,
    ChargeList,
    ChargeGet,
    ChargeRefund,
    ChargeCancel,
    SettlementCreate,
    SettlementList,
    TransactionList,
    TransactionGet,
    EventList,
    AuditList,
    AuditVerify,
    AppVersionPut,
    AppVersionList,
    PosHeartbeat,
    PosUpdateCheck,
    EventGet,
    MerchantWebhookCreate,
    MerchantWebhookList,
    MerchantWebhookGet,
    MerchantWebhookPatch,
    MerchantWebhookDelete,
    MerchantWebhookRotate,
    MerchantWebhookDeliveries,
    MerchantWebhookResend,
    ResellerWebhookCreate,
    ResellerWebhookList,
    ResellerWebhookGet,
    ResellerWebhookPatch,
    ResellerWebhookDelete,
    ResellerWebhookRotate,
    ResellerWebhookDeliveries,
    ResellerWebhookResend,
}

/// One endpoint.
#[derive(Debug)]
pub struct Route {
    /// HTTP method.
    pub method: &'static str,
    /// Path with `{name}` segments.
    pub path: &'static str,
    /// What runs.
    pub op: Op,
    /// Authentication.
    pub access: Access,
    /// Success status.
    pub status: u16,
    /// OpenAPI tag.
    pub tag: &'static str,
    /// One line for people.
    pub summary: &'static str,
}

const fn r(
    method: &'static str,
    path: &'static str,
    op: Op,
    access: Access,
    status: u16,
    tag: &'static str,
    summary: &'static str,
) -> Route {
    Route {
        method,
        path,
        op,
        access,
        status,
        tag,
        summary,
    }
}

use Access::{Bearer, BearerNoSession, Pos, Public};

/// Every endpoint of the API.
#[rustfmt::skip]
pub static ROUTES: &[Route] = &[
    r("GET", "/health/live", Op::HealthLive, Public, 200, "health", "Liveness: the process answers"),
    r("GET", "/health/ready", Op::HealthReady, Public, 200, "health", "Readiness: storage and key service reachable"),
    r("GET", "/metrics", Op::Metrics, Public, 200, "health", "Prometheus metrics"),
    r("GET", "/openapi.json", Op::OpenApi, Public, 200, "meta", "This API's OpenAPI 3.1 description"),
    r("GET", "/.well-known/jwks.json", Op::Jwks, Public, 200, "auth", "Public keys of the embedded token issuer"),
    r("POST", "/session/initiate", Op::SessionInitiate, BearerNoSession, 200, "auth", "Initiate a backoffice session for a portal host"),
    r("POST", "/client/session", Op::ClientSession, Public, 200, "auth", "Exchange API client credentials for a token and a session"),
    r("POST", "/auth/token", Op::AuthToken, Public, 200, "auth", "Legacy alias of POST /client/session"),
    r("POST", "/resellers", Op::ResellerCreate, Bearer, 201, "resellers", "Create a reseller (top level: platform admins; nested: admins above)"),
    r("GET", "/resellers", Op::ResellerList, Bearer, 200, "resellers", "List the resellers in the caller's subtree"),
    r("GET", "/resellers/{reseller_id}", Op::ResellerGet, Bearer, 200, "resellers", "Retrieve a reseller"),
    r("PATCH", "/resellers/{reseller_id}", Op::ResellerPatch, Bearer, 200, "resellers", "Rename a reseller"),
    r("DELETE", "/resellers/{reseller_id}", Op::ResellerDelete, Bearer, 200, "resellers", "Delete a reseller without merchants or sub-resellers"),
    r("GET", "/resellers/{reseller_id}/hierarchy", Op::ResellerHierarchy, Bearer, 200, "resellers", "The subtree: sub-resellers and merchants with counts"),
    r("POST", "/resellers/{reseller_id}/fee-templates", Op::FeeTemplateCreate, Bearer, 201, "fee-templates", "Create a fee template"),
    r("GET", "/resellers/{reseller_id}/fee-templates", Op::FeeTemplateList, Bearer, 200, "fee-templates", "List fee templates"),
    r("GET", "/resellers/{reseller_id}/fee-templates/{template_id}", Op::FeeTemplateGet, Bearer, 200, "fee-templates", "Retrieve a fee template"),
    r("PATCH", "/resellers/{reseller_id}/fee-templates/{template_id}", Op::FeeTemplatePatch, Bearer, 200, "fee-templates", "Change a fee template"),
    r("DELETE", "/resellers/{reseller_id}/fee-templates/{template_id}", Op::FeeTemplateDelete, Bearer, 200, "fee-templates", "Delete a fee template no merchant uses"),
    r("GET", "/resellers/{reseller_id}/branding", Op::BrandingGet, Bearer, 200, "resellers", "A reseller's branding"),
    r("PUT", "/resellers/{reseller_id}/branding", Op::BrandingPut, Bearer, 200, "resellers", "Replace a reseller's branding"),
    r("GET", "/resellers/{reseller_id}/domains", Op::DomainsGet, Bearer, 200, "resellers", "A reseller's portal hosts"),
    r("PUT", "/resellers/{reseller_id}/domains", Op::DomainsPut, Bearer, 200, "resellers", "Replace a reseller's portal hosts"),
    r("POST", "/resellers/{reseller_id}/users", Op::ResellerUserCreate, Bearer, 201, "users", "Create a reseller admin"),
    r("GET", "/resellers/{reseller_id}/users", Op::ResellerUserList, Bearer, 200, "users", "List a reseller's admins"),
    r("GET", "/resellers/{reseller_id}/users/{user_id}", Op::ResellerUserGet, Bearer, 200, "users", "Retrieve a reseller admin"),
    r("PATCH", "/resellers/{reseller_id}/users/{user_id}", Op::ResellerUserPatch, Bearer, 200, "users", "Change a reseller admin"),
    r("PUT", "/resellers/{reseller_id}/users/{user_id}/password", Op::ResellerUserPassword, Bearer, 200, "users", "Set a reseller admin's portal password (embedded mode)"),
    r("DELETE", "/resellers/{reseller_id}/users/{user_id}", Op::ResellerUserDelete, Bearer, 200, "users", "Delete a reseller admin"),
    r("POST", "/merchants", Op::MerchantCreate, Bearer, 201, "merchants", "Create a merchant under a reseller"),
    r("GET", "/merchants", Op::MerchantList, Bearer, 200, "merchants", "List the merchants in the caller's subtree"),
    r("GET", "/merchants/{merchant_id}", Op::MerchantGet, Bearer, 200, "merchants", "Retrieve a merchant"),
    r("PATCH", "/merchants/{merchant_id}", Op::MerchantPatch, Bearer, 200, "merchants", "Change a merchant's settings"),
    r("POST", "/merchants/{merchant_id}/locations", Op::LocationCreate, Bearer, 201, "locations", "Create a location"),
    r("GET", "/merchants/{merchant_id}/locations", Op::LocationList, Bearer, 200, "locations", "List locations"),
    r("GET", "/merchants/{merchant_id}/locations/{location_id}", Op::LocationGet, Bearer, 200, "locations", "Retrieve a location"),
    r("PATCH", "/merchants/{merchant_id}/locations/{location_id}", Op::LocationPatch, Bearer, 200, "locations", "Change a location"),
    r("DELETE", "/merchants/{merchant_id}/locations/{location_id}", Op::LocationDelete, Bearer, 200, "locations", "Delete a location no device uses"),
    r("POST", "/merchants/{merchant_id}/devices", Op::DeviceCreate, Bearer, 201, "devices", "Register a device; its identity secret is shown this once"),
    r("GET", "/merchants/{merchant_id}/devices", Op::DeviceList, Bearer, 200, "devices", "List devices"),
    r("GET", "/merchants/{merchant_id}/devices/{device_id}", Op::DeviceGet, Bearer, 200, "devices", "Retrieve a device"),
    r("PATCH", "/merchants/{merchant_id}/devices/{device_id}", Op::DevicePatch, Bearer, 200, "devices", "Change a device's label, location, model or serial"),
    r("POST", "/merchants/{merchant_id}/devices/{device_id}/disable", Op::DeviceDisable, Bearer, 200, "devices", "Disable a device: its keys and tokens stop working at once"),
    r("POST", "/merchants/{merchant_id}/devices/{device_id}/enable", Op::DeviceEnable, Bearer, 200, "devices", "Re-enable a disabled device (back to inactive)"),
    r("POST", "/merchants/{merchant_id}/devices/{device_id}/identity-keys", Op::DeviceIdentityKey, Bearer, 201, "devices", "Replace the identity key; the new secret is shown this once"),
    r("POST", "/merchants/{merchant_id}/devices/{device_id}/rotate-keys", Op::DeviceRotateKeys, Bearer, 200, "devices", "Schedule a new key set for the next key delivery"),
    r("PUT", "/merchants/{merchant_id}/devices/{device_id}/terminal-parameters", Op::DeviceParameters, Bearer, 200, "devices", "Set a device's terminal-parameter overrides"),
    r("POST", "/merchants/{merchant_id}/users", Op::UserCreate, Bearer, 201, "users", "Create a merchant user"),
    r("GET", "/merchants/{merchant_id}/users", Op::UserList, Bearer, 200, "users", "List merchant users"),
    r("GET", "/merchants/{merchant_id}/users/{user_id}", Op::UserGet, Bearer, 200, "users", "Retrieve a merchant user"),
    r("PATCH", "/merchants/{merchant_id}/users/{user_id}", Op::UserPatch, Bearer, 200, "users", "Change a merchant user"),
    r("PUT", "/merchants/{merchant_id}/users/{user_id}/password", Op::UserPassword, Bearer, 200, "users", "Set a merchant user's portal password (embedded mode)"),
    r("DELETE", "/merchants/{merchant_id}/users/{user_id}", Op::UserDelete, Bearer, 200, "users", "Delete a merchant user"),
    r("POST", "/merchants/{merchant_id}/api-clients", Op::ApiClientCreate, Bearer, 201, "api-clients", "Create an API client; its secret is shown this once"),
    r("GET", "/merchants/{merchant_id}/api-clients", Op::ApiClientList, Bearer, 200, "api-clients", "List API clients"),
    r("DELETE", "/merchants/{merchant_id}/api-clients/{client_id}", Op::ApiClientDelete, Bearer, 200, "api-clients", "Delete an API client"),
    r("PUT", "/merchants/{merchant_id}/terminal-parameters", Op::MerchantParameters, Bearer, 200, "merchants", "Set the merchant's terminal-parameter overrides"),
    r("POST", "/merchants/{merchant_id}/settlements", Op::SettlementCreate, Bearer, 201, "charges", "Close the settlement batch"),
    r("GET", "/merchants/{merchant_id}/settlements", Op::SettlementList, Bearer, 200, "charges", "List settlements"),
    r("GET", "/merchants/{merchant_id}/transactions", Op::TransactionList, Bearer, 200, "charges", "Charges and refunds, newest first, with filters"),
    r("GET", "/merchants/{merchant_id}/transactions/{transaction_id}", Op::TransactionGet, Bearer, 200, "charges", "One charge or refund as a transaction"),
    r("PUT", "/app-versions/{model}", Op::AppVersionPut, Bearer, 200, "devices", "Publish the POS app for a device model (platform admins)"),
    r("GET", "/app-versions", Op::AppVersionList, Bearer, 200, "devices", "The POS apps published per device model"),
    r("POST", "/pos/heartbeat", Op::PosHeartbeat, Pos, 200, "pos", "The terminal is alive: app version, battery, network (signed, enveloped)"),
    r("POST", "/pos/update-check", Op::PosUpdateCheck, Pos, 200, "pos", "The latest app for the device's model and whether updating is mandatory (signed, enveloped)"),
    r("GET", "/audit-events", Op::AuditList, Bearer, 200, "audit", "Who changed what in the caller's subtree, newest first (admins)"),
    r("POST", "/audit-events/verify", Op::AuditVerify, Bearer, 200, "audit", "Check the audit trail's keyed hash chain (platform admins)"),
    r("GET", "/events", Op::EventList, Bearer, 200, "events", "Events in the caller's subtree, newest first, by type and object"),
    r("GET", "/events/{event_id}", Op::EventGet, Bearer, 200, "events", "Retrieve an event"),
    r("POST", "/merchants/{merchant_id}/webhook-endpoints", Op::MerchantWebhookCreate, Bearer, 201, "webhooks", "Create a webhook endpoint; its signing secret is shown this once"),
    r("GET", "/merchants/{merchant_id}/webhook-endpoints", Op::MerchantWebhookList, Bearer, 200, "webhooks", "List webhook endpoints"),
    r("GET", "/merchants/{merchant_id}/webhook-endpoints/{endpoint_id}", Op::MerchantWebhookGet, Bearer, 200, "webhooks", "Retrieve a webhook endpoint"),
    r("PATCH", "/merchants/{merchant_id}/webhook-endpoints/{endpoint_id}", Op::MerchantWebhookPatch, Bearer, 200, "webhooks", "Change a webhook endpoint's address, event types, description or status"),
    r("DELETE", "/merchants/{merchant_id}/webhook-endpoints/{endpoint_id}", Op::MerchantWebhookDelete, Bearer, 200, "webhooks", "Delete a webhook endpoint"),
    r("POST", "/merchants/{merchant_id}/webhook-endpoints/{endpoint_id}/rotate-secret", Op::MerchantWebhookRotate, Bearer, 200, "webhooks", "A new signing secret, shown this once; the previous one signs too for an overlap"),
    r("GET", "/merchants/{merchant_id}/webhook-endpoints/{endpoint_id}/deliveries", Op::MerchantWebhookDeliveries, Bearer, 200, "webhooks", "The endpoint's deliveries with their latest attempts, newest first"),
    r("POST", "/merchants/{merchant_id}/webhook-endpoints/{endpoint_id}/deliveries/{delivery_id}/resend", Op::MerchantWebhookResend, Bearer, 200, "webhooks", "Send a delivery again now"),
    r("POST", "/resellers/{reseller_id}/webhook-endpoints", Op::ResellerWebhookCreate, Bearer, 201, "webhooks", "Create a webhook endpoint; its signing secret is shown this once"),
    r("GET", "/resellers/{reseller_id}/webhook-endpoints", Op::ResellerWebhookList, Bearer, 200, "webhooks", "List webhook endpoints"),
    r("GET", "/resellers/{reseller_id}/webhook-endpoints/{endpoint_id}", Op::ResellerWebhookGet, Bearer, 200, "webhooks", "Retrieve a webhook endpoint"),
    r("PATCH", "/resellers/{reseller_id}/webhook-endpoints/{endpoint_id}", Op::ResellerWebhookPatch, Bearer, 200, "webhooks", "Change a webhook endpoint's address, event types, description or status"),
    r("DELETE", "/resellers/{reseller_id}/webhook-endpoints/{endpoint_id}", Op::ResellerWebhookDelete, Bearer, 200, "webhooks", "Delete a webhook endpoint"),
    r("POST", "/resellers/{reseller_id}/webhook-endpoints/{endpoint_id}/rotate-secret", Op::ResellerWebhookRotate, Bearer, 200, "webhooks", "A new signing secret, shown this once; the previous one signs too for an overlap"),
    r("GET", "/resellers/{reseller_id}/webhook-endpoints/{endpoint_id}/deliveries", Op::ResellerWebhookDeliveries, Bearer, 200, "webhooks", "The endpoint's deliveries with their latest attempts, newest first"),
    r("POST", "/resellers/{reseller_id}/webhook-endpoints/{endpoint_id}/deliveries/{delivery_id}/resend", Op::ResellerWebhookResend, Bearer, 200, "webhooks", "Send a delivery again now"),
    r("POST", "/charges", Op::ChargeCreate, Bearer, 200, "charges", "Create a card-not-present charge"),
    r("GET", "/charges", Op::ChargeList, Bearer, 200, "charges", "List a merchant's charges"),
    r("GET", "/charges/{charge_id}", Op::ChargeGet, Bearer, 200, "charges", "Retrieve a charge"),
    r("POST", "/charges/{charge_id}/refund", Op::ChargeRefund, Bearer, 200, "charges", "Refund a charge in full or in part"),
    r("POST", "/charges/{charge_id}/cancel", Op::ChargeCancel, Bearer, 200, "charges", "Void a charge before settlement"),
    r("POST", "/pos/bootstrap", Op::PosBootstrap, Pos, 200, "pos", "Terminal start-up: server time and minimum app version"),
    r("POST", "/pos/pairing-code", Op::PosPairingCode, Pos, 200, "pos", "A pairing code for the merchant to claim the device with"),
    r("GET", "/pos/status", Op::PosStatus, Pos, 200, "pos", "The device's lifecycle state"),
    r("POST", "/pos/claim", Op::PosClaim, Bearer, 200, "pos", "Claim a device with its pairing code (backoffice)"),
    r("POST", "/pos/attest", Op::PosAttest, Pos, 200, "pos", "Identity-key signature for an attestation token"),
    r("POST", "/pos/keys", Op::PosKeys, Pos, 200, "pos", "The device's key set as TR-31 blocks"),
    r("POST", "/pos/config", Op::PosConfig, Pos, 200, "pos", "The terminal configuration (MSK envelope)"),
    r("POST", "/pos/terminal-parameters", Op::PosTerminalParameters, Pos, 200, "pos", "Terminal parameters (gzip, possibly chunked envelope)"),
    r("POST", "/pos/activate", Op::PosActivate, Pos, 200, "pos", "Activate the terminal"),
    r("POST", "/pos/charge", Op::PosCharge, Pos, 200, "pos", "Charge a card (signed, enveloped)"),
    r("POST", "/pos/charge/{charge_id}/refund", Op::PosRefund, Pos, 200, "pos", "Refund a charge (signed, enveloped)"),
    r("POST", "/pos/charge/{charge_id}/cancel", Op::PosCancel, Pos, 200, "pos", "Void a charge (signed, empty body)"),
    r("POST", "/pos/charge/{charge_id}/reverse", Op::PosReverse, Pos, 200, "pos", "Void a charge (alias of cancel)"),
];

/// The route for a method and path, and the path's `{…}` values in order.
///
/// # Errors
/// 404/`4040` for an unknown path; 405/`4050` (with the allowed methods) for a known path and
/// another method. `HEAD` is answered like `GET`.
pub fn find<'p>(method: &str, path: &'p str) -> Result<(&'static Route, Vec<&'p str>), ApiError> {
    let method = if method == "HEAD" { "GET" } else { method };
    let mut allowed: Vec<&str> = Vec::new();
    // Only the routes whose path starts with the same segment can match (every route's first
    // segment is literal: a test keeps it so), in table order.
    let candidates = BY_FIRST_SEGMENT
        .get(first_segment(path))
        .map_or(&[][..], Vec::as_slice);
    for route in candidates {
        if let Some(params) = matches(route.path, path) {
            if route.method == method {
                return Ok((route, params));
            }
            allowed.push(route.method);
        }
    }
    if allowed.is_empty() {
        Err(ApiError::not_found())
    } else {
        allowed.dedup();
        Err(
            ApiError::new(Code::MethodNotAllowed, "method not allowed on this path")
                .with_allow(allowed.join(", ")),
        )
    }
}

/// The routes by the first segment of their path, each list in table order: a POS call
/// otherwise tried the seventy backoffice routes ahead of it, splitting each path.
static BY_FIRST_SEGMENT: std::sync::LazyLock<
    std::collections::HashMap<&'static str, Vec<&'static Route>>,
> = std::sync::LazyLock::new(|| {
    let mut by = std::collections::HashMap::<&str, Vec<&Route>>::new();
    for route in ROUTES {
        by.entry(first_segment(route.path)).or_default().push(route);
    }
    by
});

/// `pos` of `/pos/charge`.
fn first_segment(path: &str) -> &str {
    path.strip_prefix('/')
        .unwrap_or(path)
        .split('/')
        .next()
        .unwrap_or_default()
}

fn matches<'p>(pattern: &str, path: &'p str) -> Option<Vec<&'p str>> {
    let mut params = Vec::new();
    let mut want = pattern.split('/');
    let mut got = path.split('/');
    loop {
        match (want.next(), got.next()) {
            (None, None) => return Some(params),
            (Some(w), Some(g)) if w.starts_with('{') => {
                if g.is_empty() {
                    return None;
                }
                params.push(g);
            }
            (Some(w), Some(g)) if w == g => {}
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first-segment index finds what a scan of the whole table finds, for every route's
    /// own path (its `{…}` filled in) under every method.
    #[test]
    fn the_index_finds_what_the_whole_table_does() {
        let scan = |method: &str, path: &str| -> (Option<Op>, Vec<&'static str>) {
            let mut allowed = Vec::new();
            for route in ROUTES {
                if matches(route.path, path).is_some() {
                    if route.method == method {
                        return (Some(route.op), Vec::new());
                    }
                    allowed.push(route.method);
                }
            }
            (None, allowed)
        };
        for route in ROUTES {
            assert!(
                !first_segment(route.path).starts_with('{'),
                "{}",
                route.path
            );
            let path = route
                .path
                .split('/')
                .map(|s| if s.starts_with('{') { "x1" } else { s })
                .collect::<Vec<_>>()
                .join("/");
            for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
                let (op, mut allowed) = scan(method, &path);
                allowed.dedup();
                match find(method, &path) {
                    Ok((found, _)) => assert_eq!(Some(found.op), op, "{method} {path}"),
                    Err(e) => {
                        assert_eq!(op, None, "{method} {path}");
                        assert_eq!(
                            e.allow(),
                            Some(allowed.join(", ").as_str()),
                            "{method} {path}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn finds_routes_params_and_405s() {
        let (route, params) = find("GET", "/merchants/m1/devices/POS-00000001").unwrap();
        assert_eq!(route.op, Op::DeviceGet);
        assert_eq!(params, ["m1", "POS-00000001"]);
        assert_eq!(find("HEAD", "/health/live").unwrap().0.op, Op::HealthLive);
        let e = find("DELETE", "/merchants").unwrap_err();
        assert_eq!(e.code(), Code::MethodNotAllowed);
        assert_eq!(e.allow(), Some("POST, GET"));
        assert_eq!(find("GET", "/nope").unwrap_err().code(), Code::NotFound);
        assert_eq!(
            find("GET", "/merchants/").unwrap_err().code(),
            Code::NotFound
        );
        assert_eq!(
            find("GET", "/merchants/a/b").unwrap_err().code(),
            Code::NotFound
        );
    }

    #[test]
    fn every_route_is_unique() {
        for (i, a) in ROUTES.iter().enumerate() {
            for b in ROUTES.iter().skip(i + 1) {
                assert!(
                    !(a.method == b.method && a.path == b.path),
                    "{} {}",
                    a.method,
                    a.path
                );
            }
        }
    }
}
