//! Patches: JSON merge patch (RFC 7386), JSON patch (RFC 6902), strategic
//! merge patch for built-in kinds, and server-side apply with per-manager
//! `managedFields`.
//!
//! Field ownership uses the fieldsV1 vocabulary: a path is a list of
//! `f:<field>`, `k:<key JSON>` (an item of a map-list) and `v:<value JSON>`
//! (an item of a set-list) elements. Lists are atomic unless the schema (or,
//! for built-ins, Kubernetes' own markers for the few lists used here) says
//! `map` or `set`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use super::errors::ApiError;
use super::registry::ResourceType;

/// A path in fieldsV1 vocabulary.
pub type FieldPath = Vec<String>;
/// A set of owned fields.
pub type FieldSet = BTreeSet<FieldPath>;

#[derive(Debug, Clone, PartialEq)]
enum ListKind {
    Atomic,
    Map(Vec<String>),
    Set,
}

/// Apply an RFC 7386 merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// Apply an RFC 6902 JSON patch. A `test` of `null` against a missing path
/// passes, as it does in Kubernetes.
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), ApiError> {
    let ops = patch
        .as_array()
        .ok_or_else(|| ApiError::bad_request("a JSON patch must be an array of operations"))?;
    let kept: Vec<Value> = ops
        .iter()
        .filter(|op| {
            let is_null_test = op.get("op").and_then(Value::as_str) == Some("test")
                && op.get("value") == Some(&Value::Null);
            let path = op.get("path").and_then(Value::as_str).unwrap_or("");
            !(is_null_test && target.pointer(path).is_none())
        })
        .cloned()
        .collect();
    let parsed: json_patch::Patch = serde_json::from_value(Value::Array(kept))
        .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
    json_patch::patch(target, &parsed).map_err(|e| {
        ApiError::invalid(
            "",
            "",
            vec![(
                String::new(),
                format!("the JSON patch could not be applied: {e}"),
            )],
        )
    })
}

/// Apply a strategic merge patch (built-in kinds): a merge patch in which
/// lists of objects that carry a `name` merge item by item, and
/// `$patch: delete` removes an item.
pub fn strategic_merge_patch(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, pv) in p {
                if k.starts_with('$') {
                    continue;
                }
                if pv.is_null() {
                    t.remove(k);
                    continue;
                }
                match t.get_mut(k) {
                    Some(tv) => strategic_merge_patch(tv, pv),
                    None => {
                        t.insert(k.clone(), strip_directives(pv));
                    }
                }
            }
        }
        (Value::Array(t), Value::Array(p))
            if p.iter().chain(t.iter()).all(|i| i.get("name").is_some()) && !p.is_empty() =>
        {
            for item in p {
                let name = item.get("name").cloned();
                let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                let pos = t.iter().position(|x| x.get("name") == name.as_ref());
                match (pos, delete) {
                    (Some(i), true) => {
                        t.remove(i);
                    }
                    (Some(i), false) => strategic_merge_patch(&mut t[i], item),
                    (None, false) => t.push(strip_directives(item)),
                    (None, true) => {}
                }
            }
        }
        (t, p) => *t = strip_directives(p),
    }
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

/// The schema node at a field path (following `items` through list items).
fn schema_at<'a>(schema: Option<&'a Value>, path: &[String]) -> Option<&'a Value> {
    let mut node = schema?;
    for el in path {
        if let Some(f) = el.strip_prefix("f:") {
            node = node
                .get("properties")
                .and_then(|p| p.get(f))
                .or_else(|| node.get("additionalProperties").filter(|a| a.is_object()))?;
        } else {
            node = node.get("items")?;
        }
    }
    Some(node)
}

fn list_kind(rt: &ResourceType, path: &[String]) -> ListKind {
    let names: Vec<&str> = path.iter().filter_map(|p| p.strip_prefix("f:")).collect();
    match names.as_slice() {
        ["metadata", "finalizers"] => return ListKind::Set,
        ["metadata", "ownerReferences"] => return ListKind::Map(vec!["uid".into()]),
        ["status", "conditions"] => return ListKind::Map(vec!["type".into()]),
        [.., "containers"]
        | [.., "initContainers"]
        | [.., "env"]
        | [.., "volumes"]
        | [.., "volumeMounts"]
            if rt.builtin =>
        {
            return ListKind::Map(vec!["name".into()]);
        }
        _ => {}
    }
    let node = schema_at(rt.schema.as_deref(), path);
    match node
        .and_then(|n| n.get("x-kubernetes-list-type"))
        .and_then(Value::as_str)
    {
        Some("map") => ListKind::Map(
            node.and_then(|n| n.get("x-kubernetes-list-map-keys"))
                .and_then(Value::as_array)
                .map(|k| {
                    k.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
        ),
        Some("set") => ListKind::Set,
        _ => ListKind::Atomic,
    }
}

fn item_key(item: &Value, keys: &[String]) -> String {
    let mut m = Map::new();
    for k in keys {
        if let Some(v) = item.get(k) {
            m.insert(k.clone(), v.clone());
        }
    }
    format!("k:{}", Value::Object(m))
}

/// The leaf fields set in `v`, below `path`.
fn leaves(rt: &ResourceType, v: &Value, path: &mut FieldPath, out: &mut FieldSet) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, c) in m {
                path.push(format!("f:{k}"));
                leaves(rt, c, path, out);
                path.pop();
            }
        }
        Value::Array(items) => match list_kind(rt, path) {
            ListKind::Atomic => {
                out.insert(path.clone());
            }
            ListKind::Set => {
                for item in items {
                    path.push(format!("v:{item}"));
                    out.insert(path.clone());
                    path.pop();
                }
            }
            ListKind::Map(keys) => {
                for item in items {
                    path.push(item_key(item, &keys));
                    leaves(rt, item, path, out);
                    path.pop();
                }
            }
        },
        _ => {
            out.insert(path.clone());
        }
    }
}

/// The fields of an object a manager can own (not identity or
/// server-owned metadata).
pub fn owned_fields(rt: &ResourceType, obj: &Value) -> FieldSet {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("apiVersion");
        m.remove("kind");
    }
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in [
            "name",
            "namespace",
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "managedFields",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generateName",
            "selfLink",
        ] {
            m.remove(k);
        }
    }
    // Identity alone is not an owned field.
    if o.get("metadata")
        .and_then(Value::as_object)
        .is_some_and(Map::is_empty)
        && let Some(m) = o.as_object_mut()
    {
        m.remove("metadata");
    }
    let mut out = FieldSet::new();
    leaves(rt, &o, &mut Vec::new(), &mut out);
    out
}

fn get_path<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    let Some((first, rest)) = path.split_first() else {
        return Some(v);
    };
    let child = if let Some(f) = first.strip_prefix("f:") {
        v.get(f)?
    } else if let Some(k) = first.strip_prefix("k:") {
        let key: Map<String, Value> = serde_json::from_str(k).ok()?;
        v.as_array()?
            .iter()
            .find(|i| key.iter().all(|(kk, kv)| i.get(kk) == Some(kv)))?
    } else if let Some(val) = first.strip_prefix("v:") {
        let want: Value = serde_json::from_str(val).ok()?;
        v.as_array()?.iter().find(|i| **i == want)?
    } else {
        return None;
    };
    get_path(child, rest)
}

/// Remove a field, and the maps the removal leaves empty below the
/// top-level fields (`status.rollback` goes with its last field, as the
/// API server's structured merge drops an emptied map it had merged in).
fn remove_path(v: &mut Value, path: &[String]) {
    remove_below(v, path, 0);
}

fn remove_below(v: &mut Value, path: &[String], depth: usize) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if let Some(f) = first.strip_prefix("f:") {
        if rest.is_empty() {
            if let Some(m) = v.as_object_mut() {
                m.remove(f);
            }
        } else if let Some(c) = v.get_mut(f) {
            remove_below(c, rest, depth + 1);
            let emptied = c.as_object().is_some_and(Map::is_empty);
            if emptied
                && depth > 0
                && let Some(m) = v.as_object_mut()
            {
                m.remove(f);
            }
        }
    } else if let Some(arr) = v.as_array_mut() {
        let pos = if let Some(k) = first.strip_prefix("k:") {
            let key: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            arr.iter()
                .position(|i| key.iter().all(|(kk, kv)| i.get(kk) == Some(kv)))
        } else {
            let want: Value = first
                .strip_prefix("v:")
                .and_then(|s| serde_json::from_str(s).ok())
                .unwrap_or(Value::Null);
            arr.iter().position(|i| *i == want)
        };
        if let Some(i) = pos {
            if rest.is_empty() {
                arr.remove(i);
            } else {
                remove_below(&mut arr[i], rest, depth + 1);
            }
        }
    }
}

/// Merge an applied configuration into an object, honouring list kinds.
fn apply_merge(rt: &ResourceType, target: &mut Value, applied: &Value, path: &mut FieldPath) {
    match (target, applied) {
        (Value::Object(t), Value::Object(a)) => {
            for (k, av) in a {
                path.push(format!("f:{k}"));
                match t.get_mut(k) {
                    Some(tv) if !av.is_null() => apply_merge(rt, tv, av, path),
                    _ => {
                        t.insert(k.clone(), av.clone());
                    }
                }
                path.pop();
            }
        }
        (Value::Array(t), Value::Array(a)) => match list_kind(rt, path) {
            ListKind::Atomic => *t = a.clone(),
            ListKind::Set => {
                for item in a {
                    if !t.contains(item) {
                        t.push(item.clone());
                    }
                }
            }
            ListKind::Map(keys) => {
                for item in a {
                    let key = item_key(item, &keys);
                    let pos = t.iter().position(|x| item_key(x, &keys) == key);
                    path.push(key);
                    match pos {
                        Some(i) => apply_merge(rt, &mut t[i], item, path),
                        None => t.push(item.clone()),
                    }
                    path.pop();
                }
            }
        },
        (t, a) => *t = a.clone(),
    }
}

/// fieldsV1 JSON for a field set.
pub fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut node = &mut root;
        for el in path {
            node = node
                .entry(el.clone())
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("fieldsV1 nodes are objects");
        }
    }
    Value::Object(root)
}

/// A field set from fieldsV1 JSON (leaves only; `.` markers ignored).
pub fn from_fields_v1(v: &Value) -> FieldSet {
    fn walk(v: &Value, path: &mut FieldPath, out: &mut FieldSet) {
        let Some(m) = v.as_object() else { return };
        let children: Vec<(&String, &Value)> = m.iter().filter(|(k, _)| *k != ".").collect();
        if children.is_empty() {
            if !path.is_empty() {
                out.insert(path.clone());
            }
            return;
        }
        for (k, c) in children {
            path.push(k.clone());
            walk(c, path, out);
            path.pop();
        }
    }
    let mut out = FieldSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

/// One managedFields entry, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Managed {
    /// Manager name.
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    /// `status` for entries made through /status.
    pub subresource: Option<String>,
    /// apiVersion the fields were set with.
    pub api_version: String,
    /// Owned fields.
    pub fields: FieldSet,
    /// When.
    pub time: String,
}

/// The managedFields of an object.
pub fn managed_of(obj: &Value) -> Vec<Managed> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|e| Managed {
                    manager: e
                        .get("manager")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                    operation: e
                        .get("operation")
                        .and_then(Value::as_str)
                        .unwrap_or("Update")
                        .to_owned(),
                    subresource: e
                        .get("subresource")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    api_version: e
                        .get("apiVersion")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                    fields: e.get("fieldsV1").map(from_fields_v1).unwrap_or_default(),
                    time: e
                        .get("time")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Write managedFields onto an object, dropping empty entries.
pub fn set_managed(obj: &mut Value, managed: &[Managed]) {
    let entries: Vec<Value> = managed
        .iter()
        .filter(|m| !m.fields.is_empty())
        .map(|m| {
            let mut e = json!({
                "manager": m.manager,
                "operation": m.operation,
                "apiVersion": m.api_version,
                "time": m.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(&m.fields),
            });
            if let (Some(s), Some(o)) = (&m.subresource, e.as_object_mut()) {
                o.insert("subresource".into(), json!(s));
            }
            e
        })
        .collect();
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if entries.is_empty() {
            m.remove("managedFields");
        } else {
            m.insert("managedFields".into(), Value::Array(entries));
        }
    }
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn scope_fields(set: FieldSet, status_only: bool) -> FieldSet {
    set.into_iter()
        .filter(|p| (p.first().map(String::as_str) == Some("f:status")) == status_only)
        .collect()
}

/// Record an Update by `manager`: the fields it changed become its own and
/// leave every other manager.
pub fn record_update(
    rt: &ResourceType,
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    status_only: bool,
) {
    let before = old.map(|o| owned_fields(rt, o)).unwrap_or_default();
    let after = owned_fields(rt, new);
    let changed: FieldSet = after
        .iter()
        .filter(|p| !before.contains(*p) || old.and_then(|o| get_path(o, p)) != get_path(new, p))
        .cloned()
        .collect();
    let changed = scope_fields(changed, status_only);
    let mut managed = old.map(managed_of).unwrap_or_default();
    for m in &mut managed {
        m.fields
            .retain(|p| !changed.contains(p) && after.contains(p));
    }
    let subresource = status_only.then(|| "status".to_owned());
    if !changed.is_empty() {
        match managed.iter_mut().find(|m| {
            m.manager == manager && m.operation == "Update" && m.subresource == subresource
        }) {
            Some(m) => {
                m.fields.extend(changed);
                m.time = now();
            }
            None => managed.push(Managed {
                manager: manager.to_owned(),
                operation: "Update".into(),
                subresource,
                api_version: rt.api_version(),
                fields: changed,
                time: now(),
            }),
        }
    }
    set_managed(new, &managed);
}

/// Server-side apply of `applied` by `manager` onto `current` (None: the
/// object does not exist yet). Returns the new object, managedFields set.
pub fn server_side_apply(
    rt: &ResourceType,
    current: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    status_only: bool,
) -> Result<Value, ApiError> {
    let mut applied = applied.clone();
    if let Some(o) = applied.as_object_mut()
        && rt.status_subresource
        && !status_only
    {
        o.remove("status");
    }
    let new_fields = scope_fields(owned_fields(rt, &applied), status_only);
    let mut managed = current.map(managed_of).unwrap_or_default();
    let subresource = status_only.then(|| "status".to_owned());
    let mut conflicts = Vec::new();
    if let Some(cur) = current {
        for m in managed.iter_mut().filter(|m| {
            !(m.manager == manager && m.operation == "Apply" && m.subresource == subresource)
        }) {
            let clashing: Vec<FieldPath> = m
                .fields
                .iter()
                .filter(|p| new_fields.contains(*p) && get_path(cur, p) != get_path(&applied, p))
                .cloned()
                .collect();
            if force {
                m.fields.retain(|p| !clashing.contains(p));
            } else {
                for p in clashing {
                    let dotted: String = p
                        .iter()
                        .map(|e| format!(".{}", e.trim_start_matches("f:")))
                        .collect();
                    conflicts.push((m.manager.clone(), m.api_version.clone(), dotted));
                }
            }
        }
    }
    if !conflicts.is_empty() {
        let causes: Vec<Value> = conflicts
            .iter()
            .map(|(mgr, ver, field)| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{mgr}\" using {ver}"), "field": field}))
            .collect();
        let list: Vec<String> = conflicts
            .iter()
            .map(|(mgr, ver, field)| format!("conflict with \"{mgr}\" using {ver}: {field}"))
            .collect();
        let message = format!(
            "Apply failed with {} conflict{}: {}",
            conflicts.len(),
            if conflicts.len() == 1 { "" } else { "s" },
            list.join("\n")
        );
        return Err(ApiError::apply_conflict(causes, message));
    }
    let previous: FieldSet = managed
        .iter()
        .find(|m| m.manager == manager && m.operation == "Apply" && m.subresource == subresource)
        .map(|m| m.fields.clone())
        .unwrap_or_default();
    let mut result = current.cloned().unwrap_or_else(|| json!({}));
    // Fields this manager stops applying go, unless someone else owns them.
    for p in previous.difference(&new_fields) {
        let shared = managed.iter().any(|m| {
            !(m.manager == manager && m.operation == "Apply" && m.subresource == subresource)
                && m.fields.contains(p)
        });
        if !shared {
            remove_path(&mut result, p);
        }
    }
    let mut body = applied.clone();
    if let Some(m) = body.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
        m.remove("resourceVersion");
    }
    apply_merge(rt, &mut result, &body, &mut Vec::new());
    managed.retain(|m| {
        !(m.manager == manager && m.operation == "Apply" && m.subresource == subresource)
    });
    managed.push(Managed {
        manager: manager.to_owned(),
        operation: "Apply".into(),
        subresource,
        api_version: rt.api_version(),
        fields: new_fields,
        time: now(),
    });
    set_managed(&mut result, &managed);
    Ok(result)
}

/// Labels of managers, for error messages: which manager owns a path.
pub fn owners(obj: &Value) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in managed_of(obj) {
        for p in m.fields {
            out.entry(p.join(".")).or_default().push(m.manager.clone());
        }
    }
    out
}
