//! `coffer proof verify`, the real binary: exit 0 on a proof that verifies, 1 on a tampered one.

use std::path::{Path, PathBuf};
use std::process::Command;

use coffer_api::liabilities::{sign_statement, LiabilityKey, LiabilityProofView, LiabilityStatementView};
use coffer_domain::liabilities::{build, WalletBalance};
use coffer_domain::Amount;

struct Files {
    dir: PathBuf,
    statement: LiabilityStatementView,
    proof: LiabilityProofView,
    public_key: String,
}

fn documents() -> Files {
    let key = LiabilityKey::from_hex(&"42".repeat(32)).unwrap();
    let wallets: Vec<WalletBalance> = [150u64, 0, 7]
        .iter()
        .enumerate()
        .map(|(i, b)| WalletBalance {
            wallet_id: format!("0190f3a2-5b4c-7d1e-8f00-00000000000{i}"),
            balance: Amount::from_u64(*b),
        })
        .collect();
    let built = build("ETH", &wallets, &mut rand::thread_rng()).unwrap();
    let doc = sign_statement(&key, &built.commitment, 2, chrono::Utc::now());
    let statement = LiabilityStatementView::from_doc(&doc).unwrap();
    let proof = LiabilityProofView::new(&doc, built.proofs[0].clone()).unwrap();
    let dir = std::env::temp_dir().join(format!("coffer-proof-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    Files {
        dir,
        statement,
        proof,
        public_key: key.public_key_hex(),
    }
}

fn verify(
    dir: &Path,
    statement: &LiabilityStatementView,
    proof: &LiabilityProofView,
    key: &str,
) -> (i32, String) {
    let (statement_path, proof_path) = (dir.join("statement.json"), dir.join("proof.json"));
    std::fs::write(&statement_path, serde_json::to_vec(statement).unwrap()).unwrap();
    std::fs::write(&proof_path, serde_json::to_vec(proof).unwrap()).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_coffer"))
        .args(["--log-format", "json", "proof", "verify", "--statement"])
        .arg(&statement_path)
        .arg("--proof")
        .arg(&proof_path)
        .args(["--public-key", key])
        .output()
        .expect("run coffer");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[test]
fn a_proof_verifies_with_exit_0_and_a_tampered_one_fails_with_exit_1() {
    let files = documents();
    let (code, out) = verify(&files.dir, &files.statement, &files.proof, &files.public_key);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with("OK: wallet 0190f3a2-5b4c-7d1e-8f00-000000000000 holds 1.5 ETH"),
        "{out}"
    );
    assert!(out.contains("total liabilities 1.57 ETH"), "{out}");

    let mut richer = files.proof.clone();
    richer.balance_atomic = "151".into();
    let (code, out) = verify(&files.dir, &files.statement, &richer, &files.public_key);
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("FAILED: the pieces do not add up"), "{out}");

    let mut sibling = files.proof.clone();
    let sum = &mut sibling.pieces[0].path[0].sum_atomic;
    *sum = (sum.parse::<u64>().unwrap() + 1).to_string();
    let (code, out) = verify(&files.dir, &files.statement, &sibling, &files.public_key);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("root"), "{out}");

    let (code, out) = verify(&files.dir, &files.statement, &files.proof, &"ab".repeat(32));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("another key"), "{out}");
    let _ = std::fs::remove_dir_all(&files.dir);
}
