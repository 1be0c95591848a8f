//! Every response the API tests receive is checked against the committed contract
//! (docs/openapi.json): its operation declares the status, the content type is one the response
//! declares, the body validates against its schema (formats such as `uuid` included), and the
//! headers it marks required are there. [`crate::TestApp::send_with`] calls [`check`] after each
//! response, so every test that uses the shared client proves the document right as it goes.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use serde_json::{json, Value};

/// The committed document (a test in coffer-api keeps it equal to the served one).
pub fn document() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        serde_json::from_str(include_str!("../../../docs/openapi.json")).expect("docs/openapi.json is JSON")
    })
}

/// One response as received.
pub struct Received<'a> {
    pub method: &'a str,
    /// The request's path, with or without its query string.
    pub path: &'a str,
    pub status: u16,
    pub headers: &'a reqwest::header::HeaderMap,
    pub body: &'a [u8],
}

/// Panics with what is wrong when `received` does not conform to the contract.
pub fn assert_conforms(received: &Received<'_>) {
    if let Err(problem) = check(received) {
        panic!(
            "{} {} answered {} which the contract (docs/openapi.json) does not allow: {problem}\nbody: {}",
            received.method,
            received.path,
            received.status,
            String::from_utf8_lossy(&received.body[..received.body.len().min(2000)])
        );
    }
}

/// `Ok` when `received` conforms to the contract; otherwise why not.
pub fn check(received: &Received<'_>) -> Result<(), String> {
    let doc = document();
    let path = received.path.split('?').next().unwrap_or_default();
    let method = received.method.to_ascii_lowercase();
    let Some(template) = template_of(doc, path) else {
        // Not a route: the fallback's problem 404.
        return expect_problem(received, 404);
    };
    let item = &doc["paths"][template.as_str()];
    let operation = match item.get(method.as_str()) {
        Some(operation) => operation,
        None if method == "head" && item.get("get").is_some() => &item["get"],
        None => return expect_problem(received, 405),
    };
    let operation_id = operation["operationId"].as_str().unwrap_or("?");
    let status = received.status.to_string();
    let response = resolve(doc, &operation["responses"][status.as_str()])
        .or_else(|| resolve(doc, &operation["responses"]["default"]))
        .ok_or_else(|| format!("{operation_id} does not declare the status {status}"))?;
    for (name, header) in response["headers"].as_object().into_iter().flatten() {
        let header = resolve(doc, header).unwrap_or(header);
        if header["required"] == true && !received.headers.contains_key(name.as_str()) {
            return Err(format!(
                "{operation_id} {status}: the required header {name} is missing"
            ));
        }
    }
    let content = response["content"].as_object();
    let Some(content) = content.filter(|c| !c.is_empty()) else {
        if received.body.is_empty() || method == "head" {
            return Ok(());
        }
        return Err(format!(
            "{operation_id} {status} declares no body, but one was sent"
        ));
    };
    let content_type = received
        .headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let essence = |media: &str| {
        media
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
    };
    let (_, media) = content
        .iter()
        .find(|(declared, _)| essence(declared) == essence(content_type))
        .ok_or_else(|| {
            let declared: Vec<&String> = content.keys().collect();
            format!("{operation_id} {status}: content type {content_type:?} is not one of {declared:?}")
        })?;
    if method == "head" || !essence(content_type).ends_with("json") {
        return Ok(());
    }
    let body: Value = serde_json::from_slice(received.body)
        .map_err(|e| format!("{operation_id} {status}: not JSON: {e}"))?;
    validate(&media["schema"], &body).map_err(|errors| format!("{operation_id} {status}: {errors}"))
}

/// A problem document with `status`, as the router's fallbacks answer.
fn expect_problem(received: &Received<'_>, status: u16) -> Result<(), String> {
    if received.status != status {
        return Err(format!(
            "the path is not routed (expected the fallback's {status})"
        ));
    }
    let content_type = received
        .headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    if content_type != Some("application/problem+json") {
        return Err(format!(
            "a {status} is application/problem+json, not {content_type:?}"
        ));
    }
    if status == 405 && !received.headers.contains_key(reqwest::header::ALLOW) {
        return Err("a 405 names the allowed methods in Allow".into());
    }
    let body: Value = serde_json::from_slice(received.body).map_err(|e| format!("not JSON: {e}"))?;
    validate(&json!({ "$ref": "#/components/schemas/Problem" }), &body)
}

/// The path template of the document that `path` is an instance of; a literal segment wins
/// over a `{parameter}`.
pub fn template_of(doc: &Value, path: &str) -> Option<String> {
    let segments: Vec<&str> = path.split('/').collect();
    let mut best: Option<(usize, &String)> = None;
    for template in doc["paths"].as_object()?.keys() {
        let parts: Vec<&str> = template.split('/').collect();
        if parts.len() != segments.len() {
            continue;
        }
        let mut literal = 0;
        let fits = parts.iter().zip(&segments).all(|(part, segment)| {
            if part.starts_with('{') && part.ends_with('}') {
                !segment.is_empty()
            } else {
                literal += 1;
                part == segment
            }
        });
        if fits && best.is_none_or(|(score, _)| literal > score) {
            best = Some((literal, template));
        }
    }
    best.map(|(_, template)| template.clone())
}

/// Follows a local `$ref` (`#/components/...`) once.
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> Option<&'a Value> {
    if value.is_null() {
        return None;
    }
    match value.get("$ref").and_then(Value::as_str) {
        Some(pointer) => doc.pointer(pointer.strip_prefix('#')?),
        None => Some(value),
    }
}

/// Validates `instance` against `schema`, whose `$ref`s point into the OpenAPI document's components.
fn validate(schema: &Value, instance: &Value) -> Result<(), String> {
    validate_in(document(), schema, instance)
}

/// The committed AsyncAPI document of the WebSocket stream (docs/asyncapi.json).
pub fn asyncapi() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        serde_json::from_str(include_str!("../../../docs/asyncapi.json")).expect("docs/asyncapi.json is JSON")
    })
}

/// `Ok` when a stream event is one of the AsyncAPI document's messages and validates against its
/// payload schema; otherwise why not. The stream helpers call it on every event they receive.
pub fn check_event(event: &Value) -> Result<(), String> {
    let doc = asyncapi();
    let kind = event["type"].as_str().ok_or("an event has a type")?;
    let message = doc["components"]["messages"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(_, m)| m)
        .find(|m| m["name"] == kind)
        .ok_or_else(|| format!("the event type {kind} is not in docs/asyncapi.json"))?;
    validate_in(doc, &message["payload"], event).map_err(|e| format!("{kind}: {e}"))
}

/// Validates `instance` against `schema`, whose `$ref`s point into `doc`'s components.
fn validate_in(doc: &'static Value, schema: &Value, instance: &Value) -> Result<(), String> {
    static VALIDATORS: OnceLock<Mutex<HashMap<String, std::sync::Arc<jsonschema::Validator>>>> =
        OnceLock::new();
    let key = format!("{:p}{schema}", doc);
    let cache = VALIDATORS.get_or_init(Default::default);
    let cached = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key).cloned();
    let validator = match cached {
        Some(validator) => validator,
        None => {
            let mut root = schema.clone();
            if let Some(object) = root.as_object_mut() {
                object.insert("components".into(), doc["components"].clone());
            }
            let validator = jsonschema::options()
                .with_draft(jsonschema::Draft::Draft202012)
                .should_validate_formats(true)
                .build(&root)
                .map_err(|e| format!("the declared schema does not compile: {e}"))?;
            let validator = std::sync::Arc::new(validator);
            cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key, validator.clone());
            validator
        }
    };
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .take(5)
        .map(|e| format!("at {:?}: {e}", e.instance_path().to_string()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received<'a>(
        method: &'a str,
        path: &'a str,
        status: u16,
        headers: &'a reqwest::header::HeaderMap,
        body: &'a [u8],
    ) -> Received<'a> {
        Received {
            method,
            path,
            status,
            headers,
            body,
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> reqwest::header::HeaderMap {
        let mut map = reqwest::header::HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn the_event_check_refuses_what_the_asyncapi_document_does_not_declare() {
        let id = "0190a0b1-0000-7000-8000-000000000001";
        let event = json!({
            "specversion": "1.0", "id": id, "source": "/coffer/ledger", "type": "wallet.balance.updated",
            "time": "2026-01-01T00:00:00.000Z", "subject": id,
            "dataschema": "urn:coffer:schema:wallet.balance.updated:v1", "datacontenttype": "application/json",
            "data": { "wallet_id": id, "asset": "ETH", "decimals": 18, "available": "1", "pending": "0",
                      "held": "0", "total": "1", "transaction_id": id }
        });
        check_event(&event).unwrap();
        let mut unknown = event.clone();
        unknown["type"] = json!("wallet.something.else");
        assert!(check_event(&unknown).is_err());
        let mut number = event.clone();
        number["data"]["available"] = json!(1);
        assert!(check_event(&number).is_err(), "amounts are strings");
        let mut missing = event.clone();
        missing["data"].as_object_mut().unwrap().remove("total");
        assert!(check_event(&missing).is_err());
    }

    #[test]
    fn a_literal_segment_wins_over_a_parameter() {
        let doc = document();
        assert_eq!(
            template_of(doc, "/v1/wallets/abc").as_deref(),
            Some("/v1/wallets/{id}")
        );
        assert_eq!(
            template_of(doc, "/v1/admin/audit/verify").as_deref(),
            Some("/v1/admin/audit/verify")
        );
        assert_eq!(template_of(doc, "/v1/nothing/here/at/all"), None);
    }

    #[test]
    fn the_contract_check_refuses_what_the_document_does_not_declare() {
        let id = "0190a0b1-0000-7000-8000-000000000001";
        let json = headers(&[("content-type", "application/json"), ("x-request-id", "r")]);
        let wallet = json!({
            "id": id, "asset": "ETH", "decimals": 18, "available": "0", "pending": "0", "held": "0",
            "total": "0", "created_at": "2026-01-01T00:00:00Z"
        });
        let body = serde_json::to_vec(&wallet).unwrap();
        let ok = received("GET", "/v1/wallets/x", 200, &json, &body);
        check(&ok).unwrap();
        // An undeclared status, a wrong content type, a missing required header, a bad body.
        assert!(check(&received("GET", "/v1/wallets/x", 418, &json, &body)).is_err());
        let text = headers(&[("content-type", "text/plain"), ("x-request-id", "r")]);
        assert!(check(&received("GET", "/v1/wallets/x", 200, &text, &body)).is_err());
        let no_id = headers(&[("content-type", "application/json")]);
        assert!(check(&received("GET", "/v1/wallets/x", 200, &no_id, &body)).is_err());
        let mut bad = wallet.clone();
        bad["id"] = json!("not-a-uuid");
        let bad = serde_json::to_vec(&bad).unwrap();
        assert!(check(&received("GET", "/v1/wallets/x", 200, &json, &bad)).is_err());
        // Errors are problem documents with a declared code.
        let problem = headers(&[
            ("content-type", "application/problem+json"),
            ("x-request-id", "r"),
        ]);
        let body = serde_json::to_vec(&json!({
            "type": "https://coffer.dev/problems/not_found", "title": "Not Found", "status": 404, "code": "not_found"
        }))
        .unwrap();
        check(&received("GET", "/v1/wallets/x", 404, &problem, &body)).unwrap();
        assert!(check(&received("GET", "/v1/wallets/x", 404, &json, &body)).is_err());
        let unknown_code = serde_json::to_vec(&json!({
            "type": "x", "title": "Not Found", "status": 404, "code": "no_such_code"
        }))
        .unwrap();
        assert!(check(&received("GET", "/v1/wallets/x", 404, &problem, &unknown_code)).is_err());
        // A wrong method is the router's 405 problem with Allow.
        let body = serde_json::to_vec(&json!({
            "type": "https://coffer.dev/problems/method_not_allowed", "title": "Method Not Allowed", "status": 405, "code": "method_not_allowed"
        }))
        .unwrap();
        assert!(
            check(&received("PUT", "/v1/wallets/x", 405, &problem, &body)).is_err(),
            "Allow is missing"
        );
        let allow = headers(&[("content-type", "application/problem+json"), ("allow", "GET")]);
        check(&received("PUT", "/v1/wallets/x", 405, &allow, &body)).unwrap();
    }
}
