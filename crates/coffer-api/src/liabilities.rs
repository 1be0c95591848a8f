//! Proof of liabilities (B2): signed statements per asset and each wallet's inclusion proof
//! (docs/solvency.md).
//!
//! `GET /v1/liabilities/{asset}` is public: the latest signed statement. `GET
//! /v1/wallets/{id}/liability-proof` is the owner's proof in it. Publishing
//! (`POST /v1/admin/liabilities/{asset}` and the reconciler's interval) goes through
//! [`publish`]; verification (`coffer proof verify`, and anyone else's code) through
//! [`verify_documents`], which needs nothing but the two documents and the public key.

use axum::extract::{Path, State};
use axum::Json;
use chrono::{DateTime, Utc};
use coffer_domain::liabilities::{self, Commitment, InclusionProof, LiabilityError, Piece, Sibling};
use coffer_domain::Amount;
use coffer_store::liabilities::StatementDoc;
use coffer_store::Store;
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::Principal;
use crate::views::time;
use crate::ApiContext;

/// The deployment's key that signs statements (`COFFER_LIABILITY_SIGNING_KEY`, hex of the 32-byte
/// Ed25519 seed). Its Debug prints only the public key.
#[derive(Clone)]
pub struct LiabilityKey(SigningKey);

impl std::fmt::Debug for LiabilityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LiabilityKey(public {})", self.public_key_hex())
    }
}

impl LiabilityKey {
    /// From the hex of a 32-byte seed; the error never repeats the input.
    pub fn from_hex(text: &str) -> Result<LiabilityKey, String> {
        let bytes = hex::decode(text.trim()).map_err(|_| "not hex".to_string())?;
        let seed: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "not 32 bytes (64 hex digits)".to_string())?;
        Ok(LiabilityKey(SigningKey::from_bytes(&seed)))
    }

    /// Lower-case hex of the public key, as statements carry it.
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.0.verifying_key().as_bytes())
    }
}

/// A published statement, as served and as `coffer proof verify --statement` reads it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LiabilityStatementView {
    /// `coffer-liabilities-v1`: the hashes and the signed encoding (docs/solvency.md).
    pub scheme: String,
    #[schema(format = Uuid)]
    pub statement_id: String,
    pub asset: String,
    pub decimals: u8,
    /// Lower-case hex of the Merkle sum tree's root hash.
    pub root: String,
    /// The root's sum: every user wallet's balance at the snapshot, e.g. "12.5".
    pub total: String,
    /// `total` in smallest units.
    pub total_atomic: String,
    /// Leaves of the tree (a power of two: pieces of balances and padding).
    pub leaf_count: u64,
    pub snapshot_at: String,
    /// `snapshot_at` in Unix milliseconds (the signed value).
    pub snapshot_at_ms: i64,
    pub published_at: String,
    /// Lower-case hex of the deployment's Ed25519 public key.
    pub public_key: String,
    /// Lower-case hex of the Ed25519 signature over the statement's canonical bytes.
    pub signature: String,
}

/// One sibling of a path, leaf upwards.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SiblingView {
    pub hash: String,
    pub sum_atomic: String,
}

/// One piece of the wallet's balance at its leaf.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PieceView {
    pub leaf_index: u64,
    /// Lower-case hex of the leaf commitment's 32-byte salt.
    pub salt: String,
    pub amount_atomic: String,
    pub path: Vec<SiblingView>,
}

/// A wallet's inclusion proof, as served and as `coffer proof verify --proof` reads it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LiabilityProofView {
    pub scheme: String,
    #[schema(format = Uuid)]
    pub statement_id: String,
    pub asset: String,
    #[schema(format = Uuid)]
    pub wallet_id: String,
    /// The wallet's balance at the snapshot, e.g. "1.5".
    pub balance: String,
    pub balance_atomic: String,
    pub pieces: Vec<PieceView>,
}

impl LiabilityStatementView {
    pub fn from_doc(doc: &StatementDoc) -> ApiResult<Self> {
        let total = Amount::parse_atomic(&doc.total_atomic).map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(LiabilityStatementView {
            scheme: liabilities::SCHEME.to_string(),
            statement_id: doc.id.clone(),
            asset: doc.asset.clone(),
            decimals: doc.decimals,
            root: doc.root.clone(),
            total: total.to_decimal_string(doc.decimals),
            total_atomic: doc.total_atomic.clone(),
            leaf_count: doc.leaf_count as u64,
            snapshot_at: time(&doc.snapshot_at),
            snapshot_at_ms: doc.snapshot_at.timestamp_millis(),
            published_at: time(&doc.published_at),
            public_key: doc.public_key.clone(),
            signature: doc.signature.clone(),
        })
    }
}

impl LiabilityProofView {
    /// `proof` as served, in `statement`.
    pub fn new(statement: &StatementDoc, proof: InclusionProof) -> ApiResult<Self> {
        let balance =
            Amount::parse_atomic(&proof.balance_atomic).map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(LiabilityProofView {
            scheme: liabilities::SCHEME.to_string(),
            statement_id: statement.id.clone(),
            asset: statement.asset.clone(),
            wallet_id: proof.wallet_id,
            balance: balance.to_decimal_string(statement.decimals),
            balance_atomic: proof.balance_atomic,
            pieces: proof
                .pieces
                .into_iter()
                .map(|p| PieceView {
                    leaf_index: p.leaf_index,
                    salt: p.salt,
                    amount_atomic: p.amount_atomic,
                    path: p
                        .path
                        .into_iter()
                        .map(|s| SiblingView {
                            hash: s.hash,
                            sum_atomic: s.sum_atomic,
                        })
                        .collect(),
                })
                .collect(),
        })
    }
}

/// Why publishing failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Store(#[from] coffer_store::StoreError),
    #[error(transparent)]
    Tree(#[from] LiabilityError),
    #[error("the tree builder stopped: {0}")]
    Builder(String),
}

impl From<PublishError> for ApiError {
    fn from(error: PublishError) -> Self {
        match error {
            PublishError::Store(e) => e.into(),
            PublishError::Tree(e) => ApiError::Internal(e.to_string()),
            PublishError::Builder(e) => ApiError::Internal(e),
        }
    }
}

/// Reads every user wallet of `asset` at one snapshot, builds the tree, signs and stores the
/// statement with every wallet's proof. The tree is built on a blocking thread (it hashes about
/// three leaves per wallet).
pub async fn publish(
    store: &Store,
    key: &LiabilityKey,
    asset: &str,
    decimals: u8,
    trigger: &str,
    requested_by: Option<&str>,
) -> Result<StatementDoc, PublishError> {
    let snapshot = store.liability_snapshot(asset).await?;
    let wallets = snapshot.wallets;
    let asset_name = asset.to_string();
    let built = tokio::task::spawn_blocking(move || {
        let mut rng = rand::rngs::OsRng;
        liabilities::build(&asset_name, &wallets, &mut rng)
    })
    .await
    .map_err(|e| PublishError::Builder(e.to_string()))??;
    let mut statement = sign_statement(key, &built.commitment, decimals, snapshot.taken_at);
    statement.trigger = trigger.to_string();
    statement.requested_by = requested_by.map(str::to_string);
    statement.wallet_count = built.proofs.len() as i64;
    let proofs = snapshot.owners.into_iter().zip(built.proofs).collect();
    store.store_liabilities(&statement, proofs).await?;
    Ok(statement)
}

/// A new statement of `commitment` taken at `snapshot_at`, signed by `key` (its trigger and
/// wallet count are the caller's to fill in).
pub fn sign_statement(
    key: &LiabilityKey,
    commitment: &Commitment,
    decimals: u8,
    snapshot_at: DateTime<Utc>,
) -> StatementDoc {
    let id = coffer_store::new_id();
    let snapshot_at_ms = snapshot_at.timestamp_millis();
    let message = liabilities::statement_bytes(commitment, &id, snapshot_at_ms);
    StatementDoc {
        id,
        asset: commitment.asset.clone(),
        decimals,
        root: hex::encode(commitment.root),
        total_atomic: commitment.total.to_string(),
        leaf_count: commitment.leaf_count as i64,
        wallet_count: 0,
        // Milliseconds: the signed value, so the stored time is exactly it.
        snapshot_at: DateTime::<Utc>::from_timestamp_millis(snapshot_at_ms).unwrap_or_default(),
        published_at: Utc::now(),
        public_key: key.public_key_hex(),
        signature: hex::encode(key.0.sign(&message).to_bytes()),
        trigger: String::new(),
        requested_by: None,
    }
}

/// What a verified proof says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub asset: String,
    pub wallet_id: String,
    /// The wallet's balance and the statement's total, as decimal strings of the asset.
    pub balance: String,
    pub total: String,
    pub public_key: String,
}

/// Checks a statement and a proof with nothing but themselves: the statement's signature (by
/// `expected_public_key` when given, hex), the proof belongs to the statement, and every piece
/// leads to the signed root and total.
pub fn verify_documents(
    statement: &LiabilityStatementView,
    proof: &LiabilityProofView,
    expected_public_key: Option<&str>,
) -> Result<Verified, String> {
    if statement.scheme != liabilities::SCHEME || proof.scheme != liabilities::SCHEME {
        return Err(format!(
            "unknown scheme (this verifier knows {})",
            liabilities::SCHEME
        ));
    }
    if let Some(expected) = expected_public_key {
        if !expected.trim().eq_ignore_ascii_case(&statement.public_key) {
            return Err("the statement is signed by another key than the one given".into());
        }
    }
    let total =
        Amount::parse_atomic(&statement.total_atomic).map_err(|_| "the statement's total is malformed")?;
    let commitment = Commitment {
        asset: statement.asset.clone(),
        root: liabilities::parse_hash(&statement.root).map_err(|e| e.to_string())?,
        total,
        leaf_count: statement.leaf_count,
    };
    let message =
        liabilities::statement_bytes(&commitment, &statement.statement_id, statement.snapshot_at_ms);
    let key_bytes: [u8; 32] = hex::decode(&statement.public_key)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("the statement's public key is not 32 bytes of hex")?;
    let key = VerifyingKey::from_bytes(&key_bytes).map_err(|_| "the statement's public key is invalid")?;
    let signature_bytes: [u8; 64] = hex::decode(&statement.signature)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("the statement's signature is not 64 bytes of hex")?;
    key.verify(&message, &ed25519_dalek::Signature::from_bytes(&signature_bytes))
        .map_err(|_| "the statement's signature does not verify: it was altered or signed by another key")?;
    if proof.statement_id != statement.statement_id || proof.asset != statement.asset {
        return Err("the proof belongs to another statement".into());
    }
    let inclusion = InclusionProof {
        wallet_id: proof.wallet_id.clone(),
        balance_atomic: proof.balance_atomic.clone(),
        pieces: proof
            .pieces
            .iter()
            .map(|p| Piece {
                leaf_index: p.leaf_index,
                salt: p.salt.clone(),
                amount_atomic: p.amount_atomic.clone(),
                path: p
                    .path
                    .iter()
                    .map(|s| Sibling {
                        hash: s.hash.clone(),
                        sum_atomic: s.sum_atomic.clone(),
                    })
                    .collect(),
            })
            .collect(),
    };
    let balance = liabilities::verify(&commitment, &inclusion).map_err(|e| e.to_string())?;
    Ok(Verified {
        asset: statement.asset.clone(),
        wallet_id: proof.wallet_id.clone(),
        balance: balance.to_decimal_string(statement.decimals),
        total: total.to_decimal_string(statement.decimals),
        public_key: statement.public_key.clone(),
    })
}

/// A path naming an asset the platform does not support.
pub(crate) fn unknown_asset() -> ApiError {
    ApiError::bad_request("unknown_asset", "the platform does not support this asset")
}

fn not_published(asset: &str) -> ApiError {
    ApiError::UnknownReference {
        code: "not_published",
        detail: format!("no liabilities statement of {asset} was published yet"),
    }
}

/// The latest signed liabilities statement of an asset (public; no token).
#[utoipa::path(get, path = "/v1/liabilities/{asset}", tag = "liabilities", params(("asset" = String, Path)),
    responses((status = 200, body = LiabilityStatementView),
              (status = 400, description = "unknown_asset", body = Problem),
              (status = 404, description = "not_published", body = Problem)))]
pub async fn get_liabilities(
    State(ctx): State<ApiContext>,
    Path(asset): Path<String>,
) -> ApiResult<Json<LiabilityStatementView>> {
    if ctx.assets().current().get(&asset).is_none() {
        return Err(unknown_asset());
    }
    let statement = ctx
        .store()
        .latest_liability_statement(&asset)
        .await?
        .ok_or_else(|| not_published(&asset))?;
    Ok(Json(LiabilityStatementView::from_doc(&statement)?))
}

/// The caller's wallet's inclusion proof in its asset's latest statement (owner only).
#[utoipa::path(get, path = "/v1/wallets/{id}/liability-proof", tag = "liabilities", params(("id" = String, Path)),
    responses((status = 200, body = LiabilityProofView),
              (status = 404, description = "not_found, not_published (none yet, or the wallet is newer than the snapshot)", body = Problem)),
    security(("bearer" = [])))]
pub async fn wallet_liability_proof(
    State(ctx): State<ApiContext>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<LiabilityProofView>> {
    let wallet = ctx
        .store()
        .wallet_of_user(&principal.user_id, &id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let statement = ctx
        .store()
        .latest_liability_statement(&wallet.asset)
        .await?
        .ok_or_else(|| not_published(&wallet.asset))?;
    let proof = ctx
        .store()
        .liability_proof(&statement.id, &wallet.id)
        .await?
        .ok_or_else(|| ApiError::UnknownReference {
            code: "not_published",
            detail: "the latest statement was taken before this wallet was opened".into(),
        })?;
    Ok(Json(LiabilityProofView::new(&statement, proof)?))
}
