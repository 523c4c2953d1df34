//! Watches: newline-delimited JSON events over a chunked 200 response.
//!
//! A watch from resourceVersion R replays the retained events after R,
//! then streams live ones; `""` or `"0"` (or `sendInitialEvents=true`)
//! starts with synthetic ADDED events for what exists, the latter ending
//! them with a BOOKMARK annotated `k8s.io/initial-events-end`. A version
//! older than the retained history gets an in-stream ERROR with a 410
//! Expired Status. A watcher that falls too far behind is closed without
//! one, as a real API server's watch cache closes an unresponsive watcher:
//! the client resumes from the last version it saw.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::Response;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::errors::ApiError;
use super::registry::ResourceType;
use super::selectors::{FieldSelector, LabelSelector};
use super::store::{Event, EventType, with_api_version};
use super::{App, partial};

/// Lines buffered per watcher before the writer waits on the client.
const WATCH_BUFFER: usize = 256;
/// A watch with no timeoutSeconds ends after this, like a real server's
/// 30-60 minute default; clients re-watch.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// How each event's object is rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    /// The whole object.
    Full,
    /// PartialObjectMetadata.
    Metadata,
    /// A one-row Table (server-side printing for `kubectl get -w`).
    Table,
}

struct Filter {
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn matches(&self, obj: &Value) -> bool {
        let ns = obj
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("");
        self.namespace.as_deref().is_none_or(|want| want == ns)
            && self.labels.matches_object(obj)
            && self.fields.matches(obj)
    }

    /// The event this watcher sees, if any: selector transitions become
    /// ADDED or DELETED.
    fn translate(&self, e: &Event) -> Option<EventType> {
        let now = self.matches(&e.object);
        let before = e.old.as_ref().is_some_and(|o| self.matches(o));
        match e.kind {
            EventType::Added => now.then_some(EventType::Added),
            EventType::Deleted => (now || before).then_some(EventType::Deleted),
            EventType::Modified => match (before, now) {
                (true, true) => Some(EventType::Modified),
                (false, true) => Some(EventType::Added),
                (true, false) => Some(EventType::Deleted),
                (false, false) => None,
            },
        }
    }
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut s = json!({"type": kind, "object": object}).to_string();
    s.push('\n');
    Bytes::from(s)
}

pub(super) fn serve(
    app: Arc<App>,
    rt: ResourceType,
    namespace: Option<String>,
    q: &HashMap<String, String>,
    format: Format,
) -> Result<Response, ApiError> {
    let filter = Filter {
        namespace,
        labels: LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))?,
        fields: FieldSelector::parse(q.get("fieldSelector").map_or("", String::as_str))?,
    };
    let requested = q.get("resourceVersion").map_or("", String::as_str);
    let send_initial = q.get("sendInitialEvents").is_some_and(|v| v == "true");
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs);
    let from: Option<u64> = match requested {
        "" | "0" => None,
        v => Some(
            v.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {v:?}")))?,
        ),
    };

    let (tx, rx) = mpsc::channel::<Bytes>(WATCH_BUFFER);
    let render = move |rt: &ResourceType, o: &Arc<Value>| -> Value {
        let o = with_api_version(rt, o.clone());
        match format {
            Format::Full => (*o).clone(),
            Format::Metadata => partial(&o),
            Format::Table => super::table::table(rt, &[&*o], None),
        }
    };

    // Decide what to replay and subscribe, atomically under the lock.
    let mut initial: Vec<Arc<Value>> = Vec::new();
    let (start_rv, backlog, live, expired) = {
        let mut s = app.store.lock();
        if from.is_none() || send_initial {
            let (rv, items) = s.snapshot(&rt);
            initial = items;
            match s.subscribe(&rt, rv) {
                Ok((backlog, live)) => (rv, backlog, Some(live), None),
                Err(e) => (rv, Vec::new(), None, Some(e)),
            }
        } else {
            let from = from.unwrap_or(0);
            match s.subscribe(&rt, from) {
                Ok((backlog, live)) => (from, backlog, Some(live), None),
                Err(e) => (from, Vec::new(), None, Some(e)),
            }
        }
    };
    let bookmark_every = app.config.bookmark_interval;
    let mut cut = app.cut.subscribe();

    tokio::spawn(async move {
        let send = |b: Bytes| {
            let tx = tx.clone();
            async move { tx.send(b).await.is_ok() }
        };
        if let Some(e) = expired {
            let _ = send(line("ERROR", &e.status())).await;
            return;
        }
        for o in &initial {
            if filter.matches(o) && !send(line("ADDED", &render(&rt, o))).await {
                return;
            }
        }
        let bookmark = |rv: u64, end: bool| {
            let mut meta = json!({"resourceVersion": rv.to_string()});
            if end {
                meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            }
            line(
                "BOOKMARK",
                &json!({"apiVersion": rt.api_version(), "kind": rt.kind, "metadata": meta}),
            )
        };
        if send_initial && !send(bookmark(start_rv, true)).await {
            return;
        }
        let mut last = start_rv;
        for e in backlog {
            if e.rv <= last {
                continue;
            }
            last = e.rv;
            if let Some(kind) = filter.translate(&e)
                && !send(line(kind.as_str(), &render(&rt, &e.object))).await
            {
                return;
            }
        }
        let Some(mut live) = live else { return };
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(bookmark_every);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                // An outage ends every watch.
                _ = cut.changed() => return,
                _ = ticker.tick(), if bookmarks => {
                    if !send(bookmark(last, false)).await { return; }
                }
                msg = live.recv() => match msg {
                    Ok(e) => {
                        if e.rv <= last { continue; }
                        last = e.rv;
                        if let Some(kind) = filter.translate(&e)
                            && !send(line(kind.as_str(), &render(&rt, &e.object))).await { return; }
                    }
                    // Fell behind: closed without an error, as a real API
                    // server's watch cache closes an unresponsive watcher.
                    // The client watches again from `last`; the history
                    // replays what it missed, or answers 410 if too old.
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    });

    let body = Body::from_stream(ReceiverStream::new(rx).map(Ok::<_, Infallible>));
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("transfer-encoding", "chunked")
        .body(body)
        .map_err(|e| ApiError::bad_request(e.to_string()))
}
