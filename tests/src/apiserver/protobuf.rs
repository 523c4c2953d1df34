//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`), which
//! kubectl's typed clients send for built-in kinds (`kubectl create
//! namespace`, `create token`, `auth can-i`, ...): the `k8s\0` envelope and
//! its `runtime.Unknown`, then the kind's message (from `k8s-pb`), turned
//! into the JSON the rest of the server handles. Kinds not listed in
//! [`decode`] are refused with 415 and a message naming the ones that are.

use std::collections::BTreeMap;

use base64::Engine;
use k8s_pb::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use prost::Message;
use serde_json::{Map, Value, json};

use super::errors::ApiError;

/// The media type.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

const MAGIC: &[u8] = b"k8s\0";

/// Decode a protobuf body into the object's JSON.
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let bad = |what: String| ApiError::bad_request(format!("protobuf body: {what}"));
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("it does not start with the k8s\\0 envelope".into()))?;
    let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown::decode(rest)
        .map_err(|e| bad(format!("not a runtime.Unknown: {e}")))?;
    let type_meta = unknown.type_meta.unwrap_or_default();
    let api_version = type_meta.api_version.unwrap_or_default();
    let kind = type_meta.kind.unwrap_or_default();
    let raw = unknown.raw.unwrap_or_default();
    let raw = raw.as_slice();
    let decoded = |e: prost::DecodeError| bad(format!("not a {api_version} {kind}: {e}"));
    let (meta, mut obj) = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => {
            let m = k8s_pb::api::core::v1::Namespace::decode(raw).map_err(decoded)?;
            let finalizers = m.spec.map(|s| s.finalizers).unwrap_or_default();
            let spec = if finalizers.is_empty() {
                json!({})
            } else {
                json!({"finalizers": finalizers})
            };
            (m.metadata, json!({"spec": spec}))
        }
        ("v1", "ConfigMap") => {
            let m = k8s_pb::api::core::v1::ConfigMap::decode(raw).map_err(decoded)?;
            let mut o = json!({});
            if !m.data.is_empty() {
                o["data"] = json!(m.data);
            }
            if !m.binary_data.is_empty() {
                o["binaryData"] = json!(encode_bytes(&m.binary_data));
            }
            if let Some(i) = m.immutable {
                o["immutable"] = json!(i);
            }
            (m.metadata, o)
        }
        ("v1", "Secret") => {
            let m = k8s_pb::api::core::v1::Secret::decode(raw).map_err(decoded)?;
            let mut o = json!({});
            if !m.data.is_empty() {
                o["data"] = json!(encode_bytes(&m.data));
            }
            if !m.string_data.is_empty() {
                o["stringData"] = json!(m.string_data);
            }
            if let Some(t) = m.r#type {
                o["type"] = json!(t);
            }
            if let Some(i) = m.immutable {
                o["immutable"] = json!(i);
            }
            (m.metadata, o)
        }
        ("v1", "ServiceAccount") => {
            let m = k8s_pb::api::core::v1::ServiceAccount::decode(raw).map_err(decoded)?;
            let mut o = json!({});
            if let Some(a) = m.automount_service_account_token {
                o["automountServiceAccountToken"] = json!(a);
            }
            (m.metadata, o)
        }
        ("authentication.k8s.io/v1", "TokenRequest") => {
            let m = k8s_pb::api::authentication::v1::TokenRequest::decode(raw).map_err(decoded)?;
            let spec = m.spec.unwrap_or_default();
            let mut s = json!({"audiences": spec.audiences});
            if let Some(e) = spec.expiration_seconds {
                s["expirationSeconds"] = json!(e);
            }
            if let Some(b) = spec.bound_object_ref {
                s["boundObjectRef"] = json!({
                    "kind": b.kind, "apiVersion": b.api_version, "name": b.name, "uid": b.u_id,
                });
            }
            (m.metadata, json!({"spec": s}))
        }
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview") => {
            let m = k8s_pb::api::authorization::v1::SelfSubjectAccessReview::decode(raw)
                .map_err(decoded)?;
            let spec = m.spec.unwrap_or_default();
            let mut s = json!({});
            if let Some(r) = spec.resource_attributes {
                s["resourceAttributes"] = json!({
                    "namespace": r.namespace, "verb": r.verb, "group": r.group,
                    "version": r.version, "resource": r.resource,
                    "subresource": r.subresource, "name": r.name,
                });
            }
            if let Some(n) = spec.non_resource_attributes {
                s["nonResourceAttributes"] = json!({"path": n.path, "verb": n.verb});
            }
            (m.metadata, json!({"spec": s}))
        }
        _ => {
            return Err(ApiError::unsupported_media_type_for(
                MEDIA_TYPE,
                &format!(
                    "protobuf is decoded for v1 Namespace, ConfigMap, Secret, ServiceAccount, TokenRequest and SelfSubjectAccessReview; send {api_version} {kind} as application/json"
                ),
            ));
        }
    };
    obj["apiVersion"] = json!(api_version);
    obj["kind"] = json!(kind);
    obj["metadata"] = meta_json(meta.unwrap_or_default());
    Ok(obj)
}

fn encode_bytes(m: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, String> {
    m.iter()
        .map(|(k, v)| {
            (
                k.clone(),
                base64::engine::general_purpose::STANDARD.encode(v),
            )
        })
        .collect()
}

/// The metadata a client may set on a write.
fn meta_json(m: ObjectMeta) -> Value {
    let mut o = Map::new();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            o.insert(k.into(), json!(v));
        }
    };
    put("name", m.name);
    put("generateName", m.generate_name);
    put("namespace", m.namespace);
    put("resourceVersion", m.resource_version);
    put("uid", m.uid);
    if !m.labels.is_empty() {
        o.insert("labels".into(), json!(m.labels));
    }
    if !m.annotations.is_empty() {
        o.insert("annotations".into(), json!(m.annotations));
    }
    if !m.finalizers.is_empty() {
        o.insert("finalizers".into(), json!(m.finalizers));
    }
    Value::Object(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown {
            type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
            content_encoding: None,
            content_type: None,
        };
        [MAGIC.to_vec(), unknown.encode_to_vec()].concat()
    }

    #[test]
    fn a_namespace_decodes_and_garbage_says_what_is_wrong() {
        let ns = k8s_pb::api::core::v1::Namespace {
            metadata: Some(ObjectMeta {
                name: Some("fleet".into()),
                labels: [("team".to_owned(), "p2p".to_owned())].into(),
                ..ObjectMeta::default()
            }),
            ..Default::default()
        };
        let v = decode(&envelope("v1", "Namespace", ns.encode_to_vec())).expect("decodes");
        assert_eq!(v["kind"], "Namespace");
        assert_eq!(v["metadata"]["name"], "fleet");
        assert_eq!(v["metadata"]["labels"]["team"], "p2p");
        let e = decode(b"{\"json\": true}").expect_err("no envelope");
        assert_eq!(e.code, 400);
        let e = decode(&envelope("apps/v1", "Deployment", vec![])).expect_err("not decoded");
        assert_eq!(e.code, 415);
        assert!(e.message.contains("application/json"), "{}", e.message);
        let e = decode(&envelope("v1", "Namespace", vec![0xff, 0xff, 0xff])).expect_err("garbage");
        assert!(e.message.contains("not a v1 Namespace"), "{}", e.message);
    }
}
