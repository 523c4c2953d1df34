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

/// A stand-in Prometheus query API: the answer depends on the query text.
async fn fake_prometheus() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use axum::extract::Query;
    use axum::http::{HeaderMap, StatusCode};
    use std::collections::HashMap;
    let app = Router::new().route(
        "/prefix/api/v1/query",
        get(
            |Query(q): Query<HashMap<String, String>>, headers: HeaderMap| async move {
                let ok = |result: &str| {
                    (
                        StatusCode::OK,
                        format!(r#"{{"status":"success","data":{result}}}"#),
                    )
                };
                if headers.get("authorization").and_then(|v| v.to_str().ok())
                    != Some("Bearer prom-token")
                {
                    return (StatusCode::UNAUTHORIZED, "no".to_owned());
                }
                match q.get("query").map(String::as_str).unwrap_or("") {
                    "one" => ok(r#"{"resultType":"vector","result":[{"metric":{},"value":[1.5,"0.25"]}]}"#),
                    "scalar" => ok(r#"{"resultType":"scalar","result":[1.5,"7"]}"#),
                    "none" => ok(r#"{"resultType":"vector","result":[]}"#),
                    "two" => ok(r#"{"resultType":"vector","result":[{"metric":{"a":"1"},"value":[1,"1"]},{"metric":{"a":"2"},"value":[1,"2"]}]}"#),
                    "nan" => ok(r#"{"resultType":"vector","result":[{"metric":{},"value":[1,"NaN"]}]}"#),
                    "range" => ok(r#"{"resultType":"matrix","result":[]}"#),
                    "garbage" => (StatusCode::OK, "<html>not json</html>".into()),
                    "huge" => (StatusCode::OK, "x".repeat(2 * 1024 * 1024)),
                    "slow" => {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        ok(r#"{"resultType":"scalar","result":[1,"1"]}"#)
                    }
                    other => (
                        StatusCode::BAD_REQUEST,
                        format!(
                            r#"{{"status":"error","errorType":"bad_data","error":"parse error in {other}"}}"#
                        ),
                    ),
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, server)
}

#[tokio::test]
async fn promql_answers_that_are_not_one_number_are_errors_with_their_reason() {
    use switchyard_operator::promql::{Prometheus, QueryError};
    let (addr, server) = fake_prometheus().await;
    let base = format!("http://{addr}/prefix/");
    let t = Duration::from_millis(500);
    let p = Prometheus::new(&base, t, Some("Bearer prom-token")).expect("client");
    assert_eq!(p.query("one").await, Ok(0.25));
    assert_eq!(p.query("scalar").await, Ok(7.0));
    assert_eq!(p.query("none").await, Err(QueryError::NoData));
    assert_eq!(p.query("two").await, Err(QueryError::TooMany(2)));
    let e = p.query("two").await.expect_err("two");
    assert!(e.to_string().contains("aggregate it to one"), "{e}");
    assert_eq!(
        p.query("nan").await,
        Err(QueryError::NotFinite("NaN".into()))
    );
    assert!(matches!(
        p.query("range").await,
        Err(QueryError::Malformed(_))
    ));
    assert!(matches!(
        p.query("garbage").await,
        Err(QueryError::Malformed(_))
    ));
    let e = p.query("huge").await.expect_err("huge");
    assert!(e.to_string().contains("larger than"), "{e}");
    let e = p.query("slow").await.expect_err("slow");
    assert!(e.to_string().contains("no answer within"), "{e}");
    let e = p.query("rate(x[").await.expect_err("bad query");
    assert!(
        matches!(&e, QueryError::Refused(m) if m.contains("parse error") && m.contains("bad_data")),
        "{e}"
    );
    // Without the header Prometheus (here: its proxy) says no.
    let anonymous = Prometheus::new(&base, t, None).expect("client");
    let e = anonymous.query("one").await.expect_err("401");
    assert_eq!(e, QueryError::Fetch("HTTP status 401".into()));
    let nobody = Prometheus::new("http://127.0.0.1:1", t, None).expect("client");
    assert!(matches!(
        nobody.query("one").await,
        Err(QueryError::Fetch(_))
    ));
    server.abort();
}
