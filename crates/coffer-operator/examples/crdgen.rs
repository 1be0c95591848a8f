//! Prints the CRDs (until `coffer crdgen` exists): `cargo run -p coffer-operator --example crdgen > crds/coffer.yaml`.
fn main() {
    print!("{}", coffer_operator::crds_yaml());
}
