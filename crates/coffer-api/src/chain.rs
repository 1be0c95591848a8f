//! Chain-facing endpoints: a wallet's deposit address and deposits, and signed provider webhooks
//! that report deposits through the same idempotent path as the chain listener (docs/chain.md).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use coffer_chain::deposits::{self, ChainVerdict};
use coffer_domain::Amount;
use coffer_store::chain::{ChainDepositDoc, Observation, ObservedDeposit};
use hmac::{Hmac, Mac};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{parse_json, Principal};
use crate::ApiContext;

/// Oldest (and furthest in the future) a webhook timestamp may be.
pub const WEBHOOK_TOLERANCE_SECONDS: i64 = 300;
/// Events one webhook request may carry.
pub const WEBHOOK_EVENTS_MAX: usize = 100;

#[derive(Serialize, ToSchema)]
pub struct DepositAddressView {
    pub wallet_id: String,
    pub asset: String,
    pub chain: String,
    /// Lower-case `0x…`.
    pub address: String,
}

#[derive(Serialize, ToSchema)]
pub struct ChainDepositView {
    pub tx_hash: String,
    /// `null` for a native coin transfer.
    pub log_index: Option<i64>,
    pub asset: String,
    pub amount: String,
    /// confirming, credited, failed, reversed.
    pub status: String,
    pub confirmations: i64,
    /// The asset's current threshold.
    pub confirmations_required: u32,
    pub block_number: i64,
    pub transaction_id: Option<String>,
}

fn unavailable(detail: &str) -> ApiError {
    ApiError::Unprocessable {
        code: "deposits_unavailable",
        detail: detail.to_string(),
    }
}

/// The wallet's deposit address (allocated on first request; the same address afterwards).
#[utoipa::path(get, path = "/v1/wallets/{id}/deposit-address", tag = "wallets", params(("id" = String, Path)),
    responses((status = 200, body = DepositAddressView), (status = 404, body = Problem),
              (status = 422, description = "deposits_unavailable", body = Problem)),
    security(("bearer" = [])))]
pub async fn deposit_address(
    State(ctx): State<ApiContext>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<DepositAddressView>> {
    let wallet = ctx
        .store()
        .wallet_of_user(&principal.user_id, &id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let asset = ctx.assets().current().get(&wallet.asset).cloned();
    let asset = asset.ok_or_else(|| unavailable("this wallet's asset is not currently supported"))?;
    let keys = ctx.config().deposit_keys.clone();
    let keys = keys.ok_or_else(|| unavailable("deposit addresses are not configured"))?;
    let derive = |index| keys.address_string(index).map_err(|e| e.to_string());
    let record = ctx.store().deposit_address(&wallet, &asset.chain, derive).await?;
    Ok(Json(DepositAddressView {
        wallet_id: wallet.id,
        asset: wallet.asset,
        chain: record.chain,
        address: record.address,
    }))
}

/// The wallet's chain deposits with their confirmations, newest first (at most 100).
#[utoipa::path(get, path = "/v1/wallets/{id}/deposits", tag = "wallets", params(("id" = String, Path)),
    responses((status = 200, body = Vec<ChainDepositView>), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn wallet_deposits(
    State(ctx): State<ApiContext>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<ChainDepositView>>> {
    let wallet = ctx
        .store()
        .wallet_of_user(&principal.user_id, &id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let deposits = ctx.store().chain_deposits_of_wallet(&wallet.id, 100).await?;
    let catalog = ctx.assets().current();
    let view = |d: &ChainDepositDoc| ChainDepositView {
        tx_hash: d.tx_hash.clone(),
        log_index: d.log_index,
        asset: d.asset.clone(),
        amount: d.amount.to_decimal_string(wallet.decimals),
        status: serde_json::to_value(d.status)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
        confirmations: d.confirmations,
        confirmations_required: catalog.get(&d.asset).map_or(0, |a| a.confirmations_required),
        block_number: d.block_number,
        transaction_id: d.transaction_id.clone(),
    };
    Ok(Json(deposits.iter().map(view).collect()))
}

/// One event of a provider's webhook.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookDeposit {
    pub chain: String,
    pub tx_hash: String,
    /// The ERC-20 `Transfer` log index; `null` for a native coin transfer.
    pub log_index: Option<u64>,
    /// The receiving address.
    pub to: String,
    pub asset: String,
    /// Decimal string in the asset's units, e.g. "1.5".
    pub amount: String,
    pub block_number: u64,
    pub block_hash: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookBody {
    pub events: Vec<WebhookDeposit>,
}

#[derive(Serialize, ToSchema)]
pub struct WebhookResult {
    /// The deterministic ledger key of the event.
    pub key: String,
    /// recorded, already_known, unmatched, or rejected (the chain does not back the event:
    /// nothing recorded, kept for staff review).
    pub outcome: String,
    /// Why a rejected event disagrees with the chain (e.g. `amount_mismatch`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

fn bad_signature() -> ApiError {
    ApiError::Unauthenticated {
        code: "invalid_signature",
    }
}

/// Checks `Coffer-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, t + "." + body)>`.
/// Constant-time comparison; nothing about the signature or secret is logged or returned.
pub fn verify_signature(
    header: Option<&str>,
    body: &[u8],
    secret: &[u8],
    now_unix: i64,
) -> Result<(), ApiError> {
    let header = header.ok_or_else(bad_signature)?;
    let (mut timestamp, mut signature) = (None, None);
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => timestamp = value.parse::<i64>().ok(),
            Some(("v1", value)) => signature = hex::decode(value).ok(),
            _ => {}
        }
    }
    let (Some(timestamp), Some(signature)) = (timestamp, signature) else {
        return Err(bad_signature());
    };
    if (now_unix - timestamp).abs() > WEBHOOK_TOLERANCE_SECONDS {
        return Err(bad_signature());
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| bad_signature())?;
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&signature).map_err(|_| bad_signature())
}

/// A provider reports deposits. Signed with the provider's secret; unsigned, badly signed or
/// stale requests get 401 and change nothing. A report is only a hint: each event is checked
/// against the chain's node (receipt, transaction, canonical block) with the listener's rules
/// before it is recorded; one the chain does not back is `rejected` and kept for review.
#[utoipa::path(post, path = "/v1/webhooks/{provider}", tag = "operations", params(("provider" = String, Path),
        ("Coffer-Signature" = String, Header, description = "`t=<unix seconds>,v1=<hex HMAC-SHA256(provider secret, t + \".\" + body)>`, at most 5 minutes old")),
    request_body = WebhookBody,
    responses((status = 200, body = Vec<WebhookResult>), (status = 401, description = "invalid_signature", body = Problem),
              (status = 400, body = Problem),
              (status = 422, description = "webhook_chain_unverifiable: no node configured for the event's chain", body = Problem),
              (status = 503, description = "retry_later: the node is unreachable or behind the reported block", body = Problem)))]
pub async fn webhook(
    State(ctx): State<ApiContext>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Vec<WebhookResult>>> {
    let secret = ctx
        .config()
        .webhook_secrets
        .get(&provider)
        .ok_or_else(bad_signature)?;
    let header = headers.get("coffer-signature").and_then(|v| v.to_str().ok());
    verify_signature(
        header,
        &body,
        secret.expose_secret().as_bytes(),
        chrono::Utc::now().timestamp(),
    )?;
    let body: WebhookBody = parse_json(&body)?;
    if body.events.len() > WEBHOOK_EVENTS_MAX {
        return Err(ApiError::bad_request(
            "too_many_events",
            format!("at most {WEBHOOK_EVENTS_MAX} events"),
        ));
    }
    // Every event is validated before any is checked or recorded: bad input changes nothing.
    let claims = body
        .events
        .iter()
        .map(|event| claim_of(&ctx, &provider, event))
        .collect::<ApiResult<Vec<_>>>()?;
    let mut results = Vec::with_capacity(claims.len());
    for claim in &claims {
        results.push(ingest(&ctx, &provider, claim).await?);
    }
    Ok(Json(results))
}

fn hex_field(value: &str, digits: usize, field: &str) -> ApiResult<String> {
    let ok = value.len() == digits + 2
        && value.starts_with("0x")
        && value[2..].bytes().all(|b| b.is_ascii_hexdigit());
    if ok {
        Ok(value.to_lowercase())
    } else {
        Err(ApiError::invalid_field(
            "invalid_field",
            field,
            "not a 0x-prefixed hex value of the right length",
        ))
    }
}

/// The event as claimed, with the node and the assets of its chain to check it against.
struct Claim {
    deposit: ObservedDeposit,
    rpc: coffer_chain::rpc::Rpc,
    chain_assets: Vec<coffer_domain::AssetConfig>,
}

fn claim_of(ctx: &ApiContext, provider: &str, event: &WebhookDeposit) -> ApiResult<Claim> {
    let catalog = ctx.assets().current();
    let asset = catalog.get(&event.asset).filter(|a| a.chain == event.chain);
    let asset = asset
        .ok_or_else(|| ApiError::invalid_field("unknown_asset", "asset", "no such asset on this chain"))?;
    let amount =
        Amount::parse_positive(&event.amount, asset.decimals).map_err(|e| ApiError::amount(e, "amount"))?;
    let deposit = ObservedDeposit {
        chain: event.chain.clone(),
        tx_hash: hex_field(&event.tx_hash, 64, "tx_hash")?,
        log_index: event.log_index,
        address: hex_field(&event.to, 40, "to")?,
        asset: asset.symbol.clone(),
        amount,
        block_number: event.block_number,
        block_hash: hex_field(&event.block_hash, 64, "block_hash")?,
        source: format!("webhook:{provider}"),
    };
    let rpc = ctx.config().chain_rpcs.get(&event.chain).cloned();
    let rpc = rpc.ok_or_else(|| ApiError::Unprocessable {
        code: "webhook_chain_unverifiable",
        detail: "no node is configured to check this chain's reports".into(),
    })?;
    let chain_assets = catalog
        .iter()
        .filter(|a| a.chain == event.chain)
        .cloned()
        .collect();
    Ok(Claim {
        deposit,
        rpc,
        chain_assets,
    })
}

/// Records the event as the chain tells it, or keeps it for review when the chain disagrees.
async fn ingest(ctx: &ApiContext, provider: &str, claim: &Claim) -> ApiResult<WebhookResult> {
    let key = claim.deposit.ledger_key();
    let verdict = deposits::verify_reported(&claim.rpc, &claim.chain_assets, &claim.deposit).await;
    let verdict = verdict.map_err(|error| {
        tracing::warn!(chain = %claim.deposit.chain, %error, "webhook: the node could not be asked");
        ApiError::RetryLater {
            retry_after_seconds: 5,
        }
    })?;
    let deposit = match verdict {
        ChainVerdict::Proven(deposit) => deposit,
        ChainVerdict::NotYetVisible => {
            return Err(ApiError::RetryLater {
                retry_after_seconds: 5,
            })
        }
        ChainVerdict::Disagrees(reason) => {
            ctx.store()
                .keep_webhook_for_review(provider, &claim.deposit, reason)
                .await?;
            ctx.metrics()
                .webhook_rejected
                .with_label_values(&[&claim.deposit.chain, reason])
                .inc();
            tracing::warn!(provider, chain = %claim.deposit.chain, %key, reason,
                "webhook event disagrees with the chain: nothing recorded, kept for review");
            return Ok(WebhookResult {
                key,
                outcome: "rejected".into(),
                reason: Some(reason.into()),
            });
        }
    };
    let catalog = ctx.assets().current();
    let observation = ctx
        .store()
        .observe_deposit(&deposit, catalog.get(&deposit.asset))
        .await?;
    let outcome = match observation {
        Observation::Recorded => "recorded",
        Observation::AlreadyKnown => "already_known",
        Observation::Unmatched => "unmatched",
    };
    Ok(WebhookResult {
        key,
        outcome: outcome.to_string(),
        reason: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &[u8], t: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(format!("{t}.").as_bytes());
        mac.update(body);
        format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn a_valid_signature_passes_and_any_change_fails() {
        let (secret, body, now) = (
            b"s3cret-s3cret".as_slice(),
            b"{\"events\":[]}".as_slice(),
            1_700_000_000,
        );
        let header = sign(secret, now, body);
        assert!(verify_signature(Some(&header), body, secret, now).is_ok());
        assert!(verify_signature(Some(&header), b"{\"events\":[1]}", secret, now).is_err());
        assert!(verify_signature(Some(&header), body, b"other", now).is_err());
        assert!(verify_signature(None, body, secret, now).is_err());
        assert!(verify_signature(Some("t=1,v1=zz"), body, secret, now).is_err());
    }

    #[test]
    fn a_stale_or_future_timestamp_fails() {
        let (secret, body, now) = (b"k".as_slice(), b"{}".as_slice(), 1_700_000_000);
        let old = sign(secret, now - WEBHOOK_TOLERANCE_SECONDS - 1, body);
        assert!(verify_signature(Some(&old), body, secret, now).is_err());
        let future = sign(secret, now + WEBHOOK_TOLERANCE_SECONDS + 1, body);
        assert!(verify_signature(Some(&future), body, secret, now).is_err());
    }
}
