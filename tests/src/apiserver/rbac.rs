//! The RBAC authorizer, as Kubernetes' `rbac.authorization.k8s.io`
//! evaluates it: a request is allowed when a Role or ClusterRole bound to
//! the user (by name, group, or ServiceAccount) has a rule that covers the
//! request's verb, API group, resource and subresource, object name
//! (`resourceNames`) and namespace, or its non-resource path. Members of
//! `system:masters` may do anything. Every authenticated user may read the
//! discovery paths, as the bootstrap `system:discovery` and
//! `system:public-info-viewer` bindings allow.
//!
//! Pure: the RBAC objects are handed in.

use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, Subject,
};

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// `system:serviceaccount:NS:NAME` for a ServiceAccount.
    pub name: String,
    /// Groups, `system:authenticated` included.
    pub groups: Vec<String>,
    /// Extra attributes, e.g. `authentication.kubernetes.io/pod-name` of
    /// a token bound to a Pod.
    pub extra: std::collections::BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// A ServiceAccount's user, with the groups Kubernetes gives it.
    pub fn service_account(namespace: &str, name: &str) -> UserInfo {
        UserInfo {
            name: format!("system:serviceaccount:{namespace}:{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".into(),
            ],
            extra: Default::default(),
        }
    }

    /// A user in `groups` (and `system:authenticated`).
    pub fn user(name: &str, groups: &[&str]) -> UserInfo {
        let mut groups: Vec<String> = groups.iter().map(|g| (*g).to_owned()).collect();
        if !groups.iter().any(|g| g == "system:authenticated") {
            groups.push("system:authenticated".into());
        }
        UserInfo {
            name: name.to_owned(),
            groups,
            extra: Default::default(),
        }
    }

    /// The ServiceAccount's (namespace, name), if this user is one.
    pub fn as_service_account(&self) -> Option<(&str, &str)> {
        UserInfo::service_account_parts(&self.name)
    }

    /// (namespace, name) of a `system:serviceaccount:NS:NAME` user name.
    pub fn service_account_parts(name: &str) -> Option<(&str, &str)> {
        name.strip_prefix("system:serviceaccount:")?.split_once(':')
    }
}

/// What a request does, as the authorizer sees it (Kubernetes'
/// `RequestInfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attributes {
    /// A request on an API resource.
    Resource {
        /// get, list, watch, create, update, patch, delete,
        /// deletecollection, impersonate, ...
        verb: String,
        /// The API group; `""` for the core group.
        group: String,
        /// The plural resource name.
        resource: String,
        /// `status`, `token`, ...
        subresource: Option<String>,
        /// The namespace; `None` for cluster-scoped requests.
        namespace: Option<String>,
        /// The object's name, when the request names one (for list and
        /// watch: a `metadata.name=` field selector).
        name: Option<String>,
    },
    /// A request on a path outside the resource tree.
    Path {
        /// get, post, ...
        verb: String,
        /// The path, with its leading slash.
        path: String,
    },
}

/// The RBAC objects of the cluster.
#[derive(Debug, Default, Clone)]
pub struct Policy {
    /// Roles, every namespace.
    pub roles: Vec<Role>,
    /// ClusterRoles.
    pub cluster_roles: Vec<ClusterRole>,
    /// RoleBindings, every namespace.
    pub role_bindings: Vec<RoleBinding>,
    /// ClusterRoleBindings.
    pub cluster_role_bindings: Vec<ClusterRoleBinding>,
}

/// Paths every authenticated user may read (bootstrap discovery roles).
const DISCOVERY: &[&str] = &[
    "/api",
    "/api/*",
    "/apis",
    "/apis/*",
    "/version",
    "/version/",
    "/openapi",
    "/openapi/*",
    "/healthz",
    "/livez",
    "/readyz",
];

impl Policy {
    /// Whether `user` may do `attrs`.
    pub fn allows(&self, user: &UserInfo, attrs: &Attributes) -> bool {
        if user.groups.iter().any(|g| g == "system:masters") {
            return true;
        }
        if let Attributes::Path { verb, path } = attrs
            && verb == "get"
            && user.groups.iter().any(|g| g == "system:authenticated")
            && DISCOVERY.iter().any(|p| path_matches(p, path))
        {
            return true;
        }
        let covered = |rules: &[PolicyRule]| rules.iter().any(|r| rule_allows(r, attrs));
        for b in &self.cluster_role_bindings {
            if binds(b.subjects.as_deref(), user, None)
                && b.role_ref.kind == "ClusterRole"
                && covered(&self.cluster_role_rules(&b.role_ref.name))
            {
                return true;
            }
        }
        let Attributes::Resource {
            namespace: Some(ns),
            ..
        } = attrs
        else {
            return false;
        };
        for b in &self.role_bindings {
            let b_ns = b.metadata.namespace.as_deref().unwrap_or_default();
            if b_ns != ns || !binds(b.subjects.as_deref(), user, Some(b_ns)) {
                continue;
            }
            let rules = match b.role_ref.kind.as_str() {
                "ClusterRole" => self.cluster_role_rules(&b.role_ref.name),
                "Role" => self
                    .roles
                    .iter()
                    .find(|r| {
                        r.metadata.namespace.as_deref() == Some(b_ns)
                            && r.metadata.name.as_deref() == Some(&b.role_ref.name)
                    })
                    .and_then(|r| r.rules.clone())
                    .unwrap_or_default(),
                _ => Vec::new(),
            };
            if covered(&rules) {
                return true;
            }
        }
        false
    }

    /// A ClusterRole's rules; an aggregated one's are those of every
    /// ClusterRole its `clusterRoleSelectors` select (`matchLabels`).
    fn cluster_role_rules(&self, name: &str) -> Vec<PolicyRule> {
        let Some(role) = self
            .cluster_roles
            .iter()
            .find(|r| r.metadata.name.as_deref() == Some(name))
        else {
            return Vec::new();
        };
        let mut rules = role.rules.clone().unwrap_or_default();
        if let Some(agg) = &role.aggregation_rule {
            for selector in agg.cluster_role_selectors.iter().flatten() {
                let want = selector.match_labels.clone().unwrap_or_default();
                for other in &self.cluster_roles {
                    let labels = other.metadata.labels.clone().unwrap_or_default();
                    if other.metadata.name.as_deref() != Some(name)
                        && want.iter().all(|(k, v)| labels.get(k) == Some(v))
                    {
                        rules.extend(other.rules.clone().unwrap_or_default());
                    }
                }
            }
        }
        rules
    }
}

/// Whether a binding's subjects include `user`. A ServiceAccount subject
/// without a namespace takes the binding's (RoleBindings only).
fn binds(subjects: Option<&[Subject]>, user: &UserInfo, binding_ns: Option<&str>) -> bool {
    subjects
        .into_iter()
        .flatten()
        .any(|s| match s.kind.as_str() {
            "User" => s.name == user.name,
            "Group" => user.groups.contains(&s.name),
            "ServiceAccount" => {
                let ns = s.namespace.as_deref().or(binding_ns).unwrap_or_default();
                user.as_service_account() == Some((ns, s.name.as_str()))
            }
            _ => false,
        })
}

fn has(list: Option<&Vec<String>>, want: &str) -> bool {
    list.is_some_and(|l| l.iter().any(|x| x == "*" || x == want))
}

/// Whether one rule covers the request.
fn rule_allows(rule: &PolicyRule, attrs: &Attributes) -> bool {
    match attrs {
        Attributes::Resource {
            verb,
            group,
            resource,
            subresource,
            name,
            ..
        } => {
            if !rule.verbs.iter().any(|v| v == "*" || v == verb) {
                return false;
            }
            if !has(rule.api_groups.as_ref(), group) {
                return false;
            }
            let combined = match subresource {
                Some(sub) => format!("{resource}/{sub}"),
                None => resource.clone(),
            };
            let resource_ok = rule.resources.iter().flatten().any(|r| {
                r == "*"
                    || *r == combined
                    || subresource
                        .as_ref()
                        .is_some_and(|sub| *r == format!("*/{sub}"))
            });
            if !resource_ok {
                return false;
            }
            match rule.resource_names.as_deref() {
                None | Some([]) => true,
                Some(names) => name.as_ref().is_some_and(|n| names.contains(n)),
            }
        }
        Attributes::Path { verb, path } => {
            rule.verbs.iter().any(|v| v == "*" || v == verb)
                && rule
                    .non_resource_urls
                    .iter()
                    .flatten()
                    .any(|p| path_matches(p, path))
        }
    }
}

/// A nonResourceURLs entry: exact, or a prefix ending in `*`.
fn path_matches(pattern: &str, path: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => pattern == path,
    }
}

/// The 403 message Kubernetes gives.
pub fn forbidden_message(
    user: &UserInfo,
    attrs: &Attributes,
) -> (String, Option<serde_json::Value>) {
    match attrs {
        Attributes::Resource {
            verb,
            group,
            resource,
            subresource,
            namespace,
            name,
        } => {
            let what = if group.is_empty() {
                resource.clone()
            } else {
                format!("{resource}.{group}")
            };
            let named = match name {
                Some(n) => format!("{what} \"{n}\""),
                None => what,
            };
            let combined = match subresource {
                Some(s) => format!("{resource}/{s}"),
                None => resource.clone(),
            };
            let scope = match namespace {
                Some(ns) => format!("in the namespace \"{ns}\""),
                None => "at the cluster scope".to_owned(),
            };
            let message = format!(
                "{named} is forbidden: User \"{}\" cannot {verb} resource \"{combined}\" in API group \"{group}\" {scope}",
                user.name
            );
            let details = serde_json::json!({
                "name": name.clone().unwrap_or_default(),
                "group": group,
                "kind": resource,
            });
            (message, Some(details))
        }
        Attributes::Path { verb, path } => (
            format!(
                "forbidden: User \"{}\" cannot {verb} path \"{path}\"",
                user.name
            ),
            None,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy() -> Policy {
        let role: Role = serde_json::from_value(json!({
            "metadata": {"name": "agent", "namespace": "fleet"},
            "rules": [
                {"apiGroups": ["switchyard.dev"], "resources": ["fleetnodes"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": ["switchyard.dev"], "resources": ["fleetnodes/status"], "verbs": ["patch"]},
                {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["agent-0-identity"], "verbs": ["get"]},
            ],
        }))
        .expect("role");
        let binding: RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": "agent", "namespace": "fleet"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "agent"},
            "subjects": [{"kind": "ServiceAccount", "name": "agent"}],
        }))
        .expect("binding");
        let reader: ClusterRole = serde_json::from_value(json!({
            "metadata": {"name": "reader"},
            "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"agg": "reader"}}]},
        }))
        .expect("aggregated");
        let part: ClusterRole = serde_json::from_value(json!({
            "metadata": {"name": "reader-part", "labels": {"agg": "reader"}},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]},
                      {"nonResourceURLs": ["/metrics"], "verbs": ["get"]}],
        }))
        .expect("part");
        let crb: ClusterRoleBinding = serde_json::from_value(json!({
            "metadata": {"name": "readers"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "reader"},
            "subjects": [{"kind": "Group", "name": "readers"}],
        }))
        .expect("crb");
        Policy {
            roles: vec![role],
            cluster_roles: vec![reader, part],
            role_bindings: vec![binding],
            cluster_role_bindings: vec![crb],
        }
    }

    fn res(
        verb: &str,
        group: &str,
        resource: &str,
        sub: Option<&str>,
        name: Option<&str>,
    ) -> Attributes {
        Attributes::Resource {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: sub.map(Into::into),
            namespace: Some("fleet".into()),
            name: name.map(Into::into),
        }
    }

    #[test]
    fn rules_cover_verbs_subresources_names_and_namespaces() {
        let p = policy();
        let agent = UserInfo::service_account("fleet", "agent");
        assert!(p.allows(
            &agent,
            &res("list", "switchyard.dev", "fleetnodes", None, None)
        ));
        assert!(p.allows(
            &agent,
            &res(
                "patch",
                "switchyard.dev",
                "fleetnodes",
                Some("status"),
                Some("n1")
            )
        ));
        assert!(
            !p.allows(
                &agent,
                &res("patch", "switchyard.dev", "fleetnodes", None, Some("n1"))
            ),
            "status only"
        );
        assert!(p.allows(
            &agent,
            &res("get", "", "secrets", None, Some("agent-0-identity"))
        ));
        assert!(
            !p.allows(&agent, &res("get", "", "secrets", None, Some("webhook"))),
            "resourceNames"
        );
        assert!(
            !p.allows(&agent, &res("list", "", "secrets", None, None)),
            "a named rule does not list"
        );
        let mut elsewhere = res("list", "switchyard.dev", "fleetnodes", None, None);
        if let Attributes::Resource { namespace, .. } = &mut elsewhere {
            *namespace = Some("other".into());
        }
        assert!(
            !p.allows(&agent, &elsewhere),
            "a Role is its namespace's only"
        );
        let other_sa = UserInfo::service_account("other", "agent");
        assert!(!p.allows(
            &other_sa,
            &res("list", "switchyard.dev", "fleetnodes", None, None)
        ));
    }

    #[test]
    fn groups_aggregation_paths_and_masters() {
        let p = policy();
        let reader = UserInfo::user("alice", &["readers"]);
        assert!(
            p.allows(&reader, &res("list", "", "configmaps", None, None)),
            "aggregated rule"
        );
        let metrics = Attributes::Path {
            verb: "get".into(),
            path: "/metrics".into(),
        };
        assert!(p.allows(&reader, &metrics));
        let nobody = UserInfo::user("bob", &[]);
        assert!(!p.allows(&nobody, &metrics));
        let discovery = Attributes::Path {
            verb: "get".into(),
            path: "/apis/switchyard.dev/v1alpha1".into(),
        };
        assert!(
            p.allows(&nobody, &discovery),
            "discovery is open to the authenticated"
        );
        let admin = UserInfo::user("root", &["system:masters"]);
        assert!(p.allows(&admin, &res("delete", "", "secrets", None, Some("x"))));
    }

    #[test]
    fn the_forbidden_message_is_kubernetes_own() {
        let agent = UserInfo::service_account("fleet", "agent");
        let (m, _) = forbidden_message(&agent, &res("get", "", "secrets", None, Some("webhook")));
        assert_eq!(
            m,
            "secrets \"webhook\" is forbidden: User \"system:serviceaccount:fleet:agent\" cannot get resource \"secrets\" in API group \"\" in the namespace \"fleet\""
        );
        let (m, _) = forbidden_message(
            &agent,
            &res(
                "patch",
                "switchyard.dev",
                "fleetnodes",
                Some("status"),
                Some("n2"),
            ),
        );
        assert!(
            m.starts_with("fleetnodes.switchyard.dev \"n2\" is forbidden"),
            "{m}"
        );
        assert!(
            m.contains("resource \"fleetnodes/status\" in API group \"switchyard.dev\""),
            "{m}"
        );
    }
}
