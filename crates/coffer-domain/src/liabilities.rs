//! Proof of liabilities (B2): a Merkle sum tree over every user wallet's balance of one asset.
//!
//! Pure: the caller passes the balances (read at one ledger snapshot) and a random source; this
//! module builds the tree, the published statement's canonical bytes and each wallet's inclusion
//! proof, and verifies a proof against a statement. Signing is the caller's (the key is a secret
//! of the deployment, not a domain concern).
//!
//! - A **leaf** is `SHA-256(LEAF_TAG || commitment || amount)`, where `commitment` is
//!   `SHA-256(COMMITMENT_TAG || asset || wallet id || salt)` with a fresh 32-byte salt per leaf:
//!   a leaf names no user, and without the salt nobody can test a guessed wallet id against it.
//! - A **parent** is `SHA-256(NODE_TAG || left hash || left sum || right hash || right sum)` and
//!   carries `left sum + right sum`. Both children's sums are hashed separately (not only their
//!   total, as in Maxwell's first scheme), which closes the attack where a prover shifts value
//!   between two siblings' sums (docs/solvency.md).
//! - Each wallet's balance is split into [`PIECES_PER_WALLET`] randomly sized **pieces**, each
//!   at its own leaf, and the leaves are shuffled: a sibling sum on a user's path is a sum of
//!   pieces of unknown owners, and one piece tells nothing exact about anyone's balance.
//! - The tree is padded to a power of two with zero leaves that look like any other leaf.
//! - Every amount is range-checked: a leaf is at most the ledger limit and sums are added with
//!   overflow checks, so no leaf can carry a "negative" amount (the flaw Binance's audit found).

use std::collections::BTreeSet;

use rand::seq::SliceRandom;
use rand::RngCore;
use ruint::aliases::U256;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::amount::{ledger_max, Amount};

/// The version of the statement's canonical encoding and of the hashes.
pub const SCHEME: &str = "coffer-liabilities-v1";
const LEAF_TAG: &[u8] = b"coffer-liabilities-v1/leaf";
const NODE_TAG: &[u8] = b"coffer-liabilities-v1/node";
const COMMITMENT_TAG: &[u8] = b"coffer-liabilities-v1/commitment";

/// How many leaves carry one wallet's balance.
pub const PIECES_PER_WALLET: usize = 3;
/// The most wallets one tree commits to (a bound on memory: about 200 bytes per leaf).
pub const WALLETS_MAX: usize = 1_000_000;
/// The longest path a proof may have (2^23 leaves ≥ 3 × [`WALLETS_MAX`] padded).
pub const DEPTH_MAX: usize = 23;

pub type Hash = [u8; 32];

/// Why a tree could not be built or a proof does not verify.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LiabilityError {
    #[error("more than {WALLETS_MAX} wallets")]
    TooManyWallets,
    #[error("a balance is above the ledger limit")]
    AmountOutOfRange,
    #[error("a sum overflowed")]
    SumOverflow,
    #[error("the proof is malformed: {0}")]
    Malformed(String),
    #[error("the proof is for another statement (asset, leaf count or statement id differ)")]
    OtherStatement,
    #[error("a piece's path does not lead to the published root")]
    RootMismatch,
    #[error("the root's sum is not the published total")]
    TotalMismatch,
    #[error("the pieces do not add up to the balance the proof states")]
    BalanceMismatch,
}

/// One wallet's balance at the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletBalance {
    pub wallet_id: String,
    pub balance: Amount,
}

/// What is published (and signed): the root, the total it carries, the leaf count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commitment {
    pub asset: String,
    pub root: Hash,
    pub total: Amount,
    pub leaf_count: u64,
}

/// The sibling at one level of a path, from the leaf up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sibling {
    /// Lower-case hex of the sibling's hash.
    pub hash: String,
    /// The sum the sibling carries, in smallest units.
    pub sum_atomic: String,
}

/// One piece of a wallet's balance: its leaf, salt and path to the root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Piece {
    pub leaf_index: u64,
    /// Lower-case hex of the 32-byte salt of this leaf's commitment.
    pub salt: String,
    pub amount_atomic: String,
    pub path: Vec<Sibling>,
}

/// A wallet's inclusion proof: its pieces. Known only to the wallet's owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionProof {
    pub wallet_id: String,
    pub balance_atomic: String,
    pub pieces: Vec<Piece>,
}

/// A built tree: the commitment and every wallet's proof.
#[derive(Debug, Clone)]
pub struct Built {
    pub commitment: Commitment,
    pub proofs: Vec<InclusionProof>,
}

struct Leaf {
    /// Index into the wallets, or None for padding.
    owner: Option<usize>,
    salt: [u8; 32],
    amount: Amount,
}

/// Builds the tree of `asset` over `wallets` (a wallet with a zero balance still gets its pieces,
/// so the leaf count does not tell how many wallets are empty).
pub fn build(
    asset: &str,
    wallets: &[WalletBalance],
    rng: &mut impl RngCore,
) -> Result<Built, LiabilityError> {
    if wallets.len() > WALLETS_MAX {
        return Err(LiabilityError::TooManyWallets);
    }
    let mut leaves = Vec::with_capacity(wallets.len() * PIECES_PER_WALLET);
    for (owner, wallet) in wallets.iter().enumerate() {
        for amount in split(wallet.balance, rng)? {
            leaves.push(Leaf {
                owner: Some(owner),
                salt: random_bytes(rng),
                amount,
            });
        }
    }
    let width = leaves.len().max(2).next_power_of_two();
    while leaves.len() < width {
        leaves.push(Leaf {
            owner: None,
            salt: random_bytes(rng),
            amount: Amount::default(),
        });
    }
    leaves.shuffle(rng);
    let mut levels = vec![leaves
        .iter()
        .map(|leaf| {
            let wallet_id = leaf.owner.map_or("", |o| wallets[o].wallet_id.as_str());
            (
                leaf_hash(&commitment_of(asset, wallet_id, &leaf.salt), &leaf.amount),
                leaf.amount,
            )
        })
        .collect::<Vec<_>>()];
    while levels.last().expect("one level at least").len() > 1 {
        let below = levels.last().expect("one level at least");
        let above = below
            .chunks(2)
            .map(|pair| node(&pair[0], &pair[1]))
            .collect::<Result<Vec<_>, _>>()?;
        levels.push(above);
    }
    let (root, total) = levels.last().expect("the root")[0];
    let mut proofs: Vec<InclusionProof> = wallets
        .iter()
        .map(|w| InclusionProof {
            wallet_id: w.wallet_id.clone(),
            balance_atomic: w.balance.to_string(),
            pieces: Vec::with_capacity(PIECES_PER_WALLET),
        })
        .collect();
    for (index, leaf) in leaves.iter().enumerate() {
        let Some(owner) = leaf.owner else { continue };
        proofs[owner].pieces.push(Piece {
            leaf_index: index as u64,
            salt: hex::encode(leaf.salt),
            amount_atomic: leaf.amount.to_string(),
            path: path_of(&levels, index),
        });
    }
    let commitment = Commitment {
        asset: asset.to_string(),
        root,
        total,
        leaf_count: width as u64,
    };
    Ok(Built { commitment, proofs })
}

/// Checks that `proof`'s pieces lead to `commitment`'s root and total and add up to the
/// proof's balance. Returns the verified balance.
pub fn verify(commitment: &Commitment, proof: &InclusionProof) -> Result<Amount, LiabilityError> {
    let malformed = |what: &str| LiabilityError::Malformed(what.to_string());
    let depth = depth_of(commitment.leaf_count).ok_or_else(|| malformed("leaf count"))?;
    if proof.pieces.is_empty() || proof.pieces.len() > PIECES_PER_WALLET {
        return Err(malformed("number of pieces"));
    }
    let mut indices = BTreeSet::new();
    let mut balance = Amount::default();
    for piece in &proof.pieces {
        if piece.leaf_index >= commitment.leaf_count || !indices.insert(piece.leaf_index) {
            return Err(malformed("leaf index"));
        }
        if piece.path.len() != depth {
            return Err(LiabilityError::OtherStatement);
        }
        let amount = parse_amount(&piece.amount_atomic)?;
        if amount > ledger_max() {
            return Err(LiabilityError::AmountOutOfRange);
        }
        let salt = parse_hash(&piece.salt)?;
        let commitment_hash = commitment_of(&commitment.asset, &proof.wallet_id, &salt);
        let mut current = (leaf_hash(&commitment_hash, &amount), amount);
        let mut index = piece.leaf_index;
        for sibling in &piece.path {
            let other = (parse_hash(&sibling.hash)?, parse_amount(&sibling.sum_atomic)?);
            current = if index % 2 == 0 {
                node(&current, &other)?
            } else {
                node(&other, &current)?
            };
            index /= 2;
        }
        if current.0 != commitment.root {
            return Err(LiabilityError::RootMismatch);
        }
        if current.1 != commitment.total {
            return Err(LiabilityError::TotalMismatch);
        }
        balance = balance.checked_add(amount).ok_or(LiabilityError::SumOverflow)?;
    }
    if balance != parse_amount(&proof.balance_atomic)? {
        return Err(LiabilityError::BalanceMismatch);
    }
    Ok(balance)
}

/// The bytes a statement's signature covers: the scheme, asset, root, total, leaf count, the
/// statement's id and its snapshot time, one per line, no trailing newline.
pub fn statement_bytes(commitment: &Commitment, statement_id: &str, snapshot_at_ms: i64) -> Vec<u8> {
    [
        SCHEME.to_string(),
        commitment.asset.clone(),
        hex::encode(commitment.root),
        commitment.total.to_string(),
        commitment.leaf_count.to_string(),
        statement_id.to_string(),
        snapshot_at_ms.to_string(),
    ]
    .join("\n")
    .into_bytes()
}

/// Parses a lower-case or upper-case hex hash of 32 bytes.
pub fn parse_hash(text: &str) -> Result<Hash, LiabilityError> {
    let bytes = hex::decode(text).map_err(|_| LiabilityError::Malformed("hex".into()))?;
    bytes
        .try_into()
        .map_err(|_| LiabilityError::Malformed("a hash or salt is not 32 bytes".into()))
}

/// Parses an amount of smallest units (sums are bounded by U256 and added with checks).
fn parse_amount(text: &str) -> Result<Amount, LiabilityError> {
    Amount::parse_atomic(text).map_err(|_| LiabilityError::Malformed("amount".into()))
}

/// `balance` in [`PIECES_PER_WALLET`] random pieces that add up to it exactly.
fn split(balance: Amount, rng: &mut impl RngCore) -> Result<Vec<Amount>, LiabilityError> {
    if balance > ledger_max() {
        return Err(LiabilityError::AmountOutOfRange);
    }
    // Below 10^33 < 2^110: a u128 holds it; random cut points in [0, balance].
    let value = u128::try_from(balance.atomic()).map_err(|_| LiabilityError::AmountOutOfRange)?;
    let mut cuts: Vec<u128> = (0..PIECES_PER_WALLET - 1)
        .map(|_| random_u128(rng) % (value + 1))
        .collect();
    cuts.sort_unstable();
    let mut pieces = Vec::with_capacity(PIECES_PER_WALLET);
    let mut previous = 0u128;
    for cut in cuts.into_iter().chain(std::iter::once(value)) {
        pieces.push(Amount::from_u128(cut - previous));
        previous = cut;
    }
    debug_assert_eq!(pieces.iter().map(|p| p.atomic()).sum::<U256>(), balance.atomic());
    Ok(pieces)
}

fn path_of(levels: &[Vec<(Hash, Amount)>], leaf_index: usize) -> Vec<Sibling> {
    let mut index = leaf_index;
    levels[..levels.len() - 1]
        .iter()
        .map(|level| {
            let (hash, sum) = level[index ^ 1];
            index /= 2;
            Sibling {
                hash: hex::encode(hash),
                sum_atomic: sum.to_string(),
            }
        })
        .collect()
}

/// log2 of a power-of-two leaf count of at least 2, within [`DEPTH_MAX`].
fn depth_of(leaf_count: u64) -> Option<usize> {
    (leaf_count >= 2 && leaf_count.is_power_of_two())
        .then(|| leaf_count.trailing_zeros() as usize)
        .filter(|depth| *depth <= DEPTH_MAX)
}

fn commitment_of(asset: &str, wallet_id: &str, salt: &[u8; 32]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(COMMITMENT_TAG);
    for part in [asset.as_bytes(), wallet_id.as_bytes()] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hasher.update(salt);
    hasher.finalize().into()
}

fn leaf_hash(commitment: &Hash, amount: &Amount) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(LEAF_TAG);
    hasher.update(commitment);
    hasher.update(amount.atomic().to_be_bytes::<32>());
    hasher.finalize().into()
}

fn node(left: &(Hash, Amount), right: &(Hash, Amount)) -> Result<(Hash, Amount), LiabilityError> {
    let sum = left.1.checked_add(right.1).ok_or(LiabilityError::SumOverflow)?;
    let mut hasher = Sha256::new();
    hasher.update(NODE_TAG);
    hasher.update(left.0);
    hasher.update(left.1.atomic().to_be_bytes::<32>());
    hasher.update(right.0);
    hasher.update(right.1.atomic().to_be_bytes::<32>());
    Ok((hasher.finalize().into(), sum))
}

fn random_bytes(rng: &mut impl RngCore) -> [u8; 32] {
    let mut bytes = [0u8; 32];
    rng.fill_bytes(&mut bytes);
    bytes
}

/// One asset's reserves (read from the chain) against its published liabilities (the signed
/// total of a statement): what the reconciler reports as reserves − liabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Solvency {
    pub reserves: Amount,
    pub liabilities: Amount,
}

impl Solvency {
    /// Fewer reserves than liabilities: the platform could not pay every user at once.
    pub fn is_short(&self) -> bool {
        self.reserves < self.liabilities
    }

    /// `reserves − liabilities` as a magnitude and whether it is negative.
    pub fn margin(&self) -> (Amount, bool) {
        match self.reserves.checked_sub(self.liabilities) {
            Some(surplus) => (surplus, false),
            None => (
                self.liabilities
                    .checked_sub(self.reserves)
                    .expect("liabilities exceed reserves"),
                true,
            ),
        }
    }

    /// The margin in smallest units with its sign: `"-5"` when short by 5.
    pub fn margin_atomic(&self) -> String {
        let (amount, negative) = self.margin();
        if negative {
            format!("-{amount}")
        } else {
            amount.to_string()
        }
    }
}

fn random_u128(rng: &mut impl RngCore) -> u128 {
    let mut bytes = [0u8; 16];
    rng.fill_bytes(&mut bytes);
    u128::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn solvency_margin_is_signed_and_exact() {
        let of = |reserves: u128, liabilities: u128| Solvency {
            reserves: Amount::from_u128(reserves),
            liabilities: Amount::from_u128(liabilities),
        };
        assert_eq!(of(10, 4).margin_atomic(), "6");
        assert!(!of(10, 4).is_short());
        assert_eq!(of(4, 10).margin_atomic(), "-6");
        assert!(of(4, 10).is_short());
        assert_eq!(of(7, 7).margin_atomic(), "0");
        assert!(!of(7, 7).is_short());
        let big = u128::MAX;
        assert_eq!(of(0, big).margin(), (Amount::from_u128(big), true));
    }

    fn wallets(balances: &[u128]) -> Vec<WalletBalance> {
        balances
            .iter()
            .enumerate()
            .map(|(i, b)| WalletBalance {
                wallet_id: format!("wallet-{i}"),
                balance: Amount::from_u128(*b),
            })
            .collect()
    }

    fn built(balances: &[u128]) -> Built {
        build("ETH", &wallets(balances), &mut StdRng::seed_from_u64(7)).expect("built")
    }

    #[test]
    fn every_proof_verifies_and_the_root_carries_the_sum_of_balances() {
        let tree = built(&[5, 0, 1_000_000, 42, 7]);
        assert_eq!(tree.commitment.total, Amount::from_u64(1_000_054));
        assert_eq!(tree.commitment.leaf_count, 16);
        for proof in &tree.proofs {
            assert_eq!(proof.pieces.len(), PIECES_PER_WALLET);
            let balance = verify(&tree.commitment, proof).expect("verifies");
            assert_eq!(balance.to_string(), proof.balance_atomic);
        }
    }

    #[test]
    fn a_proof_with_a_changed_balance_fails() {
        let tree = built(&[5, 10, 20]);
        let mut proof = tree.proofs[1].clone();
        proof.balance_atomic = "11".into();
        assert_eq!(
            verify(&tree.commitment, &proof),
            Err(LiabilityError::BalanceMismatch)
        );
        let mut proof = tree.proofs[1].clone();
        let piece = &mut proof.pieces[0];
        piece.amount_atomic = (piece.amount_atomic.parse::<u128>().unwrap() + 1).to_string();
        proof.balance_atomic = "11".into();
        assert_eq!(
            verify(&tree.commitment, &proof),
            Err(LiabilityError::RootMismatch)
        );
    }

    #[test]
    fn a_proof_with_a_changed_sibling_sum_or_hash_fails() {
        let tree = built(&[5, 10, 20]);
        let mut proof = tree.proofs[2].clone();
        let sibling = &mut proof.pieces[0].path[1];
        sibling.sum_atomic = (sibling.sum_atomic.parse::<u128>().unwrap() + 1).to_string();
        assert_eq!(
            verify(&tree.commitment, &proof),
            Err(LiabilityError::RootMismatch)
        );
        let mut proof = tree.proofs[2].clone();
        proof.pieces[0].path[0].hash = hex::encode([9u8; 32]);
        assert_eq!(
            verify(&tree.commitment, &proof),
            Err(LiabilityError::RootMismatch)
        );
    }

    #[test]
    fn a_proof_does_not_verify_for_another_wallet_or_asset() {
        let tree = built(&[5, 10]);
        let mut proof = tree.proofs[0].clone();
        proof.wallet_id = "wallet-1".into();
        assert_eq!(
            verify(&tree.commitment, &proof),
            Err(LiabilityError::RootMismatch)
        );
        let mut other = tree.commitment.clone();
        other.asset = "USDC".into();
        assert_eq!(verify(&other, &tree.proofs[0]), Err(LiabilityError::RootMismatch));
        let mut other = tree.commitment.clone();
        other.total = Amount::from_u64(16);
        assert_eq!(
            verify(&other, &tree.proofs[0]),
            Err(LiabilityError::TotalMismatch)
        );
    }

    #[test]
    fn a_balance_above_the_ledger_limit_is_refused() {
        let huge = WalletBalance {
            wallet_id: "w".into(),
            balance: Amount::from_atomic(ledger_max().atomic() + U256::from(1u8)),
        };
        let result = build("ETH", &[huge], &mut StdRng::seed_from_u64(1));
        assert_eq!(result.err(), Some(LiabilityError::AmountOutOfRange));
    }

    #[test]
    fn the_statement_bytes_name_every_published_field() {
        let tree = built(&[1]);
        let text = String::from_utf8(statement_bytes(&tree.commitment, "s1", 1700)).unwrap();
        let lines: Vec<&str> = text.split('\n').collect();
        assert_eq!(lines[0], SCHEME);
        assert_eq!(lines[1], "ETH");
        assert_eq!(lines[2], hex::encode(tree.commitment.root));
        assert_eq!(lines[3..], ["1", "4", "s1", "1700"]);
    }

    proptest! {
        #[test]
        fn random_trees_verify_and_sum(
            balances in proptest::collection::vec(0u128..1_000_000_000_000_000_000_000_000_000_000_000u128, 1..20),
            seed: u64,
            victim in 0usize..20,
        ) {
            let tree = build("ETH", &wallets(&balances), &mut StdRng::seed_from_u64(seed)).unwrap();
            let expected = balances.iter().fold(U256::ZERO, |s, b| s + U256::from(*b));
            prop_assert_eq!(tree.commitment.total.atomic(), expected);
            for proof in &tree.proofs {
                prop_assert!(verify(&tree.commitment, proof).is_ok());
            }
            // One wallet's pieces changed by one unit somewhere: it no longer verifies.
            let mut proof = tree.proofs[victim % tree.proofs.len()].clone();
            let piece = &mut proof.pieces[seed as usize % PIECES_PER_WALLET];
            let amount: u128 = piece.amount_atomic.parse().unwrap();
            piece.amount_atomic = (amount ^ 1).to_string();
            prop_assert!(verify(&tree.commitment, &proof).is_err());
        }
    }
}
