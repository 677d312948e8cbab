//! `GET /openapi.json`: the OpenAPI 3.1 description, built from the route table so that every
//! route is described and nothing described is missing a route.

use serde_json::{Map, Value, json};

use crate::error::Code;
use crate::http::routes::{Access, ROUTES};

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
                "pos": {"type": "apiKey", "in": "header", "name": "X-Signature",
                        "description": "Terminal calls: User-Agent Viopay-POS/x.y.z and \
                                        X-Client-Type pos, then activation headers, an \
                                        HMAC-SHA256 signature (X-Key-Id, X-Timestamp, X-Nonce, \
                                        X-Signature) or Authorization: Attestation att_…, as \
                                        contract section 4 describes."},
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
                "Money": {
                    "type": "object",
                    "required": ["value", "currency"],
                    "properties": {
                        "value": {"type": "string", "pattern": "^(0|[1-9][0-9]{0,11})$"},
                        "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
                    },
                },
                "List": {
                    "type": "object",
                    "required": ["object", "data", "has_more", "next_cursor"],
                    "properties": {
                        "object": {"const": "list"},
                        "data": {"type": "array", "items": {"type": "object"}},
                        "has_more": {"type": "boolean"},
                        "next_cursor": {"type": ["string", "null"]},
                    },
                },
            },
        },
    })
}

fn operation(route: &crate::http::routes::Route) -> Value {
    let mut parameters: Vec<Value> = route
        .path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    let is_list = route.method == "GET"
        && !route.path.ends_with('}')
        && route.access != Access::Public
        && !route.path.ends_with("hierarchy")
        && !route.path.ends_with("branding")
        && !route.path.ends_with("domains");
    if is_list {
        parameters.push(json!({"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}}));
        parameters
            .push(json!({"name": "starting_after", "in": "query", "schema": {"type": "string"}}));
    }
    let success = if is_list {
        json!({"description": "A page of the list", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/List"}}}})
    } else {
        json!({"description": "Success", "content": {"application/json": {"schema": {"type": "object"}}}})
    };
    let error = json!({"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let mut responses = Map::new();
    responses.insert(route.status.to_string(), success);
    responses.insert("default".into(), error);
    let mut op = json!({
        "operationId": format!("{:?}", route.op),
        "summary": route.summary,
        "tags": [route.tag],
        "parameters": parameters,
        "responses": responses,
    });
    if let Some(map) = op.as_object_mut() {
        if matches!(route.method, "POST" | "PUT" | "PATCH") {
            map.insert(
                "requestBody".into(),
                json!({"required": route.method != "POST", "content": {"application/json": {"schema": {"type": "object"}}}}),
            );
        }
        match route.access {
            Access::Public => {}
            Access::Pos => {
                map.insert("security".into(), json!([{"pos": []}]));
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
}
