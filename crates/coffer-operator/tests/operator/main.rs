//! Cluster-free tests of everything the operator ships: rendered objects (golden files), the
//! CRDs in `crds/` and in the Helm chart, and the chart's values. One binary, built once.

mod chart;
mod crds;
mod golden;

use std::path::{Path, PathBuf};

/// The repository root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root exists")
}

/// Compares `actual` with the file at `path`; with `UPDATE_GOLDEN=1` writes it instead.
pub fn assert_golden(path: &Path, actual: &str) {
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "{} is missing ({e}); run with UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    if expected != actual {
        let first_difference = expected
            .lines()
            .zip(actual.lines())
            .enumerate()
            .find(|(_, (e, a))| e != a)
            .map(|(n, (e, a))| format!("line {}:\n  expected: {e}\n  actual:   {a}", n + 1))
            .unwrap_or_else(|| "one is a prefix of the other".into());
        panic!(
            "{} differs from what the code generates ({first_difference}).\n\
             If the change is intended, regenerate with UPDATE_GOLDEN=1 and review the diff.",
            path.display()
        );
    }
}
