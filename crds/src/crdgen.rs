//! Renders the CustomResourceDefinitions from the Rust types. The `crdgen`
//! binary writes them to `crds/` and `charts/switchyard/crds/`; a test fails
//! when the checked-in files drift from what this renders.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::Value;

use crate::{FleetNode, MigrationCanary, MigrationPlan};

/// Header on every generated file.
pub const HEADER: &str = "# Generated from the Rust types in crds/src by `cargo run -p switchyard-crds --bin crdgen`.\n# Do not edit: change the types and re-run crdgen.\n";

/// Directories, relative to the repository root, that receive the files.
pub const OUTPUT_DIRS: [&str; 2] = ["crds", "charts/switchyard/crds"];

/// Every Switchyard CRD.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        FleetNode::crd(),
        MigrationPlan::crd(),
        MigrationCanary::crd(),
    ]
}

/// `(file name, YAML)` for every CRD, e.g. `migrationplans.switchyard.dev.yaml`.
pub fn render() -> Result<Vec<(String, String)>, serde_saphyr::ser::Error> {
    crds()
        .into_iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let yaml = serde_saphyr::to_string(&crd)?;
            Ok((format!("{name}.yaml"), format!("{HEADER}{yaml}")))
        })
        .collect()
}

/// The openAPIV3Schema of a Switchyard kind, as JSON.
pub fn schema_for_kind(kind: &str) -> Option<Value> {
    schema_ref(kind).cloned()
}

/// The openAPIV3Schema of a Switchyard kind, generated once and shared.
pub fn schema_ref(kind: &str) -> Option<&'static Value> {
    static SCHEMAS: std::sync::OnceLock<Vec<(String, Value)>> = std::sync::OnceLock::new();
    let all = SCHEMAS.get_or_init(|| {
        crds()
            .into_iter()
            .filter_map(|crd| {
                let schema = crd
                    .spec
                    .versions
                    .first()?
                    .schema
                    .as_ref()?
                    .open_api_v3_schema
                    .as_ref()?;
                Some((
                    crd.spec.names.kind.clone(),
                    serde_json::to_value(schema).ok()?,
                ))
            })
            .collect()
    });
    all.iter().find(|(k, _)| k == kind).map(|(_, s)| s)
}
