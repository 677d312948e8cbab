//! `GET /openapi.json`: the OpenAPI 3.1 description, built from the route table so that every
//! route is described and nothing described is missing a route.

use serde_json::{Map, Value, json};

use crate::domain::charges::ChargeStatus;
use crate::error::Code;
use crate::http::routes::{Access, Op, ROUTES};
use crate::http::schemas;
use crate::wire::reply::Choices;

/// The whole document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for route in ROUTES {
        let item = paths
            .entry(route.path.to_owned())
            .or_insert_with(|| json!({}));
        if let Some(item) = item.as_object_mut() {
            item.insert(route.method.to_ascii_lowercase(), operation(route));
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "VioPay platform API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Backoffice, merchant and reseller API. Errors always have the \
                            Error shape; branch on error.code.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "pos_activation": {"type": "apiKey", "in": "header", "name": "X-Device-Id",
                        "description": "Activation headers (contract section 4): the POS \
                                        headers (User-Agent Viopay-POS/x.y.z, X-Client-Type \
                                        pos) and the X-Device-Id of a registered device."},
                "pos_attest": {"type": "apiKey", "in": "header", "name": "X-Signature",
                        "description": "The identity-key signature: X-Device-Id, X-Key-Id, \
                                        X-Timestamp, X-Nonce and X-Signature v1=<base64 \
                                        HMAC-SHA256> over those four lines."},
                "pos_attestation": {"type": "apiKey", "in": "header", "name": "Authorization",
                        "description": "Authorization: Attestation att_… (from POST \
                                        /pos/attest) and X-Device-Id."},
                "pos_signature": {"type": "apiKey", "in": "header", "name": "X-Signature",
                        "description": "The charge signature: X-Terminal-Id, X-Key-Id (the \
                                        MAC key), X-Timestamp, X-Nonce and X-Signature \
                                        v1=<base64 HMAC-SHA256> over those lines, the \
                                        method, the path and the raw body."},
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {
                        "type": "object",
                        "required": ["code", "message", "trace_id"],
                        "properties": {
                            "code": {"type": "string", "enum": Code::ALL.iter().map(|c| c.as_str()).collect::<Vec<_>>()},
                            "message": {"type": "string"},
                            "details": {"type": "object"},
                            "trace_id": {"type": "string"},
                        },
                    }},
                },
                "ResellerNode": schemas::reseller_node(),
            },
        },
    })
}

/// How a terminal call authenticates (contract section 4).
fn pos_scheme(op: Op) -> &'static str {
    match op {
        Op::PosBootstrap | Op::PosPairingCode | Op::PosStatus => "pos_activation",
        Op::PosAttest => "pos_attest",
        Op::PosKeys | Op::PosConfig | Op::PosTerminalParameters | Op::PosActivate => {
            "pos_attestation"
        }
        _ => "pos_signature",
    }
}

/// The error statuses an operation can answer besides `default`: what every request can meet
/// (a bad request, an unknown id, a full server), what its authentication adds, and what
/// bodies add.
fn error_statuses(route: &crate::http::routes::Route) -> Vec<u16> {
    let mut out = vec![400, 404, 405, 414, 429, 431, 500, 503];
    if route.access != Access::Public {
        out.extend([401, 403, 409]);
    }
    if matches!(route.method, "POST" | "PUT" | "PATCH") {
        out.extend([409, 415, 422]);
    }
    if route.path.starts_with("/charges") || route.path.starts_with("/pos/charge") {
        out.push(502);
    }
    out.sort_unstable();
    out.dedup();
    out
}

fn operation(route: &crate::http::routes::Route) -> Value {
    let mut parameters: Vec<Value> = route
        .path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    // A list is an operation that answers a page.
    let reply = schemas::reply(route.op);
    let is_list = reply
        .as_ref()
        .is_some_and(|r| r.pointer("/properties/object/const") == Some(&json!("list")));
    if is_list {
        parameters.push(json!({"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}}));
        parameters
            .push(json!({"name": "starting_after", "in": "query", "schema": {"type": "string"}}));
    }
    let text = |name: &str, description: &str| {
        json!({"name": name, "in": "query", "description": description,
               "schema": {"type": "string"}})
    };
    if route.path == "/charges" && route.method == "GET" {
        parameters.push(text(
            "merchant_id",
            "The merchant (merchant users may leave it out)",
        ));
    }
    if route.path.ends_with("/transactions") {
        parameters.push(json!({"name": "status", "in": "query", "description": "The item's own status",
                               "schema": {"type": "string", "enum": <ChargeStatus as Choices>::ALL.iter().chain(&["succeeded"]).collect::<Vec<_>>()}}));
        parameters.push(
            json!({"name": "from", "in": "query", "description": "Inclusive (RFC 3339)",
                               "schema": {"type": "string", "format": "date-time"}}),
        );
        parameters.push(
            json!({"name": "to", "in": "query", "description": "Exclusive (RFC 3339)",
                               "schema": {"type": "string", "format": "date-time"}}),
        );
        parameters.push(text("location_id", "Only this location"));
        parameters.push(text("terminal_id", "Only this terminal"));
    }
    let choice = |name: &str, description: &str, values: &[&str]| {
        json!({"name": name, "in": "query", "description": description,
               "schema": {"type": "string", "enum": values}})
    };
    match route.op {
        Op::DeviceList => parameters.push(choice(
            "connectivity",
            "From heartbeats (unknown: none yet)",
            &["online", "offline", "unknown"],
        )),
        Op::EventList => {
            parameters.push(json!({"name": "type", "in": "query",
                "description": "An event type, <object>.* or *",
                "schema": {"type": "string", "pattern": "^(\\*|[a-z]+\\.(\\*|[a-z_]+))$"}}));
            parameters.push(text("object_id", "Only the events of this object"));
            parameters.push(text("merchant_id", "Only this merchant's events"));
        }
        Op::AuditList => {
            for (name, what) in [
                ("merchant_id", "Only this merchant's records"),
                ("subject", "Only this caller's changes"),
                (
                    "action",
                    "Only this operation (MerchantPatch, DeviceDisable…)",
                ),
                ("object_id", "Only changes of this record"),
                ("request_id", "Only the change this request made"),
            ] {
                parameters.push(text(name, what));
            }
        }
        Op::MerchantWebhookDeliveries | Op::ResellerWebhookDeliveries => {
            parameters.push(choice(
                "status",
                "Where the delivery is",
                &["pending", "succeeded", "failed"],
            ));
        }
        _ => {}
    }
    let success = match reply {
        Some(schema) => json!({"description": "Success",
                               "content": {"application/json": {"schema": schema}}}),
        None => json!({"description": "Success",
                       "content": {"text/plain": {"schema": {"type": "string"}}}}),
    };
    let error = json!({"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let mut responses = Map::new();
    responses.insert(route.status.to_string(), success);
    for status in error_statuses(route) {
        responses.insert(status.to_string(), error.clone());
    }
    responses.insert("default".into(), error);
    let mut op = json!({
        "operationId": format!("{:?}", route.op),
        "summary": route.summary,
        "tags": [route.tag],
        "parameters": parameters,
        "responses": responses,
    });
    if let Some(map) = op.as_object_mut() {
        if let schemas::Request::Json { schema, required } = schemas::request(route.op) {
            map.insert(
                "requestBody".into(),
                json!({"required": required, "content": {"application/json": {"schema": schema}}}),
            );
        }
        match route.access {
            Access::Public => {}
            Access::Pos => {
                map.insert("security".into(), json!([{pos_scheme(route.op): []}]));
            }
            Access::Bearer | Access::BearerNoSession => {
                map.insert("security".into(), json!([{"bearer": []}]));
            }
        }
    }
    op
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_described() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        for route in ROUTES {
            let op = &doc["paths"][route.path][route.method.to_ascii_lowercase()];
            assert!(op.is_object(), "{} {}", route.method, route.path);
            assert_eq!(op["summary"], route.summary);
            assert!(op["responses"][route.status.to_string()].is_object());
            let declared = route.path.matches('{').count();
            let params = op["parameters"].as_array().unwrap();
            assert_eq!(
                params.iter().filter(|p| p["in"] == "path").count(),
                declared
            );
        }
        let described: usize = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|item| item.as_object().unwrap().len())
            .sum();
        assert_eq!(described, ROUTES.len());
    }

    #[test]
    fn bodies_and_answers_have_their_types_schemas() {
        let doc = document();
        let op = |method: &str, path: &str| doc["paths"][path][method].clone();
        let create = op("post", "/merchants");
        let schema = &create["requestBody"]["content"]["application/json"]["schema"];
        assert_eq!(
            schema["required"],
            json!(["reseller_id", "name", "mcc", "country", "currency"])
        );
        assert_eq!(schema["properties"]["mcc"]["pattern"], "^[0-9]{4}$");
        let answer = &create["responses"]["201"]["content"]["application/json"]["schema"];
        assert_eq!(answer["properties"]["object"]["const"], "merchant");
        assert_eq!(answer["properties"]["created_at"]["format"], "date-time");
        let charge = op("post", "/charges");
        let status = &charge["responses"]["200"]["content"]["application/json"]["schema"]["properties"]
            ["status"]["enum"];
        assert!(
            status
                .as_array()
                .unwrap()
                .contains(&json!("partially_refunded"))
        );
        assert!(charge["responses"]["502"].is_object());
        // A body-less action declares no body; a list answers a page of its items.
        assert!(
            op(
                "post",
                "/merchants/{merchant_id}/devices/{device_id}/disable"
            )
            .get("requestBody")
            .is_none()
        );
        let list = op("get", "/merchants/{merchant_id}/devices");
        let page = &list["responses"]["200"]["content"]["application/json"]["schema"];
        assert_eq!(
            page["properties"]["data"]["items"]["properties"]["object"]["const"],
            "device"
        );
        // The hierarchy refers to itself through a component.
        assert_eq!(
            doc["components"]["schemas"]["ResellerNode"]["properties"]["resellers"]["items"]["$ref"],
            "#/components/schemas/ResellerNode"
        );
        // No operation answers an undescribed object.
        for route in ROUTES {
            let op = op(&route.method.to_ascii_lowercase(), route.path);
            let ok = &op["responses"][route.status.to_string()]["content"];
            let schema = ok["application/json"]["schema"].clone();
            if route.op == Op::MerchantParameters || route.op == Op::DeviceParameters {
                continue;
            }
            assert!(
                schema.get("properties").is_some()
                    || schema.get("oneOf").is_some()
                    || schema.get("$ref").is_some()
                    || ok.get("text/plain").is_some()
                    || route.op == Op::OpenApi,
                "{} {}: {schema}",
                route.method,
                route.path
            );
        }
    }
}
