//! The checked-in CRD YAML must be exactly what the Rust types generate.

use std::path::Path;

#[test]
fn checked_in_crds_match_the_rust_types() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let files = switchyard_crds::crdgen::render().expect("CRDs render");
    assert_eq!(
        files.len(),
        3,
        "FleetNode, MigrationPlan and MigrationCanary"
    );
    for dir in switchyard_crds::crdgen::OUTPUT_DIRS {
        for (name, yaml) in &files {
            let path = root.join(dir).join(name);
            let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                on_disk == *yaml,
                "{} is out of date with the Rust types: run `cargo run -p switchyard-crds --bin crdgen` and commit",
                path.display()
            );
        }
    }
}

#[test]
fn crds_carry_names_columns_and_status_subresources() {
    for crd in switchyard_crds::crdgen::crds() {
        let names = &crd.spec.names;
        assert_eq!(crd.spec.group, "switchyard.dev");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(
            names.categories.as_deref(),
            Some(&["switchyard".to_owned()][..]),
            "{}",
            names.kind
        );
        assert!(
            names.short_names.as_ref().is_some_and(|s| !s.is_empty()),
            "{} has a short name",
            names.kind
        );
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{} has /status",
            names.kind
        );
        assert!(
            version
                .additional_printer_columns
                .as_ref()
                .is_some_and(|c| c.len() >= 3),
            "{}",
            names.kind
        );
    }
    let fleet_node = switchyard_crds::crdgen::crds().remove(0);
    assert_eq!(
        fleet_node.spec.names.short_names,
        Some(vec!["fnode".to_owned()])
    );
    let columns: Vec<_> = fleet_node.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(columns, ["Desired", "Applied", "Plan", "Age"]);
}

/// Every field users can set is documented, because `kubectl explain`
/// shows these descriptions.
#[test]
fn every_schema_property_has_a_description() {
    fn walk(schema: &serde_json::Value, path: &str, missing: &mut Vec<String>) {
        if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
            for (name, prop) in props {
                let p = format!("{path}.{name}");
                let documented = prop
                    .get("description")
                    .and_then(|d| d.as_str())
                    .is_some_and(|d| !d.trim().is_empty());
                // metadata is the API server's ObjectMeta.
                if !documented && name != "metadata" && name != "apiVersion" && name != "kind" {
                    missing.push(p.clone());
                }
                walk(prop, &p, missing);
            }
        }
        if let Some(items) = schema.get("items") {
            walk(items, &format!("{path}[]"), missing);
        }
    }
    let mut missing = Vec::new();
    for kind in ["FleetNode", "MigrationPlan", "MigrationCanary"] {
        let schema = switchyard_crds::crdgen::schema_for_kind(kind).expect("schema");
        walk(&schema, kind, &mut missing);
    }
    assert!(
        missing.is_empty(),
        "fields without a description: {missing:#?}"
    );
}
