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
    for (method, path) in coffer_api::ROUTES {
        let operation = &paths
            .get(*path)
            .unwrap_or_else(|| panic!("{path} missing from OpenAPI"))[method.to_lowercase()];
        assert!(operation.is_object(), "{method} {path} missing from OpenAPI");
        let concrete = path.replace("{id}", "00000000-0000-0000-0000-000000000000");
        let reply = app
            .client
            .request(method.parse().unwrap(), app.url(&concrete))
            .send()
            .await
            .unwrap();
        let status = reply.status();
        let body: serde_json::Value = reply.json().await.unwrap_or_default();
        let unrouted =
            status == StatusCode::NOT_FOUND && body["code"] == "not_found" && !concrete.contains("0000");
        assert!(
            !unrouted && status != StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path} is not routed ({status})"
        );
    }
    let documented: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(
        documented,
        coffer_api::ROUTES.len(),
        "the document lists exactly the served routes"
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
