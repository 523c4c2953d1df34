//! The durable record of firing alerts: one ConfigMap in the Lease's
//! namespace, one data key per alert (its fingerprint), the value the
//! alert as JSON.
//!
//! Any replica that accepts a webhook call writes the call's changes with
//! one JSON merge patch (a firing alert sets its key, a resolved one
//! removes it), so concurrent calls to different replicas never overwrite
//! each other, and answers 200 only once the API server has stored it.
//! Every replica follows the ConfigMap with a watch and rebuilds its book
//! from it; the leader acts on that book, and a new leader starts from it.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Map, Value};

use super::AlertBook;
use super::webhook::{Change, Firing};

/// The ConfigMap that holds the firing alerts.
#[derive(Clone)]
pub struct AlertRecord {
    api: Api<ConfigMap>,
    name: String,
}

impl AlertRecord {
    /// The ConfigMap `name` reached through `api` (namespaced).
    pub fn new(api: Api<ConfigMap>, name: String) -> Self {
        AlertRecord { api, name }
    }

    /// The ConfigMap's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Store `changes`: one merge patch, or a create if the ConfigMap does
    /// not exist yet (then a patch again if another replica created it
    /// first).
    pub async fn store(&self, changes: &[Change]) -> Result<(), kube::Error> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut data = Map::new();
        for c in changes {
            match c {
                Change::Fire(key, firing) => {
                    let json = serde_json::to_string(firing).unwrap_or_default();
                    data.insert(key.clone(), Value::String(json));
                }
                Change::Resolve(key) => {
                    data.insert(key.clone(), Value::Null);
                }
            }
        }
        let patch = serde_json::json!({ "data": data });
        match self.patch(&patch).await {
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            other => return other,
        }
        // Absent: create it with the firing alerts (a resolve of an
        // alert nobody stored is already true).
        let firing: std::collections::BTreeMap<String, String> = data
            .into_iter()
            .filter_map(|(k, v)| Some((k, v.as_str()?.to_owned())))
            .collect();
        if firing.is_empty() {
            return Ok(());
        }
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                labels: Some(
                    [(
                        "app.kubernetes.io/managed-by".to_owned(),
                        "switchyard-operator".to_owned(),
                    )]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            data: Some(firing),
            ..ConfigMap::default()
        };
        match self.api.create(&PostParams::default(), &cm).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => self.patch(&patch).await,
            Err(e) => Err(e),
        }
    }

    async fn patch(&self, patch: &Value) -> Result<(), kube::Error> {
        self.api
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map(|_| ())
    }

    /// Keep `book` equal to the ConfigMap, for as long as the process
    /// runs. The first complete read marks the book synced.
    pub async fn follow(self, book: Arc<AlertBook>) {
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.name));
        let mut events = watcher(self.api.clone(), config).default_backoff().boxed();
        let mut initial: Option<HashMap<String, Firing>> = None;
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Init) => initial = Some(HashMap::new()),
                Ok(watcher::Event::InitApply(cm)) => initial = Some(alerts_of(&cm)),
                Ok(watcher::Event::InitDone) => {
                    book.replace(initial.take().unwrap_or_default());
                    book.mark_synced();
                }
                Ok(watcher::Event::Apply(cm)) => book.replace(alerts_of(&cm)),
                Ok(watcher::Event::Delete(_)) => book.replace(HashMap::new()),
                Err(e) => {
                    tracing::warn!(configmap = %self.name, error = %e, "watching the alert record");
                }
            }
        }
    }
}

/// The alerts a ConfigMap holds; a value that does not decode is skipped
/// (and logged): one bad key must not hide the others.
fn alerts_of(cm: &ConfigMap) -> HashMap<String, Firing> {
    let Some(data) = cm.data.as_ref() else {
        return HashMap::new();
    };
    data.iter()
        .filter_map(|(k, v)| match serde_json::from_str::<Firing>(v) {
            Ok(f) => Some((k.clone(), f)),
            Err(e) => {
                tracing::warn!(key = %k, error = %e, "an alert record that does not decode; skipped");
                None
            }
        })
        .collect()
}
