//! Verifying the audit log's MAC chains (S5), the exported heads, and the action names every
//! role audits under.
//!
//! Each shard is walked by `seq`, streamed (never a whole shard in memory). The first record
//! where a shard breaks is named with its shard and seq: its MAC no longer matches its content
//! under the key it names (edited, also when its hash was recomputed by someone without the key),
//! `seq` jumps (records deleted), or its `prev_mac` does not link to the record before it
//! (inserted). A shard's stored head past its last record is a cut tail.
//!
//! What a chain and its head cannot show: the newest records deleted from the tail together with
//! the head moved back. The reconciler therefore appends every shard's head, MACed, to a file the
//! database writer cannot edit ([`HeadsLine`]); verification against that file names a tail cut
//! below an exported head.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use mongodb::bson::{doc, from_document, Document};
use serde::{Deserialize, Serialize};

use crate::audit::{canonical_bytes, AuditKeys, AuditRecord, MacCheck, ShardHead, GENESIS, SHARDS};
use crate::collections::AUDIT_RECORDS;
use crate::{Store, StoreError};

/// Action names of audited events. Details carry ids and enums only, never secrets or PII.
///
/// Writes that change state take an [`crate::audit::Audit`] and record it in their own
/// transaction; actions that write nothing else use [`Store::audit`].
pub mod actions {
    pub const LOGIN: &str = "auth.login";
    pub const REGISTERED: &str = "auth.registered";
    pub const LOGIN_FAILED: &str = "auth.login_failed";
    pub const REFRESH_REUSE_DETECTED: &str = "auth.refresh_reuse_detected";
    pub const LOGOUT: &str = "auth.logout";
    pub const LOGOUT_ALL: &str = "auth.logout_all";
    pub const PASSWORD_CHANGED: &str = "auth.password_changed";
    pub const MFA_FAILED: &str = "auth.mfa_failed";
    pub const STAFF_CREATED: &str = "staff.created";
    pub const STAFF_MFA_ENROLLED: &str = "staff.mfa_enrolled";
    pub const USER_SESSIONS_REVOKED: &str = "admin.user_sessions_revoked";
    pub const ADJUSTMENT_PROPOSED: &str = "adjustment.proposed";
    pub const ADJUSTMENT_APPROVED: &str = "adjustment.approved";
    pub const ADJUSTMENT_REJECTED: &str = "adjustment.rejected";
    /// The first of two approvals (two-person rule): recorded, nothing moved.
    pub const ADJUSTMENT_APPROVAL_RECORDED: &str = "adjustment.approval_recorded";
    pub const REVIEW_APPROVAL_RECORDED: &str = "review.approval_recorded";
    /// A payment-rail deposit above its rail's caps, held for staff (nothing credited).
    pub const RAIL_DEPOSIT_HELD: &str = "rail_deposit.held";
    pub const RAIL_DEPOSIT_APPROVAL_RECORDED: &str = "rail_deposit.approval_recorded";
    pub const RAIL_DEPOSIT_APPROVED: &str = "rail_deposit.approved";
    pub const RAIL_DEPOSIT_REJECTED: &str = "rail_deposit.rejected";
    pub const REVIEW_APPROVED: &str = "review.approved";
    pub const REVIEW_REJECTED: &str = "review.rejected";
    pub const WITHDRAWAL_CANCELLED: &str = "withdrawal.cancelled";
    /// A payment rail resolved a dispute of a rail deposit (released or reversed).
    pub const DISPUTE_RESOLVED: &str = "dispute.resolved";
    pub const RECONCILIATION_REQUESTED: &str = "reconciliation.requested";
    pub const AUDIT_VERIFIED: &str = "audit.verified";
    pub const LIABILITIES_PUBLISHED: &str = "liabilities.published";
    pub const USER_WALLETS_VIEWED: &str = "admin.user_wallets_viewed";
    pub const TRANSACTION_VIEWED: &str = "admin.transaction_viewed";
    pub const WITHDRAWAL_REQUESTED: &str = "withdrawal.requested";
    /// A money movement applied by the group commit: `movement.<kind>` (e.g. `movement.transfer`).
    pub const MOVEMENT_PREFIX: &str = "movement.";
    pub const DEVICE_ADDED: &str = "device.added";
    pub const DEVICE_TRUSTED: &str = "device.trusted";
    pub const DEVICE_REMOVED: &str = "device.removed";
    pub const ADDRESS_ADDED: &str = "address.added";
    pub const ADDRESS_REMOVED: &str = "address.removed";
    pub const USER_VERIFICATION_SET: &str = "kyc.verification_set";
    pub const USER_FROZEN: &str = "admin.user_frozen";
    pub const USER_UNFROZEN: &str = "admin.user_unfrozen";
    /// A conversion quote executed (its two legs are `movement.conversion` records).
    pub const CONVERSION_EXECUTED: &str = "conversion.executed";
}

/// How a shard is broken at a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakKind {
    /// The record's content no longer matches its MAC (or names a key nobody configured).
    Edited,
    /// `seq` jumps: the records in between are gone.
    Deleted,
    /// `prev_mac` does not link to the previous record, or a seq appears twice.
    Inserted,
    /// Records are missing at the end: below the shard's stored head, or below an exported head.
    CutTail,
}

impl BreakKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            BreakKind::Edited => "edited",
            BreakKind::Deleted => "deleted",
            BreakKind::Inserted => "inserted",
            BreakKind::CutTail => "cut_tail",
        }
    }
}

/// The first record where a shard breaks (`id` is empty for a cut tail).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainBreak {
    pub shard: i32,
    pub seq: i64,
    pub id: String,
    pub kind: BreakKind,
    pub detail: String,
}

/// One shard as verified: its last intact record and its first break.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShardVerification {
    pub shard: i32,
    pub records_checked: u64,
    /// The last record that verified (0 and [`GENESIS`] when none).
    pub head_seq: i64,
    pub head_mac: String,
    pub first_break: Option<ChainBreak>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditVerification {
    pub records_checked: u64,
    pub shards: Vec<ShardVerification>,
    /// The first break of the lowest broken shard.
    pub first_break: Option<ChainBreak>,
    /// Exported head lines checked against (0 without `--heads`).
    pub exported_lines: usize,
}

impl AuditVerification {
    pub fn valid(&self) -> bool {
        self.first_break.is_none()
    }
}

/// One line of the heads export: every shard's head at `at_ms`, MACed under `key_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadsLine {
    pub at_ms: i64,
    pub key_id: String,
    pub heads: Vec<ExportedHead>,
    pub mac: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedHead {
    pub shard: i32,
    pub seq: i64,
    pub mac: String,
}

impl HeadsLine {
    fn canonical_bytes(&self) -> Vec<u8> {
        serde_json::json!({ "at_ms": self.at_ms, "key_id": self.key_id, "heads": self.heads })
            .to_string()
            .into_bytes()
    }

    /// The line for `heads`, MACed under the current key.
    pub fn sign(keys: &AuditKeys, at_ms: i64, heads: &[ShardHead]) -> HeadsLine {
        let heads = heads
            .iter()
            .map(|h| ExportedHead {
                shard: h.shard,
                seq: h.seq,
                mac: h.mac.clone(),
            })
            .collect();
        let mut line = HeadsLine {
            at_ms,
            key_id: keys.current_id().to_string(),
            heads,
            mac: String::new(),
        };
        line.mac = keys.sign(&line.canonical_bytes());
        line
    }
}

/// The exported heads a verification checks the shards against: per shard, seq → MAC.
#[derive(Debug, Clone, Default)]
pub struct ExportedHeads {
    by_shard: BTreeMap<i32, BTreeMap<i64, String>>,
    lines: usize,
}

/// Most lines of a heads export read (a year of one line a minute is about 530,000).
pub const EXPORT_LINES_MAX: usize = 2_000_000;

impl ExportedHeads {
    /// Parses an export (one [`HeadsLine`] per line); a line that does not parse or whose MAC
    /// does not verify is refused, naming its line number.
    pub fn parse(text: &str, keys: &AuditKeys) -> Result<ExportedHeads, String> {
        let mut exported = ExportedHeads::default();
        for (index, raw) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            if exported.lines >= EXPORT_LINES_MAX {
                return Err(format!("more than {EXPORT_LINES_MAX} lines"));
            }
            let number = index + 1;
            let line: HeadsLine =
                serde_json::from_str(raw).map_err(|e| format!("line {number} is not a heads line: {e}"))?;
            match keys.check(&line.key_id, &line.canonical_bytes(), &line.mac) {
                MacCheck::Valid => {}
                MacCheck::UnknownKey => {
                    return Err(format!("line {number} is MACed by unknown key {}", line.key_id))
                }
                MacCheck::Mismatch => {
                    return Err(format!(
                        "line {number}'s MAC does not match: the export was edited"
                    ))
                }
            }
            for head in line.heads {
                exported
                    .by_shard
                    .entry(head.shard)
                    .or_default()
                    .insert(head.seq, head.mac);
            }
            exported.lines += 1;
        }
        Ok(exported)
    }

    pub fn lines(&self) -> usize {
        self.lines
    }
}

/// Walks one shard: `expected` is the next seq and `prev_mac` the MAC before it.
struct ShardWalk<'a> {
    shard: i32,
    keys: &'a AuditKeys,
    anchors: Option<&'a BTreeMap<i64, String>>,
    expected: i64,
    prev_mac: String,
    checked: u64,
}

impl ShardWalk<'_> {
    fn broken(&self, seq: i64, id: &str, kind: BreakKind, detail: String) -> ChainBreak {
        ChainBreak {
            shard: self.shard,
            seq,
            id: id.to_string(),
            kind,
            detail,
        }
    }

    /// Checks the next stored record and moves past it.
    fn step(&mut self, raw: &Document) -> Result<(), ChainBreak> {
        let id = raw.get_str("_id").unwrap_or_default().to_string();
        let seq = raw
            .get_i64("seq")
            .or_else(|_| raw.get_i32("seq").map(i64::from))
            .unwrap_or(-1);
        self.checked += 1;
        if seq > self.expected {
            let detail = if seq - 1 == self.expected {
                format!("the record with seq {} is missing", self.expected)
            } else {
                format!(
                    "the records with seq {} to {} are missing",
                    self.expected,
                    seq - 1
                )
            };
            return Err(self.broken(seq, &id, BreakKind::Deleted, detail));
        }
        if seq < self.expected {
            let detail = format!("seq {seq} appears again after seq {}", self.expected - 1);
            return Err(self.broken(seq, &id, BreakKind::Inserted, detail));
        }
        let edited = |detail: &str| self.broken(seq, &id, BreakKind::Edited, detail.to_string());
        let record: AuditRecord = from_document(raw.clone())
            .map_err(|_| edited("the record does not have the audit record's shape"))?;
        match self
            .keys
            .check(&record.key_id, &canonical_bytes(&record), &record.mac)
        {
            MacCheck::Valid => {}
            MacCheck::UnknownKey => {
                return Err(edited("the record's MAC names a key this deployment never had"))
            }
            MacCheck::Mismatch => return Err(edited("the record's content does not match its MAC")),
        }
        if record.shard != self.shard {
            return Err(edited("the record claims another shard"));
        }
        if record.prev_mac != self.prev_mac {
            let detail = format!(
                "prev_mac does not link to the record with seq {}: a record was inserted, or an earlier one rewritten",
                seq - 1
            );
            return Err(self.broken(seq, &id, BreakKind::Inserted, detail));
        }
        if let Some(exported) = self.anchors.and_then(|a| a.get(&seq)) {
            if *exported != record.mac {
                return Err(edited(
                    "the record differs from the exported head at this seq: the chain was rewritten",
                ));
            }
        }
        self.expected = seq + 1;
        self.prev_mac = record.mac;
        Ok(())
    }

    /// After the last record: the stored head and the exported heads must not lie beyond it.
    fn finish(&self, stored: Option<&ShardHead>) -> Option<ChainBreak> {
        let last = self.expected - 1;
        let exported_max = self.anchors.and_then(|a| a.keys().next_back().copied());
        if let Some(seq) = exported_max.filter(|s| *s > last) {
            let detail = format!("an exported head is at seq {seq} but the shard ends at seq {last}");
            return Some(self.broken(last + 1, "", BreakKind::CutTail, detail));
        }
        match stored {
            None => Some(self.broken(
                0,
                "",
                BreakKind::Deleted,
                "the shard's head document is missing".into(),
            )),
            Some(head) if head.seq > last => {
                let detail = format!(
                    "the shard's head is at seq {} but the shard ends at seq {last}",
                    head.seq
                );
                Some(self.broken(last + 1, "", BreakKind::CutTail, detail))
            }
            Some(head) if head.seq < last || head.mac != self.prev_mac => {
                let detail = format!(
                    "the shard's head (seq {}) does not name its last record",
                    head.seq
                );
                Some(self.broken(head.seq, "", BreakKind::Inserted, detail))
            }
            Some(_) => None,
        }
    }
}

impl Store {
    /// Every shard's head now, as one MACed line of the heads export.
    pub async fn audit_heads_line(&self) -> Result<HeadsLine, StoreError> {
        let keys = self.audit_keys().ok_or(StoreError::Unsupported(
            "exporting audit heads without COFFER_AUDIT_KEY",
        ))?;
        let heads = self.audit_heads().await?;
        Ok(HeadsLine::sign(
            keys,
            crate::codec::now().timestamp_millis(),
            &heads,
        ))
    }

    /// Parses a heads export with this store's audit keys (see [`ExportedHeads::parse`]).
    pub fn parse_heads_export(&self, text: &str) -> Result<ExportedHeads, String> {
        let keys = self
            .audit_keys()
            .ok_or("no COFFER_AUDIT_KEY to check the export with")?;
        ExportedHeads::parse(text, keys)
    }

    /// Verifies every shard with this store's audit keys, against `exported` heads when given.
    pub async fn verify_audit(
        &self,
        exported: Option<&ExportedHeads>,
    ) -> Result<AuditVerification, StoreError> {
        let keys = self.audit_keys().ok_or(StoreError::Unsupported(
            "verifying audit records without COFFER_AUDIT_KEY",
        ))?;
        let heads: BTreeMap<i32, ShardHead> = self
            .audit_heads()
            .await?
            .into_iter()
            .map(|h| (h.shard, h))
            .collect();
        let mut report = AuditVerification {
            exported_lines: exported.map_or(0, |e| e.lines),
            ..Default::default()
        };
        for shard in 0..SHARDS {
            let anchors = exported.and_then(|e| e.by_shard.get(&shard));
            let verified = self.verify_shard(keys, shard, anchors, heads.get(&shard)).await?;
            report.records_checked += verified.records_checked;
            if report.first_break.is_none() {
                report.first_break = verified.first_break.clone();
            }
            report.shards.push(verified);
        }
        Ok(report)
    }

    async fn verify_shard(
        &self,
        keys: &AuditKeys,
        shard: i32,
        anchors: Option<&BTreeMap<i64, String>>,
        stored: Option<&ShardHead>,
    ) -> Result<ShardVerification, StoreError> {
        let mut cursor = self
            .collection::<Document>(AUDIT_RECORDS)
            .find(doc! { "shard": shard })
            .sort(doc! { "shard": 1, "seq": 1 })
            .batch_size(1000)
            .await?;
        let mut walk = ShardWalk {
            shard,
            keys,
            anchors,
            expected: 1,
            prev_mac: GENESIS.to_string(),
            checked: 0,
        };
        let mut first_break = None;
        while let Some(raw) = cursor.try_next().await? {
            if let Err(chain_break) = walk.step(&raw) {
                first_break = Some(chain_break);
                break;
            }
        }
        let first_break = first_break.or_else(|| walk.finish(stored));
        Ok(ShardVerification {
            shard,
            records_checked: walk.checked,
            head_seq: walk.expected - 1,
            head_mac: walk.prev_mac,
            first_break,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{chain_records, AuditEntry, AuditKey};
    use mongodb::bson::to_document;
    use sha2::{Digest, Sha256};

    fn keys() -> AuditKeys {
        AuditKeys::new(
            AuditKey::new("5d2c8e1f9a0b7c3d6e4f1a2b8c9d0e7f5a6b3c4d").unwrap(),
            vec![],
        )
    }

    fn chain(n: i64) -> Vec<AuditRecord> {
        let genesis = ShardHead {
            shard: 3,
            seq: 0,
            mac: GENESIS.into(),
        };
        let entries = (1..=n)
            .map(|i| AuditEntry::new("a", "x", &format!("s{i}"), serde_json::json!({})))
            .collect();
        chain_records(&keys(), &genesis, entries)
    }

    fn head_of(records: &[AuditRecord]) -> ShardHead {
        let last = records.last().unwrap();
        ShardHead {
            shard: 3,
            seq: last.seq,
            mac: last.mac.clone(),
        }
    }

    fn first_break(
        records: &[AuditRecord],
        head: &ShardHead,
        anchors: Option<&BTreeMap<i64, String>>,
    ) -> Option<ChainBreak> {
        let keys = keys();
        let mut walk = ShardWalk {
            shard: 3,
            keys: &keys,
            anchors,
            expected: 1,
            prev_mac: GENESIS.to_string(),
            checked: 0,
        };
        for record in records {
            if let Err(b) = walk.step(&to_document(record).unwrap()) {
                return Some(b);
            }
        }
        walk.finish(Some(head))
    }

    #[test]
    fn an_intact_chain_verifies() {
        let records = chain(5);
        assert_eq!(first_break(&records, &head_of(&records), None), None);
    }

    #[test]
    fn an_edited_record_is_named_even_with_its_hash_recomputed_without_the_key() {
        let mut records = chain(5);
        let head = head_of(&records);
        records[2].subject = "someone else".into();
        records[2].mac = hex::encode(Sha256::digest(canonical_bytes(&records[2])));
        let found = first_break(&records, &head, None).unwrap();
        assert_eq!((found.shard, found.seq, found.kind), (3, 3, BreakKind::Edited));
    }

    #[test]
    fn a_deleted_record_is_a_gap_before_the_next() {
        let mut records = chain(5);
        let head = head_of(&records);
        records.remove(1);
        let found = first_break(&records, &head, None).unwrap();
        assert_eq!((found.seq, found.kind), (3, BreakKind::Deleted));
        assert!(found.detail.contains("seq 2 is missing"), "{}", found.detail);
    }

    #[test]
    fn a_cut_tail_with_its_head_moved_back_is_caught_only_by_an_exported_head() {
        let mut records = chain(5);
        let anchors = BTreeMap::from([(5, records[4].mac.clone())]);
        records.truncate(3);
        let consistent_head = head_of(&records);
        assert_eq!(first_break(&records, &consistent_head, None), None);
        let found = first_break(&records, &consistent_head, Some(&anchors)).unwrap();
        assert_eq!((found.seq, found.kind), (4, BreakKind::CutTail));
    }

    #[test]
    fn an_edited_heads_line_is_refused() {
        let head = ShardHead {
            shard: 0,
            seq: 4,
            mac: "ab".into(),
        };
        let mut line = HeadsLine::sign(&keys(), 1, &[head]);
        let text = serde_json::to_string(&line).unwrap();
        assert_eq!(ExportedHeads::parse(&text, &keys()).unwrap().lines(), 1);
        line.heads[0].seq = 2;
        let edited = serde_json::to_string(&line).unwrap();
        assert!(ExportedHeads::parse(&edited, &keys())
            .unwrap_err()
            .contains("edited"));
    }
}
