use std::collections::BTreeSet;

use crate::repo_root;

fn chart_dir() -> std::path::PathBuf {
    repo_root().join("charts/coffer-operator")
}

/// Every `.Values.x.y` path a template reads.
fn value_paths_used_by_templates() -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    for entry in std::fs::read_dir(chart_dir().join("templates")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let mut rest = text.as_str();
        while let Some(start) = rest.find(".Values.") {
            let tail = &rest[start + ".Values.".len()..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '_'))
                .unwrap_or(tail.len());
            paths.insert(tail[..end].trim_end_matches('.').to_string());
            rest = &tail[end..];
        }
    }
    paths
}

#[test]
fn values_yaml_parses_and_has_every_value_the_templates_read() {
    let values: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap()).unwrap();
    let used = value_paths_used_by_templates();
    assert!(used.len() > 10, "the templates read values: {used:?}");
    let missing: Vec<_> = used
        .iter()
        .filter(|path| {
            let mut node = &values;
            for key in path.split('.') {
                match node.get(key) {
                    Some(child) => node = child,
                    None => return true,
                }
            }
            false
        })
        .collect();
    assert!(missing.is_empty(), "values.yaml lacks {missing:?}");
}

#[test]
fn chart_yaml_names_the_chart_and_its_app_version() {
    let chart: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart_dir().join("Chart.yaml")).unwrap()).unwrap();
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["name"], "coffer-operator");
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
}
