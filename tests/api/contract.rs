//! The HTTP contract as a client meets it: the served document is the committed one, query
//! parameters are validated (never clamped), a wrong method is a problem 405, and an early
//! answer never breaks a keep-alive connection.

use coffer_store::Role;
use coffer_test_support::TestApp;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn openapi_served_document_is_the_committed_one() {
    let app = TestApp::spawn().await;
    let reply = app.client.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
    assert_eq!(reply.headers()["content-type"], "application/json");
    let served: Value = reply.json().await.unwrap();
    assert_eq!(&served, coffer_test_support::contract::document());
}

#[tokio::test]
async fn openapi_a_bad_cursor_or_limit_is_400_invalid_query() {
    let app = TestApp::spawn().await;
    let user = app.register().await;
    let wallet = app.create_wallet(&user, "ETH").await;
    let admin = app.staff(Role::Admin).await;
    let cases = [
        (&user, "/v1/transactions?limit=0".to_string(), "limit"),
        (&user, "/v1/transactions?limit=101".to_string(), "limit"),
        (&user, "/v1/transactions?limit=many".to_string(), "limit"),
        (
            &user,
            "/v1/transactions?cursor=not-a-cursor".to_string(),
            "cursor",
        ),
        (&user, format!("/v1/wallets/{wallet}/ledger?limit=1000"), "limit"),
        (
            &user,
            format!("/v1/wallets/{wallet}/ledger?cursor=%27%3B"),
            "cursor",
        ),
        (&admin, "/v1/admin/reviews?limit=500".to_string(), "limit"),
        (
            &admin,
            "/v1/admin/adjustments?status=pending".to_string(),
            "status",
        ),
        (&admin, "/v1/admin/adjustments?limit=0".to_string(), "limit"),
        (&admin, "/v1/admin/reconciliations?cursor=x".to_string(), "cursor"),
        (&admin, "/v1/admin/reconciliations?limit=101".to_string(), "limit"),
    ];
    for (who, path, parameter) in cases {
        let reply = app.get(&path, &who.access_token).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path}: {:?}", reply.body);
        assert_eq!(reply.code(), "invalid_query", "{path}");
        assert_eq!(reply.body["field"], parameter, "{path}: {:?}", reply.body);
    }
    // The bounds themselves are accepted.
    for path in ["/v1/transactions?limit=1", "/v1/transactions?limit=100"] {
        assert_eq!(
            app.get(path, &user.access_token).await.status,
            StatusCode::OK,
            "{path}"
        );
    }
    let page = app
        .get(
            "/v1/transactions?cursor=0190a0b1-0000-7000-8000-000000000001",
            &user.access_token,
        )
        .await;
    assert_eq!(
        page.status,
        StatusCode::OK,
        "a well-formed cursor: {:?}",
        page.body
    );
}

#[tokio::test]
async fn openapi_a_wrong_method_is_a_problem_405_with_allow() {
    let app = TestApp::spawn().await;
    let user = app.register().await;
    let reply = app
        .send("DELETE", "/v1/wallets", Some(&user.access_token), None, None)
        .await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.headers["content-type"], "application/problem+json");
    assert_eq!(reply.code(), "method_not_allowed");
    let allow = reply.headers["allow"].to_str().unwrap();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    let put = app.send("PUT", "/healthz", None, None, None).await;
    assert_eq!(put.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(put.code(), "method_not_allowed");
}

#[tokio::test]
async fn openapi_201s_carry_the_location_of_what_they_created() {
    let app = TestApp::spawn().await;
    let user = app.register().await;
    let key = uuid::Uuid::new_v4().to_string();
    let body = json!({ "asset": "ETH" });
    let created = app
        .send(
            "POST",
            "/v1/wallets",
            Some(&user.access_token),
            Some(&key),
            Some(&body),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let id = created.body["id"].as_str().unwrap();
    let location = created.headers["location"].to_str().unwrap().to_string();
    assert_eq!(location, format!("/v1/wallets/{id}"));
    assert_eq!(
        app.get(&location, &user.access_token).await.status,
        StatusCode::OK
    );
    // The replay of the stored 201 carries it too.
    let replay = app
        .send(
            "POST",
            "/v1/wallets",
            Some(&user.access_token),
            Some(&key),
            Some(&body),
        )
        .await;
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    assert_eq!(replay.headers["location"].to_str().unwrap(), location);
}

/// Seen before: about one request in twenty failed with a connection error when keep-alive
/// requests with bodies were answered 401 before their body was read: hyper closed the
/// connection it could not drain, without `Connection: close`, and the client's next request on
/// it was lost. Over a raw connection, each early answer either says `Connection: close` or
/// serves the next request on the same connection.
#[tokio::test]
async fn openapi_early_answers_never_break_a_keep_alive_connection() {
    let app = TestApp::spawn().await;
    let mut closed_without_saying = Vec::new();
    for (i, size) in [1024usize, 48 * 1024, 1024 * 1024]
        .into_iter()
        .cycle()
        .take(30)
        .enumerate()
    {
        let mut connection = tokio::net::TcpStream::connect(app.address).await.unwrap();
        let body = format!("{{\"amount\":\"1\",\"memo\":\"{}\"}}", "x".repeat(size));
        let head = format!(
            "POST /v1/transfers HTTP/1.1\r\nHost: coffer\r\nContent-Type: application/json\r\n\
             Idempotency-Key: k-{i}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        connection.write_all(head.as_bytes()).await.unwrap();
        // The body follows while the server has already answered (a client does not wait).
        let (mut read, mut write) = connection.into_split();
        let writer = tokio::spawn(async move {
            let _ = write.write_all(body.as_bytes()).await;
            write
        });
        let (status, headers) = read_response(&mut read).await.expect("the first answer");
        assert_eq!(status, 401);
        let mut write = writer.await.unwrap();
        if headers.contains("connection: close") {
            continue;
        }
        // Kept alive: the connection must serve the next request.
        let next = write
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: coffer\r\n\r\n")
            .await;
        let answered = match next {
            Ok(()) => read_response(&mut read).await,
            Err(_) => None,
        };
        if answered.map(|(status, _)| status) != Some(200) {
            closed_without_saying.push(size);
        }
    }
    assert!(
        closed_without_saying.is_empty(),
        "connections closed after an early answer without Connection: close (body sizes {closed_without_saying:?})"
    );

    // A request whose body was read keeps its connection: no Connection: close.
    let user = app.register().await;
    let read = app
        .client
        .post(app.url("/v1/wallets"))
        .bearer_auth(&user.access_token)
        .header("Idempotency-Key", "read-body")
        .json(&json!({ "asset": "ETH" }))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::CREATED);
    assert!(read.headers().get("connection").is_none(), "{:?}", read.headers());
}

/// One HTTP/1.1 response with a Content-Length body: (status, lower-cased head); None when the
/// connection ends first or nothing arrives within 5 s.
async fn read_response(read: &mut tokio::net::tcp::OwnedReadHalf) -> Option<(u16, String)> {
    let mut buffer = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    let end_of_head = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, read.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..end_of_head]).to_ascii_lowercase();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buffer.len() < end_of_head + length {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, read.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    Some((status, head))
}

/// The client generated from docs/openapi.json (clients/typescript: openapi-typescript types,
/// openapi-fetch calls; scripts/test generates and compiles it) runs the README's walk-through.
#[tokio::test]
async fn openapi_typescript_client_runs_the_readme_walkthrough() {
    let client = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/typescript");
    let script = client.join("dist/walkthrough.js");
    if !script.exists() {
        assert!(
            std::env::var_os("COFFER_TEST_REQUIRE_SERVICES").is_none(),
            "{} is missing: scripts/test generates and compiles the client first",
            script.display()
        );
        eprintln!("skipped: the TypeScript client is not built (scripts/test builds it)");
        return;
    }
    let app = TestApp::spawn().await;
    let payment = app.staff(Role::Payment).await;
    let mut node = std::process::Command::new("node");
    node.arg(&script)
        .current_dir(&client)
        .env("COFFER_API", format!("http://{}", app.address))
        .env("COFFER_PAYMENT_EMAIL", &payment.email)
        .env("COFFER_PAYMENT_PASSWORD", &payment.password);
    // Off the runtime's thread: the server under test answers on it meanwhile.
    let output = tokio::task::spawn_blocking(move || node.output())
        .await
        .unwrap()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the walk-through failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("walk-through passed"), "{stdout}");
}
