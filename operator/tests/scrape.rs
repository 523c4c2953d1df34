//! Scraping a metrics endpoint that misbehaves: garbage, NaN, a huge body,
//! a slow answer, an error status. Each is an error naming the problem;
//! a good endpoint parses.

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use switchyard_operator::scrape::{ScrapeError, scrape};

const GOOD: &str = "# TYPE switchyard_node_requests_total counter\n\
switchyard_node_requests_total{outcome=\"ok\",transport=\"iroh\"} 5\n";

#[tokio::test]
async fn a_misbehaving_metrics_endpoint_gives_an_error_with_its_reason() {
    let app = Router::new()
        .route("/good", get(|| async { GOOD }))
        .route(
            "/garbage",
            get(|| async { "<html>definitely not metrics</html>" }),
        )
        .route(
            "/nan",
            get(|| async {
                "# TYPE switchyard_node_requests_total counter\n\
                 switchyard_node_requests_total{outcome=\"error\",transport=\"iroh\"} NaN\n"
            }),
        )
        .route("/huge", get(|| async { vec![b'#'; 8 * 1024 * 1024] }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                GOOD
            }),
        )
        .route(
            "/broken",
            get(|| async { (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let url = |p: &str| format!("http://{addr}{p}");
    let (t, max) = (Duration::from_millis(500), 1024 * 1024);

    let ok = scrape(&url("/good"), t, max)
        .await
        .expect("a good endpoint");
    assert_eq!(ok.transports[1].requests, 5.0);
    let e = scrape(&url("/garbage"), t, max).await.expect_err("garbage");
    assert!(matches!(e, ScrapeError::NotMetrics(_)), "{e}");
    let e = scrape(&url("/nan"), t, max).await.expect_err("NaN");
    assert!(
        matches!(e, ScrapeError::Invalid(_)) && e.to_string().contains("NaN"),
        "{e}"
    );
    let e = scrape(&url("/huge"), t, max).await.expect_err("huge");
    assert_eq!(e, ScrapeError::TooLarge(max));
    let e = scrape(&url("/slow"), t, max).await.expect_err("slow");
    assert_eq!(e, ScrapeError::Timeout(t));
    let e = scrape(&url("/broken"), t, max).await.expect_err("500");
    assert!(matches!(e, ScrapeError::Status(500, _)), "{e:?}");
    let e = scrape("http://127.0.0.1:1/metrics", t, max)
        .await
        .expect_err("nobody there");
    assert!(matches!(e, ScrapeError::Http(_)), "{e}");
    let e = scrape("https://example.invalid/metrics", t, max)
        .await
        .expect_err("https");
    assert!(e.to_string().contains("only http://"), "{e}");
    server.abort();
}
