//! Reading user manifests: YAML in, a typed and validated resource out, or
//! errors that name the field. Unknown fields are rejected the way
//! `kubectl apply` with strict field validation rejects them.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::validate::{self, FieldError, ValidationErrors};
use crate::{FleetNode, MigrationCanary, MigrationPlan, crdgen};

/// A Switchyard resource read from a manifest.
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    /// A MigrationPlan.
    MigrationPlan(Box<MigrationPlan>),
    /// A MigrationCanary.
    MigrationCanary(Box<MigrationCanary>),
    /// A FleetNode.
    FleetNode(Box<FleetNode>),
}

/// Why a manifest was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ManifestError {
    /// Not parseable YAML.
    #[error("not valid YAML: {0}")]
    Yaml(String),
    /// Not a Switchyard kind.
    #[error(
        "apiVersion {api_version:?} kind {kind:?} is not a Switchyard resource: use apiVersion switchyard.dev/v1alpha1 with kind MigrationPlan, MigrationCanary or FleetNode"
    )]
    NotSwitchyard {
        /// The manifest's apiVersion.
        api_version: String,
        /// The manifest's kind.
        kind: String,
    },
    /// Fields that are unknown, mistyped or semantically invalid.
    #[error("{0}")]
    Invalid(ValidationErrors),
}

impl ManifestError {
    /// The invalid fields, if that is why the manifest was rejected.
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            ManifestError::Invalid(v) => &v.0,
            _ => &[],
        }
    }
}

/// Parse one YAML document into a validated Switchyard resource.
pub fn parse(yaml: &str) -> Result<Resource, ManifestError> {
    let value: Value =
        serde_saphyr::from_str(yaml).map_err(|e| ManifestError::Yaml(e.to_string()))?;
    parse_value(&value)
}

/// Like [`parse`], from an already-parsed JSON value.
pub fn parse_value(value: &Value) -> Result<Resource, ManifestError> {
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let not_ours = || ManifestError::NotSwitchyard {
        api_version: api_version.to_owned(),
        kind: kind.to_owned(),
    };
    if api_version != format!("{}/{}", crate::GROUP, crate::VERSION) {
        return Err(not_ours());
    }
    let schema = crdgen::schema_for_kind(kind).ok_or_else(not_ours)?;
    let unknown = unknown_fields(&schema, value);
    if !unknown.is_empty() {
        return Err(ManifestError::Invalid(ValidationErrors(
            unknown
                .into_iter()
                .map(|field| FieldError {
                    message: "unknown field; check its spelling against `kubectl explain`".into(),
                    field,
                })
                .collect(),
        )));
    }
    match kind {
        "MigrationPlan" => {
            let plan: MigrationPlan = typed(value)?;
            validate::plan_spec(&plan.spec).map_err(ManifestError::Invalid)?;
            Ok(Resource::MigrationPlan(Box::new(plan)))
        }
        "MigrationCanary" => {
            let canary: MigrationCanary = typed(value)?;
            validate::canary_spec(&canary.spec).map_err(ManifestError::Invalid)?;
            Ok(Resource::MigrationCanary(Box::new(canary)))
        }
        "FleetNode" => Ok(Resource::FleetNode(Box::new(typed(value)?))),
        _ => Err(not_ours()),
    }
}

/// Decode a stored object of `kind` without the semantic checks: fields
/// the schema does not declare and values of the wrong type are errors
/// naming the field. For objects read back from an API server that did not
/// validate them (validation off, or a CRD without the schema).
pub fn decode<T: DeserializeOwned>(kind: &str, value: &Value) -> Result<T, ManifestError> {
    if let Some(schema) = crdgen::schema_ref(kind) {
        let unknown = unknown_fields(schema, value);
        if !unknown.is_empty() {
            return Err(ManifestError::Invalid(ValidationErrors(
                unknown
                    .into_iter()
                    .map(|field| FieldError {
                        message: "unknown field; check its spelling against `kubectl explain`"
                            .into(),
                        field,
                    })
                    .collect(),
            )));
        }
    }
    typed(value)
}

fn typed<T: DeserializeOwned>(value: &Value) -> Result<T, ManifestError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        let message = e.into_inner().to_string();
        ManifestError::Invalid(ValidationErrors(vec![FieldError { field, message }]))
    })
}

/// Paths in `value` that `schema` (an openAPIV3Schema) does not declare.
/// `metadata` at the top is the API server's and is not checked here.
pub fn unknown_fields(schema: &Value, value: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(schema, value, "", true, &mut out);
    out
}

fn walk(schema: &Value, value: &Value, path: &str, root: bool, out: &mut Vec<String>) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    match value {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (key, child) in map {
                let child_path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                if root && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                if let Some(s) = props.and_then(|p| p.get(key)) {
                    walk(s, child, &child_path, false, out);
                } else if let Some(s) = additional {
                    walk(s, child, &child_path, false, out);
                } else if props.is_some()
                    || schema.get("type") == Some(&Value::String("object".into()))
                {
                    out.push(child_path);
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    walk(s, item, &format!("{path}[{i}]"), false, out);
                }
            }
        }
        _ => {}
    }
}
