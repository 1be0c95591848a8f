use std::collections::BTreeSet;

use crate::repo_root;

fn chart_dir() -> std::path::PathBuf {
    repo_root().join("charts/coffer-operator")
}

/// Every `.Values.x.y` path a template reads.
fn value_paths_used_by_templates() -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    let mut files = Vec::new();
    let mut dirs = vec![chart_dir().join("templates")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    for file in files {
        let text = std::fs::read_to_string(file).unwrap();
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

/// Problems between the schema node `schema` and the values node `values` at `path`.
fn schema_problems(
    schema: &serde_json::Value,
    values: &serde_json::Value,
    path: &str,
    problems: &mut Vec<String>,
) {
    let Some(properties) = schema.get("properties").and_then(|p| p.as_object()) else {
        return;
    };
    if schema["additionalProperties"] != false {
        problems.push(format!("{path}: the schema allows unknown keys"));
    }
    for (key, property) in properties {
        match values.get(key) {
            None if key == "global" => {}
            None => problems.push(format!(
                "{path}.{key}: in the schema, without a default in values.yaml"
            )),
            Some(value) => schema_problems(property, value, &format!("{path}.{key}"), problems),
        }
    }
    for key in values.as_object().into_iter().flat_map(|o| o.keys()) {
        if !properties.contains_key(key) {
            problems.push(format!(
                "{path}.{key}: in values.yaml, not declared by the schema"
            ));
        }
    }
}

#[test]
fn values_schema_is_strict_and_declares_exactly_the_values_yaml_keys() {
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(chart_dir().join("values.schema.json")).unwrap())
            .unwrap();
    let values: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap()).unwrap();
    let mut problems = Vec::new();
    schema_problems(&schema, &values, "", &mut problems);
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(
        schema["properties"]["watch"]["properties"]["secrets"]["items"]["minLength"] == 1,
        "an empty Secret name is refused"
    );
}
