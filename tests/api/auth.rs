use coffer_store::mongodb::bson::doc;
use coffer_test_support::TestApp;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn refresh_token_reuse_revokes_the_family() {
    let app = TestApp::spawn().await;
    let user = app.register().await;
    let first = user.refresh_token.clone();

    let rotated = app
        .send(
            "POST",
            "/v1/auth/refresh",
            None,
            None,
            Some(&json!({ "refresh_token": first })),
        )
        .await;
    assert_eq!(rotated.status, StatusCode::OK);
    let second = rotated.body["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(second, first, "a refresh returns a new refresh token");

    let reused = app
        .send(
            "POST",
            "/v1/auth/refresh",
            None,
            None,
            Some(&json!({ "refresh_token": first })),
        )
        .await;
    assert_eq!(reused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reused.code(), "refresh_token_reused");

    // The legitimate successor is revoked with its family.
    let after = app
        .send(
            "POST",
            "/v1/auth/refresh",
            None,
            None,
            Some(&json!({ "refresh_token": second })),
        )
        .await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);
    assert_eq!(after.code(), "invalid_refresh_token");
    let reuse = doc! { "action": "auth.refresh_reuse_detected" };
    assert_eq!(
        app.count_where("audit_records", reuse).await,
        1,
        "the reuse is audited"
    );
}

#[tokio::test]
async fn a_wrong_password_is_refused_and_audited_without_revealing_which_part_was_wrong() {
    let app = TestApp::spawn().await;
    let user = app.register().await;
    let wrong = app
        .send(
            "POST",
            "/v1/auth/login",
            None,
            None,
            Some(&json!({ "email": user.email, "password": "wrong-password-123" })),
        )
        .await;
    let unknown = app
        .send(
            "POST",
            "/v1/auth/login",
            None,
            None,
            Some(&json!({ "email": "nobody@example.com", "password": user.password })),
        )
        .await;
    for reply in [&wrong, &unknown] {
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_eq!(reply.code(), "invalid_credentials");
        assert_eq!(reply.headers["content-type"], "application/problem+json");
    }
    assert_eq!(wrong.body["detail"], unknown.body["detail"]);
    let failed = doc! { "action": "auth.login_failed" };
    assert_eq!(app.count_where("audit_records", failed).await, 2);
    app.login(&user.email, &user.password).await;
}

#[tokio::test]
async fn registering_an_email_twice_conflicts_and_passwords_are_never_stored_in_clear() {
    let app = TestApp::spawn().await;
    let user = app.register().await;
    let again = app
        .register_as(&user.email.to_uppercase(), "another-password-1")
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(again.code(), "email_taken");
    let stored = app.store.user_by_email(&user.email).await.unwrap().unwrap();
    assert!(
        stored.password_hash.starts_with("$argon2id$"),
        "argon2id PHC string"
    );
    assert!(!stored.password_hash.contains(&user.password));
}

#[tokio::test]
async fn a_tampered_or_missing_access_token_is_refused() {
    let app = TestApp::spawn().await;
    let user = app.register().await;
    let mut tampered = user.access_token.clone();
    tampered.pop();
    tampered.push(if user.access_token.ends_with('A') {
        'B'
    } else {
        'A'
    });
    for token in [Some(tampered.as_str()), Some("not-a-jwt"), None] {
        let reply = app.send("GET", "/v1/wallets", token, None, None).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_eq!(reply.code(), "unauthenticated");
    }
}

#[tokio::test]
async fn auth_endpoints_are_rate_limited_per_ip_with_retry_after() {
    let mut options = coffer_test_support::Options::default();
    options.rate_limits.auth_per_ip_per_minute = 3;
    let app = TestApp::spawn_with(options).await;
    let body = json!({ "email": "nobody@example.com", "password": "whatever-password" });
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(app.send("POST", "/v1/auth/login", None, None, Some(&body)).await);
    }
    assert!(statuses[..3].iter().all(|r| r.status == StatusCode::UNAUTHORIZED));
    assert_eq!(statuses[3].status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(statuses[3].code(), "rate_limited");
    let retry_after: u64 = statuses[3].headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after));
}

#[tokio::test]
async fn failed_logins_are_throttled_per_account_and_network_without_locking_the_owner_out() {
    let app = TestApp::spawn_with(coffer_test_support::Options {
        client_ip_header: Some("x-forwarded-for".into()),
        ..Default::default()
    })
    .await;
    let owner = app.register().await;
    let login = |password: String, forwarded: String| {
        let body = json!({ "email": owner.email, "password": password });
        let app = &app;
        async move {
            app.send_with(
                "POST",
                "/v1/auth/login",
                None,
                None,
                Some(&body),
                &[("x-forwarded-for", &forwarded)],
            )
            .await
        }
    };
    // The attacker writes a new left-most hop each time; the proxy appends the address it saw.
    for n in 0..5 {
        let reply = login("wrong-password-123".into(), format!("10.0.0.{n}, 203.0.113.9")).await;
        assert_eq!(reply.code(), "invalid_credentials");
    }
    let throttled = login(owner.password.clone(), "10.0.0.99, 203.0.113.9".into()).await;
    assert_eq!(
        throttled.status,
        StatusCode::TOO_MANY_REQUESTS,
        "even the right password"
    );
    assert!(throttled.headers.contains_key("retry-after"));
    // Another /64 of the attacker's IPv6 network is the same network.
    for n in 0..5 {
        login("wrong-password-123".into(), format!("2001:db8:1:2::{n}")).await;
    }
    let v6 = login(owner.password.clone(), "2001:db8:1:2:ffff::1".into()).await;
    assert_eq!(v6.status, StatusCode::TOO_MANY_REQUESTS);
    // The owner, from their own network, is not locked out.
    let own = login(owner.password.clone(), "198.51.100.7".into()).await;
    assert_eq!(own.status, StatusCode::OK, "{:?}", own.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn password_hashing_beyond_its_bound_answers_503_with_retry_after() {
    let mut options = coffer_test_support::Options {
        // Expensive enough that the logins overlap.
        password_hashing: Some(coffer_api::config::PasswordHashing {
            memory_kib: 32 * 1024,
            iterations: 3,
            parallelism: 1,
        }),
        ..Default::default()
    };
    options.rate_limits.password_hashing_concurrent_max = 1;
    let app = TestApp::spawn_with(options).await;
    let bodies: Vec<_> = (0..8)
        .map(|n| json!({ "email": format!("nobody-{n}@example.com"), "password": "whatever-password" }))
        .collect();
    let replies = futures::future::join_all(
        bodies
            .iter()
            .map(|body| app.send("POST", "/v1/auth/login", None, None, Some(body))),
    )
    .await;
    let busy: Vec<_> = replies
        .iter()
        .filter(|r| r.status == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert!(
        !busy.is_empty(),
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    for reply in &busy {
        assert_eq!(reply.code(), "retry_later");
        assert_eq!(reply.headers["retry-after"], "1");
    }
    assert!(replies
        .iter()
        .all(|r| [StatusCode::UNAUTHORIZED, StatusCode::SERVICE_UNAVAILABLE].contains(&r.status)));
}

#[tokio::test]
async fn read_routes_and_stream_upgrades_are_limited_per_user_and_say_so_in_ratelimit_headers() {
    let mut options = coffer_test_support::Options::default();
    options.rate_limits.reads_per_user_per_minute = 3;
    let app = TestApp::spawn_with(options).await;
    let (alice, bob) = (app.register().await, app.register().await);
    let first = app.get("/v1/wallets", &alice.access_token).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.headers["ratelimit-policy"], "\"reads_user\";q=3;w=60");
    assert_eq!(first.headers["ratelimit"], "\"reads_user\";r=2;t=20");
    app.get("/v1/transactions", &alice.access_token).await;
    // A stream upgrade counts as a read: without the WebSocket headers it is answered 400, after
    // the limit took its share.
    assert_eq!(
        app.get("/v1/stream", &alice.access_token).await.status,
        StatusCode::BAD_REQUEST
    );
    let refused = app.get("/v1/wallets", &alice.access_token).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.code(), "rate_limited");
    let retry_after: u64 = refused.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry_after));
    assert_eq!(
        refused.headers["ratelimit"],
        format!("\"reads_user\";r=0;t={retry_after}").as_str()
    );
    // Another user has their own budget; money routes say theirs (the closest of the per-IP and
    // per-user limits: here the IP's, which every user of this test shares).
    assert_eq!(
        app.get("/v1/wallets", &bob.access_token).await.status,
        StatusCode::OK
    );
    let wallet = app
        .post("/v1/wallets", &bob.access_token, json!({ "asset": "ETH" }))
        .await;
    let policy = wallet.headers["ratelimit-policy"].to_str().unwrap();
    assert!(
        policy.starts_with("\"money_") && policy.ends_with(";q=100000;w=60"),
        "{policy}"
    );
}
