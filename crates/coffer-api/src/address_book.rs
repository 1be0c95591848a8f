//! The withdrawal address book (S7): withdrawals go only to saved addresses whose cooling-off
//! period (`COFFER_ADDRESS_COOLING_OFF_SECONDS`, default 24 h) has passed. Saving checks the
//! EIP-55 checksum of a mixed-case address and refuses the zero address, the platform's own
//! addresses (hot wallets, deposit addresses) and token contracts. Saving and removing are audited.

use alloy::primitives::Address;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use coffer_store::address_book::SavedAddressDoc;
use coffer_store::audit::Audit;
use coffer_store::audit_chain::actions;
use coffer_store::{Role, StoreError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{Principal, ValidJson};
use crate::views::time;
use crate::ApiContext;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SaveAddressRequest {
    /// A chain of the platform's assets (e.g. `ethereum`).
    pub chain: String,
    /// `0x` + 40 hex digits; a mixed-case address must carry a valid EIP-55 checksum.
    pub address: String,
    /// 1 to 100 characters ("Ledger Nano").
    pub label: String,
}

#[derive(Serialize, ToSchema)]
pub struct SavedAddressView {
    pub id: String,
    pub chain: String,
    /// EIP-55 checksummed.
    pub address: String,
    pub label: String,
    /// Whether withdrawals may go to it now.
    pub usable: bool,
    /// When its cooling-off period ends (or ended).
    pub usable_from: String,
    pub created_at: String,
}

impl SavedAddressView {
    fn from_doc(saved: &SavedAddressDoc) -> Self {
        let address = saved
            .address
            .parse::<Address>()
            .map_or_else(|_| saved.address.clone(), |a| a.to_checksum(None));
        SavedAddressView {
            id: saved.id.clone(),
            chain: saved.chain.clone(),
            address,
            label: saved.label.clone(),
            usable: saved.usable_from <= coffer_store::codec::now(),
            usable_from: time(&saved.usable_from),
            created_at: time(&saved.created_at),
        }
    }
}

/// An EVM address as typed: 0x + 40 hex digits; mixed case must be a valid EIP-55 checksum
/// (all lower or all upper case carries none). Answers it lower-case.
pub fn parse_address(text: &str, field: &str) -> ApiResult<String> {
    let invalid = |detail: &str| ApiError::invalid_field("invalid_address", field, detail);
    let digits = text
        .strip_prefix("0x")
        .filter(|d| d.len() == 40 && d.bytes().all(|b| b.is_ascii_hexdigit()));
    let digits = digits.ok_or_else(|| invalid("not 0x followed by 40 hex digits"))?;
    let mixed =
        digits.bytes().any(|b| b.is_ascii_lowercase()) && digits.bytes().any(|b| b.is_ascii_uppercase());
    let address = if mixed {
        Address::parse_checksummed(text, None).map_err(|_| {
            ApiError::invalid_field(
                "invalid_address_checksum",
                field,
                "the EIP-55 checksum does not match",
            )
        })?
    } else {
        text.parse::<Address>().map_err(|_| invalid("not an address"))?
    };
    Ok(format!("{address:#x}"))
}

/// Addresses that are the platform's own on `chain`: configured hot wallets and the token
/// contracts of its assets (deposit addresses are looked up in the store).
fn platform_addresses(ctx: &ApiContext, chain: &str) -> Vec<String> {
    let catalog = ctx.assets().current();
    let contracts = catalog
        .iter()
        .filter(|a| a.chain == chain)
        .filter_map(|a| a.contract.as_ref().map(|c| c.to_lowercase()));
    ctx.config()
        .platform_addresses
        .iter()
        .cloned()
        .chain(contracts)
        .collect()
}

/// Save a withdrawal address. Withdrawals may go to it once its cooling-off period has passed.
#[utoipa::path(post, path = "/v1/address-book", tag = "money", request_body = SaveAddressRequest,
    params(("Idempotency-Key" = String, Header, description = "Required")),
    responses((status = 201, body = SavedAddressView),
              (status = 400, description = "invalid_address, invalid_address_checksum, invalid_label, unknown_chain", body = Problem),
              (status = 409, description = "address_already_saved", body = Problem),
              (status = 422, description = "forbidden_destination, too_many_addresses", body = Problem)),
    security(("bearer" = [])))]
pub async fn save_address(
    State(ctx): State<ApiContext>,
    principal: Principal,
    ValidJson(body): ValidJson<SaveAddressRequest>,
) -> ApiResult<(StatusCode, Json<SavedAddressView>)> {
    principal.require(&[Role::User])?;
    let label = body.label.trim();
    if label.is_empty() || label.chars().count() > 100 || label.chars().any(char::is_control) {
        return Err(ApiError::invalid_field(
            "invalid_label",
            "label",
            "1 to 100 printable characters",
        ));
    }
    if !ctx.assets().current().iter().any(|a| a.chain == body.chain) {
        return Err(ApiError::invalid_field(
            "unknown_chain",
            "chain",
            "no asset of the platform is on this chain",
        ));
    }
    let address = parse_address(&body.address, "address")?;
    let mut platform = platform_addresses(&ctx, &body.chain);
    let deposit = ctx
        .store()
        .deposit_addresses_among(std::slice::from_ref(&address))
        .await?;
    platform.extend(deposit.into_iter().map(|d| d.address));
    coffer_domain::plan::allow_saved_address(&address, &platform)
        .map_err(|r| crate::money::refusal(r, "address"))?;
    let cooling_off = ctx.config().address_cooling_off;
    let audit = Audit::new(&principal.user_id, actions::ADDRESS_ADDED)
        .with_details(serde_json::json!({ "chain": &body.chain, "address": &address }));
    let saved = ctx
        .store()
        .save_address(
            &principal.user_id,
            &body.chain,
            &address,
            label,
            cooling_off,
            audit,
        )
        .await
        .map_err(|e| match e {
            StoreError::AlreadyExists => ApiError::Conflict {
                code: "address_already_saved",
                detail: "this address is in your address book already".into(),
            },
            StoreError::LimitExceeded => ApiError::Unprocessable {
                code: "too_many_addresses",
                detail: format!(
                    "at most {} saved addresses",
                    coffer_store::address_book::ADDRESSES_PER_USER_MAX
                ),
            },
            other => other.into(),
        })?;
    Ok((StatusCode::CREATED, Json(SavedAddressView::from_doc(&saved))))
}

/// The caller's saved withdrawal addresses, newest first.
#[utoipa::path(get, path = "/v1/address-book", tag = "money",
    responses((status = 200, body = Vec<SavedAddressView>)), security(("bearer" = [])))]
pub async fn list_addresses(
    State(ctx): State<ApiContext>,
    principal: Principal,
) -> ApiResult<Json<Vec<SavedAddressView>>> {
    let saved = ctx.store().saved_addresses(&principal.user_id).await?;
    Ok(Json(saved.iter().map(SavedAddressView::from_doc).collect()))
}

/// Remove a saved address; saving it again starts a new cooling-off period.
#[utoipa::path(delete, path = "/v1/address-book/{id}", tag = "money", params(("id" = String, Path)),
    responses((status = 200, body = SavedAddressView), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn remove_address(
    State(ctx): State<ApiContext>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<SavedAddressView>> {
    principal.require(&[Role::User])?;
    let audit = Audit::new(&principal.user_id, actions::ADDRESS_REMOVED);
    let removed = ctx.store().remove_address(&principal.user_id, &id, audit).await?;
    Ok(Json(SavedAddressView::from_doc(&removed)))
}
