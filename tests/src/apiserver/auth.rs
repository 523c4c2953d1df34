//! Authentication and authorization, off unless [`super::Config::authorization`]
//! is set.
//!
//! - **Authentication:** bearer tokens. The default kubeconfig's token is
//!   an administrator in `system:masters`; [`Tokens::add_user`] adds
//!   users, and ServiceAccount tokens come from the TokenRequest API
//!   (`POST .../serviceaccounts/NAME/token`, what `kubectl create token`
//!   calls) or [`Tokens::service_account`]. A token bound to a Pod carries
//!   the Pod's name in `extra`, as bound tokens do. A missing or unknown
//!   token is 401. `Impersonate-User` / `Impersonate-Group` work for
//!   callers allowed to `impersonate` (what `kubectl --as` sends).
//! - **Authorization:** RBAC ([`super::rbac`]), evaluated against the
//!   Roles and bindings stored in this server; a denial is a 403 shaped
//!   like Kubernetes' own. `SelfSubjectAccessReview` (what `kubectl auth
//!   can-i` posts) answers from the same authorizer.

use std::collections::HashMap;
use std::sync::RwLock;

use axum::http::{HeaderMap, Method};
use serde_json::{Value, json};

use super::errors::ApiError;
use super::rbac::{Attributes, Policy, UserInfo};
use super::store::{Inner, ListQuery};

/// The token in the default kubeconfig: an administrator.
pub const ADMIN_TOKEN: &str = "switchyard-testbed";

/// Bearer tokens and who they stand for.
pub struct Tokens {
    map: RwLock<HashMap<String, UserInfo>>,
}

/// The administrator the default kubeconfig's token stands for.
pub fn admin() -> UserInfo {
    UserInfo::user("switchyard-testbed-admin", &["system:masters"])
}

impl Default for Tokens {
    fn default() -> Self {
        Tokens {
            map: RwLock::new([(ADMIN_TOKEN.to_owned(), admin())].into()),
        }
    }
}

impl Tokens {
    /// Let `token` stand for `user`.
    pub fn add_user(&self, token: &str, user: UserInfo) {
        self.map
            .write()
            .expect("tokens lock")
            .insert(token.to_owned(), user);
    }

    /// A new token for ServiceAccount `namespace/name`, bound to `pod`
    /// when given.
    pub fn service_account(&self, namespace: &str, name: &str, pod: Option<&str>) -> String {
        let mut user = UserInfo::service_account(namespace, name);
        if let Some(pod) = pod {
            user.extra.insert(
                "authentication.kubernetes.io/pod-name".into(),
                vec![pod.to_owned()],
            );
        }
        let token = format!("sa-{}", uuid::Uuid::new_v4().simple());
        self.add_user(&token, user);
        token
    }

    fn lookup(&self, token: &str) -> Option<UserInfo> {
        self.map.read().expect("tokens lock").get(token).cloned()
    }
}

/// The caller of a request: its token's user, or whom it impersonates
/// (when allowed to).
pub fn authenticate(
    tokens: &Tokens,
    store: &mut Inner,
    headers: &HeaderMap,
) -> Result<UserInfo, ApiError> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let user = token
        .and_then(|t| tokens.lookup(t))
        .ok_or_else(ApiError::unauthorized)?;
    let Some(as_user) = headers
        .get("impersonate-user")
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(user);
    };
    let policy = policy(store);
    let target = match UserInfo::service_account_parts(as_user) {
        Some((ns, name)) => impersonate("serviceaccounts", Some(ns), name),
        None => impersonate("users", None, as_user),
    };
    if !policy.allows(&user, &target) {
        return Err(forbidden(&user, &target));
    }
    let groups: Vec<&str> = headers
        .get_all("impersonate-group")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    for g in &groups {
        let target = impersonate("groups", None, g);
        if !policy.allows(&user, &target) {
            return Err(forbidden(&user, &target));
        }
    }
    Ok(match UserInfo::service_account_parts(as_user) {
        Some((ns, name)) if groups.is_empty() => UserInfo::service_account(ns, name),
        _ => UserInfo::user(as_user, &groups),
    })
}

fn impersonate(resource: &str, namespace: Option<&str>, name: &str) -> Attributes {
    Attributes::Resource {
        verb: "impersonate".into(),
        group: String::new(),
        resource: resource.into(),
        subresource: None,
        namespace: namespace.map(str::to_owned),
        name: Some(name.to_owned()),
    }
}

/// What a request asks to do, from its method, path and query, as
/// Kubernetes' RequestInfo resolver reads it (before knowing whether the
/// resource exists).
pub fn attributes(method: &Method, segs: &[&str], q: &HashMap<String, String>) -> Attributes {
    let path = || Attributes::Path {
        verb: method.as_str().to_ascii_lowercase(),
        path: format!("/{}", segs.join("/")),
    };
    let (group, rest) = match segs {
        ["api", _version, rest @ ..] if !rest.is_empty() => ("", rest),
        ["apis", group, _version, rest @ ..] if !rest.is_empty() => (*group, rest),
        _ => return path(),
    };
    let (namespace, parts): (Option<&str>, &[&str]) = match rest {
        ["namespaces", ns, more @ ..] if !more.is_empty() => (Some(*ns), more),
        ["namespaces", ns] => (Some(*ns), rest),
        _ => (None, rest),
    };
    let resource = parts[0];
    let mut name = parts.get(1).map(|s| (*s).to_owned());
    let subresource = parts.get(2).map(|s| (*s).to_owned());
    let watch = q.get("watch").is_some_and(|w| w == "true" || w == "1");
    let verb = match (method.as_str(), name.is_some()) {
        ("GET" | "HEAD", true) => "get",
        ("GET" | "HEAD", false) if watch => "watch",
        ("GET" | "HEAD", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        (other, _) => {
            return Attributes::Path {
                verb: other.to_ascii_lowercase(),
                path: format!("/{}", segs.join("/")),
            };
        }
    };
    // list and watch of one object by a metadata.name field selector
    // are authorized against that name.
    if matches!(verb, "list" | "watch") {
        name = q.get("fieldSelector").and_then(|f| {
            f.split(',')
                .find_map(|term| term.strip_prefix("metadata.name="))
                .map(str::to_owned)
        });
    }
    Attributes::Resource {
        verb: verb.into(),
        group: group.into(),
        resource: resource.into(),
        subresource,
        namespace: namespace.map(str::to_owned),
        name,
    }
}

/// The RBAC objects stored in the server.
pub fn policy(store: &mut Inner) -> Policy {
    fn all<T: serde::de::DeserializeOwned>(store: &mut Inner, plural: &str) -> Vec<T> {
        let Some(rt) = store.find("rbac.authorization.k8s.io", "v1", plural) else {
            return Vec::new();
        };
        store
            .list(&rt, &ListQuery::default())
            .map(|l| {
                l.items
                    .iter()
                    .filter_map(|o| serde_json::from_value((**o).clone()).ok())
                    .collect()
            })
            .unwrap_or_default()
    }
    Policy {
        roles: all(store, "roles"),
        cluster_roles: all(store, "clusterroles"),
        role_bindings: all(store, "rolebindings"),
        cluster_role_bindings: all(store, "clusterrolebindings"),
    }
}

/// Allow or refuse `attrs` for `user`. Every authenticated user may ask
/// what it may do (SelfSubjectAccessReview, as the bootstrap
/// `system:basic-user` role allows).
pub fn authorize(store: &mut Inner, user: &UserInfo, attrs: &Attributes) -> Result<(), ApiError> {
    if let Attributes::Resource {
        verb,
        group,
        resource,
        ..
    } = attrs
        && verb == "create"
        && group == "authorization.k8s.io"
        && matches!(
            resource.as_str(),
            "selfsubjectaccessreviews" | "selfsubjectrulesreviews"
        )
    {
        return Ok(());
    }
    if policy(store).allows(user, attrs) {
        Ok(())
    } else {
        Err(forbidden(user, attrs))
    }
}

fn forbidden(user: &UserInfo, attrs: &Attributes) -> ApiError {
    let (message, details) = super::rbac::forbidden_message(user, attrs);
    ApiError::forbidden(message, details)
}

/// Answer a SelfSubjectAccessReview for `user` (`None`: authorization is
/// off, so everything is allowed).
pub fn self_subject_access_review(
    store: &mut Inner,
    user: Option<&UserInfo>,
    body: &Value,
) -> Result<Value, ApiError> {
    let spec = &body["spec"];
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let attrs = if let Some(r) = spec.get("resourceAttributes").filter(|v| v.is_object()) {
        let opt = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned);
        Attributes::Resource {
            verb: s(&r["verb"]),
            group: s(&r["group"]),
            resource: s(&r["resource"]),
            subresource: opt(&r["subresource"]),
            namespace: opt(&r["namespace"]),
            name: opt(&r["name"]),
        }
    } else if let Some(n) = spec.get("nonResourceAttributes").filter(|v| v.is_object()) {
        Attributes::Path {
            verb: s(&n["verb"]),
            path: s(&n["path"]),
        }
    } else {
        return Err(ApiError::invalid(
            "SelfSubjectAccessReview",
            "",
            vec![(
                "spec.resourceAttributes".into(),
                "exactly one of nonResourceAttributes or resourceAttributes must be specified"
                    .into(),
            )],
        ));
    };
    let allowed = user.is_none_or(|u| policy(store).allows(u, &attrs));
    let mut out = body.clone();
    out["apiVersion"] = json!("authorization.k8s.io/v1");
    out["kind"] = json!("SelfSubjectAccessReview");
    out["status"] = if allowed {
        json!({"allowed": true, "reason": "allowed by RBAC"})
    } else {
        json!({"allowed": false})
    };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn paths_become_the_attributes_kubernetes_reads() {
        let a = attributes(
            &Method::PATCH,
            &[
                "apis",
                "switchyard.dev",
                "v1alpha1",
                "namespaces",
                "fleet",
                "fleetnodes",
                "n1",
                "status",
            ],
            &q(&[]),
        );
        assert_eq!(
            a,
            Attributes::Resource {
                verb: "patch".into(),
                group: "switchyard.dev".into(),
                resource: "fleetnodes".into(),
                subresource: Some("status".into()),
                namespace: Some("fleet".into()),
                name: Some("n1".into()),
            }
        );
        let w = attributes(
            &Method::GET,
            &["api", "v1", "namespaces", "sys", "configmaps"],
            &q(&[("watch", "true"), ("fieldSelector", "metadata.name=alerts")]),
        );
        assert!(
            matches!(&w, Attributes::Resource { verb, name: Some(n), .. } if verb == "watch" && n == "alerts"),
            "{w:?}"
        );
        let ns = attributes(&Method::GET, &["api", "v1", "namespaces", "fleet"], &q(&[]));
        assert!(
            matches!(&ns, Attributes::Resource { resource, namespace: Some(n), name: Some(m), .. } if resource == "namespaces" && n == "fleet" && m == "fleet"),
            "{ns:?}"
        );
        let d = attributes(
            &Method::GET,
            &["apis", "switchyard.dev", "v1alpha1"],
            &q(&[]),
        );
        assert!(matches!(d, Attributes::Path { .. }));
        let c = attributes(
            &Method::DELETE,
            &["api", "v1", "namespaces", "x", "pods"],
            &q(&[]),
        );
        assert!(matches!(&c, Attributes::Resource { verb, .. } if verb == "deletecollection"));
    }
}
