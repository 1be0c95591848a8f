//! Runs the fault harness (`coffer-faults`, docs/faults.md) as scripts/test does: the seed and
//! duration come from `COFFER_FAULTS_SEED` / `COFFER_FAULTS_DURATION` (default: a fresh seed,
//! 60 s). It needs the `coffer` binary beside it (`cargo nextest run --workspace` builds it).

use std::process::Command;

#[test]
fn the_books_hold_while_processes_die_the_broker_restarts_and_the_chain_reorgs() {
    let harness = env!("CARGO_BIN_EXE_coffer-faults");
    let status = Command::new(harness).status().expect("start coffer-faults");
    assert!(
        status.success(),
        "coffer-faults found violations (its output above names the seed to replay)"
    );
}
