//! What a real API server does with a custom resource's body before storing
//! it, per its CRD's openAPIV3Schema: prune fields the schema does not
//! declare, fill in defaults, then validate (types, ranges, enums, patterns,
//! required fields) and evaluate the `x-kubernetes-validations` CEL rules.
//! Failures are 422 Invalid with one cause per field.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

use super::errors::ApiError;
use super::registry::ResourceType;

fn preserves_unknown(schema: &Value) -> bool {
    schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
        || schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
            && schema.get("properties").is_none()
}

/// Drop fields the schema does not declare (metadata, apiVersion and kind
/// at the root are the server's).
pub fn prune(schema: &Value, value: &mut Value, root: bool) {
    if preserves_unknown(schema) {
        return;
    }
    match value {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            let keys: Vec<String> = map.keys().cloned().collect();
            for k in keys {
                if root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                match (props.and_then(|p| p.get(&k)), additional) {
                    (Some(s), _) | (None, Some(s)) => {
                        if let Some(child) = map.get_mut(&k) {
                            prune(s, child, false);
                        }
                    }
                    (None, None)
                        if props.is_some()
                            || schema.get("type").and_then(Value::as_str) == Some("object") =>
                    {
                        map.remove(&k);
                    }
                    _ => {}
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for item in items {
                    prune(s, item, false);
                }
            }
        }
        _ => {}
    }
}

/// Fill in schema defaults for absent fields; drop nulls the schema allows.
pub fn default(schema: &Value, value: &mut Value) {
    let Value::Object(map) = value else {
        if let (Value::Array(items), Some(s)) = (value, schema.get("items")) {
            for item in items {
                default(s, item);
            }
        }
        return;
    };
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    for (k, s) in props {
        match map.get_mut(k) {
            None => {
                if let Some(d) = s.get("default") {
                    map.insert(k.clone(), d.clone());
                }
            }
            Some(Value::Null) if s.get("nullable") == Some(&Value::Bool(true)) => {
                map.remove(k);
                if let Some(d) = s.get("default") {
                    map.insert(k.clone(), d.clone());
                }
            }
            Some(child) => default(s, child),
        }
    }
}

fn dotted(pointer: &str) -> String {
    let mut out = String::new();
    for part in pointer.split('/').filter(|p| !p.is_empty()) {
        if part.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{part}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(part);
        }
    }
    out
}

/// Validate a custom resource; `old` for transition rules on updates.
pub fn validate(rt: &ResourceType, obj: &Value, old: Option<&Value>) -> Result<(), ApiError> {
    let Some(schema) = &rt.schema else {
        return Ok(());
    };
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let mut body = obj.clone();
    if let Some(m) = body.as_object_mut() {
        m.remove("metadata");
        m.remove("apiVersion");
        m.remove("kind");
    }
    let mut causes: Vec<(String, String)> = Vec::new();
    let compiled = match compiled(rt, schema) {
        Ok(c) => {
            for e in c.json.iter_errors(&body) {
                causes.push((dotted(&e.instance_path().to_string()), e.to_string()));
            }
            Some(c)
        }
        Err(e) => {
            causes.push((
                String::new(),
                format!("the CRD's schema does not compile: {e}"),
            ));
            None
        }
    };
    if causes.is_empty()
        && let Some(rules) = compiled.as_ref().and_then(|c| c.cel.as_ref())
        && let Err(errors) = kube_core::cel::validate_compiled(rules, obj, old)
    {
        for e in errors.iter() {
            causes.push((e.field_path.clone(), e.message.clone()));
        }
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(&rt.kind, name, causes))
    }
}

/// A CRD schema made ready to check objects against.
struct Compiled {
    /// The structural schema as JSON Schema.
    json: jsonschema::Validator,
    /// The CEL rules, compiled; `None` when the schema has none, so a
    /// write skips CEL altogether.
    cel: Option<kube_core::cel::CompiledSchema>,
}

type Cache = Mutex<HashMap<(String, String, String), (Arc<Value>, Arc<Compiled>)>>;

/// Whether any level of `schema` carries CEL rules.
fn has_rules(schema: &Value) -> bool {
    match schema {
        Value::Object(m) => m.contains_key("x-kubernetes-validations") || m.values().any(has_rules),
        Value::Array(a) => a.iter().any(has_rules),
        _ => false,
    }
}

/// Compiled validators per resource, recompiled when the CRD's schema
/// changes. Compiling once matters: building a CEL validator registers
/// every CEL function, and walking the schema converts the object, which
/// together cost more than the rest of a create.
fn compiled(rt: &ResourceType, schema: &Arc<Value>) -> Result<Arc<Compiled>, String> {
    static CACHE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
    let cache = CACHE.get_or_init(Cache::default);
    let key = (rt.group.clone(), rt.version.clone(), rt.plural.clone());
    let mut guard = cache
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // The same Arc as the registry's (no comparison), or an equal schema.
    if let Some((s, v)) = guard.get(&key)
        && (Arc::ptr_eq(s, schema) || s == schema)
    {
        return Ok(v.clone());
    }
    let v = Arc::new(Compiled {
        json: jsonschema::validator_for(&openapi_to_json_schema(schema))
            .map_err(|e| e.to_string())?,
        cel: has_rules(schema).then(|| kube_core::cel::compile_schema(schema)),
    });
    guard.insert(key, (schema.clone(), v.clone()));
    Ok(v)
}

/// OpenAPI's `nullable` in JSON Schema terms, and Kubernetes' int-or-string.
fn openapi_to_json_schema(schema: &Value) -> Value {
    match schema {
        Value::Object(m) => {
            let mut out: Map<String, Value> = m
                .iter()
                .map(|(k, v)| (k.clone(), openapi_to_json_schema(v)))
                .collect();
            if out.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
                out.remove("type");
                out.insert("type".into(), serde_json::json!(["integer", "string"]));
            }
            if out.get("nullable") == Some(&Value::Bool(true))
                && let Some(Value::String(t)) = out.get("type").cloned()
            {
                out.insert("type".into(), serde_json::json!([t, "null"]));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(openapi_to_json_schema).collect()),
        other => other.clone(),
    }
}
