//! The wiring: one watch per kind into shared reflector stores, the
//! MigrationPlan and MigrationCanary controllers over them (their reconcilers are
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
use switchyard_crds::{FleetNode, LABEL_CANARY, LABEL_PLAN, MigrationCanary, MigrationPlan};

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

/// Drop what the operator never reads before an object is stored:
/// `managedFields` (several entries per FleetNode, one per writer) and
/// kubectl's last-applied copy of the object. At 100,000 FleetNodes this
/// is most of the store.
fn slim<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
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
        .modify(slim)
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
    impl futures::Stream<Item = Result<DynamicObject, watcher::Error>> + Send + 'static + use<>,
) {
    let writer = reflector::store::Writer::new(ar.clone());
    let reader = writer.as_reader();
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(slim),
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
/// ones whose selector picks it or whose `label` it carries, and plans
/// waiting on the rest of the fleet.
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
            selected || node.labels().get(label) == o.metadata.name.as_ref() || waits_for_fleet(o)
        })
        .map(|o| ObjectRef::from_obj_with(&*o, ar.clone()))
        .collect()
}

/// Whether a plan's step waits on nodes outside it (its Progressing
/// condition says `WaitingForFleet`): any node of its namespace changing
/// may let it go on.
fn waits_for_fleet(o: &DynamicObject) -> bool {
    o.data
        .pointer("/status/conditions")
        .and_then(|c| c.as_array())
        .is_some_and(|c| {
            c.iter().any(|c| {
                c.get("type").and_then(|t| t.as_str()) == Some("Progressing")
                    && c.get("reason").and_then(|r| r.as_str()) == Some("WaitingForFleet")
            })
        })
}

/// What the controllers run with, besides the client.
pub struct Wiring {
    /// Namespace to watch; all when `None`.
    pub namespace: Option<String>,
    /// This replica's name on its Events (the pod's name).
    pub identity: String,
    /// Where verdicts and triggers come from.
    pub analysis: Arc<dyn Analysis>,
    /// Whether this replica may still write.
    pub fence: Arc<dyn Fence>,
    /// Write limits.
    pub settings: Settings,
    /// The operator's metrics.
    pub metrics: Metrics,
    /// Where plans' phase transitions are sent, if anywhere.
    pub notifier: Option<crate::notify::Notifier>,
}

/// The stores, their watches and the streams that trigger the
/// controllers.
struct Watches {
    stores: Stores,
    node_subscribers: [reflector::ReflectHandle<FleetNode>; 2],
    node_watch: futures::future::BoxFuture<'static, ()>,
    plan_stream: futures::stream::BoxStream<'static, Result<DynamicObject, watcher::Error>>,
    canary_stream: futures::stream::BoxStream<'static, Result<DynamicObject, watcher::Error>>,
}

/// Start one watch per kind. Plans and Canaries are watched as raw
/// objects: one that does not decode (possible when the API server does
/// not validate) is reported Invalid instead of breaking the watch for
/// every other.
fn watches(client: &Client, ns: Option<&str>, metrics: &Metrics) -> Option<Watches> {
    let ready = Arc::new(Synced::new(metrics.stores_synced.clone()));
    let (nodes, mut subs, node_watch) = shared(
        api_for::<FleetNode>(client, ns),
        2,
        (ready.clone(), StoreOf::Nodes),
    );
    let node_subscribers = [subs.pop()?, subs.pop()?];
    let raw = |ar: &ApiResource, store: StoreOf| {
        let api = match ns {
            Some(ns) => Api::namespaced_with(client.clone(), ns, ar),
            None => Api::all_with(client.clone(), ar),
        };
        raw_reflector(api, ar, (ready.clone(), store))
    };
    let (plans, plan_stream) = raw(&resource_of::<MigrationPlan>(), StoreOf::Plans);
    let (canaries, canary_stream) = raw(&resource_of::<MigrationCanary>(), StoreOf::Canaries);
    Some(Watches {
        stores: Stores {
            nodes,
            plans,
            canaries,
            ready,
        },
        node_subscribers,
        node_watch: Box::pin(node_watch),
        plan_stream: plan_stream.boxed(),
        canary_stream: canary_stream.boxed(),
    })
}

/// `(namespace, name)` updates as references to objects of `ar`; never
/// ends when there are none.
fn refs_of(
    updates: Option<futures::stream::BoxStream<'static, (String, String)>>,
    ar: ApiResource,
) -> futures::stream::BoxStream<'static, ObjectRef<DynamicObject>> {
    match updates {
        Some(updates) => updates
            .map(move |(ns, name)| ObjectRef::new_with(&name, ar.clone()).within(&ns))
            .boxed(),
        None => futures::stream::pending().boxed(),
    }
}

/// Log what a controller's run reports.
async fn drain<T, E: std::fmt::Display>(
    results: impl futures::Stream<Item = Result<T, E>>,
    which: &'static str,
) {
    results
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, controller = which, "controller event");
            }
        })
        .await;
}

/// Run the MigrationPlan and MigrationCanary controllers, and the analysis, until
/// shutdown.
pub async fn run(client: Client, wiring: Wiring) {
    let Some(w) = watches(&client, wiring.namespace.as_deref(), &wiring.metrics) else {
        tracing::error!("the shared FleetNode store gave no subscribers");
        return;
    };
    let settings = wiring.settings;
    let ctx = Arc::new(Context {
        client,
        nodes: w.stores.nodes.clone(),
        plans: w.stores.plans.clone(),
        canaries: w.stores.canaries.clone(),
        ready: w.stores.ready.clone(),
        instance: wiring.identity,
        events: std::sync::atomic::AtomicU64::new(0),
        analysis: wiring.analysis,
        limiter: RateLimiter::new(settings.write_qps, settings.write_burst),
        settings,
        metrics: wiring.metrics,
        fence: wiring.fence,
        notifier: wiring.notifier,
        written: std::sync::Mutex::new(std::collections::HashMap::new()),
        failures: std::sync::Mutex::new(std::collections::HashMap::new()),
        node_writes: std::sync::Mutex::new(std::collections::HashMap::new()),
    });
    let sweep = crate::sweep::run(ctx.clone(), std::time::Duration::from_secs(5));
    let analysis_run = ctx
        .analysis
        .start(w.stores.clone())
        .unwrap_or_else(|| Box::pin(futures::future::pending::<()>()));
    let [for_plans, for_canaries] = w.node_subscribers;
    let (plan_ar, canary_ar) = (
        resource_of::<MigrationPlan>(),
        resource_of::<MigrationCanary>(),
    );
    // An alert arrived: every plan is looked at again.
    let nudges = match ctx.analysis.changes() {
        Some(rx) => tokio_stream::wrappers::WatchStream::from_changes(rx)
            .map(|_| ())
            .boxed(),
        None => futures::stream::pending().boxed(),
    };
    let (plans, ar) = (w.stores.plans.clone(), plan_ar.clone());
    let plan_controller =
        Controller::for_stream_with(w.plan_stream, w.stores.plans.clone(), plan_ar.clone())
            .reconcile_all_on(nudges)
            .reconcile_on(refs_of(ctx.analysis.plan_updates(), plan_ar))
            .watches_shared_stream(for_plans, move |node: Arc<FleetNode>| {
                interested(&plans, &ar, &node, LABEL_PLAN)
            })
            .shutdown_on_signal()
            .run(
                reconcile_object::<Plans>,
                error_policy("MigrationPlan"),
                ctx.clone(),
            );
    let (canaries, ar) = (w.stores.canaries.clone(), canary_ar.clone());
    let canary_controller = Controller::for_stream_with(
        w.canary_stream,
        w.stores.canaries.clone(),
        canary_ar.clone(),
    )
    .reconcile_on(refs_of(ctx.analysis.canary_updates(), canary_ar))
    .watches_shared_stream(for_canaries, move |node: Arc<FleetNode>| {
        interested(&canaries, &ar, &node, LABEL_CANARY)
    })
    .shutdown_on_signal()
    .run(
        reconcile_object::<Canaries>,
        error_policy("MigrationCanary"),
        ctx,
    );
    // The controllers end on a signal; the watches end with them.
    tokio::select! {
        _ = futures::future::join(drain(plan_controller, "plans"), drain(canary_controller, "migrationcanaries")) => {}
        _ = w.node_watch => {}
        _ = analysis_run => {}
        _ = sweep => {}
    }
}
