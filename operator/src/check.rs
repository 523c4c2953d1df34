//! `switchyard-operator --check-install URL`: the chart's `helm test`. It
//! passes when the operator at URL is ready (it can accept an alert) and
//! each Switchyard kind is served (its CRD is installed and established),
//! listed as the operator's own ServiceAccount would list it.

use std::time::Duration;

use anyhow::Context;
use kube::api::{Api, ListParams};
use switchyard_crds::{FleetNode, MigrationCanary, MigrationPlan};

/// Check an installation: `readyz_base`'s `/readyz`, then one LIST of each
/// kind (limit 1) in `namespace`, or in all namespaces. The error names
/// every failed check and what to look at.
pub async fn run(readyz_base: &str, namespace: Option<&str>) -> anyhow::Result<()> {
    let mut failed = Vec::new();
    let url = format!("{}/readyz", readyz_base.trim_end_matches('/'));
    match readyz(&url).await {
        Ok(()) => println!("ok: {url} answers 200"),
        Err(e) => failed.push(format!("{url}: {e:#} (see the operator's logs)")),
    }
    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes")?;
    let one = ListParams::default().limit(1);
    let lists = [
        (
            "migrationplans",
            list::<MigrationPlan>(&client, namespace, &one).await,
        ),
        (
            "migrationcanaries",
            list::<MigrationCanary>(&client, namespace, &one).await,
        ),
        (
            "fleetnodes",
            list::<FleetNode>(&client, namespace, &one).await,
        ),
    ];
    for (plural, result) in lists {
        match result {
            Ok(()) => println!("ok: {plural}.switchyard.dev is served"),
            Err(e) => failed.push(format!(
                "listing {plural}.switchyard.dev: {e} (is its CRD installed? kubectl get crd {plural}.switchyard.dev)"
            )),
        }
    }
    anyhow::ensure!(failed.is_empty(), "{}", failed.join("\n"));
    Ok(())
}

async fn readyz(url: &str) -> anyhow::Result<()> {
    let uri: hyper::Uri = url
        .parse()
        .with_context(|| format!("{url:?} is not a URL"))?;
    crate::scrape::get(uri, None, Duration::from_secs(5), 64 * 1024)
        .await
        .map(drop)
        .map_err(Into::into)
}

async fn list<K>(
    client: &kube::Client,
    namespace: Option<&str>,
    lp: &ListParams,
) -> Result<(), kube::Error>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    api.list(lp).await.map(drop)
}
