//! A plan's own Prometheus credentials: the Secret its
//! `analysis.prometheus.secretRef` names, in the plan's namespace.
//!
//! Three consents stand between a plan and a Secret, because whoever writes
//! a plan chooses the address the credentials go to:
//! - the installer's: the operator reads such Secrets only when installed
//!   with `allowPlanCredentials` (which also grants it `get` on Secrets);
//! - the Secret owner's: the Secret carries the label
//!   `switchyard.dev/prometheus-credentials: "true"`;
//! - the namespace's: only a Secret in the plan's own namespace.
//!
//! What the Secret says is decided by [`from_secret`], a pure function.

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use switchyard_crds::analysis::PROMETHEUS_CREDENTIALS_LABEL;

use crate::promql::Access;

/// The credentials `secret` holds: `token` (a bearer token), or
/// `username` and `password` (basic auth); or what to change.
pub(super) fn from_secret(secret: &Secret) -> Result<Access, String> {
    let name = format!(
        "Secret {}/{}",
        secret.namespace().unwrap_or_default(),
        secret.name_any()
    );
    if secret
        .labels()
        .get(PROMETHEUS_CREDENTIALS_LABEL)
        .map(String::as_str)
        != Some("true")
    {
        return Err(format!(
            "{name} is not marked for Prometheus credentials: label it {PROMETHEUS_CREDENTIALS_LABEL}=true if its owner agrees to send it to the plan's Prometheus"
        ));
    }
    let data = secret.data.clone().unwrap_or_default();
    let text = |key: &str| -> Result<Option<String>, String> {
        data.get(key)
            .map(|v| {
                String::from_utf8(v.0.clone())
                    .map(|s| s.trim().to_owned())
                    .map_err(|_| format!("{name}: key {key:?} is not UTF-8 text"))
            })
            .transpose()
    };
    match (text("token")?, text("username")?, text("password")?) {
        (Some(token), None, None) if !token.is_empty() => Ok(Access {
            bearer_token: Some(token),
            ..Access::default()
        }),
        (None, Some(user), Some(password)) if !user.is_empty() => Ok(Access {
            basic: Some((user, password)),
            ..Access::default()
        }),
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err(format!(
            "{name} holds both `token` and `username`/`password`: keep one kind of credentials"
        )),
        (None, Some(_), None) | (None, None, Some(_)) => Err(format!(
            "{name} needs both `username` and `password` for basic auth"
        )),
        _ => Err(format!(
            "{name} holds no credentials: give it a non-empty `token` (bearer), or `username` and `password` (basic auth)"
        )),
    }
}

/// Read the Secret `name` in `ns` and its credentials; or why not.
/// `client` is `None` when the operator was not installed to allow this.
pub(super) async fn fetch(
    client: Option<&kube::Client>,
    ns: &str,
    name: &str,
) -> Result<Access, String> {
    let Some(client) = client else {
        return Err(format!(
            "analysis.prometheus.secretRef names Secret {ns}/{name}, but this operator does not read plans' credentials: install it with operator.prometheus.allowPlanCredentials=true (--allow-plan-credentials), or remove secretRef"
        ));
    };
    let api: kube::Api<Secret> = kube::Api::namespaced(client.clone(), ns);
    match api.get(name).await {
        Ok(secret) => from_secret(&secret),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(format!(
            "analysis.prometheus.secretRef: Secret {ns}/{name} does not exist"
        )),
        Err(kube::Error::Api(s)) if s.code == 403 => Err(format!(
            "analysis.prometheus.secretRef: the operator may not read Secret {ns}/{name} (403: {}); its RBAC needs get on secrets in {ns}",
            s.message
        )),
        Err(e) => Err(format!(
            "analysis.prometheus.secretRef: reading Secret {ns}/{name}: {e}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use std::collections::BTreeMap;

    fn secret(labelled: bool, data: &[(&str, &[u8])]) -> Secret {
        let mut s = Secret::default();
        s.metadata.name = Some("prom".into());
        s.metadata.namespace = Some("team-a".into());
        if labelled {
            s.metadata.labels = Some(BTreeMap::from([(
                PROMETHEUS_CREDENTIALS_LABEL.to_owned(),
                "true".to_owned(),
            )]));
        }
        s.data = Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.to_vec())))
                .collect(),
        );
        s
    }

    #[test]
    fn a_labelled_secret_gives_a_bearer_token_or_basic_auth() {
        let a = from_secret(&secret(true, &[("token", b"t0k\n")])).expect("token");
        assert_eq!(a.bearer_token.as_deref(), Some("t0k"));
        assert_eq!(a.basic, None);
        let a =
            from_secret(&secret(true, &[("username", b"u"), ("password", b"p")])).expect("basic");
        assert_eq!(a.basic, Some(("u".into(), "p".into())));
        assert_eq!(a.bearer_token, None);
        assert!(a.headers.is_empty() && a.ca_pem.is_none() && !a.insecure_skip_verify);
    }

    #[test]
    fn a_secret_without_consent_or_with_unclear_credentials_is_refused_saying_what_to_change() {
        let cases: [(Secret, &str); 6] = [
            (
                secret(false, &[("token", b"t")]),
                "label it switchyard.dev/prometheus-credentials=true",
            ),
            (
                secret(true, &[("token", b"t"), ("username", b"u")]),
                "keep one kind",
            ),
            (secret(true, &[("username", b"u")]), "needs both"),
            (secret(true, &[("password", b"p")]), "needs both"),
            (secret(true, &[("token", b"  ")]), "holds no credentials"),
            (secret(true, &[("token", &[0xff, 0xfe])]), "not UTF-8"),
        ];
        for (s, says) in cases {
            let e = from_secret(&s).expect_err(says);
            assert!(e.contains(says), "{e}");
            assert!(e.contains("Secret team-a/prom"), "{e}");
        }
    }

    #[tokio::test]
    async fn without_the_opt_in_no_secret_is_read_and_the_message_names_the_setting() {
        let e = fetch(None, "team-a", "prom")
            .await
            .expect_err("not allowed");
        assert!(e.contains("allowPlanCredentials=true"), "{e}");
        assert!(e.contains("team-a/prom"), "{e}");
    }
}
