//! One webhook call, checked: the bearer token, the size, the payload
//! (Alertmanager webhook version 4). Pure: what the call asks to change,
//! or the status code and message that refuse it.

use std::collections::BTreeMap;

use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

/// The largest webhook body accepted.
pub const MAX_BODY: usize = 1024 * 1024;

#[derive(Debug, Deserialize)]
struct Payload {
    version: String,
    alerts: Vec<Alert>,
}

#[derive(Debug, Deserialize)]
struct Alert {
    status: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    fingerprint: String,
    #[serde(default, rename = "startsAt")]
    starts_at: String,
}

/// A firing alert as the book and its ConfigMap keep it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Firing {
    /// The alert's labels.
    pub labels: BTreeMap<String, String>,
    /// When it started, as Alertmanager wrote it.
    #[serde(default, rename = "startsAt")]
    pub starts_at: String,
}

/// What one alert of a call changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The alert under this key fires.
    Fire(String, Firing),
    /// The alert under this key resolved.
    Resolve(String),
}

/// A refused call: the status code and why.
pub type Refusal = (StatusCode, String);

/// Check a call against the expected `token` (none configured: 503) and
/// read its alerts. Nothing is half-applied: any bad alert refuses the
/// whole call.
pub fn parse(
    token: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Vec<Change>, Refusal> {
    let Some(want) = token else {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "no webhook token is configured (--webhook-secret)".into(),
        ));
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(given) = given else {
        return Err((
            StatusCode::UNAUTHORIZED,
            "missing Authorization: Bearer <token>".into(),
        ));
    };
    if !bool::from(given.as_bytes().ct_eq(want.as_bytes())) {
        return Err((StatusCode::UNAUTHORIZED, "wrong token".into()));
    }
    if body.len() > MAX_BODY {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body over {MAX_BODY} bytes"),
        ));
    }
    let payload: Payload = serde_json::from_slice(body).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            format!("not an Alertmanager webhook payload: {e}"),
        )
    })?;
    if payload.version != "4" {
        return Err((
            StatusCode::BAD_REQUEST,
            format!(
                "payload version {:?}; this receiver speaks 4",
                payload.version
            ),
        ));
    }
    payload
        .alerts
        .into_iter()
        .map(|a| {
            let key = key_of(&a.fingerprint, &a.labels);
            match a.status.as_str() {
                "firing" => Ok(Change::Fire(
                    key,
                    Firing {
                        labels: a.labels,
                        starts_at: a.starts_at,
                    },
                )),
                "resolved" => Ok(Change::Resolve(key)),
                other => Err((
                    StatusCode::BAD_REQUEST,
                    format!("alert status {other:?}; expected firing or resolved"),
                )),
            }
        })
        .collect()
}

/// The key an alert is kept under: Alertmanager's fingerprint when it is
/// a usable ConfigMap key, else a hash of the labels (as the fingerprint
/// itself is).
pub fn key_of(fingerprint: &str, labels: &BTreeMap<String, String>) -> String {
    let usable = !fingerprint.is_empty()
        && fingerprint.len() <= 64
        && fingerprint
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if usable {
        return fingerprint.to_owned();
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, v) in labels {
        for b in k.bytes().chain([0xff]).chain(v.bytes()).chain([0xfe]) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("labels-{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::header::AUTHORIZATION,
            format!("Bearer {token}").parse().expect("header"),
        );
        h
    }

    #[test]
    fn a_good_call_yields_its_changes_and_bad_calls_say_why() {
        let body = br#"{"version":"4","alerts":[
            {"status":"firing","fingerprint":"abc123","labels":{"alertname":"X"},"startsAt":"2026-01-01T00:00:00Z"},
            {"status":"resolved","labels":{"alertname":"Y"}}]}"#;
        let changes = parse(Some("t"), &headers("t"), body).expect("accepted");
        assert_eq!(changes.len(), 2);
        assert!(
            matches!(&changes[0], Change::Fire(k, f) if k == "abc123" && f.labels["alertname"] == "X")
        );
        assert!(matches!(&changes[1], Change::Resolve(k) if k.starts_with("labels-")));

        let code = |r: Result<Vec<Change>, Refusal>| r.expect_err("refused").0.as_u16();
        assert_eq!(code(parse(None, &headers("t"), body)), 503);
        assert_eq!(code(parse(Some("t"), &HeaderMap::new(), body)), 401);
        assert_eq!(code(parse(Some("t"), &headers("u"), body)), 401);
        assert_eq!(code(parse(Some("t"), &headers("t"), b"{")), 400);
        let v3 = br#"{"version":"3","alerts":[]}"#;
        assert_eq!(code(parse(Some("t"), &headers("t"), v3)), 400);
        let odd = br#"{"version":"4","alerts":[{"status":"firing"},{"status":"pending"}]}"#;
        let (c, msg) = parse(Some("t"), &headers("t"), odd).expect_err("refused");
        assert_eq!(c.as_u16(), 400);
        assert!(msg.contains("\"pending\""), "{msg}");
        let big = vec![b' '; MAX_BODY + 1];
        assert_eq!(code(parse(Some("t"), &headers("t"), &big)), 413);
    }

    #[test]
    fn keys_are_valid_configmap_keys() {
        let labels: BTreeMap<String, String> = [("a".into(), "b".into())].into();
        assert_eq!(key_of("0f1e", &labels), "0f1e");
        for fp in ["", "has space", "sl/ash", &"x".repeat(65)] {
            let k = key_of(fp, &labels);
            assert!(k.starts_with("labels-") && k.len() == 23, "{k}");
        }
        let other: BTreeMap<String, String> = [("a".into(), "c".into())].into();
        assert_ne!(key_of("", &labels), key_of("", &other));
    }
}
