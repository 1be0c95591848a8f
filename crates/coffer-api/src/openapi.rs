//! The HTTP contract: the OpenAPI 3.1 document served at `/openapi.json` and committed as
//! `docs/openapi.json` (docs/api.md, "The contract").
//!
//! The route annotations say what is particular to a route (its body, its own errors); the
//! conventions every route shares are applied here, each derived from one rule rather than
//! repeated on forty annotations: errors are `application/problem+json`, a bearer route
//! declares its 401, a public route `security: []`, a route behind the idempotency layer its
//! key and `Idempotent-Replayed`, a rate-limited route its 429 with `Retry-After`, a 201 its
//! `Location`, every response `X-Request-Id`, every id `format: uuid`.

use std::collections::{BTreeSet, HashSet};

use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

/// The creating routes whose 201 carries `Location`: the created object's path, with `{id}`
/// the `id` of the response body. `POST /v1/auth/register` answers 201 with a session, which
/// has no address, so it has none.
pub const CREATED: &[(&str, &str)] = &[
    ("/v1/wallets", "/v1/wallets/{id}"),
    ("/v1/transfers", "/v1/transactions/{id}"),
    ("/v1/deposits", "/v1/transactions/{id}"),
    ("/v1/withdrawals", "/v1/transactions/{id}"),
    ("/v1/devices", "/v1/devices/{id}"),
    ("/v1/admin/adjustments", "/v1/admin/adjustments/{id}"),
    ("/v1/admin/reconciliations", "/v1/admin/reconciliations/{id}"),
];

/// The `Location` of a 201 from `POST route` whose body is `body`, if the route creates an
/// addressable object.
pub fn location(route: &str, body: &Value) -> Option<String> {
    let (_, template) = CREATED.iter().find(|(created, _)| *created == route)?;
    let id = body.get("id")?.as_str()?;
    uuid::Uuid::parse_str(id).ok()?;
    Some(template.replace("{id}", id))
}

/// Largest 201 body the `Location` layer reads (a created object's view is a few KiB).
const LOCATED_BODY_MAX: usize = 1 << 20;

/// Sets `Location` on the 201s of the [`CREATED`] routes, replays of stored responses included
/// (the idempotency store keeps bodies, not headers).
pub(crate) async fn location_header(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .filter(|route| request.method() == Method::POST && CREATED.iter().any(|(r, _)| r == route));
    let response = next.run(request).await;
    let Some(route) = route.filter(|_| response.status() == StatusCode::CREATED) else {
        return response;
    };
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, LOCATED_BODY_MAX).await else {
        return crate::error::ApiError::Internal("a created object's view is too large".into())
            .into_response();
    };
    let located = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|body| location(&route, &body))
        .and_then(|location| HeaderValue::from_str(&location).ok());
    if let Some(value) = located {
        parts.headers.insert(header::LOCATION, value);
    }
    Response::from_parts(parts, Body::from(bytes))
}

/// Operations that are not answered with JSON problems for lack of a database (they touch none).
const WITHOUT_DEPENDENCIES: &[&str] = &["/healthz", "/openapi.json", "/metrics"];

const METHODS: &[&str] = &["get", "put", "post", "delete", "patch", "head", "options"];

/// Which layers a route sits behind (known from the router group that registered it).
#[derive(Default)]
pub(crate) struct Layers {
    /// (method, path) of the routes behind the Idempotency-Key middleware.
    pub idempotent: HashSet<(String, String)>,
    /// (method, path) of the rate-limited routes.
    pub rate_limited: HashSet<(String, String)>,
}

impl Layers {
    /// Records every operation of `doc` (a group's document) as behind the given layers.
    pub fn add(&mut self, doc: &utoipa::openapi::OpenApi, idempotent: bool, rate_limited: bool) {
        for (path, item) in &doc.paths.paths {
            let item = serde_json::to_value(item).expect("a path item serializes");
            for method in METHODS.iter().filter(|m| item.get(**m).is_some()) {
                let key = (method.to_string(), path.clone());
                if idempotent {
                    self.idempotent.insert(key.clone());
                }
                if rate_limited {
                    self.rate_limited.insert(key);
                }
            }
        }
    }
}

/// Applies the shared conventions to the document the annotations produced.
pub(crate) fn finish(doc: &mut Value, layers: &Layers) {
    add_components(doc);
    let paths = doc["paths"].as_object_mut().expect("the document has paths");
    for (path, item) in paths.iter_mut() {
        for method in METHODS {
            let Some(operation) = item.get_mut(*method) else {
                continue;
            };
            let key = (method.to_string(), path.clone());
            let traits = Traits {
                idempotent: layers.idempotent.contains(&key),
                rate_limited: layers.rate_limited.contains(&key),
                creates: *method == "post" && CREATED.iter().any(|(route, _)| route == path),
                touches_dependencies: !WITHOUT_DEPENDENCIES.contains(&path.as_str()),
            };
            finish_operation(operation, &traits);
        }
    }
    let schemas = doc["components"]["schemas"]
        .as_object_mut()
        .expect("the document has schemas");
    for (name, schema) in schemas.iter_mut() {
        // A chain break names the record as stored, which may be a forged one with any id.
        if name != "ChainBreakView" && name != "ShardHeadView" {
            mark_ids(schema);
        }
    }
    for (name, example) in examples() {
        let schema = schemas
            .get_mut(name)
            .unwrap_or_else(|| panic!("an example of {name}, which is not in the document"));
        schema["example"] = example;
    }
}

/// Example values of the schemas clients send and receive most, shown in the document beside
/// their schema (a test validates each against it, so an example cannot drift from its type).
fn examples() -> Vec<(&'static str, Value)> {
    let wallet = "0190f3a2-5b4c-7d1e-8f00-1a2b3c4d5e6f";
    let other_wallet = "0190f3a2-5b4c-7d1e-8f00-1a2b3c4d5e70";
    let transaction = "0190f3a2-6c5d-7e2f-9a11-2b3c4d5e6f70";
    let user = "0190f3a1-0000-7000-8000-00000000a11c";
    let at = "2026-03-01T12:00:00.000Z";
    let wallet_view = json!({
        "id": wallet, "asset": "ETH", "decimals": 18, "available": "1.75", "pending": "0.25",
        "held": "0", "total": "2", "created_at": at
    });
    let entry = json!({
        "id": "0190f3a2-6c5d-7e2f-9a11-2b3c4d5e6f71", "transaction_id": transaction, "wallet_id": wallet,
        "kind": "transfer", "bucket": "available", "amount": "-0.5", "created_at": at
    });
    let transaction_view = json!({
        "id": transaction, "kind": "transfer", "state": "confirmed", "asset": "ETH", "decimals": 18,
        "amount": "0.5", "from_wallet_id": wallet, "to_wallet_id": other_wallet,
        "timeline": [{ "from": null, "to": "confirmed", "at": at, "cause": "internal transfer" }],
        "created_at": at, "updated_at": at
    });
    let quote_view = json!({
        "id": "0190f3a2-a091-7263-9e55-6f708192a3b4", "from_wallet_id": wallet, "to_wallet_id": other_wallet,
        "from_asset": "ETH", "to_asset": "USDT", "from_amount": "0.5", "to_amount": "1492.5",
        "rate": "2985", "spread_bps": 50, "status": "open", "created_at": at,
        "expires_at": "2026-03-01T12:00:30.000Z"
    });
    let mut quote_used = quote_view.clone();
    quote_used["status"] = json!("used");
    let conversion_debit = json!({
        "id": transaction, "kind": "conversion", "state": "confirmed", "asset": "ETH", "decimals": 18,
        "amount": "0.5", "from_wallet_id": wallet,
        "timeline": [{ "from": null, "to": "created", "at": at, "cause": "quote accepted" },
                     { "from": "created", "to": "confirmed", "at": at, "cause": "conversion posted" }],
        "created_at": at, "updated_at": at
    });
    let conversion_credit = json!({
        "id": "0190f3a2-6c5d-7e2f-9a11-2b3c4d5e6f7f", "kind": "conversion", "state": "confirmed",
        "asset": "USDT", "decimals": 6, "amount": "1492.5", "to_wallet_id": other_wallet,
        "timeline": [{ "from": null, "to": "created", "at": at, "cause": "quote accepted" },
                     { "from": "created", "to": "confirmed", "at": at, "cause": "conversion posted" }],
        "created_at": at, "updated_at": at
    });
    let device = json!({
        "id": "0190f3a2-7d6e-7f30-8b22-3c4d5e6f7081", "name": "Alice's phone", "trusted": true,
        "trusted_from": at, "revoked_at": null, "created_at": at
    });
    let adjustment = json!({
        "id": "0190f3a2-8e7f-7041-9c33-4d5e6f708192", "wallet_id": wallet, "asset": "ETH", "decimals": 18,
        "amount": "-2.5", "status": "proposed", "reason": "duplicate credit of ticket 4411",
        "proposed_by": user, "proposed_at": at, "decided_by": null, "decided_at": null,
        "decision_reason": null, "transaction_id": null, "approvals": []
    });
    let rail_deposit = json!({
        "id": "0190f3a2-8e7f-7041-9c33-4d5e6f7081a0", "rail": "payment", "external_reference": "bank-20260101-0042",
        "wallet_id": wallet, "asset": "ETH", "amount": "12.5", "status": "held", "cause": "deposit_max",
        "reported_at": at, "approvals": [{ "by": user, "at": at }], "decided_by": null, "decided_at": null,
        "decision_reason": null, "transaction_id": null
    });
    let run = json!({
        "id": "0190f3a2-9f80-7152-8d44-5e6f708192a3", "trigger": "api", "mode": "incremental",
        "incremental": { "accounts_read": 1004, "accounts_changed": 12, "entries_read": 24,
            "transactions_checked": 12 },
        "requested_by": user,
        "started_at": at, "finished_at": at, "duration_ms": 840, "mismatches": 0,
        "checks": [{ "check": "balances", "status": "ok", "mismatches": 0, "duration_ms": 310, "detail": null }],
        "findings": [], "findings_truncated": false,
        "solvency": [{ "asset": "ETH", "reserves_atomic": "12600000000000000000",
            "liabilities_atomic": "12500000000000000000", "margin_atomic": "100000000000000000",
            "margin": "0.1", "statement_id": "0190f3a2-9f80-7152-8d44-5e6f708192a4",
            "snapshot_at": at, "block_number": 19000000 }]
    });
    vec![
        ("CreateWalletRequest", json!({ "asset": "ETH" })),
        (
            "GraphqlRequest",
            json!({
                "query": "query Home($first: Int) { wallets { id asset available ledger(first: $first) { items { id kind amount createdAt } nextCursor } } }",
                "variables": { "first": 20 }
            }),
        ),
        (
            "GraphqlResponse",
            json!({ "data": { "wallets": [{
                "id": wallet, "asset": "ETH", "available": "1.75",
                "ledger": { "items": [{ "id": "0190f3a2-6c5d-7e2f-9a11-2b3c4d5e6f71", "kind": "transfer",
                    "amount": "-0.5", "createdAt": at }], "nextCursor": null }
            }] } }),
        ),
        (
            "RegisterRequest",
            json!({ "email": "alice@example.com", "password": "correct horse battery staple" }),
        ),
        (
            "LoginRequest",
            json!({ "email": "alice@example.com", "password": "correct horse battery staple" }),
        ),
        (
            "RefreshRequest",
            json!({ "refresh_token": "rt_4f1c0e9b7a2d4c6e8f1a3b5c7d9e0f12" }),
        ),
        (
            "TokenResponse",
            json!({
                "user_id": user, "access_token": "eyJhbGciOiJIUzI1NiJ9.e30.signature",
                "refresh_token": "rt_4f1c0e9b7a2d4c6e8f1a3b5c7d9e0f12", "token_type": "Bearer", "expires_in": 900
            }),
        ),
        (
            "TransferRequest",
            json!({ "from_wallet_id": wallet, "to_wallet_id": other_wallet, "amount": "0.5" }),
        ),
        (
            "DepositRequest",
            json!({ "wallet_id": wallet, "amount": "100.00", "external_reference": "rail-2026-03-01-0001" }),
        ),
        (
            "BulkDepositRequest",
            json!({ "atomic": false, "deposits": [
                { "wallet_id": wallet, "amount": "100.00", "external_reference": "rail-2026-03-01-0001" },
                { "wallet_id": other_wallet, "amount": "25", "external_reference": "rail-2026-03-01-0002" }
            ] }),
        ),
        (
            "BulkDepositView",
            json!({ "atomic": false, "credited": 1, "already_credited": 0, "held": 0, "refused": 1, "results": [
                { "index": 0, "external_reference": "rail-2026-03-01-0001", "status": "credited", "transaction_id": transaction },
                { "index": 1, "external_reference": "rail-2026-03-01-0002", "status": "refused", "code": "wallet_not_found",
                  "detail": "wallet_id does not name a wallet you can use" }
            ] }),
        ),
        (
            "WithdrawalRequest",
            json!({ "wallet_id": wallet, "amount": "0.25", "destination_address": "0x52908400098527886E0F7030069857D2E4169EE7" }),
        ),
        (
            "RegisterDeviceRequest",
            json!({ "name": "Alice's phone", "public_key": "2/z75CMFp8dzF5ZKLnmM1v2x8Ar4LHOg/VkL/MIPRxc=" }),
        ),
        (
            "ChangePasswordRequest",
            json!({ "current_password": "correct horse battery staple", "new_password": "a longer passphrase of mine" }),
        ),
        ("SessionsRevoked", json!({ "user_id": user, "revoked": 2 })),
        (
            "StreamTicket",
            json!({ "ticket": "st_0b6f2c1d9e8a4f3b", "expires_in": 30 }),
        ),
        (
            "ProposeAdjustmentRequest",
            json!({ "wallet_id": wallet, "amount": "-2.5", "reason": "duplicate credit of ticket 4411" }),
        ),
        (
            "DecisionRequest",
            json!({ "reason": "checked against the bank statement" }),
        ),
        (
            "WebhookBody",
            json!({ "events": [{
                "chain": "evm-local", "tx_hash": "0x9f1c0000000000000000000000000000000000000000000000000000000000aa",
                "log_index": 0, "to": "0x52908400098527886E0F7030069857D2E4169EE7", "asset": "USDC", "amount": "25",
                "block_number": 1042, "block_hash": "0x5e7a0000000000000000000000000000000000000000000000000000000000bb"
            }] }),
        ),
        ("WalletView", wallet_view.clone()),
        ("LedgerEntryView", entry.clone()),
        (
            "BalancesView",
            json!({ "available": "1.75", "pending": "0", "held": "0.25", "total": "2" }),
        ),
        (
            "StatementEntryView",
            json!({ "seq": 42, "id": "0190f3a2-6c5d-7e2f-9a11-2b3c4d5e6f71", "transaction_id": transaction,
                "kind": "transfer", "bucket": "available", "amount": "-0.5", "posted_at": at,
                "balance_after": { "available": "1.75", "pending": "0", "held": "0.25", "total": "2" } }),
        ),
        (
            "StatementPage",
            json!({ "wallet_id": wallet, "asset": "ETH", "decimals": 18,
                "from": "2026-03-01T00:00:00.000Z", "to": "2026-03-02T00:00:00.000Z",
                "opening": { "available": "2.25", "pending": "0", "held": "0.25", "total": "2.5" },
                "closing": { "available": "1.75", "pending": "0", "held": "0.25", "total": "2" },
                "items": [{ "seq": 42, "id": "0190f3a2-6c5d-7e2f-9a11-2b3c4d5e6f71", "transaction_id": transaction,
                    "kind": "transfer", "bucket": "available", "amount": "-0.5", "posted_at": at,
                    "balance_after": { "available": "1.75", "pending": "0", "held": "0.25", "total": "2" } }],
                "next_cursor": "41.42.57" }),
        ),
        (
            "LedgerPage",
            json!({ "items": [entry], "next_cursor": "0190f3a2-6c5d-7e2f-9a11-2b3c4d5e6f71" }),
        ),
        ("TransactionView", transaction_view.clone()),
        ("ReturnRequest", json!({ "amount": "0.2" })),
        ("ResolveDisputeRequest", json!({ "outcome": "released" })),
        ("Outcome", json!("reversed")),
        (
            "ReturnView",
            json!({ "id": "0190f3a2-7d6e-7f30-8b22-3c4d5e6f7081", "kind": "refund", "state": "confirmed", "amount": "0.2" }),
        ),
        (
            "QuoteRequest",
            json!({ "from_wallet_id": wallet, "to_wallet_id": other_wallet, "from_amount": "0.5" }),
        ),
        (
            "ConversionRequest",
            json!({ "quote_id": "0190f3a2-a091-7263-9e55-6f708192a3b4" }),
        ),
        ("QuoteView", quote_view.clone()),
        (
            "ConversionView",
            json!({ "quote": quote_used, "debit": conversion_debit, "credit": conversion_credit }),
        ),
        (
            "TransactionPage",
            json!({ "items": [transaction_view.clone()], "next_cursor": null }),
        ),
        ("DeviceView", device),
        (
            "LiabilityStatementView",
            json!({ "scheme": "coffer-liabilities-v1", "statement_id": "0190f3a2-a091-7263-8e55-6f708192a3b4",
                "asset": "ETH", "decimals": 18,
                "root": "5f1d7a0c8e4b3a2f1e0d9c8b7a69584736251403f2e1d0c9b8a7968574635241",
                "total": "12.5", "total_atomic": "12500000000000000000", "leaf_count": 1024,
                "snapshot_at": at, "snapshot_at_ms": 1_772_366_400_000i64, "published_at": at,
                "public_key": "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
                "signature": "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f609d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60" }),
        ),
        (
            "LiabilityProofView",
            json!({ "scheme": "coffer-liabilities-v1", "statement_id": "0190f3a2-a091-7263-8e55-6f708192a3b4",
                "asset": "ETH", "wallet_id": wallet, "balance": "1.5", "balance_atomic": "1500000000000000000",
                "pieces": [{ "leaf_index": 517,
                    "salt": "a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192",
                    "amount_atomic": "1500000000000000000",
                    "path": [{ "hash": "0d9c8b7a69584736251403f2e1d0c9b8a79685746352415f1d7a0c8e4b3a2f1e",
                        "sum_atomic": "250000000000000000" }] }] }),
        ),
        (
            "SaveAddressRequest",
            json!({ "chain": "evm-local", "address": "0x52908400098527886E0F7030069857D2E4169EE7", "label": "Ledger Nano" }),
        ),
        (
            "SavedAddressView",
            json!({ "id": "0190f3a2-6c5d-7e2f-9a11-2b3c4d5e6f80", "chain": "evm-local",
                "address": "0x52908400098527886E0F7030069857D2E4169EE7", "label": "Ledger Nano", "usable": false,
                "usable_from": "2026-01-02T09:30:00Z", "created_at": "2026-01-01T09:30:00Z" }),
        ),
        (
            "WebhookReviewView",
            json!({ "fingerprint": "a7148f29981dfac4547bdeee2127479670f592daadda29bf2c091799c8342444",
                "provider": "alchemy", "reason": "amount_mismatch",
                "ledger_key": "chain:evm-local:0x9f1c0000000000000000000000000000000000000000000000000000000000aa:native",
                "chain": "evm-local", "tx_hash": "0x9f1c0000000000000000000000000000000000000000000000000000000000aa",
                "log_index": null, "to": "0x52908400098527886e0f7030069857d2e4169ee7", "asset": "ETH",
                "amount_atomic": "125000000000000000000", "block_number": 1042,
                "block_hash": "0x5e7a0000000000000000000000000000000000000000000000000000000000bb", "times_seen": 1,
                "first_seen_at": "2026-01-01T09:30:00Z", "last_seen_at": "2026-01-01T09:30:00Z" }),
        ),
        (
            "DepositAddressView",
            json!({ "wallet_id": wallet, "asset": "ETH", "chain": "evm-local", "address": "0x52908400098527886E0F7030069857D2E4169EE7" }),
        ),
        (
            "ChainDepositView",
            json!({
                "tx_hash": "0x9f1c0000000000000000000000000000000000000000000000000000000000aa", "log_index": null,
                "asset": "ETH", "amount": "1.5", "status": "confirming", "confirmations": 3,
                "confirmations_required": 12, "block_number": 1042, "transaction_id": transaction
            }),
        ),
        (
            "WebhookResult",
            json!({ "key": "evm-local:0x9f1c…00aa:0", "outcome": "recorded" }),
        ),
        ("AdjustmentView", adjustment.clone()),
        ("RailDepositView", rail_deposit.clone()),
        (
            "RailDepositDecision",
            json!({ "rail_deposit": rail_deposit, "transaction": null }),
        ),
        (
            "ApprovedAdjustment",
            json!({ "adjustment": adjustment, "transaction": transaction_view.clone() }),
        ),
        (
            "TransactionStoryView",
            json!({
                "transaction": transaction_view, "initiated_by": user,
                "details": { "chain": "evm-local" }, "last_event": null
            }),
        ),
        ("ReconciliationView", run.clone()),
        (
            "ReconciliationPage",
            json!({ "items": [run], "next_cursor": null }),
        ),
        (
            "UserWallets",
            json!({ "user_id": user, "wallets": [wallet_view] }),
        ),
        (
            "AuditVerificationView",
            json!({ "valid": true, "records_checked": 1204, "shards": [
                { "shard": 0, "records_checked": 75, "head_seq": 75, "head_mac": "9c2f4e…", "first_break": null }
            ], "first_break": null }),
        ),
    ]
}

struct Traits {
    idempotent: bool,
    rate_limited: bool,
    creates: bool,
    touches_dependencies: bool,
}

fn problem(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } }
    })
}

fn add_components(doc: &mut Value) {
    let components = doc["components"]
        .as_object_mut()
        .expect("the document has components");
    let string = json!({ "type": "string" });
    components.insert(
        "headers".into(),
        json!({
            "X-Request-Id": {
                "description": "The request's id: the client's `X-Request-Id` when it sent one, else a generated UUID. Quote it to support.",
                "required": true,
                "schema": string
            },
            "Retry-After": {
                "description": "Seconds to wait before retrying.",
                "required": true,
                "schema": { "type": "integer", "minimum": 1 }
            },
            "Idempotent-Replayed": {
                "description": "`true` when this is the stored response of an earlier request with the same Idempotency-Key.",
                "schema": { "type": "string", "enum": ["true"] }
            },
            "Location": {
                "description": "The path of the created object.",
                "required": true,
                "schema": { "type": "string", "format": "uri-reference" }
            },
            "RateLimit-Policy": {
                "description": "IETF draft-ietf-httpapi-ratelimit-headers: the closest limit of the route, e.g. `\"reads\";q=120;w=60`.",
                "schema": string
            },
            "RateLimit": {
                "description": "IETF draft-ietf-httpapi-ratelimit-headers: what is left of that limit, e.g. `\"reads\";r=119;t=60`.",
                "schema": string
            }
        }),
    );
    components.insert(
        "parameters".into(),
        json!({
            "Idempotency-Key": {
                "name": "Idempotency-Key",
                "in": "header",
                "required": true,
                "description": "Unique per intended operation (1-128 visible ASCII characters, scoped to the caller, kept 24 h): a retry with the same key and body is answered with the stored response; with another body, `422 idempotency_key_reused`.",
                "schema": { "type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[\\x21-\\x7e]+$" },
                "example": "3f0c1c8e-2d7a-4d52-9a57-2b1f0f3c9a11"
            },
            "X-Request-Id": {
                "name": "X-Request-Id",
                "in": "header",
                "required": false,
                "description": "The caller's id for this request, echoed in the response and in every log line of it.",
                "schema": { "type": "string", "maxLength": 128 }
            }
        }),
    );
    let schemes = components
        .entry("securitySchemes")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("security schemes are an object");
    schemes.insert(
        "stream_ticket".into(),
        json!({
            "type": "apiKey",
            "in": "query",
            "name": "ticket",
            "description": "A single-use, 30-second ticket from POST /v1/stream/tickets, for WebSocket clients that cannot send headers (GET /v1/stream only). A bearer token is never accepted in the URL."
        }),
    );
}

fn finish_operation(operation: &mut Value, traits: &Traits) {
    let op = operation.as_object_mut().expect("an operation is an object");
    assert!(
        op.get("operationId").and_then(Value::as_str).is_some(),
        "every operation has an operationId"
    );
    let bearer = op
        .get("security")
        .and_then(Value::as_array)
        .is_some_and(|s| s.iter().any(|r| r.get("bearer").is_some()));
    op.entry("security").or_insert_with(|| json!([]));
    let has_body = op.contains_key("requestBody");
    let (has_query, has_id) = finish_parameters(op, traits);

    let responses = op
        .entry("responses")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("responses are an object");
    let mut wanted: Vec<(&str, &str)> = Vec::new();
    if has_body {
        wanted.extend([
            (
                "400",
                "The body is not valid for this operation (see `code` and `field`).",
            ),
            ("413", "body_too_large"),
            ("415", "unsupported_media_type"),
        ]);
    }
    if has_query {
        wanted.push((
            "400",
            "invalid_query: a query parameter does not parse or is out of range.",
        ));
    }
    if bearer {
        wanted.push(("401", "unauthenticated: no, invalid or expired access token."));
    }
    if has_id {
        wanted.push(("404", "not_found: no such object for this caller."));
    }
    if traits.idempotent {
        wanted.extend([
            ("400", "idempotency_key_required or invalid_idempotency_key."),
            (
                "409",
                "idempotency_key_in_progress: the first request with this key is still running.",
            ),
            (
                "422",
                "idempotency_key_reused: the key was used for a different request.",
            ),
        ]);
    }
    if traits.rate_limited {
        wanted.push(("429", "rate_limited: slow down; see Retry-After."));
    }
    if traits.touches_dependencies {
        wanted.extend([
            ("500", "internal: a bug; the cause is logged with the request id."),
            ("503", "retry_later: see Retry-After."),
        ]);
    }
    for (status, description) in wanted {
        responses.entry(status).or_insert_with(|| problem(description));
    }
    for (status, response) in responses.iter_mut() {
        finish_response(status, response, traits);
    }
}

/// Path ids are UUIDs, the idempotency key and `X-Request-Id` are the shared parameters;
/// answers whether the operation has query parameters and an `{id}`.
fn finish_parameters(op: &mut Map<String, Value>, traits: &Traits) -> (bool, bool) {
    let parameters = op
        .entry("parameters")
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .expect("parameters are an array");
    parameters.retain(|p| p["name"] != "Idempotency-Key");
    let mut has_query = false;
    let mut has_id = false;
    for parameter in parameters.iter_mut() {
        has_query |= parameter["in"] == "query";
        if parameter["in"] == "path" && parameter["name"] == "id" {
            has_id = true;
            parameter["schema"] = json!({ "type": "string", "format": "uuid" });
        }
    }
    if traits.idempotent {
        parameters.push(json!({ "$ref": "#/components/parameters/Idempotency-Key" }));
    }
    parameters.push(json!({ "$ref": "#/components/parameters/X-Request-Id" }));
    (has_query, has_id)
}

fn finish_response(status: &str, response: &mut Value, traits: &Traits) {
    let code: u16 = status.parse().unwrap_or(0);
    if response["description"].as_str().unwrap_or_default().is_empty() {
        let reason = axum::http::StatusCode::from_u16(code)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Response");
        response["description"] = json!(reason);
    }
    if let Some(content) = response.get_mut("content").and_then(Value::as_object_mut) {
        let is_problem = content
            .get("application/json")
            .is_some_and(|c| c["schema"]["$ref"] == "#/components/schemas/Problem");
        if is_problem || (code >= 400 && content.contains_key("application/json")) {
            let json = content.remove("application/json").expect("present");
            content.insert("application/problem+json".into(), json);
        }
    }
    let headers = response
        .as_object_mut()
        .expect("a response is an object")
        .entry("headers")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("headers are an object");
    let reference = |name: &str| json!({ "$ref": format!("#/components/headers/{name}") });
    headers.insert("X-Request-Id".into(), reference("X-Request-Id"));
    if code == 429 || code == 503 {
        headers.insert("Retry-After".into(), reference("Retry-After"));
    }
    if traits.rate_limited {
        headers.insert("RateLimit-Policy".into(), reference("RateLimit-Policy"));
        headers.insert("RateLimit".into(), reference("RateLimit"));
    }
    // Stored and replayed: every answer of the handler except the retryable ones.
    if traits.idempotent && code < 500 && code != 429 {
        headers.insert("Idempotent-Replayed".into(), reference("Idempotent-Replayed"));
    }
    if traits.creates && code == 201 {
        headers.insert("Location".into(), reference("Location"));
    }
}

/// Every id (`id` or `..._id`) the API sends or takes is a UUID.
fn mark_ids(schema: &mut Value) {
    if let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        for (name, property) in properties.iter_mut() {
            let is_string = property["type"] == "string"
                || property["type"]
                    .as_array()
                    .is_some_and(|t| t.contains(&json!("string")));
            if (name == "id" || name.ends_with("_id")) && is_string {
                property["format"] = json!("uuid");
            }
            mark_ids(property);
        }
    }
    for key in ["items", "allOf", "oneOf", "anyOf"] {
        match schema.get_mut(key) {
            Some(Value::Array(list)) => list.iter_mut().for_each(mark_ids),
            Some(nested @ Value::Object(_)) => mark_ids(nested),
            _ => {}
        }
    }
}

/// The (method, path, operationId) of every operation.
pub fn operations(doc: &Value) -> BTreeSet<(String, String, String)> {
    let mut found = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for method in METHODS {
            if let Some(operation) = item.get(*method) {
                let id = operation["operationId"].as_str().unwrap_or_default().to_string();
                found.insert((method.to_uppercase(), path.clone(), id));
            }
        }
    }
    found
}

/// What makes `current` incompatible with `previous` for a client generated from `previous`:
/// a removed operation, response status or schema property, a changed operationId, a newly
/// required parameter or request property. Empty when compatible, or when `current`'s
/// `info.version` has a greater major than `previous`'s (a new major may break).
pub fn breaking_changes(previous: &Value, current: &Value) -> Vec<String> {
    let major = |doc: &Value| {
        doc["info"]["version"]
            .as_str()
            .and_then(|v| v.split('.').next())
            .and_then(|m| m.parse::<u64>().ok())
            .unwrap_or(0)
    };
    if major(current) > major(previous) {
        return Vec::new();
    }
    let mut breaks = Vec::new();
    for (path, item) in previous["paths"].as_object().into_iter().flatten() {
        for method in METHODS {
            let Some(before) = item.get(*method) else { continue };
            let name = format!("{} {path}", method.to_uppercase());
            let Some(after) = current["paths"][path].get(*method) else {
                breaks.push(format!("{name}: operation removed"));
                continue;
            };
            if before["operationId"] != after["operationId"] {
                breaks.push(format!("{name}: operationId changed"));
            }
            for status in before["responses"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(s, _)| s)
            {
                if after["responses"].get(status).is_none() {
                    breaks.push(format!("{name}: response {status} removed"));
                }
            }
            let required = |op: &Value| -> BTreeSet<String> {
                op["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| p["required"] == true)
                    .filter_map(|p| p["name"].as_str().map(String::from))
                    .collect()
            };
            for parameter in required(after).difference(&required(before)) {
                breaks.push(format!("{name}: parameter {parameter} became required"));
            }
        }
    }
    let schemas = |doc: &Value| {
        doc["components"]["schemas"]
            .as_object()
            .cloned()
            .unwrap_or_default()
    };
    let after = schemas(current);
    for (name, before) in schemas(previous) {
        let Some(now) = after.get(&name) else {
            breaks.push(format!("schema {name} removed"));
            continue;
        };
        for property in before["properties"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(p, _)| p)
        {
            if now["properties"].get(property).is_none() {
                breaks.push(format!("schema {name}: property {property} removed"));
            }
        }
        let required = |s: &Value| -> BTreeSet<String> {
            s["required"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r.as_str().map(String::from))
                .collect()
        };
        // Newly required in a request body breaks old clients; in a response it does not.
        if name.ends_with("Request") || name.ends_with("Body") {
            for property in required(now).difference(&required(&before)) {
                breaks.push(format!("schema {name}: property {property} became required"));
            }
        }
    }
    breaks
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
    const BASELINE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.baseline.json");

    fn read(path: &str) -> Value {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// `COFFER_UPDATE_OPENAPI=1` rewrites docs/openapi.json from the code instead of comparing.
    #[test]
    fn committed_openapi_document_is_the_served_one() {
        let served = format!("{}\n", crate::openapi_json());
        if std::env::var_os("COFFER_UPDATE_OPENAPI").is_some() {
            std::fs::write(COMMITTED, &served).expect("write docs/openapi.json");
            return;
        }
        let committed = std::fs::read_to_string(COMMITTED).unwrap_or_default();
        assert!(
            committed == served,
            "docs/openapi.json differs from the served document: regenerate it with \
             `COFFER_UPDATE_OPENAPI=1 cargo test -p coffer-api --lib openapi` (or `coffer openapi`) and review the diff"
        );
    }

    #[test]
    fn openapi_document_is_valid_openapi_3_1() {
        let schema: Value =
            serde_json::from_str(include_str!("../fixtures/openapi-3.1.schema.json")).expect("the schema");
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .build(&schema)
            .expect("the OpenAPI 3.1 schema compiles");
        let doc = crate::openapi();
        let errors: Vec<String> = validator
            .iter_errors(doc)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "not valid OpenAPI 3.1:\n{}", errors.join("\n"));
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."));
        // Every schema object is a JSON Schema 2020-12 schema (the 3.1 schema does not check them).
        for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
            assert!(
                jsonschema::meta::is_valid(schema),
                "schema {name} is not a valid JSON Schema"
            );
        }
    }

    #[test]
    fn the_validation_catches_an_invalid_openapi_document() {
        let schema: Value =
            serde_json::from_str(include_str!("../fixtures/openapi-3.1.schema.json")).expect("the schema");
        let validator = jsonschema::validator_for(&schema).expect("compiles");
        let mut doc = crate::openapi().clone();
        assert!(validator.is_valid(&doc));
        // The defect the document had: optional query parameters declared `in: path`.
        let parameters = doc["paths"]["/v1/transactions"]["get"]["parameters"]
            .as_array_mut()
            .unwrap();
        let cursor = parameters.iter_mut().find(|p| p["name"] == "cursor").unwrap();
        assert_eq!(cursor["in"], "query");
        cursor["in"] = json!("path");
        assert!(!validator.is_valid(&doc));
    }

    #[test]
    fn openapi_operations_declare_ids_security_and_problem_errors() {
        let doc = crate::openapi();
        let mut ids = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in METHODS {
                let Some(op) = item.get(*method) else { continue };
                let name = format!("{method} {path}");
                let id = op["operationId"].as_str().expect("operationId");
                assert!(
                    ids.insert(id.to_string()),
                    "{name}: operationId {id} is not unique"
                );
                let security = op["security"]
                    .as_array()
                    .unwrap_or_else(|| panic!("{name}: security"));
                let bearer = security.iter().any(|s| s.get("bearer").is_some());
                if bearer {
                    assert!(
                        op["responses"].get("401").is_some(),
                        "{name}: a bearer route declares 401"
                    );
                }
                for (status, response) in op["responses"].as_object().unwrap() {
                    let content = response["content"].as_object();
                    if status.starts_with('4') || status.starts_with('5') {
                        let content = content.unwrap_or_else(|| panic!("{name} {status}: no problem body"));
                        assert!(
                            content.keys().all(|k| k == "application/problem+json"),
                            "{name} {status}: errors are application/problem+json"
                        );
                    }
                    assert!(
                        response["headers"].get("X-Request-Id").is_some(),
                        "{name} {status}"
                    );
                    if status == "201" && CREATED.iter().any(|(route, _)| route == path) {
                        assert!(response["headers"].get("Location").is_some(), "{name}: Location");
                    }
                    if status == "429" || status == "503" {
                        assert!(
                            response["headers"].get("Retry-After").is_some(),
                            "{name} {status}"
                        );
                    }
                }
            }
        }
        let public: Vec<&str> = ["/healthz", "/readyz", "/openapi.json", "/v1/auth/login"].to_vec();
        for path in public {
            let op = doc["paths"][path].as_object().unwrap().values().next().unwrap();
            assert_eq!(op["security"], json!([]), "{path} is public");
        }
        let webhook = &doc["paths"]["/v1/webhooks/{provider}"]["post"];
        assert!(webhook["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "Coffer-Signature" && p["in"] == "header" && p["required"] == true));
    }

    /// What validators check beyond the JSON Schema (which cannot see path templates): the defect
    /// the document had, eleven query parameters declared `in: path`, fails here.
    #[test]
    fn openapi_path_parameters_are_exactly_those_of_the_path_template_and_every_ref_resolves() {
        let doc = crate::openapi();
        for (path, item) in doc["paths"].as_object().unwrap() {
            let template: BTreeSet<&str> = path
                .split('/')
                .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
                .collect();
            for method in METHODS {
                let Some(op) = item.get(*method) else { continue };
                let declared: BTreeSet<&str> = op["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| p["in"] == "path")
                    .map(|p| p["name"].as_str().unwrap())
                    .collect();
                assert_eq!(declared, template, "{method} {path}: path parameters");
            }
        }
        fn refs<'a>(value: &'a Value, found: &mut Vec<&'a str>) {
            match value {
                Value::Object(map) => {
                    if let Some(reference) = map.get("$ref").and_then(Value::as_str) {
                        found.push(reference);
                    }
                    map.values().for_each(|v| refs(v, found));
                }
                Value::Array(list) => list.iter().for_each(|v| refs(v, found)),
                _ => {}
            }
        }
        let mut found = Vec::new();
        refs(doc, &mut found);
        for reference in found {
            let pointer = reference.strip_prefix('#').expect("only local references");
            assert!(doc.pointer(pointer).is_some(), "{reference} does not resolve");
        }
    }

    #[test]
    fn openapi_query_parameters_are_declared_in_the_query() {
        let doc = crate::openapi();
        let mut query = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for op in item.as_object().unwrap().values() {
                for parameter in op["parameters"].as_array().into_iter().flatten() {
                    if parameter["in"] == "query" {
                        query.insert(format!("{path}?{}", parameter["name"].as_str().unwrap()));
                    }
                }
            }
        }
        for expected in [
            "/v1/transactions?cursor",
            "/v1/transactions?limit",
            "/v1/wallets/{id}/ledger?cursor",
            "/v1/wallets/{id}?as_of",
            "/v1/wallets/{id}/statement?from",
            "/v1/wallets/{id}/statement?cursor",
            "/v1/wallets/{id}/statement.csv?to",
            "/v1/admin/adjustments?status",
            "/v1/admin/rail-deposits?status",
            "/v1/admin/reviews?limit",
            "/v1/admin/reconciliations?cursor",
            "/v1/stream?ticket",
            "/v1/stream?after",
        ] {
            assert!(
                query.contains(expected),
                "{expected} is a query parameter: {query:?}"
            );
        }
    }

    #[test]
    fn openapi_examples_validate_against_their_schemas() {
        let doc = crate::openapi();
        let mut checked = 0;
        for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
            let Some(example) = schema.get("example") else {
                continue;
            };
            let root =
                json!({ "$ref": format!("#/components/schemas/{name}"), "components": doc["components"] });
            let validator = jsonschema::options()
                .with_draft(jsonschema::Draft::Draft202012)
                .should_validate_formats(true)
                .build(&root)
                .expect("compiles");
            let errors: Vec<String> = validator.iter_errors(example).map(|e| e.to_string()).collect();
            assert!(
                errors.is_empty(),
                "the example of {name} is not valid: {errors:?}"
            );
            checked += 1;
        }
        assert!(checked > 0, "the document has examples");
        // Every request body, and every JSON success of the user-facing API, has one.
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let mut bodies = vec![(
                    "request",
                    &op["requestBody"]["content"]["application/json"]["schema"],
                )];
                if path.starts_with("/v1/") {
                    for (status, response) in op["responses"].as_object().unwrap() {
                        if status.starts_with('2') {
                            bodies.push(("response", &response["content"]["application/json"]["schema"]));
                        }
                    }
                }
                for (what, schema) in bodies {
                    let reference = schema["$ref"].as_str().or(schema["items"]["$ref"].as_str());
                    let Some(reference) = reference else { continue };
                    let name = reference.rsplit('/').next().unwrap();
                    assert!(
                        doc["components"]["schemas"][name].get("example").is_some(),
                        "{method} {path}: the {what} schema {name} has no example"
                    );
                }
            }
        }
    }

    /// Breaking the committed contract needs a new major `info.version`; docs/openapi.baseline.json
    /// is the contract as last released (docs/api.md, "The contract").
    #[test]
    fn openapi_document_has_no_breaking_change_against_the_baseline() {
        let breaks = breaking_changes(&read(BASELINE), crate::openapi());
        assert!(
            breaks.is_empty(),
            "breaking changes without a new major version:\n{}",
            breaks.join("\n")
        );
    }

    #[test]
    fn a_removed_operation_or_field_is_breaking_unless_the_major_is_bumped() {
        let previous = crate::openapi().clone();
        assert!(breaking_changes(&previous, &previous).is_empty());
        let mut current = previous.clone();
        current["paths"]["/v1/transactions"]
            .as_object_mut()
            .unwrap()
            .remove("get");
        current["components"]["schemas"]["WalletView"]["properties"]
            .as_object_mut()
            .unwrap()
            .remove("decimals");
        let breaks = breaking_changes(&previous, &current);
        assert!(
            breaks
                .iter()
                .any(|b| b.contains("GET /v1/transactions: operation removed")),
            "{breaks:?}"
        );
        assert!(
            breaks
                .iter()
                .any(|b| b.contains("WalletView: property decimals removed")),
            "{breaks:?}"
        );
        let mut additive = previous.clone();
        additive["components"]["schemas"]["WalletView"]["properties"]["nickname"] =
            json!({ "type": "string" });
        assert!(
            breaking_changes(&previous, &additive).is_empty(),
            "adding a field is not breaking"
        );
        current["info"]["version"] = json!("99.0.0"); // a major above the document's
        assert!(breaking_changes(&previous, &current).is_empty());
    }
}

#[cfg(test)]
mod asyncapi_tests {
    use coffer_domain::events::EventType;
    use serde_json::Value;

    fn asyncapi() -> Value {
        serde_json::from_str(include_str!("../../../docs/asyncapi.json")).expect("docs/asyncapi.json is JSON")
    }

    #[test]
    fn asyncapi_document_is_valid_asyncapi_3_0() {
        let schema: Value =
            serde_json::from_str(include_str!("../fixtures/asyncapi-3.0.0.schema.json")).expect("the schema");
        let validator = jsonschema::validator_for(&schema).expect("the AsyncAPI 3.0 schema compiles");
        let doc = asyncapi();
        let errors: Vec<String> = validator
            .iter_errors(&doc)
            .take(10)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "not valid AsyncAPI 3.0:\n{}",
            errors.join("\n")
        );
        let mut broken = doc.clone();
        broken["operations"]["receiveEvents"]["action"] = "listen".into();
        assert!(!validator.is_valid(&broken), "the validation can fail");
    }

    #[test]
    fn asyncapi_document_has_a_message_for_every_event_type() {
        let doc = asyncapi();
        let names: Vec<&str> = doc["components"]["messages"]
            .as_object()
            .unwrap()
            .values()
            .map(|m| m["name"].as_str().unwrap())
            .collect();
        let all = [
            EventType::BalanceUpdated,
            EventType::TransactionCreated,
            EventType::TransactionUpdated,
            EventType::TransactionRequiresReview,
            EventType::DepositDetected,
            EventType::WithdrawalConfirmed,
        ];
        for kind in all {
            // Exhaustive: a new event type stops this compiling until it is listed above.
            match kind {
                EventType::BalanceUpdated
                | EventType::TransactionCreated
                | EventType::TransactionUpdated
                | EventType::TransactionRequiresReview
                | EventType::DepositDetected
                | EventType::WithdrawalConfirmed => {}
            }
            assert!(
                names.contains(&kind.as_str()),
                "{} is not in docs/asyncapi.json",
                kind.as_str()
            );
            assert_eq!(kind.data_version(), 1, "docs/asyncapi.json describes data v1");
        }
        assert_eq!(names.len(), all.len(), "a message per event type, no more");
    }
}
