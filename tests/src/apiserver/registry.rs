//! The kinds the in-memory API server serves: the built-in ones Switchyard
//! needs, and every CustomResourceDefinition created at run time (served at
//! once, visible in discovery at once).

use serde_json::{Value, json};

/// One served resource (one group, version and plural).
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceType {
    /// API group; empty for the core group.
    pub group: String,
    /// Version, e.g. `v1`.
    pub version: String,
    /// Kind, e.g. `ConfigMap`.
    pub kind: String,
    /// Plural resource name, e.g. `configmaps`.
    pub plural: String,
    /// Singular resource name.
    pub singular: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Short names for kubectl.
    pub short_names: Vec<String>,
    /// Categories for kubectl (`kubectl get all`).
    pub categories: Vec<String>,
    /// Has a status subresource: status is ignored on create and on the
    /// main endpoint, and written through `/status`.
    pub status_subresource: bool,
    /// A built-in kind: strategic merge patch is allowed.
    pub builtin: bool,
    /// openAPIV3Schema, for custom resources.
    pub schema: Option<std::sync::Arc<Value>>,
    /// additionalPrinterColumns, for custom resources.
    pub printer_columns: Vec<Value>,
}

impl ResourceType {
    /// `group/version`, or `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The key objects are stored under: the same for every version.
    pub fn storage_key(&self) -> (String, String) {
        (self.group.clone(), self.plural.clone())
    }

    /// The discovery entries for this resource (and its status).
    pub fn discovery(&self) -> Vec<Value> {
        let mut out = vec![json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
            "shortNames": self.short_names,
            "categories": self.categories,
        })];
        if self.status_subresource {
            out.push(json!({
                "name": format!("{}/status", self.plural),
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        out
    }
}

fn builtin(
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
    namespaced: bool,
    short: &[&str],
    status: bool,
) -> ResourceType {
    ResourceType {
        group: group.into(),
        version: version.into(),
        kind: kind.into(),
        plural: plural.into(),
        singular: kind.to_lowercase(),
        namespaced,
        short_names: short.iter().map(|s| (*s).to_owned()).collect(),
        categories: Vec::new(),
        status_subresource: status,
        builtin: true,
        schema: None,
        printer_columns: Vec::new(),
    }
}

/// The built-in kinds Switchyard and its tests use.
pub fn builtins() -> Vec<ResourceType> {
    let mut all = vec![
        builtin("", "v1", "Namespace", "namespaces", false, &["ns"], true),
        builtin("", "v1", "Pod", "pods", true, &["po"], true),
        builtin("", "v1", "Node", "nodes", false, &["no"], true),
        builtin("", "v1", "Service", "services", true, &["svc"], true),
        builtin("", "v1", "ConfigMap", "configmaps", true, &["cm"], false),
        builtin("", "v1", "Secret", "secrets", true, &[], false),
        builtin(
            "",
            "v1",
            "ServiceAccount",
            "serviceaccounts",
            true,
            &["sa"],
            false,
        ),
        builtin("", "v1", "Event", "events", true, &["ev"], false),
        builtin("", "v1", "Endpoints", "endpoints", true, &["ep"], false),
        builtin(
            "events.k8s.io",
            "v1",
            "Event",
            "events",
            true,
            &["ev"],
            false,
        ),
        builtin(
            "coordination.k8s.io",
            "v1",
            "Lease",
            "leases",
            true,
            &[],
            false,
        ),
        builtin(
            "apps",
            "v1",
            "Deployment",
            "deployments",
            true,
            &["deploy"],
            true,
        ),
        builtin(
            "apps",
            "v1",
            "StatefulSet",
            "statefulsets",
            true,
            &["sts"],
            true,
        ),
        builtin("apps", "v1", "DaemonSet", "daemonsets", true, &["ds"], true),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "Role",
            "roles",
            true,
            &[],
            false,
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "RoleBinding",
            "rolebindings",
            true,
            &[],
            false,
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRole",
            "clusterroles",
            false,
            &[],
            false,
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRoleBinding",
            "clusterrolebindings",
            false,
            &[],
            false,
        ),
        builtin(
            "policy",
            "v1",
            "PodDisruptionBudget",
            "poddisruptionbudgets",
            true,
            &["pdb"],
            true,
        ),
        builtin(
            "networking.k8s.io",
            "v1",
            "NetworkPolicy",
            "networkpolicies",
            true,
            &["netpol"],
            false,
        ),
        builtin(
            "admissionregistration.k8s.io",
            "v1",
            "ValidatingAdmissionPolicy",
            "validatingadmissionpolicies",
            false,
            &[],
            true,
        ),
        builtin(
            "admissionregistration.k8s.io",
            "v1",
            "ValidatingAdmissionPolicyBinding",
            "validatingadmissionpolicybindings",
            false,
            &[],
            false,
        ),
        builtin(
            "authorization.k8s.io",
            "v1",
            "SelfSubjectAccessReview",
            "selfsubjectaccessreviews",
            false,
            &[],
            false,
        ),
        builtin(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            false,
            &["crd", "crds"],
            true,
        ),
    ];
    for r in &mut all {
        if matches!(
            r.kind.as_str(),
            "Pod"
                | "Service"
                | "Deployment"
                | "StatefulSet"
                | "DaemonSet"
                | "ConfigMap"
                | "Secret"
                | "ServiceAccount"
        ) {
            r.categories = vec!["all".into()];
        }
        if r.kind == "ConfigMap" || r.kind == "Secret" || r.kind == "ServiceAccount" {
            r.categories.clear();
        }
    }
    all
}

/// Why a CRD cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct CrdError {
    /// The offending field.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// The resource types a CustomResourceDefinition serves, one per served
/// version.
pub fn from_crd(crd: &Value) -> Result<Vec<ResourceType>, CrdError> {
    let err = |field: &str, message: &str| CrdError {
        field: field.into(),
        message: message.into(),
    };
    let spec = crd
        .get("spec")
        .ok_or_else(|| err("spec", "Required value"))?;
    let group = spec
        .get("group")
        .and_then(Value::as_str)
        .filter(|g| g.contains('.'))
        .ok_or_else(|| err("spec.group", "should be a domain with at least one dot"))?;
    let names = spec
        .get("names")
        .ok_or_else(|| err("spec.names", "Required value"))?;
    let plural = names
        .get("plural")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
        .ok_or_else(|| err("spec.names.plural", "Required value"))?;
    let kind = names
        .get("kind")
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| err("spec.names.kind", "Required value"))?;
    let expected_name = format!("{plural}.{group}");
    if crd.pointer("/metadata/name").and_then(Value::as_str) != Some(expected_name.as_str()) {
        return Err(err(
            "metadata.name",
            &format!("must be spec.names.plural+\".\"+spec.group: {expected_name}"),
        ));
    }
    let singular = names
        .get("singular")
        .and_then(Value::as_str)
        .map_or_else(|| kind.to_lowercase(), str::to_owned);
    let strings = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let namespaced = match spec.get("scope").and_then(Value::as_str) {
        Some("Namespaced") => true,
        Some("Cluster") => false,
        _ => {
            return Err(err(
                "spec.scope",
                "Unsupported value: must be Namespaced or Cluster",
            ));
        }
    };
    let versions = spec
        .get("versions")
        .and_then(Value::as_array)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            err(
                "spec.versions",
                "must have exactly one version marked as storage version",
            )
        })?;
    let mut out = Vec::new();
    for (i, v) in versions.iter().enumerate() {
        let name = v
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| err(&format!("spec.versions[{i}].name"), "Required value"))?;
        if v.get("served").and_then(Value::as_bool) == Some(false) {
            continue;
        }
        out.push(ResourceType {
            group: group.into(),
            version: name.into(),
            kind: kind.into(),
            plural: plural.into(),
            singular: singular.clone(),
            namespaced,
            short_names: strings(names.get("shortNames")),
            categories: strings(names.get("categories")),
            status_subresource: v.pointer("/subresources/status").is_some(),
            builtin: false,
            schema: v
                .pointer("/schema/openAPIV3Schema")
                .cloned()
                .map(std::sync::Arc::new),
            printer_columns: v
                .get("additionalPrinterColumns")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
        });
    }
    Ok(out)
}
