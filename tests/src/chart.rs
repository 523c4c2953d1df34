//! The Helm chart as tests see it: rendered through `charts/check.py`
//! (the Helm SDK, no helm binary), for tests that apply it or run the
//! binaries as it configures them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Render value set `set` of `charts/check.py` to `out`; panics, saying
/// what to install, if the Helm SDK is missing.
pub fn render(set: &str, out: &Path) -> PathBuf {
    let check = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/check.py");
    let status = std::process::Command::new("python3")
        .args([check, "--render", set])
        .arg(out)
        .status()
        .expect("python3 runs");
    assert!(
        status.success(),
        "rendering the chart failed: pip install helm-python-sdk PyYAML (.ci/run does)"
    );
    out.to_owned()
}

/// The operator container's plain `env` values (not `valueFrom`) in a
/// rendered chart.
pub fn operator_env(rendered: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(rendered).expect("rendered chart");
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).expect("YAML");
    let operator = docs
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "switchyard-operator")
        .expect("the operator Deployment");
    operator["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_owned(),
                e["value"].as_str()?.to_owned(),
            ))
        })
        .collect()
}
