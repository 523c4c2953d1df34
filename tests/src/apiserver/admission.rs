//! ValidatingAdmissionPolicy, evaluated with CEL as a real API server
//! does, when [`super::Config::admission`] is on.
//!
//! For every write (create, update, delete; status included) each
//! ValidatingAdmissionPolicyBinding's policy is tried: its
//! `matchConstraints.resourceRules` (and the binding's
//! `matchResources.resourceRules`, when given) must cover the request, its
//! `matchConditions` must all hold, and then every `validations`
//! expression must be true, or the request is refused (binding
//! `validationActions: [Deny]`), with Kubernetes' message and the
//! validation's `reason` (default `Invalid`, 422). The CEL variables are
//! `object`, `oldObject`, `request` (`operation`, `name`, `namespace`,
//! `subResource`, `dryRun`, `kind`, `resource`, and `userInfo` with
//! `username`, `groups` and `extra`) and `params` (null: parameter
//! resources are not supported). A `namespaceSelector` or `objectSelector`
//! that selects anything narrower than everything is refused at
//! evaluation, so a policy is never silently skipped.

use kube_core::cel::{KubeCelExt, cel};
use serde_json::{Value, json};

use super::errors::ApiError;
use super::rbac::UserInfo;
use super::registry::ResourceType;

/// The request a policy judges.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// CREATE, UPDATE or DELETE.
    pub operation: &'static str,
    /// The resource type.
    pub rt: &'a ResourceType,
    /// `status`, when the request is on that subresource.
    pub subresource: Option<&'a str>,
    /// The namespace, if namespaced.
    pub namespace: Option<&'a str>,
    /// The object's name.
    pub name: &'a str,
    /// Who asks.
    pub user: &'a UserInfo,
    /// `dryRun=All`.
    pub dry_run: bool,
}

/// Refuse `request` if a bound policy denies it. `policies` and
/// `bindings` are the stored ValidatingAdmissionPolicies and bindings.
pub fn admit(
    policies: &[std::sync::Arc<Value>],
    bindings: &[std::sync::Arc<Value>],
    request: &Request<'_>,
    object: Option<&Value>,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    for binding in bindings {
        let policy_name = binding
            .pointer("/spec/policyName")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Some(policy) = policies
            .iter()
            .find(|p| p.pointer("/metadata/name").and_then(Value::as_str) == Some(policy_name))
        else {
            continue;
        };
        let binding_name = binding
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let denies = binding
            .pointer("/spec/validationActions")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|v| v == "Deny"));
        if !denies {
            continue;
        }
        if !matches_rules(policy.pointer("/spec/matchConstraints"), request)?
            || (binding.pointer("/spec/matchResources").is_some()
                && !matches_rules(binding.pointer("/spec/matchResources"), request)?)
        {
            continue;
        }
        let vars = variables(request, object, old);
        let deny = |message: String, reason: &str| {
            denial(request, policy_name, binding_name, &message, reason)
        };
        let fail_open = policy.pointer("/spec/failurePolicy") == Some(&json!("Ignore"));
        let conditions = policy
            .pointer("/spec/matchConditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut applies = true;
        for c in &conditions {
            let expr = c["expression"].as_str().unwrap_or_default();
            match eval(expr, &vars) {
                Ok(true) => {}
                Ok(false) => {
                    applies = false;
                    break;
                }
                Err(e) if fail_open => {
                    tracing::debug!(policy = policy_name, error = %e, "matchCondition error ignored");
                    applies = false;
                    break;
                }
                Err(e) => {
                    return Err(deny(
                        format!("expression '{expr}' resulted in error: {e}"),
                        "Invalid",
                    ));
                }
            }
        }
        if !applies {
            continue;
        }
        for v in policy
            .pointer("/spec/validations")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let expr = v["expression"].as_str().unwrap_or_default();
            let reason = v["reason"].as_str().unwrap_or("Invalid");
            match eval(expr, &vars) {
                Ok(true) => {}
                Ok(false) => {
                    let message = match v["message"].as_str() {
                        Some(m) => m.to_owned(),
                        None => format!("failed expression: {expr}"),
                    };
                    return Err(deny(message, reason));
                }
                Err(_) if fail_open => {}
                Err(e) => {
                    return Err(deny(
                        format!("expression '{expr}' resulted in error: {e}"),
                        reason,
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Whether a `matchConstraints` / `matchResources` block covers the
/// request.
fn matches_rules(block: Option<&Value>, request: &Request<'_>) -> Result<bool, ApiError> {
    let Some(block) = block else {
        return Ok(false);
    };
    for selector in ["namespaceSelector", "objectSelector"] {
        if block
            .get(selector)
            .is_some_and(|s| s.as_object().is_some_and(|o| !o.is_empty()))
        {
            return Err(ApiError::bad_request(format!(
                "this API server does not evaluate a policy's {selector}; leave it empty"
            )));
        }
    }
    let resource = match request.subresource {
        Some(sub) => format!("{}/{sub}", request.rt.plural),
        None => request.rt.plural.clone(),
    };
    let covers = |rule: &Value| {
        let has = |key: &str, want: &str| {
            rule[key]
                .as_array()
                .is_some_and(|a| a.iter().any(|v| v == "*" || v == want))
        };
        has("apiGroups", &request.rt.group)
            && has("apiVersions", &request.rt.version)
            && has("operations", request.operation)
            && rule["resources"].as_array().is_some_and(|a| {
                a.iter().any(|v| {
                    v == "*"
                        || *v == json!(resource)
                        || request
                            .subresource
                            .is_some_and(|sub| *v == json!(format!("*/{sub}")))
                })
            })
    };
    let rules = |key: &str| block[key].as_array().cloned().unwrap_or_default();
    Ok(rules("resourceRules").iter().any(covers)
        && !rules("excludeResourceRules").iter().any(covers))
}

fn variables(request: &Request<'_>, object: Option<&Value>, old: Option<&Value>) -> Value {
    json!({
        "object": object.cloned().unwrap_or(Value::Null),
        "oldObject": old.cloned().unwrap_or(Value::Null),
        "params": Value::Null,
        "request": {
            "operation": request.operation,
            "name": request.name,
            "namespace": request.namespace.unwrap_or_default(),
            "subResource": request.subresource.unwrap_or_default(),
            "dryRun": request.dry_run,
            "kind": {"group": request.rt.group, "version": request.rt.version, "kind": request.rt.kind},
            "resource": {"group": request.rt.group, "version": request.rt.version, "resource": request.rt.plural},
            "userInfo": {
                "username": request.user.name,
                "groups": request.user.groups,
                "extra": request.user.extra,
            },
        },
    })
}

/// Evaluate a boolean CEL expression over the variables.
fn eval(expr: &str, vars: &Value) -> Result<bool, String> {
    let program = cel::Program::compile(expr).map_err(|e| e.to_string())?;
    let mut ctx = cel::Context::default();
    ctx.register_all();
    for (name, value) in vars.as_object().into_iter().flatten() {
        ctx.add_variable(name.as_str(), value.clone())
            .map_err(|e| e.to_string())?;
    }
    match program.execute(&ctx).map_err(|e| e.to_string())? {
        cel::Value::Bool(b) => Ok(b),
        other => Err(format!("expected a bool, got {other:?}")),
    }
}

/// The Status a denial answers with, as Kubernetes words it.
fn denial(
    request: &Request<'_>,
    policy: &str,
    binding: &str,
    message: &str,
    reason: &str,
) -> ApiError {
    let what = if request.rt.group.is_empty() {
        request.rt.plural.clone()
    } else {
        format!("{}.{}", request.rt.plural, request.rt.group)
    };
    let cause = format!(
        "ValidatingAdmissionPolicy '{policy}' with binding '{binding}' denied request: {message}"
    );
    match reason {
        "Forbidden" | "Unauthorized" | "RequestEntityTooLarge" => ApiError::forbidden(
            format!("{what} \"{}\" is forbidden: {cause}", request.name),
            Some(
                json!({"name": request.name, "group": request.rt.group, "kind": request.rt.plural}),
            ),
        ),
        _ => ApiError::invalid_by_policy(
            &what,
            request.name,
            &request.rt.group,
            &request.rt.plural,
            cause,
        ),
    }
}
