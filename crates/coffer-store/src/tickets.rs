//! Stream tickets: short-lived, single-use credentials for opening `GET /v1/stream` from a client
//! that cannot set headers on a WebSocket (a browser), so that no bearer token is put in a URL.
//! Stored as SHA-256 hashes; any replica can redeem one; taking it deletes it.

use mongodb::bson::doc;
use serde::{Deserialize, Serialize};

use crate::codec::{self, Time};
use crate::collections::STREAM_TICKETS;
use crate::tokens::hash_token;
use crate::{Role, Store, StoreError};

/// Who a ticket was issued to (what the stream needs to know of its caller).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamTicketDoc {
    /// SHA-256 of the ticket; the ticket itself is never stored.
    #[serde(rename = "_id")]
    pub ticket_hash: String,
    pub user_id: String,
    pub role: Role,
    pub auth_time: i64,
    pub session_id: String,
    #[serde(with = "codec::time")]
    pub expires_at: Time,
}

impl Store {
    /// Stores a ticket for the caller described by `owner` (whose `ticket_hash` is ignored).
    pub async fn create_stream_ticket(&self, ticket: &str, owner: StreamTicketDoc) -> Result<(), StoreError> {
        let doc = StreamTicketDoc {
            ticket_hash: hash_token(ticket),
            ..owner
        };
        self.collection::<StreamTicketDoc>(STREAM_TICKETS)
            .insert_one(doc)
            .await?;
        Ok(())
    }

    /// Redeems a ticket: its owner if it is live, and it can never be used again.
    pub async fn take_stream_ticket(&self, ticket: &str) -> Result<Option<StreamTicketDoc>, StoreError> {
        let now = codec::bson_time(&codec::now());
        Ok(self
            .collection::<StreamTicketDoc>(STREAM_TICKETS)
            .find_one_and_delete(doc! { "_id": hash_token(ticket), "expires_at": { "$gt": now } })
            .await?)
    }
}
