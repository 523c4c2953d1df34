//! The chart's Argo CD health checks (Lua, `charts/switchyard/files/argocd`)
//! run on objects from the system tests with the Lua interpreter Argo CD's
//! own (gopher-lua) mirrors: Debian's `lua5.4`. The object becomes the
//! global `obj`, as Argo CD sets it, and the script's `hs` table is read
//! back.

use std::path::PathBuf;
use std::process::Command;

/// An Argo CD health assessment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Healthy, Progressing, Degraded, Suspended, Missing or Unknown.
    pub status: String,
    /// The message Argo CD shows beside it.
    pub message: String,
}

/// Run the chart's health check for `kind` (`MigrationPlan` or `MigrationCanary`)
/// on `obj` (any serializable object: a typed resource or JSON).
pub fn health(kind: &str, obj: &impl serde::Serialize) -> Health {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/switchyard/files/argocd")
        .join(format!("{}.lua", kind.to_lowercase()));
    let value = serde_json::to_value(obj).expect("the object serializes");
    let program = format!(
        "obj = {}\nlocal hs = dofile({:?})\nio.write(hs.status, '\\n', hs.message or '')\n",
        lua(&value),
        script.display().to_string()
    );
    let out = Command::new("lua5.4")
        .args(["-e", &program])
        .output()
        .expect("lua5.4 runs (apt-get install lua5.4; .ci/run does)");
    assert!(
        out.status.success(),
        "the {kind} health check failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let (status, message) = text.split_once('\n').unwrap_or((&text, ""));
    Health {
        status: status.to_owned(),
        message: message.to_owned(),
    }
}

/// A Lua table constructor for a JSON value (null becomes nil, as in
/// Argo CD's conversion).
fn lua(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => quote(s),
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(lua).collect();
            format!("{{{}}}", inner.join(", "))
        }
        Value::Object(map) => {
            let inner: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("[{}] = {}", quote(k), lua(v)))
                .collect();
            format!("{{{}}}", inner.join(", "))
        }
    }
}

/// A Lua string literal: every byte outside printable ASCII, and the
/// quote and backslash, as a decimal escape.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\' {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\{b:03}"));
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn each_phase_maps_to_its_argo_cd_health_and_a_stale_status_is_progressing() {
        let plan = |phase: &str, observed: i64| {
            json!({"metadata": {"name": "p", "generation": 2},
                   "status": {"phase": phase, "observedGeneration": observed, "message": "a \"quoted\" note\nnext"}})
        };
        for (phase, want) in [
            ("Pending", "Progressing"),
            ("MigrationCanary", "Progressing"),
            ("Progressing", "Progressing"),
            ("RollingBack", "Progressing"),
            ("Paused", "Suspended"),
            ("Succeeded", "Healthy"),
            ("RolledBack", "Degraded"),
            ("Failed", "Degraded"),
            ("Invalid", "Degraded"),
        ] {
            let h = health("MigrationPlan", &plan(phase, 2));
            assert_eq!(h.status, want, "{phase}: {h:?}");
            assert_eq!(h.message, format!("{phase}: a \"quoted\" note\nnext"));
        }
        let stale = health("MigrationPlan", &plan("Succeeded", 1));
        assert_eq!(stale.status, "Progressing", "{stale:?}");
        let fresh = health("MigrationPlan", &json!({"metadata": {"name": "p"}}));
        assert_eq!(fresh.status, "Progressing");
        for (phase, want) in [
            ("Pending", "Progressing"),
            ("Running", "Progressing"),
            ("Succeeded", "Healthy"),
            ("Failed", "Degraded"),
            ("RolledBack", "Degraded"),
            ("Invalid", "Degraded"),
        ] {
            let h = health(
                "MigrationCanary",
                &json!({"metadata": {}, "status": {"phase": phase}}),
            );
            assert_eq!(h.status, want, "{phase}: {h:?}");
        }
    }
}
