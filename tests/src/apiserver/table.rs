//! Server-side printing: `Table` responses (`Accept: ...;as=Table`) with the
//! CRD's additionalPrinterColumns, as `kubectl get` asks for them.

use serde_json::{Value, json};

use super::registry::ResourceType;

/// Evaluate a printer-column JSONPath such as `.spec.mode` or
/// `.metadata.labels.switchyard\.dev/plan`.
pub fn json_path<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut chars = path.trim_start_matches('.').chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            '.' => parts.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    parts.push(cur);
    let mut v = obj;
    for p in parts.iter().filter(|p| !p.is_empty()) {
        v = v.get(p)?;
    }
    Some(v)
}

fn columns(rt: &ResourceType) -> Vec<(Value, Option<String>)> {
    let mut out = vec![(
        json!({"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0}),
        None,
    )];
    if rt.printer_columns.is_empty() {
        out.push((json!({"name": "Age", "type": "date", "format": "", "description": "CreationTimestamp", "priority": 0}), Some(".metadata.creationTimestamp".into())));
    }
    for c in &rt.printer_columns {
        let def = json!({
            "name": c.get("name").cloned().unwrap_or(json!("")),
            "type": c.get("type").cloned().unwrap_or(json!("string")),
            "format": c.get("format").cloned().unwrap_or(json!("")),
            "description": c.get("description").cloned().unwrap_or(json!("")),
            "priority": c.get("priority").cloned().unwrap_or(json!(0)),
        });
        out.push((
            def,
            c.get("jsonPath").and_then(Value::as_str).map(str::to_owned),
        ));
    }
    out
}

/// Kubernetes' HumanDuration, as `kubectl get` shows ages: `45s`, `5m30s`,
/// `2h10m`, `3d4h`.
pub fn human_duration(secs: i64) -> String {
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86_400);
    let with = |big: i64, unit: &str, small: i64, small_unit: &str| {
        if small == 0 {
            format!("{big}{unit}")
        } else {
            format!("{big}{unit}{small}{small_unit}")
        }
    };
    match secs {
        s if s < 0 => "0s".into(),
        s if s < 120 => format!("{s}s"),
        s if m < 10 => with(m, "m", s % 60, "s"),
        _ if m < 180 => format!("{m}m"),
        _ if h < 8 => with(h, "h", m % 60, "m"),
        _ if h < 48 => format!("{h}h"),
        _ if h < 24 * 8 => with(d, "d", h % 24, "h"),
        _ if d < 365 * 2 => format!("{d}d"),
        _ if d < 365 * 8 => with(d / 365, "y", d % 365, "d"),
        _ => format!("{}y", d / 365),
    }
}

fn age(ts: &str) -> Value {
    match ts.parse::<jiff::Timestamp>() {
        Ok(t) => json!(human_duration(
            jiff::Timestamp::now().duration_since(t).as_secs()
        )),
        Err(_) => json!(ts),
    }
}

fn row(cols: &[(Value, Option<String>)], obj: &Value) -> Value {
    let cells: Vec<Value> = cols
        .iter()
        .map(|(def, path)| match path {
            None => obj.pointer("/metadata/name").cloned().unwrap_or(json!("")),
            Some(p) => match json_path(obj, p) {
                Some(Value::String(s))
                    if def.get("type").and_then(Value::as_str) == Some("date") =>
                {
                    age(s)
                }
                Some(Value::String(s)) => json!(s),
                Some(Value::Null) | None => Value::Null,
                Some(v @ (Value::Number(_) | Value::Bool(_))) => v.clone(),
                Some(other) => json!(other.to_string()),
            },
        })
        .collect();
    json!({"cells": cells, "object": super::partial(obj)})
}

/// A Table of `objects`.
pub fn table(rt: &ResourceType, objects: &[&Value], resource_version: Option<String>) -> Value {
    let cols = columns(rt);
    let defs: Vec<Value> = cols.iter().map(|(d, _)| d.clone()).collect();
    let rows: Vec<Value> = objects.iter().map(|o| row(&cols, o)).collect();
    let mut meta = json!({});
    if let Some(rv) = resource_version {
        meta["resourceVersion"] = json!(rv);
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "columnDefinitions": defs, "rows": rows})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(human_duration(45), "45s");
        assert_eq!(human_duration(330), "5m30s");
        assert_eq!(
            human_duration(3_600 * 2 + 600),
            "130m",
            "minutes up to three hours"
        );
        assert_eq!(human_duration(3_600 * 4 + 600), "4h10m");
        assert_eq!(human_duration(86_400 * 3 + 3_600 * 4), "3d4h");
        assert_eq!(human_duration(86_400 * 30), "30d");
    }

    #[test]
    fn json_path_follows_escaped_dots() {
        let obj = json!({"metadata": {"labels": {"switchyard.dev/plan": "p"}}, "spec": {"mode": "IrohOnly"}});
        assert_eq!(json_path(&obj, ".spec.mode"), Some(&json!("IrohOnly")));
        assert_eq!(
            json_path(&obj, r".metadata.labels.switchyard\.dev/plan"),
            Some(&json!("p"))
        );
        assert_eq!(json_path(&obj, ".status.appliedMode"), None);
    }
}
