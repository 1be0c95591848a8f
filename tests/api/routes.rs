//! Every route is served and documented in the OpenAPI document; request ids are echoed.

use coffer_test_support::TestApp;
use reqwest::StatusCode;

#[tokio::test]
async fn every_route_is_served_and_in_the_openapi_document() {
    let app = TestApp::spawn().await;
    let doc = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = doc["paths"].as_object().unwrap();
    let routes = coffer_api::routes();
    assert!(routes.len() >= 38, "the API's routes: {routes:?}");
    for (method, path) in &routes {
        assert!(
            paths[path.as_str()][method.to_lowercase()].is_object(),
            "{method} {path}"
        );
        // Without credentials every route answers before it looks anything up (401 on bearer
        // routes and the signed webhook, 200 on public ones): an unrouted path is the fallback's
        // 404 `not_found` or a 405, which no served route answers here. No route is exempt.
        let concrete = path
            .replace("{id}", "00000000-0000-0000-0000-000000000000")
            .replace("{provider}", "acme")
            .replace("{asset}", "ETH");
        let reply = app
            .client
            .request(method.parse().unwrap(), app.url(&concrete))
            .send()
            .await
            .unwrap();
        let status = reply.status();
        let headers = reply.headers().clone();
        let bytes = reply.bytes().await.unwrap();
        // Each answer is one the contract declares (a bearer route's 401, a public route's 200...).
        coffer_test_support::contract::assert_conforms(&coffer_test_support::contract::Received {
            method,
            path: &concrete,
            status: status.as_u16(),
            headers: &headers,
            body: &bytes,
        });
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let unrouted = status == StatusCode::NOT_FOUND && body["code"] == "not_found";
        assert!(
            !unrouted && status != StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path} is not routed ({status} {body})"
        );
    }
    let unknown = app
        .client
        .get(app.url("/v1/wallets/x/nothing-here"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        unknown.status(),
        StatusCode::NOT_FOUND,
        "the check above can see an unrouted path"
    );
}

#[tokio::test]
async fn request_id_and_traceparent_are_echoed_and_unknown_paths_are_problems() {
    let app = TestApp::spawn().await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let reply = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "req-123")
        .header("traceparent", traceparent)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.headers()["x-request-id"], "req-123");
    assert_eq!(reply.headers()["traceparent"], traceparent);
    let generated = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(
        generated.headers()["x-request-id"].len(),
        36,
        "a UUID is generated when absent"
    );

    let missing = app.client.get(app.url("/v1/nope")).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(missing.headers()["content-type"], "application/problem+json");
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .contains("coffer_http_requests_total{method=\"GET\",route=\"/healthz\",status_class=\"2xx\"} 2"),
        "{metrics}"
    );
}
