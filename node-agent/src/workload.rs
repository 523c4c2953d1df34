//! The workload API: how the application container beside the agent uses
//! the fleet. HTTP/JSON on 127.0.0.1 (and/or a Unix socket in a shared
//! volume), described by `docs/workload-api.yaml` (OpenAPI 3):
//!
//! | call | what |
//! |---|---|
//! | `GET /v1/peers` | the peers reachable now |
//! | `PUT /v1/records/{key}` | put the body under `key` in the DHT |
//! | `GET /v1/records/{key}` | the value under `key` |
//! | `GET /v1/closest/{key}?count=n` | the peers closest to `key` |
//! | `POST /v1/send?peer=p&protocol=x` | send the body to `p` on protocol `x`; the answer |
//! | `GET /v1/inbound?protocol=x&wait=s` | the next request to this node on `x` (long poll; 204 when none came) |
//! | `POST /v1/inbound/{id}` | answer it with the body |
//!
//! Values and message bodies are the raw request and response bodies; the
//! rest is JSON, errors as `{"error": "..."}` with a 4xx for bad input and
//! a 5xx when the fleet failed. Bodies are bounded. Inbound requests wait
//! in a bounded queue per protocol: past it, the sender is told the node is
//! busy; one nobody answers in time is refused with that reason, which
//! the sender sees.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Bytes as Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use futures::future::BoxFuture;
use libp2p::PeerId;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::NetworkMode;
use crate::app;
use crate::bridge::{BridgeError, Node};
use crate::dht::{Dht, DhtError, proto::Contact};
use crate::stack::{Handler, Transport};
use crate::wire::Envelope;

/// Workload API settings.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// TCP address to serve on; defaults to 127.0.0.1:9091. Never the pod
    /// IP unless set so.
    pub listen: Option<SocketAddr>,
    /// Unix socket to serve on (in a volume shared with the workload);
    /// defaults to none.
    pub socket: Option<PathBuf>,
    /// Largest request body, in bytes; defaults to 1 MiB.
    pub max_body: usize,
    /// Inbound requests per protocol waiting for or being answered by the
    /// workload; past it, senders are told this node is busy. Defaults to
    /// 64.
    pub max_pending: usize,
    /// How long an inbound request waits for the workload's answer;
    /// defaults to 5 s (under the bridge's 10 s request timeout, so the
    /// sender sees why).
    pub answer_timeout: Duration,
    /// Protocols the workload may serve at once; defaults to 16.
    pub max_protocols: usize,
    /// Longest `wait` of a long poll; defaults to 30 s.
    pub max_wait: Duration,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9091))),
            socket: None,
            max_body: 1024 * 1024,
            max_pending: 64,
            answer_timeout: Duration::from_secs(5),
            max_protocols: 16,
            max_wait: Duration::from_secs(30),
        }
    }
}

/// One inbound request for the workload.
struct Pending {
    from: PeerId,
    transport: Transport,
    body: Bytes,
    reply: oneshot::Sender<Bytes>,
}

/// One protocol's queue.
struct Queue {
    tx: mpsc::Sender<Pending>,
    rx: tokio::sync::Mutex<mpsc::Receiver<Pending>>,
    /// Requests queued or with the workload.
    pending: Arc<Semaphore>,
}

/// Requests from peers to the workload's protocols.
pub struct Inbound {
    config: WorkloadConfig,
    protocols: Mutex<HashMap<String, Arc<Queue>>>,
    /// Requests the workload took and has not answered, by id.
    taken: Mutex<HashMap<u64, oneshot::Sender<Bytes>>>,
    next_id: AtomicU64,
    /// When the workload last called the API.
    last_call: Mutex<Option<Instant>>,
}

/// A workload that called the API this recently is attached.
pub const ATTACHED_FOR: Duration = Duration::from_secs(60);

impl Inbound {
    /// No protocols served yet.
    pub fn new(config: WorkloadConfig) -> Arc<Self> {
        Arc::new(Inbound {
            config,
            protocols: Mutex::new(HashMap::new()),
            taken: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            last_call: Mutex::new(None),
        })
    }

    /// The workload called the API.
    fn touch(&self) {
        *self.last_call.lock().expect("last call lock") = Some(Instant::now());
    }

    /// Whether a workload is attached: it called the API within
    /// [`ATTACHED_FOR`] of `now`.
    pub fn active(&self, now: Instant) -> bool {
        self.last_call
            .lock()
            .expect("last call lock")
            .is_some_and(|t| now.saturating_duration_since(t) < ATTACHED_FOR)
    }

    /// Serve `protocol` (the workload asked for its requests).
    fn register(&self, protocol: &str) -> Result<Arc<Queue>, String> {
        app::check_name(protocol)?;
        let mut p = self.protocols.lock().expect("protocols lock");
        if let Some(q) = p.get(protocol) {
            return Ok(q.clone());
        }
        if p.len() >= self.config.max_protocols {
            return Err(format!(
                "the workload serves {} protocols already, the limit",
                p.len()
            ));
        }
        let bound = self.config.max_pending.max(1);
        let (tx, rx) = mpsc::channel(bound);
        let q = Arc::new(Queue {
            tx,
            rx: tokio::sync::Mutex::new(rx),
            pending: Arc::new(Semaphore::new(bound)),
        });
        p.insert(protocol.to_owned(), q.clone());
        Ok(q)
    }

    /// Hand a peer's request to the workload and wait for its answer; the
    /// refusal reason the sender sees otherwise.
    pub async fn deliver(
        &self,
        protocol: &str,
        from: PeerId,
        transport: Transport,
        body: Bytes,
    ) -> Result<Bytes, String> {
        let queue = self
            .protocols
            .lock()
            .expect("protocols lock")
            .get(protocol)
            .cloned()
            .ok_or_else(|| format!("no workload on this node serves protocol {protocol:?}"))?;
        let Ok(_permit) = queue.pending.clone().try_acquire_owned() else {
            return Err(format!(
                "busy: {} requests on {protocol:?} already wait for this node's workload",
                self.config.max_pending
            ));
        };
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            from,
            transport,
            body,
            reply,
        };
        if queue.tx.try_send(pending).is_err() {
            // Full of requests whose senders gave up: the workload is not
            // polling (a poll drains them).
            return Err(format!(
                "busy: this node's workload is not taking requests on {protocol:?}"
            ));
        }
        let wait = self.config.answer_timeout;
        match tokio::time::timeout(wait, answer).await {
            Ok(Ok(body)) => Ok(body),
            Ok(Err(_)) => Err(format!("the workload dropped the request on {protocol:?}")),
            Err(_) => Err(format!(
                "the workload did not answer on {protocol:?} within {wait:?}"
            )),
        }
    }

    /// The next request on `protocol` within `wait`: its id, sender,
    /// transport and body.
    async fn next(
        &self,
        protocol: &str,
        wait: Duration,
    ) -> Result<Option<(u64, PeerId, Transport, Bytes)>, String> {
        let queue = self.register(protocol)?;
        let deadline = tokio::time::Instant::now() + wait;
        let mut rx = match tokio::time::timeout_at(deadline, queue.rx.lock()).await {
            Ok(rx) => rx,
            Err(_) => return Ok(None),
        };
        loop {
            let Ok(Some(p)) = tokio::time::timeout_at(deadline, rx.recv()).await else {
                return Ok(None);
            };
            // Its sender gave up already: skip it.
            if p.reply.is_closed() {
                continue;
            }
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let mut taken = self.taken.lock().expect("taken lock");
            taken.retain(|_, r| !r.is_closed());
            taken.insert(id, p.reply);
            return Ok(Some((id, p.from, p.transport, p.body)));
        }
    }

    /// Answer request `id`; whether it was still waiting.
    fn answer(&self, id: u64, body: Bytes) -> bool {
        let reply = self.taken.lock().expect("taken lock").remove(&id);
        reply.is_some_and(|r| r.send(body).is_ok())
    }
}

/// The agent's request handler: the probe, the DHT and the workload's
/// protocols.
pub struct AppHandler {
    dht: OnceLock<Arc<Dht>>,
    inbound: Arc<Inbound>,
}

impl AppHandler {
    /// A handler delivering to `inbound`; the DHT is attached once the
    /// node runs ([`AppHandler::attach`]).
    pub fn new(inbound: Arc<Inbound>) -> Arc<Self> {
        Arc::new(AppHandler {
            dht: OnceLock::new(),
            inbound,
        })
    }

    /// Serve DHT requests with `dht`.
    pub fn attach(&self, dht: Arc<Dht>) {
        let _ = self.dht.set(dht);
    }
}

impl Handler for AppHandler {
    fn handle(
        &self,
        from: PeerId,
        transport: Transport,
        request: Envelope,
    ) -> BoxFuture<'static, Result<Bytes, String>> {
        let (protocol, body) = match app::decode(&request.payload) {
            Ok((p, b)) => (p.to_owned(), b),
            Err(why) => return Box::pin(async move { Err(why) }),
        };
        if protocol == app::PROBE {
            return Box::pin(async move { Ok(body) });
        }
        if protocol == crate::dht::proto::PROTOCOL {
            let answer = match self.dht.get() {
                Some(dht) => dht.handle(from, &body, Instant::now()).map(Bytes::from),
                None => Err("the DHT is starting".to_owned()),
            };
            return Box::pin(async move { answer });
        }
        let inbound = self.inbound.clone();
        Box::pin(async move { inbound.deliver(&protocol, from, transport, body).await })
    }

    fn mode(&self) -> NetworkMode {
        NetworkMode::LibP2pOnly
    }
}

/// What the API serves from.
#[derive(Clone)]
pub struct Api {
    /// The node.
    pub node: Arc<Node>,
    /// Its DHT.
    pub dht: Arc<Dht>,
    /// Its inbound queues.
    pub inbound: Arc<Inbound>,
}

/// An API error: a status and a message saying what to change.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

impl From<DhtError> for ApiError {
    fn from(e: DhtError) -> Self {
        let status = match e {
            DhtError::Record(_) => StatusCode::PAYLOAD_TOO_LARGE,
            DhtError::NoPeers | DhtError::NotStored(_) => StatusCode::SERVICE_UNAVAILABLE,
            DhtError::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
            DhtError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        };
        ApiError(status, e.to_string())
    }
}

/// The API's routes.
pub fn router(api: Api, max_body: usize) -> Router {
    Router::new()
        .route("/v1/peers", get(peers))
        .route("/v1/records/{key}", put(put_record).get(get_record))
        .route("/v1/closest/{key}", get(closest))
        .route("/v1/send", post(send))
        .route("/v1/inbound", get(next_inbound))
        .route("/v1/inbound/{id}", post(answer_inbound))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(api)
}

fn contact_json(c: &Contact) -> serde_json::Value {
    let peer = PeerId::from_bytes(&c.peer)
        .map(|p| p.to_string())
        .unwrap_or_default();
    json!({ "peer": peer, "libp2p": c.libp2p, "iroh": c.iroh })
}

async fn peers(State(api): State<Api>) -> Json<serde_json::Value> {
    api.inbound.touch();
    let peers: Vec<_> = api
        .dht
        .peers()
        .iter()
        .map(|a| contact_json(&Contact::of(a)))
        .collect();
    Json(json!({ "self": api.node.identity().peer_id().to_string(), "peers": peers }))
}

async fn put_record(
    State(api): State<Api>,
    Path(key): Path<String>,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    api.inbound.touch();
    let stored = api.dht.put(Bytes::from(key), body).await?;
    Ok(Json(json!({ "stored": stored })))
}

async fn get_record(State(api): State<Api>, Path(key): Path<String>) -> Result<Body, ApiError> {
    api.inbound.touch();
    match api.dht.get(key.as_bytes()).await? {
        Some(v) => Ok(v),
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no record under {key:?}"),
        )),
    }
}

#[derive(Deserialize)]
struct CountQuery {
    count: Option<usize>,
}

async fn closest(
    State(api): State<Api>,
    Path(key): Path<String>,
    Query(q): Query<CountQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    api.inbound.touch();
    let k = api.dht.config().k;
    let count = q.count.unwrap_or(k);
    if count == 0 || count > k {
        return Err(bad(format!("count must be 1 to {k}; got {count}")));
    }
    let found = api.dht.closest(key.as_bytes()).await?;
    let peers: Vec<_> = found
        .iter()
        .take(count)
        .map(|a| contact_json(&Contact::of(a)))
        .collect();
    Ok(Json(json!({ "key": key, "peers": peers })))
}

#[derive(Deserialize)]
struct SendQuery {
    peer: Option<String>,
    protocol: Option<String>,
}

async fn send(
    State(api): State<Api>,
    Query(q): Query<SendQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    api.inbound.touch();
    let peer = q
        .peer
        .ok_or_else(|| bad("say which peer: ?peer=<peer id>"))?;
    let peer: PeerId = peer
        .parse()
        .map_err(|e| bad(format!("peer {peer:?} is not a peer id: {e}")))?;
    let protocol = q
        .protocol
        .ok_or_else(|| bad("say which protocol: ?protocol=<name>"))?;
    app::check_name(&protocol).map_err(bad)?;
    let addr = api.dht.peer(&peer).ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            format!("{peer} is not a peer this node reaches now (see GET /v1/peers)"),
        )
    })?;
    match app::request(&api.node, &addr, &protocol, &body).await {
        Ok((answer, t)) => {
            let mut headers = HeaderMap::new();
            headers.insert(
                "x-switchyard-transport",
                HeaderValue::from_static(t.as_str()),
            );
            Ok((headers, answer).into_response())
        }
        Err(BridgeError::Refused { reason, .. }) => Err(ApiError(
            StatusCode::BAD_GATEWAY,
            format!("{peer} refused: {reason}"),
        )),
        Err(e) => Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
    }
}

#[derive(Deserialize)]
struct InboundQuery {
    protocol: Option<String>,
    /// Seconds to wait.
    wait: Option<f64>,
}

async fn next_inbound(
    State(api): State<Api>,
    Query(q): Query<InboundQuery>,
) -> Result<Response, ApiError> {
    api.inbound.touch();
    let protocol = q
        .protocol
        .ok_or_else(|| bad("say which protocol: ?protocol=<name>"))?;
    let max = api.inbound.config.max_wait;
    let wait = match q.wait {
        None => max,
        Some(w) if w.is_finite() && w >= 0.0 && w <= max.as_secs_f64() => {
            Duration::from_secs_f64(w)
        }
        Some(w) => {
            return Err(bad(format!(
                "wait must be 0 to {} seconds; got {w}",
                max.as_secs_f64()
            )));
        }
    };
    match api.inbound.next(&protocol, wait).await.map_err(bad)? {
        None => Ok(StatusCode::NO_CONTENT.into_response()),
        Some((id, from, t, body)) => {
            let mut headers = HeaderMap::new();
            let set = |h: &mut HeaderMap, k: &'static str, v: String| {
                if let Ok(v) = HeaderValue::from_str(&v) {
                    h.insert(k, v);
                }
            };
            set(&mut headers, "x-switchyard-request", id.to_string());
            set(&mut headers, "x-switchyard-from", from.to_string());
            set(
                &mut headers,
                "x-switchyard-transport",
                t.as_str().to_owned(),
            );
            Ok((headers, body).into_response())
        }
    }
}

async fn answer_inbound(
    State(api): State<Api>,
    Path(id): Path<String>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    api.inbound.touch();
    let id: u64 = id
        .parse()
        .map_err(|_| bad(format!("request id {id:?} is not a number")))?;
    if api.inbound.answer(id, body) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("request {id} is not waiting: it was answered, or its sender gave up"),
        ))
    }
}

/// Serve the API on the configured TCP address and/or Unix socket; the
/// TCP address bound.
pub async fn serve(
    api: Api,
    config: &WorkloadConfig,
) -> anyhow::Result<(Option<SocketAddr>, Vec<BoxFuture<'static, ()>>)> {
    use anyhow::Context;
    let app = router(api, config.max_body);
    let mut servers: Vec<BoxFuture<'static, ()>> = Vec::new();
    let mut bound = None;
    if let Some(addr) = config.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the workload API to {addr}"))?;
        bound = Some(listener.local_addr()?);
        let app = app.clone();
        servers.push(Box::pin(async move {
            let _ = axum::serve(listener, app).await;
        }));
    }
    if let Some(path) = &config.socket {
        // A socket left by an earlier run would refuse the bind.
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path)
            .with_context(|| format!("binding the workload API to {}", path.display()))?;
        servers.push(Box::pin(async move {
            let _ = axum::serve(listener, app).await;
        }));
    }
    Ok((bound, servers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workload_is_attached_while_it_used_the_api_in_the_last_minute() {
        let inbound = Inbound::new(WorkloadConfig::default());
        let now = Instant::now();
        assert!(!inbound.active(now), "no call yet: probes run");
        inbound.touch();
        let touched = Instant::now();
        assert!(inbound.active(touched), "probes pause");
        assert!(inbound.active(touched + ATTACHED_FOR - Duration::from_millis(1)));
        assert!(
            !inbound.active(touched + ATTACHED_FOR),
            "a minute of silence: probes resume"
        );
    }

    #[tokio::test]
    async fn inbound_requests_are_bounded_and_an_unanswered_one_is_refused_with_why() {
        let inbound = Inbound::new(WorkloadConfig {
            max_pending: 1,
            answer_timeout: Duration::from_millis(50),
            ..WorkloadConfig::default()
        });
        let peer = PeerId::random();
        let t = Transport::LibP2p;
        let err = inbound.deliver("kv/1", peer, t, Bytes::new()).await;
        assert!(
            err.expect_err("unserved")
                .contains("no workload on this node serves")
        );
        inbound.register("kv/1").expect("registered");
        assert!(inbound.register("/switchyard/kad/1").is_err(), "reserved");
        // One waits (unanswered); a second at once is refused as busy.
        let first = inbound.deliver("kv/1", peer, t, Bytes::from_static(b"a"));
        let second = inbound.deliver("kv/1", peer, t, Bytes::from_static(b"b"));
        let (first, second) = tokio::join!(first, second);
        let errors = [first.expect_err("unanswered"), second.expect_err("busy")];
        assert!(
            errors.iter().any(|e| e.contains("did not answer")),
            "{errors:?}"
        );
        assert!(errors.iter().any(|e| e.starts_with("busy")), "{errors:?}");
        // A request the workload takes and answers reaches its sender.
        let answered = {
            let inbound = inbound.clone();
            tokio::spawn(async move {
                inbound
                    .deliver("kv/1", peer, t, Bytes::from_static(b"q"))
                    .await
            })
        };
        let (id, from, _, body) = inbound
            .next("kv/1", Duration::from_secs(5))
            .await
            .expect("served")
            .expect("a request");
        assert_eq!((from, &body[..]), (peer, &b"q"[..]));
        assert!(inbound.answer(id, Bytes::from_static(b"r")));
        assert_eq!(answered.await.expect("task"), Ok(Bytes::from_static(b"r")));
        assert!(!inbound.answer(id, Bytes::new()), "answered once");
    }
}
