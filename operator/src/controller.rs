//! The wiring: one watch per kind into shared reflector stores, the
//! MigrationPlan and Canary controllers over them (their reconcilers are
//! [`crate::plans`] and [`crate::canary`], through the shared entry path in
//! [`crate::reconcile`]), and the analysis, which reads the same stores.
//! A FleetNode change wakes the plans and Canaries that select or hold the
//! node; an analysis result wakes its subject.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use switchyard_crds::{Canary, FIELD_MANAGER, FleetNode, LABEL_CANARY, LABEL_PLAN, MigrationPlan};

use crate::canary::Canaries;
pub use crate::context::{
    Analysis, Context, Error, Fence, LeaseFence, NoAnalysis, NoFence, Settings,
};
use crate::context::{StoreOf, Stores, Synced, error_policy, resource_of};
use crate::metrics::Metrics;
pub use crate::planner::owned::owned_canary_name;
use crate::planner::selection::matches;
use crate::plans::Plans;
use crate::ratelimit::RateLimiter;
use crate::reconcile::reconcile_object;

fn api_for<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Watch `api` into a shared store with `subscribers` subscribers; the
/// returned future drives the watch. Every subscriber must be polled, or
/// the watch waits for it.
#[allow(clippy::type_complexity)]
fn shared<K>(
    api: Api<K>,
    subscribers: usize,
    ready: (Arc<Synced>, StoreOf),
) -> (
    Store<K>,
    Vec<reflector::ReflectHandle<K>>,
    impl std::future::Future<Output = ()> + Send,
)
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store_shared(4096);
    let handles = (0..subscribers)
        .filter_map(|_| writer.subscribe())
        .collect();
    let driver = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect_shared(writer)
        .for_each(move |r| {
            match r {
                Ok(watcher::Event::InitDone) => ready.0.mark(ready.1),
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "watch"),
            }
            futures::future::ready(())
        });
    (reader, handles, driver)
}

/// A reflector for a Switchyard kind read as raw objects: the store, and
/// the stream that fills it and triggers the controller. `ready` is set
/// once the first complete list is in the store.
fn raw_reflector(
    api: Api<DynamicObject>,
    ar: &ApiResource,
    ready: (Arc<Synced>, StoreOf),
) -> (
    Store<DynamicObject>,
    impl futures::Stream<Item = Result<DynamicObject, watcher::Error>> + Send + 'static,
) {
    let writer = reflector::store::Writer::new(ar.clone());
    let reader = writer.as_reader();
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default()).default_backoff(),
    )
    .inspect(move |e| {
        if let Ok(watcher::Event::InitDone) = e {
            ready.0.mark(ready.1);
        }
    })
    .touched_objects();
    (reader, stream)
}

/// Which stored objects in the node's namespace care about a node change:
/// ones whose selector picks it or whose `label` it carries.
fn interested(
    store: &Store<DynamicObject>,
    ar: &ApiResource,
    node: &FleetNode,
    label: &str,
) -> Vec<ObjectRef<DynamicObject>> {
    let ns = node.namespace();
    store
        .state()
        .into_iter()
        .filter(|o| o.metadata.namespace == ns)
        .filter(|o| {
            let selected = o
                .data
                .get("spec")
                .and_then(|s| s.get("selector"))
                .and_then(|s| serde_json::from_value::<LabelSelector>(s.clone()).ok())
                .is_some_and(|sel| matches(&sel, node.labels()));
            selected || node.labels().get(label) == o.metadata.name.as_ref()
        })
        .map(|o| ObjectRef::from_obj_with(&*o, ar.clone()))
        .collect()
}

/// Run the MigrationPlan and Canary controllers until shutdown.
pub async fn run(
    client: Client,
    namespace: Option<String>,
    analysis: Arc<dyn Analysis>,
    settings: Settings,
    metrics: Metrics,
    fence: Arc<dyn Fence>,
) {
    let ns = namespace.as_deref();
    let ready = Arc::new(Synced::new(metrics.stores_synced.clone()));
    let (node_reader, mut node_subs, node_watch) = shared(
        api_for::<FleetNode>(&client, ns),
        2,
        (ready.clone(), StoreOf::Nodes),
    );
    let (Some(node_for_canaries), Some(node_for_plans)) = (node_subs.pop(), node_subs.pop()) else {
        tracing::error!("the shared FleetNode store gave no subscribers");
        return;
    };
    // Plans and Canaries are watched as raw objects: one that does not
    // decode (possible when the API server does not validate) is reported
    // Invalid instead of breaking the watch for every other.
    let plan_ar = resource_of::<MigrationPlan>();
    let canary_ar = resource_of::<Canary>();
    let raw_api = |ar: &ApiResource| -> Api<DynamicObject> {
        match ns {
            Some(ns) => Api::namespaced_with(client.clone(), ns, ar),
            None => Api::all_with(client.clone(), ar),
        }
    };
    let (plan_reader, plan_stream) =
        raw_reflector(raw_api(&plan_ar), &plan_ar, (ready.clone(), StoreOf::Plans));
    let (canary_reader, canary_stream) = raw_reflector(
        raw_api(&canary_ar),
        &canary_ar,
        (ready.clone(), StoreOf::Canaries),
    );
    let plan_controller =
        Controller::for_stream_with(plan_stream, plan_reader.clone(), plan_ar.clone());
    let canary_controller =
        Controller::for_stream_with(canary_stream, canary_reader.clone(), canary_ar.clone());
    let ctx = Arc::new(Context {
        client: client.clone(),
        nodes: node_reader,
        plans: plan_reader.clone(),
        canaries: canary_reader.clone(),
        ready,
        instance: std::env::var("POD_NAME").unwrap_or_else(|_| FIELD_MANAGER.into()),
        events: std::sync::atomic::AtomicU64::new(0),
        analysis,
        limiter: RateLimiter::new(settings.write_qps, settings.write_burst),
        settings,
        metrics,
        fence,
        written: std::sync::Mutex::new(std::collections::HashMap::new()),
        failures: std::sync::Mutex::new(std::collections::HashMap::new()),
    });
    let analysis_run = ctx.analysis.start(Stores {
        nodes: ctx.nodes.clone(),
        plans: ctx.plans.clone(),
        canaries: ctx.canaries.clone(),
        ready: ctx.ready.clone(),
    });
    let plans_for_map = plan_reader;
    let ar = plan_ar;
    let nudges = match ctx.analysis.changes() {
        Some(rx) => tokio_stream::wrappers::WatchStream::from_changes(rx)
            .map(|_| ())
            .boxed(),
        None => futures::stream::pending().boxed(),
    };
    let updated = match ctx.analysis.plan_updates() {
        Some(updates) => {
            let ar = ar.clone();
            updates
                .map(move |(ns, name)| ObjectRef::new_with(&name, ar.clone()).within(&ns))
                .boxed()
        }
        None => futures::stream::pending().boxed(),
    };
    let plan_controller = plan_controller
        .reconcile_all_on(nudges)
        .reconcile_on(updated)
        .watches_shared_stream(node_for_plans, move |node: Arc<FleetNode>| {
            interested(&plans_for_map, &ar, &node, LABEL_PLAN)
        })
        .shutdown_on_signal()
        .run(
            reconcile_object::<Plans>,
            error_policy("MigrationPlan"),
            ctx.clone(),
        )
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "plan controller event");
            }
        });
    let canaries_for_map = canary_reader;
    let ar = canary_ar;
    let canary_updated = match ctx.analysis.canary_updates() {
        Some(updates) => {
            let ar = ar.clone();
            updates
                .map(move |(ns, name)| ObjectRef::new_with(&name, ar.clone()).within(&ns))
                .boxed()
        }
        None => futures::stream::pending().boxed(),
    };
    let canary_controller = canary_controller
        .reconcile_on(canary_updated)
        .watches_shared_stream(node_for_canaries, move |node: Arc<FleetNode>| {
            interested(&canaries_for_map, &ar, &node, LABEL_CANARY)
        })
        .shutdown_on_signal()
        .run(reconcile_object::<Canaries>, error_policy("Canary"), ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "canary controller event");
            }
        });
    // The controllers end on a signal; the watches end with them.
    let analysis_run = analysis_run.unwrap_or_else(|| Box::pin(futures::future::pending::<()>()));
    tokio::select! {
        _ = futures::future::join(plan_controller, canary_controller) => {}
        _ = node_watch => {}
        _ = analysis_run => {}
    }
}
