//! The in-memory API server against real kube 5 clients: a
//! `kube_runtime::Controller` converging and re-converging, and the API
//! rules kube relies on.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{
    Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Client, CustomResource, CustomResourceExt, Resource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use switchyard_testbed::apiserver::{ApiServer, Config};

/// How long any condition may take before a test fails.
const WAIT: Duration = Duration::from_secs(20);

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "test.switchyard.dev",
    version = "v1",
    kind = "Widget",
    namespaced,
    status = "WidgetStatus"
)]
struct WidgetSpec {
    size: i32,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
struct WidgetStatus {
    observed: i32,
}

async fn server_with(config: Config) -> (ApiServer, Client) {
    let server = ApiServer::start(config).await.expect("server starts");
    let kubeconfig =
        kube::config::Kubeconfig::from_yaml(&server.kubeconfig()).expect("kubeconfig parses");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("config");
    let client = Client::try_from(config).expect("client");
    (server, client)
}

async fn server() -> (ApiServer, Client) {
    server_with(Config::default()).await
}

/// Poll `check` until it returns Some, or fail after [`WAIT`].
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn install_widget_crd(client: &Client) -> Api<Widget> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut crd = Widget::crd();
    // Widget::crd() has no status subresource unless asked; add it.
    crd.spec.versions[0].subresources =
        Some(serde_json::from_value(json!({"status": {}})).expect("subresources"));
    crds.create(&PostParams::default(), &crd)
        .await
        .expect("CRD created");
    let widgets: Api<Widget> = Api::namespaced(client.clone(), "default");
    eventually("the CRD to be served", || {
        let w = widgets.clone();
        async move { w.list(&ListParams::default()).await.ok() }
    })
    .await;
    widgets
}

fn code(e: &kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        other => panic!("expected an API error, got {other}"),
    }
}

struct Ctx {
    client: Client,
    recorder: Recorder,
}

#[derive(Debug, thiserror::Error)]
enum ReconcileError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Finalizer(#[from] Box<kube::runtime::finalizer::Error<kube::Error>>),
}

async fn reconcile(w: Arc<Widget>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let ns = w.namespace().unwrap_or_default();
    let widgets: Api<Widget> = Api::namespaced(ctx.client.clone(), &ns);
    let c = ctx.clone();
    finalizer(
        &widgets,
        "test.switchyard.dev/cleanup",
        w,
        |event| async move {
            match event {
                Finalizer::Apply(w) => {
                    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), &ns);
                    let owner = w.controller_owner_ref(&()).expect("owner ref");
                    let child = ConfigMap {
                        metadata: ObjectMeta {
                            name: Some(format!("widget-{}", w.name_any())),
                            owner_references: Some(vec![owner]),
                            ..ObjectMeta::default()
                        },
                        data: Some([("size".to_owned(), w.spec.size.to_string())].into()),
                        ..ConfigMap::default()
                    };
                    cms.patch(
                        &child.name_any(),
                        &PatchParams::apply("widget-controller").force(),
                        &Patch::Apply(&child),
                    )
                    .await?;
                    let widgets: Api<Widget> = Api::namespaced(c.client.clone(), &ns);
                    widgets
                        .patch_status(
                            &w.name_any(),
                            &PatchParams::default(),
                            &Patch::Merge(json!({"status": {"observed": w.spec.size}})),
                        )
                        .await?;
                    let event = KubeEvent {
                        type_: EventType::Normal,
                        reason: "Reconciled".into(),
                        note: Some(format!("size {}", w.spec.size)),
                        action: "Reconcile".into(),
                        secondary: None,
                    };
                    c.recorder.publish(&event, &w.object_ref(&())).await?;
                    Ok(Action::await_change())
                }
                Finalizer::Cleanup(w) => {
                    let event = KubeEvent {
                        type_: EventType::Normal,
                        reason: "CleanedUp".into(),
                        note: None,
                        action: "Cleanup".into(),
                        secondary: None,
                    };
                    c.recorder.publish(&event, &w.object_ref(&())).await?;
                    Ok(Action::await_change())
                }
            }
        },
    )
    .await
    .map_err(|e| ReconcileError::Finalizer(Box::new(e)))
}

fn error_policy(_w: Arc<Widget>, _e: &ReconcileError, _ctx: Arc<Ctx>) -> Action {
    Action::requeue(Duration::from_millis(100))
}

/// Take a Lease and keep renewing it, as a leader-elected controller does.
async fn hold_lease(client: Client, holder: &str) {
    let leases: Api<Lease> = Api::namespaced(client, "default");
    let now = || MicroTime(jiff::Timestamp::now());
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some("widget-controller".into()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(2),
            renew_time: Some(now()),
            acquire_time: Some(now()),
            ..LeaseSpec::default()
        }),
    };
    leases
        .create(&PostParams::default(), &lease)
        .await
        .expect("lease taken");
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Ok(mut current) = leases.get("widget-controller").await else {
            return;
        };
        if let Some(spec) = current.spec.as_mut() {
            spec.renew_time = Some(now());
        }
        // A stale resourceVersion would mean someone else wrote it: the
        // replace then fails with 409 and the holder would step down.
        if leases
            .replace("widget-controller", &PostParams::default(), &current)
            .await
            .is_err()
        {
            return;
        }
    }
}

#[tokio::test]
async fn a_controller_converges_and_reconverges() {
    let (_server, client) = server().await;
    let widgets = install_widget_crd(&client).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");

    let ctx = Arc::new(Ctx {
        client: client.clone(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "widget-controller".into(),
                instance: None,
            },
        ),
    });
    let controller = Controller::new(widgets.clone(), Default::default())
        .owns(cms.clone(), Default::default())
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {});
    let controller = tokio::spawn(controller);
    let lease = tokio::spawn(hold_lease(client.clone(), "replica-a"));

    widgets
        .create(
            &PostParams::default(),
            &Widget::new("a", WidgetSpec { size: 1 }),
        )
        .await
        .expect("widget created");
    let child_size = |want: &'static str| {
        let cms = cms.clone();
        move || {
            let cms = cms.clone();
            async move {
                cms.get("widget-a").await.ok().filter(|c| {
                    c.data
                        .as_ref()
                        .and_then(|d| d.get("size"))
                        .map(String::as_str)
                        == Some(want)
                })
            }
        }
    };
    eventually("the child ConfigMap", child_size("1")).await;
    let w = eventually("status and finalizer", || {
        let w = widgets.clone();
        async move {
            w.get("a").await.ok().filter(|w| {
                w.status.as_ref().is_some_and(|s| s.observed == 1) && !w.finalizers().is_empty()
            })
        }
    })
    .await;
    assert_eq!(w.finalizers(), ["test.switchyard.dev/cleanup"]);
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), "default");
    eventually("a Reconciled event", || {
        let e = events.clone();
        async move {
            e.list(&ListParams::default()).await.ok().filter(|l| {
                l.items
                    .iter()
                    .any(|e| e.reason.as_deref() == Some("Reconciled"))
            })
        }
    })
    .await;

    // Edit the parent: the child follows.
    widgets
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 2}})),
        )
        .await
        .expect("edit");
    eventually("the child to follow the edit", child_size("2")).await;
    // Edit the child behind the controller's back: it is put right.
    cms.patch("widget-a", &PatchParams::apply("intruder").force(), &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "widget-a"}, "data": {"size": "99"}}))).await.expect("intrude");
    eventually("the child to be repaired", child_size("2")).await;
    // Delete the child: it comes back.
    cms.delete("widget-a", &DeleteParams::default())
        .await
        .expect("delete child");
    eventually("the child to be recreated", child_size("2")).await;

    // The lease is renewed.
    let first = leases
        .get("widget-controller")
        .await
        .expect("lease")
        .spec
        .and_then(|s| s.renew_time);
    eventually("the lease to be renewed", || {
        let l = leases.clone();
        let first = first.clone();
        async move {
            l.get("widget-controller")
                .await
                .ok()
                .filter(|l| l.spec.as_ref().and_then(|s| s.renew_time.clone()) != first)
        }
    })
    .await;

    // Delete the parent: the finalizer runs, then everything goes.
    widgets
        .delete("a", &DeleteParams::default())
        .await
        .expect("delete");
    eventually("the widget to go", || {
        let w = widgets.clone();
        async move {
            matches!(w.get("a").await, Err(kube::Error::Api(s)) if s.code == 404).then_some(())
        }
    })
    .await;
    eventually("the child to be collected", || {
        let c = cms.clone();
        async move {
            matches!(c.get("widget-a").await, Err(kube::Error::Api(s)) if s.code == 404)
                .then_some(())
        }
    })
    .await;
    controller.abort();
    lease.abort();
}

#[tokio::test]
async fn generation_moves_only_with_spec_and_no_op_writes_change_nothing() {
    let (_server, client) = server().await;
    let widgets = install_widget_crd(&client).await;
    let w = widgets
        .create(
            &PostParams::default(),
            &Widget::new("g", WidgetSpec { size: 1 }),
        )
        .await
        .expect("create");
    assert_eq!(w.metadata.generation, Some(1));
    assert!(w.metadata.uid.is_some() && w.metadata.creation_timestamp.is_some());
    let rv = w.resource_version();
    let same = widgets
        .patch(
            "g",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 1}})),
        )
        .await
        .expect("no-op");
    assert_eq!(
        same.resource_version(),
        rv,
        "a write that changes nothing bumps nothing"
    );
    let labelled = widgets
        .patch(
            "g",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
        )
        .await
        .expect("label");
    assert_eq!(
        labelled.metadata.generation,
        Some(1),
        "metadata changes keep the generation"
    );
    let status = widgets
        .patch_status(
            "g",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"observed": 1}})),
        )
        .await
        .expect("status");
    assert_eq!(
        status.metadata.generation,
        Some(1),
        "status changes keep the generation"
    );
    let spec = widgets
        .patch(
            "g",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 2}})),
        )
        .await
        .expect("spec");
    assert_eq!(spec.metadata.generation, Some(2));
}

#[tokio::test]
async fn status_is_only_written_through_the_subresource() {
    let (_server, client) = server().await;
    let widgets = install_widget_crd(&client).await;
    let mut w = Widget::new("s", WidgetSpec { size: 1 });
    w.status = Some(WidgetStatus { observed: 7 });
    let created = widgets
        .create(&PostParams::default(), &w)
        .await
        .expect("create");
    assert_eq!(created.status, None, "create drops status");
    widgets
        .patch_status(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"observed": 3}, "spec": {"size": 9}})),
        )
        .await
        .expect("status");
    let mut got = widgets.get("s").await.expect("get");
    assert_eq!(
        (got.spec.size, got.status.as_ref().map(|s| s.observed)),
        (1, Some(3)),
        "/status changes only status"
    );
    got.status = Some(WidgetStatus { observed: 100 });
    got.spec.size = 5;
    let replaced = widgets
        .replace("s", &PostParams::default(), &got)
        .await
        .expect("replace");
    assert_eq!(
        (replaced.spec.size, replaced.status.map(|s| s.observed)),
        (5, Some(3)),
        "the main endpoint keeps status"
    );
}

#[tokio::test]
async fn stale_writes_conflict_and_duplicates_already_exist() {
    let (_server, client) = server().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("c".into()),
            ..ObjectMeta::default()
        },
        ..ConfigMap::default()
    };
    let v1 = cms
        .create(&PostParams::default(), &cm)
        .await
        .expect("create");
    assert_eq!(
        code(
            &cms.create(&PostParams::default(), &cm)
                .await
                .expect_err("duplicate")
        ),
        409
    );
    let mut changed = v1.clone();
    changed.data = Some([("k".to_owned(), "v".to_owned())].into());
    cms.replace("c", &PostParams::default(), &changed)
        .await
        .expect("first replace");
    assert_eq!(
        code(
            &cms.replace("c", &PostParams::default(), &changed)
                .await
                .expect_err("stale")
        ),
        409
    );
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let mut other = cm.clone();
    other.metadata.name = Some("dry".into());
    cms.create(&dry, &other).await.expect("dry run answers");
    assert_eq!(
        code(&cms.get("dry").await.expect_err("dry run stored nothing")),
        404
    );
}

#[tokio::test]
async fn lists_filter_by_labels_and_fields_and_paginate() {
    let (_server, client) = server().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for i in 0..25 {
        let zone = if i % 2 == 0 { "a" } else { "b" };
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(format!("cm-{i:02}")),
                labels: Some(
                    [
                        ("zone".to_owned(), zone.to_owned()),
                        ("n".to_owned(), i.to_string()),
                    ]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        };
        cms.create(&PostParams::default(), &cm)
            .await
            .expect("create");
    }
    let count = |sel: &str| {
        let cms = cms.clone();
        let sel = sel.to_owned();
        async move {
            cms.list(&ListParams::default().labels(&sel))
                .await
                .expect("list")
                .items
                .len()
        }
    };
    assert_eq!(count("zone=a").await, 13);
    assert_eq!(count("zone!=a").await, 12);
    assert_eq!(count("n in (1,2,3)").await, 3);
    assert_eq!(count("n notin (1,2,3),zone=b").await, 10);
    assert_eq!(count("zone").await, 25);
    assert_eq!(count("!zone").await, 0);
    let by_name = cms
        .list(&ListParams::default().fields("metadata.name=cm-07"))
        .await
        .expect("field selector");
    assert_eq!(by_name.items.len(), 1);
    let all: Api<ConfigMap> = Api::all(client.clone());
    assert_eq!(
        all.list(&ListParams::default().fields("metadata.namespace=default"))
            .await
            .expect("all")
            .items
            .len(),
        25
    );

    let mut names = Vec::new();
    let mut lp = ListParams::default().limit(10);
    loop {
        let page = cms.list(&lp).await.expect("page");
        names.extend(page.items.iter().map(ResourceExt::name_any));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => lp = ListParams::default().limit(10).continue_token(&c),
            None => break,
        }
    }
    assert_eq!(names.len(), 25);
    names.dedup();
    assert_eq!(names.len(), 25, "no item twice across pages");
}

#[tokio::test]
async fn watches_resume_after_a_version_and_expire_when_compacted() {
    let (_server, client) = server_with(Config {
        history: 5,
        ..Config::default()
    })
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let list = cms.list(&ListParams::default()).await.expect("list");
    let rv = list.metadata.resource_version.expect("list rv");
    let mut stream = cms
        .watch(&WatchParams::default(), &rv)
        .await
        .expect("watch")
        .boxed();
    let cm = |n: &str| ConfigMap {
        metadata: ObjectMeta {
            name: Some(n.into()),
            ..ObjectMeta::default()
        },
        ..ConfigMap::default()
    };
    cms.create(&PostParams::default(), &cm("w1"))
        .await
        .expect("create");
    let first = tokio::time::timeout(WAIT, stream.try_next())
        .await
        .expect("in time")
        .expect("ok")
        .expect("event");
    let WatchEvent::Added(added) = first else {
        panic!("expected ADDED, got {first:?}")
    };
    assert_eq!(added.name_any(), "w1");
    // Resume strictly after w1's version: only later events arrive.
    cms.create(&PostParams::default(), &cm("w2"))
        .await
        .expect("create");
    let mut resumed = cms
        .watch(
            &WatchParams::default(),
            &added.resource_version().expect("rv"),
        )
        .await
        .expect("watch")
        .boxed();
    let next = tokio::time::timeout(WAIT, resumed.try_next())
        .await
        .expect("in time")
        .expect("ok")
        .expect("event");
    assert!(
        matches!(&next, WatchEvent::Added(o) if o.name_any() == "w2"),
        "{next:?}"
    );
    // Push the first version out of the 5-event history.
    for i in 0..10 {
        cms.create(&PostParams::default(), &cm(&format!("x{i}")))
            .await
            .expect("create");
    }
    let mut old = cms
        .watch(&WatchParams::default(), &rv)
        .await
        .expect("watch")
        .boxed();
    let gone = tokio::time::timeout(WAIT, old.try_next())
        .await
        .expect("in time")
        .expect("ok")
        .expect("event");
    assert!(
        matches!(&gone, WatchEvent::Error(e) if e.code == 410),
        "{gone:?}"
    );
}

/// A watcher that falls behind is closed without an error, as a real API
/// server closes an unresponsive watcher; watching again from the last
/// version it saw replays the rest from history, with no relist.
#[tokio::test]
async fn a_watcher_that_falls_behind_is_closed_and_resumes_without_a_relist() {
    let (server, client) = server_with(Config {
        watch_buffer: 2,
        ..Config::default()
    })
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let rv = cms
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("list rv");
    let mut stream = cms
        .watch(&WatchParams::default(), &rv)
        .await
        .expect("watch")
        .boxed();
    // 64 KiB each, 400 of them: more than the socket buffers hold, so the
    // server's sender blocks on the unread watch and falls behind.
    const COUNT: usize = 400;
    let data: std::collections::BTreeMap<String, String> =
        [("blob".to_owned(), "x".repeat(64 * 1024))].into();
    for i in 0..COUNT {
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(format!("lag{i}")),
                ..ObjectMeta::default()
            },
            data: Some(data.clone()),
            ..ConfigMap::default()
        };
        cms.create(&PostParams::default(), &cm)
            .await
            .expect("create");
    }
    let lists_before = server.app.lists_of("configmaps");
    let mut seen = std::collections::BTreeSet::new();
    let mut last = rv;
    let mut closes = 0;
    while seen.len() < COUNT {
        match tokio::time::timeout(WAIT, stream.try_next())
            .await
            .expect("an event or the end in time")
            .expect("no transport error")
        {
            Some(WatchEvent::Added(cm)) => {
                last = cm.resource_version().expect("rv");
                seen.insert(cm.name_any());
            }
            Some(other) => panic!("only ADDED events, no 410: got {other:?}"),
            None => {
                closes += 1;
                stream = cms
                    .watch(&WatchParams::default(), &last)
                    .await
                    .expect("watch again")
                    .boxed();
            }
        }
    }
    assert!(closes >= 1, "the unread watch was never closed");
    assert_eq!(seen.len(), COUNT);
    assert_eq!(
        server.app.lists_of("configmaps"),
        lists_before,
        "resuming needed no LIST"
    );
}

#[tokio::test]
async fn streaming_lists_end_initial_events_with_a_bookmark() {
    let (_server, client) = server().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for n in ["a", "b"] {
        cms.create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some(n.into()),
                    ..ObjectMeta::default()
                },
                ..ConfigMap::default()
            },
        )
        .await
        .expect("create");
    }
    let mut stream = cms
        .watch(&WatchParams::streaming_lists(), "0")
        .await
        .expect("watch")
        .boxed();
    let mut added = 0;
    loop {
        let e = tokio::time::timeout(WAIT, stream.try_next())
            .await
            .expect("in time")
            .expect("ok")
            .expect("event");
        match e {
            WatchEvent::Added(_) => added += 1,
            WatchEvent::Bookmark(b) => {
                assert_eq!(
                    b.metadata
                        .annotations
                        .get("k8s.io/initial-events-end")
                        .map(String::as_str),
                    Some("true")
                );
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(added, 2);
    let meta = cms
        .list_metadata(&ListParams::default())
        .await
        .expect("metadata-only list");
    assert_eq!(meta.items.len(), 2);
}

#[tokio::test]
async fn server_side_apply_owns_fields_conflicts_and_forces() {
    let (_server, client) = server().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let apply = |data: serde_json::Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": data});
    cms.patch(
        "ssa",
        &PatchParams::apply("alice"),
        &Patch::Apply(apply(json!({"a": "1", "b": "1"}))),
    )
    .await
    .expect("apply creates");
    let err = cms
        .patch(
            "ssa",
            &PatchParams::apply("bob"),
            &Patch::Apply(apply(json!({"a": "2"}))),
        )
        .await
        .expect_err("conflict");
    assert_eq!(code(&err), 409);
    assert!(err.to_string().contains("alice"), "{err}");
    cms.patch(
        "ssa",
        &PatchParams::apply("bob"),
        &Patch::Apply(apply(json!({"b": "1"}))),
    )
    .await
    .expect("same value: shared, no conflict");
    cms.patch(
        "ssa",
        &PatchParams::apply("bob").force(),
        &Patch::Apply(apply(json!({"a": "2", "b": "1"}))),
    )
    .await
    .expect("forced");
    // alice stops applying b: bob still owns it, so it stays; a is bob's.
    let after = cms
        .patch(
            "ssa",
            &PatchParams::apply("alice"),
            &Patch::Apply(apply(json!({}))),
        )
        .await
        .expect("alice lets go");
    let data = after.data.expect("data");
    assert_eq!(
        (
            data.get("a").map(String::as_str),
            data.get("b").map(String::as_str)
        ),
        (Some("2"), Some("1"))
    );
    // bob stops applying a: nobody owns it, so it goes.
    let after = cms
        .patch(
            "ssa",
            &PatchParams::apply("bob"),
            &Patch::Apply(apply(json!({"b": "1"}))),
        )
        .await
        .expect("bob drops a");
    assert_eq!(after.data.expect("data").get("a"), None);
    let managers: Vec<String> = after
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(managers.contains(&"bob".to_owned()));
    // The URL names the object; an applied configuration may leave the name out.
    let nameless = json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"c": "1"}});
    cms.patch("ssa", &PatchParams::apply("carol"), &Patch::Apply(nameless))
        .await
        .expect("apply without a name");
    let renamed = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "other"}});
    assert_eq!(
        code(
            &cms.patch("ssa", &PatchParams::apply("carol"), &Patch::Apply(renamed))
                .await
                .expect_err("a different name")
        ),
        400
    );
    let no_manager = client.request_text(
        http::Request::patch("/api/v1/namespaces/default/configmaps/ssa")
            .header("content-type", "application/apply-patch+yaml")
            .body(b"{}".to_vec())
            .expect("request"),
    );
    assert!(no_manager.await.is_err(), "apply needs a fieldManager");
}

#[tokio::test]
async fn finalizers_hold_deletion_and_owners_collect_dependents() {
    let (_server, client) = server().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let parent = cms
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some("parent".into()),
                    finalizers: Some(vec!["x/hold".into()]),
                    ..ObjectMeta::default()
                },
                ..ConfigMap::default()
            },
        )
        .await
        .expect("parent");
    let owner =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "parent", "uid": parent.uid()});
    let child: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "child", "ownerReferences": [owner]}}))
            .expect("child");
    cms.create(&PostParams::default(), &child)
        .await
        .expect("child");
    cms.delete("parent", &DeleteParams::default())
        .await
        .expect("delete");
    let held = cms.get("parent").await.expect("still there");
    assert!(held.metadata.deletion_timestamp.is_some());
    assert!(
        cms.get("child").await.is_ok(),
        "dependents wait for the owner to go"
    );
    cms.patch(
        "parent",
        &PatchParams::default(),
        &Patch::Json::<()>(
            serde_json::from_value(json!([{"op": "remove", "path": "/metadata/finalizers"}]))
                .expect("patch"),
        ),
    )
    .await
    .expect("release");
    assert_eq!(code(&cms.get("parent").await.expect_err("gone")), 404);
    assert_eq!(code(&cms.get("child").await.expect_err("collected")), 404);
}

#[tokio::test]
async fn bad_input_gets_the_right_status_and_the_server_keeps_serving() {
    let (_server, client) = server().await;
    let send = |method: &str, path: &str, ct: &str, body: &str| {
        let client = client.clone();
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", ct)
            .body(body.as_bytes().to_vec())
            .expect("request");
        async move {
            match client.request_text(req).await {
                Ok(_) => 200,
                Err(e) => code(&e),
            }
        }
    };
    assert_eq!(
        send(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "application/json",
            "{not json"
        )
        .await,
        400
    );
    assert_eq!(
        send(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "application/yaml",
            "a: [b"
        )
        .await,
        400
    );
    assert_eq!(
        send(
            "GET",
            "/apis/nope.example.com/v1/things",
            "application/json",
            ""
        )
        .await,
        404
    );
    assert_eq!(
        send(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "application/json",
            r#"{"metadata":{"name":"Bad_Name"}}"#
        )
        .await,
        422
    );
    assert_eq!(
        send(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "application/json",
            r#"{"metadata":{"name":"ok"}}"#
        )
        .await,
        200
    );
    let widgets = install_widget_crd(&client).await;
    widgets
        .create(
            &PostParams::default(),
            &Widget::new("w", WidgetSpec { size: 1 }),
        )
        .await
        .expect("create");
    assert_eq!(
        send(
            "PATCH",
            "/apis/test.switchyard.dev/v1/namespaces/default/widgets/w",
            "application/strategic-merge-patch+json",
            "{}"
        )
        .await,
        415,
        "no strategic merge for custom resources"
    );
    assert_eq!(
        send(
            "PATCH",
            "/api/v1/namespaces/default/configmaps/ok",
            "text/plain",
            "{}"
        )
        .await,
        415
    );
    assert_eq!(
        send(
            "GET",
            "/api/v1/namespaces/default/configmaps?labelSelector=a+in+b",
            "application/json",
            ""
        )
        .await,
        400
    );
    assert!(ConfigMapsStillServe(client.clone()).check().await);
}

struct ConfigMapsStillServe(Client);

impl ConfigMapsStillServe {
    async fn check(self) -> bool {
        Api::<ConfigMap>::namespaced(self.0, "default")
            .list(&ListParams::default())
            .await
            .is_ok()
    }
}

#[tokio::test]
async fn merge_patch_preconditions_and_strategic_merge_for_built_ins() {
    let (_server, client) = server().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cm = cms
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some("p".into()),
                    ..ObjectMeta::default()
                },
                ..ConfigMap::default()
            },
        )
        .await
        .expect("create");
    let stale = json!({"metadata": {"resourceVersion": "1"}, "data": {"a": "1"}});
    assert_eq!(
        code(
            &cms.patch("p", &PatchParams::default(), &Patch::Merge(&stale))
                .await
                .expect_err("stale precondition")
        ),
        409
    );
    let fresh = json!({"metadata": {"resourceVersion": cm.resource_version()}, "data": {"a": "1"}});
    cms.patch("p", &PatchParams::default(), &Patch::Merge(&fresh))
        .await
        .expect("fresh precondition");
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), "default");
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": {"name": "agent"},
        "spec": {"containers": [{"name": "agent", "image": "a:1"}, {"name": "sidecar", "image": "s:1"}]}
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("pod");
    let smp = json!({"spec": {"containers": [{"name": "sidecar", "image": "s:2"}]}});
    let patched = pods
        .patch("agent", &PatchParams::default(), &Patch::Strategic(smp))
        .await
        .expect("strategic merge");
    let images: Vec<String> = patched
        .spec
        .expect("spec")
        .containers
        .into_iter()
        .filter_map(|c| c.image)
        .collect();
    assert_eq!(images, ["a:1", "s:2"], "containers merge by name");
}

#[tokio::test]
async fn no_op_writes_emit_no_event_and_watches_bookmark_and_time_out() {
    let (_server, client) = server_with(Config {
        bookmark_interval: Duration::from_millis(200),
        ..Config::default()
    })
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cm = cms
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some("n".into()),
                    ..ObjectMeta::default()
                },
                data: Some([("a".to_owned(), "1".to_owned())].into()),
                ..ConfigMap::default()
            },
        )
        .await
        .expect("create");
    let wp = WatchParams::default().timeout(2);
    let mut stream = cms
        .watch(&wp, &cm.resource_version().expect("rv"))
        .await
        .expect("watch")
        .boxed();
    cms.patch(
        "n",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"a": "1"}})),
    )
    .await
    .expect("no-op");
    cms.patch(
        "n",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"a": "2"}})),
    )
    .await
    .expect("change");
    let mut seen = Vec::new();
    let started = tokio::time::Instant::now();
    // The stream ends by itself when timeoutSeconds passes.
    while let Some(e) = tokio::time::timeout(WAIT, stream.try_next())
        .await
        .expect("the watch ends by its timeout")
        .expect("ok")
    {
        seen.push(e);
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "ended early: {:?}",
        started.elapsed()
    );
    let modified: Vec<&WatchEvent<ConfigMap>> = seen
        .iter()
        .filter(|e| matches!(e, WatchEvent::Modified(_)))
        .collect();
    assert_eq!(modified.len(), 1, "only the real change: {seen:?}");
    assert!(
        seen.iter().any(|e| matches!(e, WatchEvent::Bookmark(_))),
        "periodic bookmarks"
    );
    let mut meta = cms
        .watch_metadata(&WatchParams::default(), "0")
        .await
        .expect("metadata watch")
        .boxed();
    let first = tokio::time::timeout(WAIT, meta.try_next())
        .await
        .expect("in time")
        .expect("ok")
        .expect("event");
    assert!(matches!(first, WatchEvent::Added(m) if m.metadata.name.as_deref() == Some("n")));
}

#[tokio::test]
async fn custom_resources_are_validated_unless_switched_off() {
    let bad = json!({"apiVersion": "test.switchyard.dev/v1", "kind": "Widget", "metadata": {"name": "bad"}, "spec": {"size": "big"}});
    let (_server, client) = server().await;
    let widgets = install_widget_crd(&client).await;
    widgets
        .create(
            &PostParams::default(),
            &Widget::new("x", WidgetSpec { size: 1 }),
        )
        .await
        .expect("a valid widget is accepted");
    let raw = |client: &Client| {
        let req = http::Request::post("/apis/test.switchyard.dev/v1/namespaces/default/widgets")
            .header("content-type", "application/json")
            .body(bad.to_string().into_bytes())
            .expect("request");
        let client = client.clone();
        async move { client.request_text(req).await }
    };
    let e = raw(&client)
        .await
        .expect_err("schema rejects a string size");
    assert_eq!(code(&e), 422);
    assert!(e.to_string().contains("spec.size"), "{e}");
    let (_server2, client2) = server_with(Config {
        validate_custom_resources: false,
        ..Config::default()
    })
    .await;
    install_widget_crd(&client2).await;
    raw(&client2)
        .await
        .expect("accepted when validation is off");
}

/// Names, labels and annotations are checked per kind, as a real API
/// server checks them, and the 422 names the field.
#[tokio::test]
async fn metadata_is_validated_per_kind_as_a_real_api_server_does() {
    let (_server, client) = server().await;
    let refused = |r: Result<serde_json::Value, kube::Error>, field: &str| match r {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 422, "{e:?}");
            assert!(e.message.contains(field), "{field}: {}", e.message);
            e.message
        }
        other => panic!("{field}: expected 422, got {other:?}"),
    };
    let create = |plural: &'static str, ns: Option<&'static str>, body: serde_json::Value| {
        let client = client.clone();
        async move {
            let (group, version) = match plural {
                "clusterroles" => ("rbac.authorization.k8s.io", "v1"),
                _ => ("", "v1"),
            };
            let kind = body["kind"].as_str().unwrap_or_default().to_owned();
            let ar = kube::api::ApiResource {
                group: group.into(),
                version: version.into(),
                api_version: if group.is_empty() {
                    version.into()
                } else {
                    format!("{group}/{version}")
                },
                kind,
                plural: plural.into(),
            };
            let api: Api<kube::api::DynamicObject> = match ns {
                Some(ns) => Api::namespaced_with(client, ns, &ar),
                None => Api::all_with(client, &ar),
            };
            let obj: kube::api::DynamicObject = serde_json::from_value(body).expect("object");
            api.create(&PostParams::default(), &obj)
                .await
                .map(|o| serde_json::to_value(o).expect("json"))
        }
    };
    // A Namespace name is a DNS label: no dots.
    let m = refused(
        create(
            "namespaces",
            None,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a.b"}}),
        )
        .await,
        "metadata.name",
    );
    assert!(m.contains("RFC 1123 label"), "{m}");
    // A Service name starts with a letter.
    let m = refused(
        create(
            "services",
            Some("default"),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "1svc"}}),
        )
        .await,
        "metadata.name",
    );
    assert!(m.contains("DNS-1035"), "{m}");
    // An RBAC name may hold a colon.
    create(
        "clusterroles",
        None,
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "system:switchyard"}, "rules": []}),
    )
    .await
    .expect("a path-segment name");
    // Everything else is a DNS subdomain: empty segments are refused.
    refused(
        create(
            "configmaps",
            Some("default"),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a..b"}}),
        )
        .await,
        "metadata.name",
    );
    // generateName's prefix makes the name: a bad one is blamed.
    refused(
        create(
            "configmaps",
            Some("default"),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "Bad_"}}),
        )
        .await,
        "metadata.generateName",
    );
    // Label values: at most 63 characters.
    refused(
        create("configmaps", Some("default"), json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "l", "labels": {"k": "x".repeat(64)}}})).await,
        "metadata.labels",
    );
    // Annotations: keys qualified, 256 KiB in all.
    refused(
        create("configmaps", Some("default"), json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "annotations": {"bad key!": "v"}}})).await,
        "metadata.annotations",
    );
    let m = refused(
        create("configmaps", Some("default"), json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big", "annotations": {"a": "x".repeat(256 * 1024)}}})).await,
        "metadata.annotations",
    );
    assert!(m.contains("Too long"), "{m}");
    create(
        "configmaps",
        Some("default"),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "fine.name-1", "labels": {"example.com/k": "v"}, "annotations": {"example.com/a": "x".repeat(1024)}}}),
    )
    .await
    .expect("valid metadata is accepted");
}
