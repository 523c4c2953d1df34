//! An in-memory Kubernetes API server for tests and the local demo: enough
//! of the real one that kube-rs controllers and kubectl behave as they would
//! against a cluster, for everything Switchyard uses. Plain HTTP on
//! 127.0.0.1. Authentication and RBAC ([`auth`], [`rbac`]) are off unless
//! [`Config::authorization`] is set; then the default kubeconfig's token is
//! an administrator and other identities get tokens of their own.
//!
//! Start one with [`ApiServer::start`]; it stops when the handle drops.

pub mod admission;
pub mod auth;
pub mod errors;
pub mod patch;
pub mod protobuf;
pub mod rbac;
pub mod registry;
pub mod schema;
pub mod selectors;
pub mod store;
pub mod table;
pub mod tls;
mod watch;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use errors::ApiError;
use registry::ResourceType;
use selectors::{FieldSelector, LabelSelector};
use store::{ListQuery, Store, WriteOptions};

/// How the server is configured.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on; port 0 picks a free one.
    pub addr: SocketAddr,
    /// Events kept per resource for watch resumption.
    pub history: usize,
    /// How long a past event stays there (compaction by age).
    pub history_window: Duration,
    /// How long an Event lives after its last write.
    pub event_ttl: Duration,
    /// Live events a watcher may fall behind before the server closes it
    /// (as a real API server closes an unresponsive watcher).
    pub watch_buffer: usize,
    /// Bookmark interval for watches that allow bookmarks.
    pub bookmark_interval: Duration,
    /// Prune, default and validate custom resources against their CRD's
    /// schema and CEL rules, as a real API server does. Off imitates a
    /// cluster whose CRDs predate their validation rules.
    pub validate_custom_resources: bool,
    /// Authenticate every request by its bearer token and authorize it
    /// with RBAC against the stored Roles and bindings, as a real API
    /// server does. Off: every request is an administrator's.
    pub authorization: bool,
    /// Judge every write with the stored ValidatingAdmissionPolicies and
    /// their bindings (CEL), as a real API server does.
    pub admission: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            history: store::DEFAULT_HISTORY,
            history_window: store::DEFAULT_HISTORY_WINDOW,
            event_ttl: store::DEFAULT_EVENT_TTL,
            watch_buffer: store::DEFAULT_WATCH_BUFFER,
            // Real API servers send one about every minute; tests want them sooner.
            bookmark_interval: Duration::from_secs(5),
            validate_custom_resources: true,
            authorization: false,
            admission: false,
        }
    }
}

/// Shared server state.
pub struct App {
    /// The objects.
    pub store: Store,
    config: Config,
    addr: SocketAddr,
    /// Bumped to end every open watch (an outage).
    cut: tokio::sync::watch::Sender<u64>,
    /// LIST requests (not watches) served, per resource plural: what a
    /// benchmark reads to show a client lists once, not periodically.
    lists: std::sync::Mutex<HashMap<String, u64>>,
    /// Bearer tokens and their users.
    pub tokens: auth::Tokens,
    /// HTTPS, when the server authenticates (client-go sends tokens only
    /// over TLS).
    tls: Option<tls::Tls>,
    /// Every request the authorizer refused: (user, message).
    forbidden: std::sync::Mutex<Vec<(String, String)>>,
}

impl App {
    /// Every request the authorizer refused so far: (user, message). A
    /// least-privilege test reads it to find the 403s its code did not
    /// expect.
    pub fn forbidden(&self) -> Vec<(String, String)> {
        self.forbidden.lock().expect("forbidden lock").clone()
    }

    /// LIST requests (not watches) served for resource `plural` so far.
    pub fn lists_of(&self, plural: &str) -> u64 {
        self.lists
            .lock()
            .expect("lists lock")
            .get(plural)
            .copied()
            .unwrap_or(0)
    }
}

/// How often the server compacts its history and expires Events.
const EXPIRE_EVERY: Duration = Duration::from_secs(5);

/// Compact the store on a timer, as etcd and the Event TTL do.
async fn expire_forever(app: &App) {
    let mut tick = tokio::time::interval(EXPIRE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let done = app.store.lock().expire(std::time::Instant::now());
        if done != store::Expired::default() {
            tracing::debug!(?done, "compacted the store");
        }
    }
}

enum Either {
    Tls(tls::TlsListener),
    Plain(tokio::net::TcpListener),
}

/// A running server; dropping it stops the server.
pub struct ApiServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Shared state, for tests that look inside.
    pub app: Arc<App>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl ApiServer {
    /// Bind and serve in the background.
    pub async fn start(config: Config) -> std::io::Result<ApiServer> {
        let listener = tokio::net::TcpListener::bind(config.addr).await?;
        let addr = listener.local_addr()?;
        let tls = if config.authorization {
            Some(tls::Tls::generate().map_err(std::io::Error::other)?)
        } else {
            None
        };
        let app = Arc::new(App {
            store: {
                let store = Store::new(config.history);
                store.set_validate_custom_resources(config.validate_custom_resources);
                store.set_watch_buffer(config.watch_buffer);
                store.set_retention(config.history_window, config.event_ttl);
                store
            },
            config,
            addr,
            cut: tokio::sync::watch::channel(0).0,
            lists: Default::default(),
            tokens: auth::Tokens::default(),
            tls,
            forbidden: Default::default(),
        });
        Ok(Self::serve(listener, app))
    }

    /// An outage: stop answering and drop every connection, watches
    /// included, keeping every object. [`ApiServer::resume`] serves them
    /// again at the same address.
    pub async fn outage(mut self) -> Arc<App> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.app.cut.send_modify(|n| *n += 1);
        if tokio::time::timeout(std::time::Duration::from_secs(2), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
        self.app.clone()
    }

    /// Serve `app` (from [`ApiServer::outage`]) again at its address.
    pub async fn resume(app: Arc<App>) -> std::io::Result<ApiServer> {
        // The old listener's port can take a moment to be free again.
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(app.addr).await {
                Ok(l) => break l,
                Err(e) if tries < 100 => {
                    tries += 1;
                    tracing::debug!(error = %e, "rebinding the API server");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e),
            }
        };
        Ok(Self::serve(listener, app))
    }

    fn serve(listener: tokio::net::TcpListener, app: Arc<App>) -> ApiServer {
        let addr = app.addr;
        let router = Router::new().fallback(dispatch).with_state(app.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let listener = match app.tls.as_ref() {
            Some(t) => Either::Tls(t.listener(listener)),
            None => Either::Plain(listener),
        };
        let expiring = app.clone();
        let task = tokio::spawn(async move {
            let stop = async {
                let _ = rx.await;
            };
            let serving = async {
                match listener {
                    Either::Tls(tls) => axum::serve(tls, router).with_graceful_shutdown(stop).await,
                    Either::Plain(tcp) => {
                        axum::serve(tcp, router).with_graceful_shutdown(stop).await
                    }
                }
            };
            tokio::select! {
                _ = serving => {}
                _ = expire_forever(&expiring) => {}
            }
        });
        ApiServer {
            addr,
            app,
            shutdown: Some(tx),
            task,
        }
    }

    /// `http://127.0.0.1:PORT`, or `https://` when the server
    /// authenticates.
    pub fn url(&self) -> String {
        let scheme = if self.app.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// A kubeconfig pointing at this server, as its administrator.
    pub fn kubeconfig(&self) -> String {
        self.kubeconfig_for(auth::ADMIN_TOKEN, "default")
    }

    /// A kubeconfig that authenticates with `token`, default namespace
    /// `namespace` (and trusts the server's CA when it serves HTTPS).
    pub fn kubeconfig_for(&self, token: &str, namespace: &str) -> String {
        let ca = self
            .app
            .tls
            .as_ref()
            .map(|t| format!("\n    certificate-authority-data: {}", t.ca_data()))
            .unwrap_or_default();
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: switchyard-testbed\n  cluster:\n    server: {}{ca}\ncontexts:\n- name: switchyard-testbed\n  context:\n    cluster: switchyard-testbed\n    user: switchyard-testbed\n    namespace: {namespace}\ncurrent-context: switchyard-testbed\nusers:\n- name: switchyard-testbed\n  user:\n    token: {token}\n",
            self.url()
        )
    }

    /// Write the kubeconfig to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<PathBuf> {
        std::fs::write(path, self.kubeconfig())?;
        Ok(path.to_owned())
    }

    /// Stop serving and wait for the server task.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.abort();
    }
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    (code, [("content-type", "application/json")], v.to_string()).into_response()
}

fn ok(v: &Value) -> Response {
    json_response(StatusCode::OK, v)
}

/// A parsed resource path.
struct Target {
    rt: ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_target(app: &App, segs: &[&str]) -> Result<Target, ApiError> {
    let path = segs.join("/");
    let (group, version, rest) = match segs {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::no_resource(&path)),
    };
    let find = |plural: &str| {
        app.store
            .lock()
            .find(group, version, plural)
            .ok_or_else(|| ApiError::no_resource(&path))
    };
    let (namespace, plural, name, sub) = match rest {
        // namespaces/NAME/status is the Namespace's own subresource.
        ["namespaces", name, sub @ ("status" | "finalize")] if group.is_empty() => {
            (None, "namespaces", Some(*name), Some(*sub))
        }
        ["namespaces", ns, plural] => (Some(*ns), *plural, None, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name), None),
        ["namespaces", ns, plural, name, sub] => (Some(*ns), *plural, Some(*name), Some(*sub)),
        [plural] => (None, *plural, None, None),
        [plural, name] => (None, *plural, Some(*name), None),
        [plural, name, sub] => (None, *plural, Some(*name), Some(*sub)),
        _ => return Err(ApiError::no_resource(&path)),
    };
    let rt = find(plural)?;
    if let Some(s) = sub
        && (s != "status" || !rt.status_subresource)
    {
        return Err(ApiError::no_resource(&path));
    }
    if !rt.namespaced && namespace.is_some() {
        return Err(ApiError::no_resource(&path));
    }
    Ok(Target {
        rt,
        namespace: namespace.map(str::to_owned),
        name: name.map(str::to_owned),
        subresource: sub.map(str::to_owned),
    })
}

async fn dispatch(
    State(app): State<Arc<App>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query: HashMap<String, String> = Query::try_from_uri(&uri).map(|q| q.0).unwrap_or_default();
    let path = uri.path().trim_matches('/').to_owned();
    let segs: Vec<&str> = if path.is_empty() {
        Vec::new()
    } else {
        path.split('/').collect()
    };
    let user = if app.config.authorization {
        let checked = {
            let mut store = app.store.lock();
            auth::authenticate(&app.tokens, &mut store, &headers).and_then(|user| {
                let attrs = auth::attributes(&method, &segs, &query);
                auth::authorize(&mut store, &user, &attrs)
                    .inspect_err(|e| {
                        if e.code == 403 {
                            app.forbidden
                                .lock()
                                .expect("forbidden lock")
                                .push((user.name.clone(), e.message.clone()));
                        }
                    })
                    .map(|()| user)
            })
        };
        match checked {
            Ok(user) => Some(user),
            Err(e) => return e.into_response(),
        }
    } else {
        None
    };
    let result = match (method.as_str(), segs.as_slice()) {
        (
            "POST",
            [
                "apis",
                "authorization.k8s.io",
                "v1",
                "selfsubjectaccessreviews",
            ],
        ) => parse_body(&headers, &body).and_then(|review| {
            let mut store = app.store.lock();
            auth::self_subject_access_review(&mut store, user.as_ref(), &review)
                .map(|r| json_response(StatusCode::CREATED, &r))
        }),
        (
            "POST",
            [
                "api",
                "v1",
                "namespaces",
                ns,
                "serviceaccounts",
                name,
                "token",
            ],
        ) => token_request(&app, ns, name, &headers, &body),
        _ => route(&app, &method, &segs, &query, &headers, &body, user.as_ref()).await,
    };
    match result {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// The TokenRequest API: a new token for an existing ServiceAccount,
/// bound to a Pod when `spec.boundObjectRef` names one.
fn token_request(
    app: &Arc<App>,
    ns: &str,
    name: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let request = if body.is_empty() {
        json!({})
    } else {
        parse_body(headers, body)?
    };
    let sa = app
        .store
        .lock()
        .find("", "v1", "serviceaccounts")
        .ok_or_else(|| ApiError::no_resource("serviceaccounts"))?;
    app.store.lock().get(&sa, Some(ns), name)?;
    let bound = &request["spec"]["boundObjectRef"];
    let pod = (bound["kind"] == "Pod")
        .then(|| bound["name"].as_str())
        .flatten();
    let token = app.tokens.service_account(ns, name, pod);
    let seconds = request["spec"]["expirationSeconds"]
        .as_i64()
        .unwrap_or(3600);
    let expires = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(seconds))
        .unwrap_or(jiff::Timestamp::MAX)
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let mut out = request;
    out["apiVersion"] = json!("authentication.k8s.io/v1");
    out["kind"] = json!("TokenRequest");
    out["metadata"] = json!({"name": name, "namespace": ns});
    out["status"] = json!({"token": token, "expirationTimestamp": expires});
    Ok(json_response(StatusCode::CREATED, &out))
}

async fn route(
    app: &Arc<App>,
    method: &Method,
    segs: &[&str],
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
    user: Option<&rbac::UserInfo>,
) -> Result<Response, ApiError> {
    match segs {
        ["version"] => return Ok(ok(&version())),
        ["healthz"] | ["readyz"] | ["livez"] => return Ok((StatusCode::OK, "ok").into_response()),
        ["api"] => {
            return Ok(ok(
                &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": app.addr.to_string()}]}),
            ));
        }
        ["apis"] => return Ok(ok(&group_list(app))),
        ["api", "v1"] => return Ok(ok(&resource_list(app, "", "v1")?)),
        ["apis", g] => return group(app, g).map(|g| ok(&g)),
        ["apis", g, v] => return Ok(ok(&resource_list(app, g, v)?)),
        ["openapi", "v2"] => return Err(ApiError::no_resource("openapi/v2")),
        ["openapi", "v3"] => return Ok(ok(&openapi_root(app))),
        ["openapi", "v3", rest @ ..] => return openapi_doc(app, rest).map(|d| ok(&d)),
        _ => {}
    }
    let t = parse_target(app, segs)?;
    let dry_run = q.get("dryRun").is_some_and(|v| v == "All");
    let admission = app.config.admission.then(|| store::Admission {
        user: user.cloned().unwrap_or_else(auth::admin),
        subresource: t.subresource.clone(),
    });
    let opts = WriteOptions { dry_run, admission };
    let manager = q
        .get("fieldManager")
        .cloned()
        .unwrap_or_else(|| default_manager(headers));
    let accept = headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let metadata_only = accept.contains("as=PartialObjectMetadata");
    let as_table = accept.contains("as=Table");
    let ns = t.namespace.as_deref();
    let status_only = t.subresource.as_deref() == Some("status");
    match (method.as_str(), &t.name) {
        ("GET", None) if q.get("watch").is_some_and(|w| w == "true" || w == "1") => {
            let format = if as_table {
                watch::Format::Table
            } else if metadata_only {
                watch::Format::Metadata
            } else {
                watch::Format::Full
            };
            watch::serve(app.clone(), t.rt, t.namespace, q, format)
        }
        ("GET", None) => {
            *app.lists
                .lock()
                .expect("lists lock")
                .entry(t.rt.plural.clone())
                .or_default() += 1;
            let lq = ListQuery {
                namespace: t.namespace.clone(),
                labels: LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))?,
                fields: FieldSelector::parse(q.get("fieldSelector").map_or("", String::as_str))?,
                limit: q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(0),
                continue_token: q.get("continue").filter(|c| !c.is_empty()).cloned(),
            };
            let list = app.store.lock().list(&t.rt, &lq)?;
            if as_table {
                let objs: Vec<&Value> = list.items.iter().map(|o| &**o).collect();
                let rv = Some(list.resource_version.to_string());
                let mut tbl = table::table(&t.rt, &objs, rv);
                if let Some(c) = list.continue_token {
                    tbl["metadata"]["continue"] = json!(c);
                }
                return Ok(ok(&tbl));
            }
            // Serialise straight from the stored objects: no deep copies.
            let (api_version, kind) = if metadata_only {
                (
                    "meta.k8s.io/v1".to_owned(),
                    "PartialObjectMetadataList".to_owned(),
                )
            } else {
                (t.rt.api_version(), format!("{}List", t.rt.kind))
            };
            let mut meta = json!({"resourceVersion": list.resource_version.to_string()});
            if let Some(c) = list.continue_token {
                meta["continue"] = json!(c);
                meta["remainingItemCount"] = json!(list.remaining);
            }
            let mut out = Vec::with_capacity(list.items.len() * 512 + 256);
            let head =
                json!({"apiVersion": api_version, "kind": kind, "metadata": meta}).to_string();
            out.extend_from_slice(&head.as_bytes()[..head.len() - 1]);
            out.extend_from_slice(b",\"items\":[");
            for (i, o) in list.items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                let written = if metadata_only {
                    serde_json::to_writer(&mut out, &partial(o))
                } else {
                    serde_json::to_writer(&mut out, &**o)
                };
                written.map_err(|e| ApiError::bad_request(e.to_string()))?;
            }
            out.extend_from_slice(b"]}");
            Ok((StatusCode::OK, [("content-type", "application/json")], out).into_response())
        }
        ("GET", Some(name)) => {
            let obj = app.store.lock().get(&t.rt, ns, name)?;
            if as_table {
                let rv = obj
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                return Ok(ok(&table::table(&t.rt, &[&*obj], rv)));
            }
            Ok(ok(&if metadata_only {
                partial(&obj)
            } else {
                (*obj).clone()
            }))
        }
        ("POST", None) => {
            let mut obj = parse_body(headers, body)?;
            check_type(&t.rt, &obj)?;
            validate_fields(&t.rt, &obj, q)?;
            let mut s = app.store.lock();
            patch::record_update(&t.rt, None, &mut obj, &manager, false);
            let created = s.create(&t.rt, ns, obj, &opts)?;
            Ok(json_response(StatusCode::CREATED, &created))
        }
        ("PUT", Some(name)) => {
            let mut obj = parse_body(headers, body)?;
            check_type(&t.rt, &obj)?;
            validate_fields(&t.rt, &obj, q)?;
            let mut s = app.store.lock();
            let old = s.current(&t.rt, ns, name);
            patch::record_update(&t.rt, old.as_deref(), &mut obj, &manager, status_only);
            let updated = s.update(&t.rt, ns, name, obj, status_only, &opts)?;
            Ok(ok(&updated))
        }
        ("PATCH", Some(name)) => patch_object(app, &t, name, q, headers, body, &manager, &opts),
        ("DELETE", Some(name)) => {
            let orphan = q.get("propagationPolicy").is_some_and(|p| p == "Orphan")
                || serde_json::from_slice::<Value>(body)
                    .ok()
                    .and_then(|b| {
                        b.get("propagationPolicy")
                            .and_then(Value::as_str)
                            .map(|p| p == "Orphan")
                    })
                    .unwrap_or(false);
            let obj = app.store.lock().delete(&t.rt, ns, name, orphan, &opts)?;
            Ok(ok(&obj))
        }
        ("DELETE", None) => {
            let labels = LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))?;
            let mut s = app.store.lock();
            let list = s.list(
                &t.rt,
                &ListQuery {
                    namespace: t.namespace.clone(),
                    labels,
                    ..ListQuery::default()
                },
            )?;
            let mut items = Vec::new();
            for o in list.items {
                let o_ns = o
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                items.push(
                    (*s.delete(&t.rt, o_ns.as_deref(), store::name_of(&o), false, &opts)?).clone(),
                );
            }
            Ok(ok(
                &json!({"apiVersion": t.rt.api_version(), "kind": format!("{}List", t.rt.kind), "metadata": {}, "items": items}),
            ))
        }
        (m, _) => Err(ApiError::method_not_allowed(m)),
    }
}

#[allow(clippy::too_many_arguments)]
fn patch_object(
    app: &Arc<App>,
    t: &Target,
    name: &str,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
    manager: &str,
    opts: &WriteOptions,
) -> Result<Response, ApiError> {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_owned();
    let ns = t.namespace.as_deref();
    let status_only = t.subresource.as_deref() == Some("status");
    let rt = &t.rt;
    if content_type == "application/apply-patch+yaml"
        || content_type == "application/apply-patch+cbor"
    {
        if !q.contains_key("fieldManager") {
            return Err(ApiError::bad_request(
                "fieldManager is required for apply requests",
            ));
        }
        let mut applied: Value = serde_saphyr::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
        if !applied.is_object() {
            return Err(ApiError::bad_request(
                "the applied configuration must be an object",
            ));
        }
        check_type(rt, &applied)?;
        // An applied configuration may leave the name out: the URL names
        // the object. Only a different name is an error.
        if store::name_of(&applied).is_empty()
            && let Some(m) = applied.as_object_mut()
        {
            let meta = m.entry("metadata").or_insert_with(|| json!({}));
            if let Some(meta) = meta.as_object_mut() {
                meta.insert("name".into(), json!(name));
            }
        }
        if store::name_of(&applied) != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                store::name_of(&applied)
            )));
        }
        validate_fields(rt, &applied, q)?;
        let force = q.get("force").is_some_and(|f| f == "true");
        let mut s = app.store.lock();
        let current = s.current(rt, ns, name);
        let result = patch::server_side_apply(
            rt,
            current.as_deref(),
            &applied,
            manager,
            force,
            status_only,
        )?;
        let obj = match current {
            Some(old) => {
                let result = if status_only {
                    let mut m = (*old).clone();
                    m["status"] = result.get("status").cloned().unwrap_or(Value::Null);
                    m["metadata"]["managedFields"] = result
                        .pointer("/metadata/managedFields")
                        .cloned()
                        .unwrap_or(Value::Null);
                    m
                } else {
                    keep_status(rt, &old, result)
                };
                s.write_existing(
                    rt,
                    (ns.unwrap_or("").to_owned(), name.to_owned()),
                    old,
                    result,
                    opts,
                )?
            }
            None if status_only => return Err(ApiError::not_found(&rt.group, &rt.plural, name)),
            None => s.create(rt, ns, result, opts)?,
        };
        return Ok(ok(&obj));
    }
    let patch: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    let mut s = app.store.lock();
    let old = s
        .current(rt, ns, name)
        .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))?;
    let mut new = (*old).clone();
    match content_type.as_str() {
        "application/merge-patch+json" => {
            if let Some(rv) = patch
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                && Some(rv)
                    != old
                        .pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str)
            {
                return Err(ApiError::conflict(
                    &rt.group,
                    &rt.plural,
                    name,
                    "the object has been modified; please apply your changes to the latest version and try again",
                ));
            }
            patch::merge_patch(&mut new, &patch);
        }
        "application/json-patch+json" => patch::json_patch(&mut new, &patch)?,
        "application/strategic-merge-patch+json" if rt.builtin => {
            patch::strategic_merge_patch(&mut new, &patch)
        }
        other => return Err(ApiError::unsupported_media_type(other)),
    }
    if !new.is_object() {
        return Err(ApiError::bad_request("the patch must leave an object"));
    }
    let new = if status_only {
        let mut m = (*old).clone();
        m["status"] = new.get("status").cloned().unwrap_or(Value::Null);
        if m.get("status") == Some(&Value::Null)
            && let Some(o) = m.as_object_mut()
        {
            o.remove("status");
        }
        m
    } else {
        keep_status(rt, &old, new)
    };
    validate_fields(rt, &new, q)?;
    let mut new = new;
    patch::record_update(rt, Some(&old), &mut new, manager, status_only);
    let obj = s.write_existing(
        rt,
        (ns.unwrap_or("").to_owned(), name.to_owned()),
        old,
        new,
        opts,
    )?;
    Ok(ok(&obj))
}

/// The main endpoint of a resource with a status subresource keeps status.
fn keep_status(rt: &ResourceType, old: &Value, mut new: Value) -> Value {
    if rt.status_subresource
        && rt.kind != "CustomResourceDefinition"
        && let Some(o) = new.as_object_mut()
    {
        match old.get("status") {
            Some(s) => o.insert("status".into(), s.clone()),
            None => o.remove("status"),
        };
    }
    new
}

fn default_manager(headers: &HeaderMap) -> String {
    // Kubernetes derives it from the user agent's program name.
    headers
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .and_then(|ua| ua.split('/').next())
        .filter(|s| !s.is_empty())
        .unwrap_or("unknown")
        .to_owned()
}

fn parse_body(headers: &HeaderMap, body: &Bytes) -> Result<Value, ApiError> {
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let v: Value = if ct.contains("yaml") {
        serde_saphyr::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?
    } else if ct.contains("json") || ct.is_empty() {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding JSON: {e}")))?
    } else if ct.starts_with(protobuf::MEDIA_TYPE) {
        protobuf::decode(body)?
    } else {
        return Err(ApiError::unsupported_media_type(ct));
    };
    if !v.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    Ok(v)
}

fn check_type(rt: &ResourceType, obj: &Value) -> Result<(), ApiError> {
    let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    if (!api_version.is_empty() && api_version != rt.api_version())
        || (!kind.is_empty() && kind != rt.kind)
    {
        return Err(ApiError::bad_request(format!(
            "the object in the data ({api_version} {kind}) does not match the resource it was sent to ({} {}): send it to its own resource's URL",
            rt.api_version(),
            rt.kind
        )));
    }
    Ok(())
}

/// fieldValidation=Strict (kubectl's default) rejects fields the schema
/// does not declare; Warn and Ignore accept them.
fn validate_fields(
    rt: &ResourceType,
    obj: &Value,
    q: &HashMap<String, String>,
) -> Result<(), ApiError> {
    let strict = q.get("fieldValidation").is_some_and(|v| v == "Strict");
    let Some(schema) = rt.schema.as_ref().filter(|_| strict) else {
        return Ok(());
    };
    let unknown = switchyard_crds::manifest::unknown_fields(schema, obj);
    if unknown.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect();
    Err(ApiError::bad_request(format!(
        "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
        rt.kind,
        rt.version,
        rt.kind,
        list.join(", ")
    )))
}

fn partial(obj: &Value) -> Value {
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": obj.get("metadata").cloned().unwrap_or(json!({}))})
}

fn version() -> Value {
    json!({
        "major": "1",
        "minor": "37",
        "gitVersion": "v1.37.0-switchyard-testbed",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-11-22T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

fn groups(app: &App) -> Vec<(String, Vec<String>)> {
    let s = app.store.lock();
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for t in s.types().filter(|t| !t.group.is_empty()) {
        match out.iter_mut().find(|(g, _)| *g == t.group) {
            Some((_, vs)) if !vs.contains(&t.version) => vs.push(t.version.clone()),
            Some(_) => {}
            None => out.push((t.group.clone(), vec![t.version.clone()])),
        }
    }
    out
}

fn group_json(name: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    json!({"name": name, "versions": vs, "preferredVersion": vs.first().cloned().unwrap_or(json!({}))})
}

fn group_list(app: &App) -> Value {
    let groups: Vec<Value> = groups(app)
        .iter()
        .map(|(g, vs)| group_json(g, vs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn group(app: &App, name: &str) -> Result<Value, ApiError> {
    let g = groups(app)
        .into_iter()
        .find(|(g, _)| g == name)
        .ok_or_else(|| ApiError::no_resource(&format!("apis/{name}")))?;
    let mut v = group_json(&g.0, &g.1);
    v["kind"] = json!("APIGroup");
    v["apiVersion"] = json!("v1");
    Ok(v)
}

fn resource_list(app: &App, group: &str, version: &str) -> Result<Value, ApiError> {
    let s = app.store.lock();
    let resources: Vec<Value> = s
        .types()
        .filter(|t| t.group == group && t.version == version)
        .flat_map(ResourceType::discovery)
        .collect();
    if resources.is_empty() {
        return Err(ApiError::no_resource(&format!("{group}/{version}")));
    }
    let gv = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Ok(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

fn gv_path(t: &ResourceType) -> String {
    if t.group.is_empty() {
        format!("api/{}", t.version)
    } else {
        format!("apis/{}/{}", t.group, t.version)
    }
}

fn openapi_root(app: &App) -> Value {
    let s = app.store.lock();
    let mut paths = serde_json::Map::new();
    for t in s.types() {
        let p = gv_path(t);
        // The hash changes when the group-version's kinds change.
        let hash = s.resource_version();
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={hash:016X}")}),
        );
    }
    json!({"paths": paths})
}

fn openapi_doc(app: &App, rest: &[&str]) -> Result<Value, ApiError> {
    let want = rest.join("/");
    let s = app.store.lock();
    let types: Vec<&ResourceType> = s.types().filter(|t| gv_path(t) == want).collect();
    if types.is_empty() {
        return Err(ApiError::no_resource(&format!("openapi/v3/{want}")));
    }
    let mut schemas = serde_json::Map::new();
    let mut paths = serde_json::Map::new();
    let field_validation = json!({"name": "fieldValidation", "in": "query", "description": "Strict, Warn or Ignore unknown fields", "schema": {"type": "string", "uniqueItems": true}});
    for t in types {
        let group_rev: String = t.group.split('.').rev().collect::<Vec<_>>().join(".");
        let schema_name = format!(
            "{}.{}.{}",
            if group_rev.is_empty() {
                "io.k8s.api.core".to_owned()
            } else {
                group_rev
            },
            t.version,
            t.kind
        );
        let mut schema = t.schema.as_deref().cloned().unwrap_or_else(
            || json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
        );
        schema["x-kubernetes-group-version-kind"] =
            json!([{"group": t.group, "version": t.version, "kind": t.kind}]);
        schemas.insert(schema_name.clone(), schema);
        let reference = json!({"content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema_name}")}}}});
        let write = json!({"parameters": [field_validation], "requestBody": reference, "responses": {"200": reference}, "x-kubernetes-group-version-kind": {"group": t.group, "version": t.version, "kind": t.kind}});
        let base = if t.namespaced {
            format!("/{}/namespaces/{{namespace}}/{}", gv_path(t), t.plural)
        } else {
            format!("/{}/{}", gv_path(t), t.plural)
        };
        paths.insert(
            base.clone(),
            json!({"post": write, "get": {"responses": {"200": {}}}}),
        );
        paths.insert(format!("{base}/{{name}}"), json!({"put": write, "patch": write, "get": {"responses": {"200": reference}}, "delete": {"responses": {"200": {}}}}));
    }
    Ok(
        json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.37.0"}, "paths": paths, "components": {"schemas": schemas}}),
    )
}

/// Serve until the process is stopped: the `apiserver` subcommand.
pub async fn serve_forever(config: Config, kubeconfig_path: &Path) -> anyhow::Result<()> {
    let server = ApiServer::start(config).await?;
    server.write_kubeconfig(kubeconfig_path)?;
    println!(
        "serving on {}; kubeconfig written to {}",
        server.url(),
        kubeconfig_path.display()
    );
    tokio::signal::ctrl_c().await?;
    server.stop().await;
    Ok(())
}
