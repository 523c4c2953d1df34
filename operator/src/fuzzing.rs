//! The operator's parsers of untrusted input, as the fuzz targets
//! (`fuzz/`) and the corpus regression test (`tests/fuzz_corpus.rs`) call
//! them. Each takes arbitrary bytes and must never panic.

use switchyard_crds::{FleetNode, MigrationCanary, MigrationPlan, validate};

/// An agent's `/metrics` text, as the analysis scrapes it: what is read
/// is finite where the analysis divides by it.
pub fn metrics_text(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(sample) = crate::scrape::parse(text) {
        let _ = format!("{sample:?}");
    }
}

/// A Prometheus instant-query answer: a number is finite.
pub fn promql_answer(data: &[u8]) {
    if let Ok(v) = crate::promql::read_answer(data) {
        assert!(v.is_finite());
    }
}

/// An Alertmanager webhook call with the right token: every alert is
/// read, or the whole call is refused.
pub fn alert_webhook(data: &[u8]) {
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(
        axum::http::header::AUTHORIZATION,
        axum::http::HeaderValue::from_static("Bearer fuzz"),
    );
    let _ = crate::alerts::webhook::parse(Some("fuzz"), &headers, data);
}

/// Custom resources as the operator decodes them from the API server
/// (JSON), and validates them.
pub fn custom_resource(data: &[u8]) {
    if let Ok(p) = serde_json::from_slice::<MigrationPlan>(data) {
        let _ = validate::plan_spec(&p.spec);
    }
    if let Ok(c) = serde_json::from_slice::<MigrationCanary>(data) {
        let _ = validate::canary_spec(&c.spec);
    }
    let _ = serde_json::from_slice::<FleetNode>(data);
}
