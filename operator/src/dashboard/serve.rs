//! The dashboard over HTTP: the page and its two assets (embedded in the
//! binary; nothing is fetched from elsewhere), `/api/v1/…` JSON, and
//! `/ws`, which sends the whole snapshot on connect and again after every
//! change, at most twice a second.
//!
//! Who may look: clients on 127.0.0.1 (`kubectl port-forward` arrives
//! there) always; others only with the dashboard token, as
//! `Authorization: Bearer <token>` or the cookie `/?token=<token>` sets.
//! Without a token they are refused, with a 403 that says how to get in.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use subtle::ConstantTimeEq;
use switchyard_crds::{FleetNode, MigrationPlan};
use tokio::sync::Semaphore;

use super::{Board, FLEET_EVERY, Snapshot, snapshot};

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/dashboard.js");
const STYLE: &str = include_str!("assets/dashboard.css");

/// The cookie `/?token=` sets.
const COOKIE: &str = "switchyard-dashboard";

/// Open `/ws` connections at most; more are answered 503.
pub const MAX_VIEWERS: usize = 32;

/// The least time between two pushes to one viewer.
const PUSH_EVERY: Duration = Duration::from_millis(500);

/// Who may see the dashboard beyond 127.0.0.1.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// The bearer token; `None`: nobody beyond 127.0.0.1.
    pub token: Option<String>,
}

/// What a request may do.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Serve it.
    Allowed,
    /// Set the cookie and send the browser to `/` (the token came in the
    /// query string, which should not stay in the address bar).
    SetCookie,
    /// Refuse, saying why and what to do.
    Denied(StatusCode, String),
}

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Whether a request from `peer` with `headers` and `query` may see the
/// dashboard.
pub fn check(access: &Access, peer: IpAddr, headers: &HeaderMap, query: Option<&str>) -> Verdict {
    if peer.to_canonical().is_loopback() {
        return Verdict::Allowed;
    }
    let Some(token) = access.token.as_deref() else {
        return Verdict::Denied(
            StatusCode::FORBIDDEN,
            "the dashboard answers only 127.0.0.1: reach it with `kubectl port-forward`, \
             or give the operator a dashboard token (--dashboard-token, chart value \
             dashboard.tokenSecret)\n"
                .into(),
        );
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .next();
    if bearer.or(cookie).is_some_and(|t| same(t.trim(), token)) {
        return Verdict::Allowed;
    }
    let in_query = query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
    });
    match in_query {
        Some(t) if same(&t, token) => Verdict::SetCookie,
        _ => Verdict::Denied(
            StatusCode::UNAUTHORIZED,
            "send Authorization: Bearer <dashboard token>, or open /?token=<dashboard token> once\n"
                .into(),
        ),
    }
}

async fn guard(
    State(d): State<Arc<Dashboard>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    match check(&d.access, peer.ip(), req.headers(), req.uri().query()) {
        Verdict::Allowed => next.run(req).await,
        Verdict::SetCookie => {
            let token = d.access.token.clone().unwrap_or_default();
            (
                StatusCode::SEE_OTHER,
                [
                    (
                        header::SET_COOKIE,
                        format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"),
                    ),
                    (header::LOCATION, req.uri().path().to_owned()),
                ],
            )
                .into_response()
        }
        Verdict::Denied(status, why) => (status, why).into_response(),
    }
}

/// The dashboard's data: the board, and stores of plans and FleetNodes.
pub struct Dashboard {
    board: Arc<Board>,
    plans: Store<DynamicObject>,
    nodes: Store<FleetNode>,
    leader: prometheus::IntGauge,
    access: Access,
    viewers: Arc<Semaphore>,
}

impl Dashboard {
    /// The snapshot now.
    pub fn snapshot(&self) -> Snapshot {
        snapshot(
            &self.board,
            &self.plans.state(),
            &self.nodes.state(),
            self.leader.get() == 1,
            Timestamp::now(),
        )
    }
}

/// Watch plans and FleetNodes (in `namespace`, or all) for the dashboard.
/// Returns it and the future that drives the watches and samples the
/// fleet every [`FLEET_EVERY`]; `leader` is 1 while this replica leads.
pub fn start(
    client: kube::Client,
    namespace: Option<&str>,
    board: Arc<Board>,
    leader: prometheus::IntGauge,
    access: Access,
) -> (Arc<Dashboard>, impl Future<Output = ()> + Send + 'static) {
    let ar = ApiResource::erase::<MigrationPlan>(&());
    let (plan_api, node_api): (Api<DynamicObject>, Api<FleetNode>) = match namespace {
        Some(ns) => (
            Api::namespaced_with(client.clone(), ns, &ar),
            Api::namespaced(client, ns),
        ),
        None => (Api::all_with(client.clone(), &ar), Api::all(client)),
    };
    let plan_writer = reflector::store::Writer::new(ar);
    let plans = plan_writer.as_reader();
    let node_writer = reflector::store::Writer::default();
    let nodes = node_writer.as_reader();
    let d = Arc::new(Dashboard {
        board: board.clone(),
        plans,
        nodes: nodes.clone(),
        leader,
        access,
        viewers: Arc::new(Semaphore::new(MAX_VIEWERS)),
    });
    // What the page never shows is not kept (several managedFields
    // entries per FleetNode, one per writer).
    let plan_events = reflector::reflector(
        plan_writer,
        watcher(plan_api, watcher::Config::default())
            .default_backoff()
            .modify(|p| p.metadata.managed_fields = None),
    )
    .map(|_| ());
    let node_events = reflector::reflector(
        node_writer,
        watcher(node_api, watcher::Config::default())
            .default_backoff()
            .modify(|n| n.metadata.managed_fields = None),
    )
    .map(|_| ());
    let driver = async move {
        let mut events = std::pin::pin!(futures::stream::select(plan_events, node_events));
        let mut tick = tokio::time::interval(FLEET_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                e = events.next() => match e {
                    Some(()) => board.touch(),
                    None => return,
                },
                _ = tick.tick() => board.sample_fleet(&nodes.state(), Timestamp::now()),
            }
        }
    };
    (d, driver)
}

/// The routes: `/`, its assets, `/api/v1/…` and `/ws`, behind the guard.
pub fn router(d: Arc<Dashboard>) -> Router {
    let json = |part: fn(Snapshot) -> serde_json::Value| {
        move |State(d): State<Arc<Dashboard>>| async move { axum::Json(part(d.snapshot())) }
    };
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/dashboard.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/dashboard.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route(
            "/api/v1/snapshot",
            get(json(|s| serde_json::to_value(s).unwrap_or_default())),
        )
        .route(
            "/api/v1/plans",
            get(json(|s| serde_json::to_value(s.plans).unwrap_or_default())),
        )
        .route(
            "/api/v1/fleet",
            get(json(|s| serde_json::to_value(s.fleet).unwrap_or_default())),
        )
        .route(
            "/api/v1/health",
            get(json(|s| serde_json::to_value(s.health).unwrap_or_default())),
        )
        .route(
            "/api/v1/analysis",
            get(json(|s| {
                serde_json::to_value(s.analysis).unwrap_or_default()
            })),
        )
        .route("/ws", get(ws))
        .layer(middleware::from_fn_with_state(d.clone(), guard))
        .with_state(d)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn ws(State(d): State<Arc<Dashboard>>, upgrade: WebSocketUpgrade) -> Response {
    let Ok(permit) = d.viewers.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_VIEWERS} dashboards are open already; close one\n"),
        )
            .into_response();
    };
    upgrade.on_upgrade(move |socket| async move {
        push(d, socket).await;
        drop(permit);
    })
}

/// Send the snapshot now and after every change, until the viewer goes.
async fn push(d: Arc<Dashboard>, mut socket: WebSocket) {
    let mut version = d.board.subscribe();
    loop {
        version.borrow_and_update();
        let Ok(text) = serde_json::to_string(&d.snapshot()) else {
            return;
        };
        if socket.send(Message::Text(text.into())).await.is_err() {
            return;
        }
        // Wait for a change, reading (and ignoring) what the viewer sends
        // until it closes.
        loop {
            tokio::select! {
                changed = version.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    break;
                }
                m = socket.recv() => match m {
                    Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                    Some(Ok(_)) => {}
                },
            }
        }
        tokio::time::sleep(PUSH_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k.clone(), v.parse().expect("header value"));
        }
        h
    }

    const TOKEN: &str = "0123456789abcdef0123";

    #[test]
    fn loopback_needs_no_token_and_others_need_one() {
        let none = Access::default();
        let with = Access {
            token: Some(TOKEN.into()),
        };
        let local: IpAddr = "127.0.0.1".parse().expect("ip");
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().expect("ip");
        let remote: IpAddr = "10.0.0.7".parse().expect("ip");
        let empty = HeaderMap::new();
        assert_eq!(check(&none, local, &empty, None), Verdict::Allowed);
        assert_eq!(check(&none, mapped, &empty, None), Verdict::Allowed);
        match check(&none, remote, &empty, None) {
            Verdict::Denied(StatusCode::FORBIDDEN, why) => {
                assert!(why.contains("kubectl port-forward"), "{why}");
                assert!(why.contains("--dashboard-token"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        // A token does not help when none is configured.
        let bearer = headers(&[(header::AUTHORIZATION, &format!("Bearer {TOKEN}"))]);
        assert!(matches!(
            check(&none, remote, &bearer, None),
            Verdict::Denied(StatusCode::FORBIDDEN, _)
        ));
        assert_eq!(check(&with, remote, &bearer, None), Verdict::Allowed);
        let cookie = headers(&[(header::COOKIE, &format!("a=b; {COOKIE}={TOKEN}"))]);
        assert_eq!(check(&with, remote, &cookie, None), Verdict::Allowed);
        assert_eq!(
            check(&with, remote, &empty, Some(&format!("token={TOKEN}"))),
            Verdict::SetCookie
        );
        let wrong = headers(&[(header::AUTHORIZATION, "Bearer 0123456789abcdef0124")]);
        match check(&with, remote, &wrong, Some("token=nope")) {
            Verdict::Denied(StatusCode::UNAUTHORIZED, why) => {
                assert!(why.contains("Authorization: Bearer"), "{why}")
            }
            other => panic!("{other:?}"),
        }
        // A prefix of the token is not the token.
        let short = headers(&[(header::AUTHORIZATION, "Bearer 0123456789")]);
        assert!(matches!(
            check(&with, remote, &short, None),
            Verdict::Denied(..)
        ));
    }
}
