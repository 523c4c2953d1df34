//! The operator's HTTP port: `/healthz` (the process serves), `/readyz`
//! (this replica can accept an alert: its webhook token is loaded and it
//! has read the alert record; leader or standby alike), `/metrics` (Prometheus text),
//! `POST /webhook/alertmanager` (see [`crate::alerts`]), and the live
//! dashboard (see [`crate::dashboard`]).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::alerts::{self, AlertBook};
use crate::dashboard::serve::Dashboard;
use crate::metrics::Metrics;

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    alerts: Arc<AlertBook>,
}

/// Serve until the listener fails. Binds first, so the caller learns the
/// address (port 0 picks one).
pub async fn bind(
    addr: SocketAddr,
    metrics: Metrics,
    alerts: Arc<AlertBook>,
    dashboard: Option<Arc<Dashboard>>,
) -> std::io::Result<(
    SocketAddr,
    impl std::future::Future<Output = std::io::Result<()>>,
)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(s): State<AppState>| async move {
                if s.alerts.ready() {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "starting")
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(s): State<AppState>| async move {
                (
                    [("content-type", "text/plain; version=0.0.4")],
                    s.metrics.render(),
                )
            }),
        )
        .with_state(AppState {
            metrics,
            alerts: alerts.clone(),
        })
        .merge(
            Router::new()
                .route(
                    "/webhook/alertmanager",
                    axum::routing::post(alerts::webhook),
                )
                .layer(axum::extract::DefaultBodyLimit::max(alerts::MAX_BODY))
                .with_state(alerts),
        );
    let app = match dashboard {
        Some(d) => app.merge(crate::dashboard::serve::router(d)),
        None => app,
    };
    Ok((local, async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    }))
}
