//! `coffer proof verify`: checks an inclusion proof against a signed statement, offline.

use std::process::ExitCode;

use anyhow::Context;
use coffer_api::liabilities::{verify_documents, LiabilityProofView, LiabilityStatementView};

use crate::cli::ProofVerifyArgs;

/// The largest statement or proof file read (a proof of the deepest tree is about 10 KiB).
const FILE_BYTES_MAX: u64 = 1024 * 1024;

/// Exit 0 and print the verified balance and total, or exit 1 and say what does not verify.
pub fn verify(args: &ProofVerifyArgs) -> anyhow::Result<ExitCode> {
    let statement: LiabilityStatementView = serde_json::from_slice(&read(&args.statement, "--statement")?)
        .context("--statement: not a liabilities statement")?;
    let proof: LiabilityProofView =
        serde_json::from_slice(&read(&args.proof, "--proof")?).context("--proof: not a liability proof")?;
    match verify_documents(&statement, &proof, args.public_key.as_deref()) {
        Ok(verified) => {
            println!(
                "OK: wallet {} holds {} {} in statement {} (total liabilities {} {}, signed by {})",
                verified.wallet_id,
                verified.balance,
                verified.asset,
                statement.statement_id,
                verified.total,
                verified.asset,
                verified.public_key
            );
            if args.public_key.is_none() {
                println!(
                    "note: no --public-key given; compare the signer with the deployment's published key"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(reason) => {
            println!("FAILED: {reason}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn read(path: &std::path::Path, flag: &str) -> anyhow::Result<Vec<u8>> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("{flag} {}", path.display()))?
        .len();
    anyhow::ensure!(size <= FILE_BYTES_MAX, "{flag}: the file is larger than 1 MiB");
    std::fs::read(path).with_context(|| format!("{flag} {}", path.display()))
}
