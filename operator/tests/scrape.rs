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

/// PromQL as users run Prometheus: a real Prometheus serving https (its
/// `--web.config.file`, with a certificate made here) behind basic auth,
/// and a header-checking proxy in front of it standing in for a
/// multi-tenant Mimir/Cortex/Thanos (`X-Scope-OrgID`). The operator's
/// client trusts the test CA, sends its credentials and headers, and a
/// plan's own `analysis.prometheus` gets the plan's headers but never the
/// operator's credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promql_reaches_a_real_prometheus_over_tls_with_basic_auth_and_tenant_headers() {
    use std::sync::{Arc, Mutex};
    use switchyard_operator::promql::{Access, Prometheus, QueryError};
    use switchyard_testbed::apiserver::tls::Chain;
    let chain = Chain::generate().expect("certificates");
    // bcrypt of "prom-s3cret" (cost 4: only a test fixture).
    let hash = "$2b$04$NFL8ZXQ7x6raxtsnFZdwjeeSVDwtJGxDCcazLpDluP..I/Z.JkhVO";
    let server = switchyard_testbed::prometheus::Prometheus::start(
        "tls",
        &[
            ("cert.pem", chain.cert_pem.as_bytes()),
            ("key.pem", chain.key_pem.as_bytes()),
        ],
        Some(&format!(
            "tls_server_config:\n  cert_file: {{dir}}/cert.pem\n  key_file: {{dir}}/key.pem\nbasic_auth_users:\n  switchyard: '{hash}'\n"
        )),
        true,
    );
    let base = server.url.clone();
    let t = Duration::from_secs(5);
    let trusted = |basic: Option<(&str, &str)>| Access {
        basic: basic.map(|(u, p)| (u.to_owned(), p.to_owned())),
        ca_pem: Some(chain.ca_pem.clone().into_bytes()),
        ..Access::default()
    };
    let p = Prometheus::with_access(&base, t, &trusted(Some(("switchyard", "prom-s3cret"))))
        .expect("client");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match p.query("vector(0.25)").await {
            Ok(v) => {
                assert_eq!(v, 0.25);
                break;
            }
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "Prometheus over TLS did not answer within 60s: {e}; its log: {}",
                server.log()
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The same client, many queries: one pooled connection is reused.
    for _ in 0..20 {
        assert_eq!(p.query("scalar(vector(7))").await, Ok(7.0));
    }
    // Without credentials, or with the wrong password: 401.
    let anonymous = Prometheus::with_access(&base, t, &trusted(None)).expect("client");
    assert_eq!(
        anonymous.query("vector(1)").await,
        Err(QueryError::Fetch("HTTP status 401".into()))
    );
    let wrong =
        Prometheus::with_access(&base, t, &trusted(Some(("switchyard", "guess")))).expect("client");
    assert_eq!(
        wrong.query("vector(1)").await,
        Err(QueryError::Fetch("HTTP status 401".into()))
    );
    // Without the test CA the certificate is refused, saying why.
    let untrusted = Prometheus::with_access(
        &base,
        t,
        &Access {
            basic: Some(("switchyard".into(), "prom-s3cret".into())),
            ..Access::default()
        },
    )
    .expect("client");
    let e = untrusted.query("vector(1)").await.expect_err("untrusted");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    // insecureSkipVerify (tests only) accepts it.
    let insecure = Prometheus::with_access(
        &base,
        t,
        &Access {
            basic: Some(("switchyard".into(), "prom-s3cret".into())),
            insecure_skip_verify: true,
            ..Access::default()
        },
    )
    .expect("client");
    assert_eq!(insecure.query("vector(2)").await, Ok(2.0));
    // A bad CA bundle is refused when the client is made.
    let e = Prometheus::with_access(
        &base,
        t,
        &Access {
            ca_pem: Some(b"not a certificate".to_vec()),
            ..Access::default()
        },
    )
    .expect_err("bad CA");
    assert!(e.to_string().contains("CA bundle"), "{e}");

    // The tenant proxy: requires X-Scope-OrgID: tenant-a, records any
    // Authorization it was sent, and forwards to the real Prometheus.
    type Seen = Arc<Mutex<Vec<Option<String>>>>;
    let seen: Seen = Arc::default();
    let upstream = p.clone();
    let app = axum::Router::new()
        .route(
            "/api/v1/query",
            axum::routing::get(
                |axum::extract::State((seen, upstream)): axum::extract::State<(Seen, Prometheus)>,
                 headers: axum::http::HeaderMap,
                 axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>| async move {
                    seen.lock().expect("seen").push(
                        headers
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned),
                    );
                    if headers.get("x-scope-orgid").and_then(|v| v.to_str().ok()) != Some("tenant-a") {
                        return (axum::http::StatusCode::UNAUTHORIZED, "no org id".to_owned());
                    }
                    match upstream.query(&q["query"]).await {
                        Ok(v) => (
                            axum::http::StatusCode::OK,
                            format!(r#"{{"status":"success","data":{{"resultType":"scalar","result":[0,"{v}"]}}}}"#),
                        ),
                        Err(e) => (axum::http::StatusCode::BAD_GATEWAY, e.to_string()),
                    }
                },
            ),
        )
        .with_state((seen.clone(), upstream));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let proxy = format!("http://{}", listener.local_addr().expect("addr"));
    let proxy_task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let tenant = vec![("X-Scope-OrgID".to_owned(), "tenant-a".to_owned())];
    // The operator's own headers reach it...
    let with_header = Prometheus::with_access(
        &proxy,
        t,
        &Access {
            headers: tenant.clone(),
            bearer_token: Some("operator-token".into()),
            ..Access::default()
        },
    )
    .expect("client");
    assert_eq!(with_header.query("vector(3)").await, Ok(3.0));
    let without = Prometheus::with_access(&proxy, t, &Access::default()).expect("client");
    assert_eq!(
        without.query("vector(3)").await,
        Err(QueryError::Fetch("HTTP status 401".into()))
    );
    // ...and a plan's own address gets the plan's headers, without the
    // operator's credentials.
    let plan = Access {
        headers: tenant.clone(),
        ..Access::default()
    };
    let for_plan = with_header.for_plan(&proxy, &plan).expect("plan client");
    assert_eq!(for_plan.query("vector(4)").await, Ok(4.0));
    // A plan's own credentials (from the Secret it names) go with it.
    let own = Access {
        bearer_token: Some("plan-token".into()),
        ..plan
    };
    let with_own = with_header.for_plan(&proxy, &own).expect("plan client");
    assert_eq!(with_own.query("vector(5)").await, Ok(5.0));
    let seen = seen.lock().expect("seen").clone();
    assert_eq!(
        seen,
        [
            Some("Bearer operator-token".to_owned()),
            None,
            None,
            Some("Bearer plan-token".to_owned())
        ],
        "the operator's token went to its own Prometheus only, the plan's to the plan's"
    );
    proxy_task.abort();
    drop(server);
}
