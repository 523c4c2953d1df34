//! The manifests under examples/ are what users copy. The valid ones must
//! pass every layer that checks them in a real cluster (the openAPIV3Schema,
//! its CEL rules, strict field validation) and the operator's own
//! validator; each one under examples/invalid/ must be rejected with a
//! message naming the offending field, by the layer its header names and by
//! the Rust validator the operator runs.

use std::path::{Path, PathBuf};

use serde_json::Value;
use switchyard_crds::manifest::{self, Resource};
use switchyard_crds::{crdgen, validate};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("examples dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn load(path: &Path) -> (String, Value) {
    let text = std::fs::read_to_string(path).expect("readable example");
    let value: Value = serde_saphyr::from_str(&text).expect("example is YAML");
    (text, value)
}

fn kind(value: &Value) -> &str {
    value["kind"].as_str().expect("kind")
}

/// Errors from the openAPIV3Schema, as `path: message`.
fn schema_errors(value: &Value) -> Vec<String> {
    let schema = crdgen::schema_for_kind(kind(value)).expect("schema");
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    // The API server validates spec/status against the schema; metadata is
    // its own ObjectMeta.
    let mut object = value.clone();
    if let Some(o) = object.as_object_mut() {
        o.remove("metadata");
    }
    validator
        .iter_errors(&object)
        .map(|e| format!("{}: {}", e.instance_path(), e))
        .collect()
}

/// Errors from the CRD's x-kubernetes-validations, evaluated client-side.
fn cel_errors(value: &Value) -> Vec<String> {
    let schema = crdgen::schema_for_kind(kind(value)).expect("schema");
    match kube::core::cel::Validator::new().validate(&schema, value, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .iter()
            .map(|e| format!("{}: {}", e.field_path, e.message))
            .collect(),
    }
}

#[test]
fn valid_examples_pass_every_layer() {
    let files = yaml_files(&examples_dir());
    let kinds: Vec<String> = files.iter().map(|f| kind(&load(f).1).to_owned()).collect();
    for k in ["MigrationPlan", "MigrationCanary", "FleetNode"] {
        assert!(kinds.iter().any(|x| x == k), "examples/ holds a {k}");
    }
    for file in files {
        let (text, value) = load(&file);
        let name = file.display();
        assert_eq!(
            schema_errors(&value),
            Vec::<String>::new(),
            "{name}: schema"
        );
        assert_eq!(cel_errors(&value), Vec::<String>::new(), "{name}: CEL");
        let schema = crdgen::schema_for_kind(kind(&value)).expect("schema");
        assert_eq!(
            manifest::unknown_fields(&schema, &value),
            Vec::<String>::new(),
            "{name}: unknown fields"
        );
        match manifest::parse(&text) {
            Ok(Resource::MigrationPlan(plan)) if file.ends_with("migrationplan.yaml") => {
                assert_eq!(plan.spec.stages.len(), 3, "{name}: three stages");
                assert!(
                    plan.spec.canary.is_some() && plan.spec.analysis.is_some(),
                    "{name}: canary and analysis"
                );
                assert_eq!(plan.spec.waves, [5, 25, 50, 75, 100]);
                assert!(!plan.spec.rollback.alert_matchers.is_empty());
            }
            Ok(Resource::MigrationPlan(plan)) => assert!(!plan.spec.stages.is_empty(), "{name}"),
            Ok(Resource::MigrationCanary(c)) => assert_eq!(c.spec.ab_share, Some(30)),
            Ok(Resource::FleetNode(n)) => assert!(
                n.acknowledged(),
                "{name}: the example node has acknowledged"
            ),
            Err(e) => panic!("{name}: {e}"),
        }
    }
}

fn header(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("# {key}: ")))
        .unwrap_or_else(|| panic!("missing '# {key}:' header"))
        .trim()
        .to_owned()
}

#[test]
fn invalid_examples_are_rejected_naming_the_field() {
    let files = yaml_files(&examples_dir().join("invalid"));
    assert!(
        files.len() >= 8,
        "at least 8 invalid examples, found {}",
        files.len()
    );
    let mut reasons = std::collections::BTreeSet::new();
    for file in files {
        let (text, value) = load(&file);
        let name = file.display();
        let field = header(&text, "expect-field");
        let layer = header(&text, "expect-rejected-by");
        assert!(reasons.insert(field.clone() + &layer + &file.display().to_string()));

        // The operator's path: parse, strict fields, semantic validation.
        let err = manifest::parse(&text).expect_err(&format!("{name} must be rejected"));
        let message = err.to_string();
        assert!(
            err.field_errors().iter().any(|e| e.field == field),
            "{name}: expected an error on {field}, got: {message}"
        );
        assert!(
            message.len() > field.len() + 10,
            "{name}: the message says what to change: {message}"
        );

        // The cluster's path: the layer the header names rejects it too.
        let schema = crdgen::schema_for_kind(kind(&value)).expect("schema");
        let rejected = match layer.as_str() {
            "schema" => schema_errors(&value),
            "cel" => cel_errors(&value),
            "strict" => manifest::unknown_fields(&schema, &value),
            "rust" => vec![message.clone()],
            other => panic!("{name}: unknown layer {other}"),
        };
        assert!(
            !rejected.is_empty(),
            "{name}: the {layer} layer accepted it"
        );
        eprintln!(
            "{name}\n  rust: {message}\n  {layer}: {}",
            rejected.join(" | ")
        );
    }
}

#[test]
fn canary_sized_against_the_fleet() {
    let (text, _) = load(&examples_dir().join("migrationplan.yaml"));
    let Ok(Resource::MigrationPlan(plan)) = manifest::parse(&text) else {
        panic!("valid plan")
    };
    let two: std::collections::BTreeSet<&str> = ["a", "b"].into();
    let err = validate::plan_against_fleet(&plan.spec, &two)
        .expect_err("2 canaries of 2 nodes leave no baseline");
    assert_eq!(err.0[0].field, "spec.canary.count");
    assert!(err.to_string().contains("baseline"));
    let three: std::collections::BTreeSet<&str> = ["a", "b", "c"].into();
    assert!(validate::plan_against_fleet(&plan.spec, &three).is_ok());
}

#[test]
fn foreign_and_malformed_manifests_say_what_to_use() {
    let err = manifest::parse("apiVersion: v1\nkind: ConfigMap\n").expect_err("not ours");
    assert!(err.to_string().contains("switchyard.dev/v1alpha1"));
    let err = manifest::parse("spec: [unclosed").expect_err("bad yaml");
    assert!(err.to_string().starts_with("not valid YAML"));
}
