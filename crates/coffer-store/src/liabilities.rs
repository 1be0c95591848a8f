//! Proof of liabilities (B2): every user wallet's balance of an asset read at one snapshot, and
//! the published statements with each wallet's inclusion proof (docs/solvency.md).
//!
//! The tree itself is built in `coffer_domain::liabilities`; this module only reads the balances
//! and stores what was published. Statements are kept; proofs only for the latest statement of
//! each asset (older ones are deleted once a newer statement is stored).

use coffer_domain::liabilities::{InclusionProof, WalletBalance, WALLETS_MAX};
use coffer_domain::AccountKind;
use mongodb::bson::{doc, Document};
use mongodb::options::{Acknowledgment, ReadConcern, WriteConcern};
use serde::{Deserialize, Serialize};

use crate::codec::{self, Time};
use crate::collections::{LIABILITY_PROOFS, LIABILITY_STATEMENTS, WALLETS};
use crate::model::WalletDoc;
use crate::{Store, StoreError};

/// Proofs written per `insert_many`.
const PROOFS_PER_INSERT: usize = 1000;

/// Every user wallet of one asset with its balance, read in one snapshot.
#[derive(Debug, Clone)]
pub struct LiabilitySnapshot {
    pub asset: String,
    /// When the snapshot was read (the time the statement names).
    pub taken_at: Time,
    /// Each wallet's liability: available + held + pending (everything the ledger owes the user).
    pub wallets: Vec<WalletBalance>,
    /// The owner of each wallet, in the order of `wallets`.
    pub owners: Vec<String>,
}

/// A published statement: what was committed to and signed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatementDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub asset: String,
    pub decimals: u8,
    /// Lower-case hex of the root hash.
    pub root: String,
    /// The root's sum, in smallest units.
    pub total_atomic: String,
    pub leaf_count: i64,
    pub wallet_count: i64,
    #[serde(with = "codec::time")]
    pub snapshot_at: Time,
    #[serde(with = "codec::time")]
    pub published_at: Time,
    /// Lower-case hex of the Ed25519 public key, and of the signature over the statement bytes.
    pub public_key: String,
    pub signature: String,
    /// `api` or `interval`.
    pub trigger: String,
    pub requested_by: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ProofDoc {
    /// `<statement id>:<wallet id>`.
    #[serde(rename = "_id")]
    id: String,
    statement_id: String,
    asset: String,
    user_id: String,
    proof: InclusionProof,
}

impl Store {
    /// Every user wallet of `asset` and its balance, read in one snapshot (a read-only
    /// transaction at read concern snapshot): no movement is half in it. At most
    /// [`WALLETS_MAX`] wallets (`StoreError::Unsupported` beyond).
    pub async fn liability_snapshot(&self, asset: &str) -> Result<LiabilitySnapshot, StoreError> {
        let mut session = self.client.start_session().await?;
        self.sessions.cover(&session).await?;
        session
            .start_transaction()
            .read_concern(ReadConcern::snapshot())
            .write_concern(WriteConcern::builder().w(Acknowledgment::Majority).build())
            .await?;
        let taken_at = codec::now();
        let mut cursor = self
            .collection::<WalletDoc>(WALLETS)
            .find(doc! { "kind": AccountKind::User.as_str(), "asset": asset })
            .sort(doc! { "_id": 1 })
            .session(&mut session)
            .await?;
        let mut wallets = Vec::new();
        let mut owners = Vec::new();
        while let Some(wallet) = cursor.next(&mut session).await.transpose()? {
            if wallets.len() == WALLETS_MAX {
                drop(cursor);
                let _ = session.abort_transaction().await;
                return Err(StoreError::Unsupported(
                    "more user wallets than one tree commits to",
                ));
            }
            let balances = wallet.balances()?;
            wallets.push(WalletBalance {
                wallet_id: wallet.id.clone(),
                balance: balances.total(),
            });
            owners.push(wallet.user_id.clone().unwrap_or_default());
        }
        drop(cursor);
        session.commit_transaction().await?;
        Ok(LiabilitySnapshot {
            asset: asset.to_string(),
            taken_at,
            wallets,
            owners,
        })
    }

    /// Stores a statement and every wallet's proof: the proofs first, so the statement that
    /// becomes the latest always has them; then deletes the proofs of older statements.
    pub async fn store_liabilities(
        &self,
        statement: &StatementDoc,
        proofs: Vec<(String, InclusionProof)>,
    ) -> Result<(), StoreError> {
        let docs: Vec<ProofDoc> = proofs
            .into_iter()
            .map(|(user_id, proof)| ProofDoc {
                id: format!("{}:{}", statement.id, proof.wallet_id),
                statement_id: statement.id.clone(),
                asset: statement.asset.clone(),
                user_id,
                proof,
            })
            .collect();
        let collection = self.collection::<ProofDoc>(LIABILITY_PROOFS);
        for chunk in docs.chunks(PROOFS_PER_INSERT) {
            collection.insert_many(chunk).await?;
        }
        self.collection::<StatementDoc>(LIABILITY_STATEMENTS)
            .insert_one(statement)
            .await?;
        // Ids are UUIDv7: older statements sort before this one.
        collection
            .delete_many(doc! { "asset": &statement.asset, "statement_id": { "$lt": &statement.id } })
            .await?;
        Ok(())
    }

    /// The newest statement of `asset`, if any was published.
    pub async fn latest_liability_statement(&self, asset: &str) -> Result<Option<StatementDoc>, StoreError> {
        Ok(self
            .collection::<StatementDoc>(LIABILITY_STATEMENTS)
            .find_one(doc! { "asset": asset })
            .sort(doc! { "_id": -1 })
            .await?)
    }

    /// `wallet_id`'s proof in `statement_id`, if the statement has one for it.
    pub async fn liability_proof(
        &self,
        statement_id: &str,
        wallet_id: &str,
    ) -> Result<Option<InclusionProof>, StoreError> {
        let found = self
            .collection::<ProofDoc>(LIABILITY_PROOFS)
            .find_one(doc! { "_id": format!("{statement_id}:{wallet_id}") })
            .await?;
        Ok(found.map(|d| d.proof))
    }

    /// The assets of every user wallet with their decimals (what the reconciler publishes
    /// statements for), by symbol.
    pub async fn user_wallet_assets(&self) -> Result<Vec<(String, u8)>, StoreError> {
        let pipeline = [
            doc! { "$match": { "kind": AccountKind::User.as_str() } },
            doc! { "$group": { "_id": "$asset", "decimals": { "$first": "$decimals" } } },
            doc! { "$sort": { "_id": 1 } },
        ];
        let mut cursor = self.collection::<Document>(WALLETS).aggregate(pipeline).await?;
        let mut assets = Vec::new();
        while let Some(row) = futures::TryStreamExt::try_next(&mut cursor).await? {
            let asset = row.get_str("_id").unwrap_or_default().to_string();
            let decimals = match row.get("decimals") {
                Some(mongodb::bson::Bson::Int32(d)) => *d,
                Some(mongodb::bson::Bson::Int64(d)) => *d as i32,
                _ => return Err(StoreError::Corrupt(format!("the decimals of {asset}'s wallets"))),
            };
            let decimals = u8::try_from(decimals)
                .map_err(|_| StoreError::Corrupt(format!("the decimals of {asset}'s wallets")))?;
            assets.push((asset, decimals));
        }
        Ok(assets)
    }

    /// The statements' index: newest per asset.
    pub(crate) async fn ensure_liability_indexes(&self) -> Result<(), StoreError> {
        let index = |keys: Document, name: &str| {
            mongodb::IndexModel::builder()
                .keys(keys)
                .options(
                    mongodb::options::IndexOptions::builder()
                        .name(name.to_string())
                        .build(),
                )
                .build()
        };
        self.collection::<Document>(LIABILITY_STATEMENTS)
            .create_index(index(doc! { "asset": 1, "_id": -1 }, "by_asset"))
            .await?;
        self.collection::<Document>(LIABILITY_PROOFS)
            .create_index(index(doc! { "asset": 1, "statement_id": 1 }, "by_statement"))
            .await?;
        Ok(())
    }
}
