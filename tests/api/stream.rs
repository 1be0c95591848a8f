//! `GET /v1/stream` end to end: publisher → RabbitMQ → the API's consumer → the user's socket.

use std::time::Duration;

use coffer_store::Role;
use coffer_test_support::broker::{self, Broker};
use coffer_test_support::stream::{closed_within, connect, events, next_event, send_text, Token};
use coffer_test_support::TestApp;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(15);

#[tokio::test]
async fn each_user_gets_only_their_events_and_a_resumed_socket_gets_what_it_missed() {
    let app = TestApp::spawn().await;
    let broker = Broker::new().await;
    let consumer = broker::spawn_stream_consumer(&broker.exchange, app.stream_hub.clone()).await;
    let (relay, _) = broker::relay(&app.store, broker::relay_config(&broker.exchange, "p1"));
    let publisher = broker::spawn_publisher(relay);
    let payment = app.staff(Role::Payment).await;
    let (alice, bob) = (app.register().await, app.register().await);
    let (a, b) = (
        app.create_wallet(&alice, "ETH").await,
        app.create_wallet(&bob, "ETH").await,
    );
    // Alice, as a browser would, with a single-use ticket instead of her token in the URL.
    let ticket = app
        .post("/v1/stream/tickets", &alice.access_token, json!({}))
        .await;
    assert_eq!(ticket.status, 201, "{:?}", ticket.body);
    let ticket = ticket.body["ticket"].as_str().unwrap().to_string();
    let mut alice_socket = connect(app.address, Token::Ticket(&ticket), None).await;
    let mut bob_socket = connect(app.address, Token::Header(&bob.access_token), None).await;
    tokio::time::sleep(Duration::from_millis(200)).await; // both sockets registered in the hub

    app.deposit(&payment, &a, "5").await;
    let transfer = json!({ "from_wallet_id": a, "to_wallet_id": b, "amount": "1" });
    assert_eq!(
        app.post("/v1/transfers", &alice.access_token, transfer)
            .await
            .status,
        201
    );

    let seen_by_alice = events(&mut alice_socket, 4, WAIT).await;
    assert_eq!(
        seen_by_alice.len(),
        4,
        "deposit and transfer, a transaction and a balance event each"
    );
    assert!(
        seen_by_alice.iter().all(|e| e["subject"] == a),
        "alice sees only her wallet: {seen_by_alice:?}"
    );
    let seen_by_bob = events(&mut bob_socket, 2, WAIT).await;
    let types: Vec<&str> = seen_by_bob.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["wallet.transaction.created", "wallet.balance.updated"]);
    assert_eq!(
        (
            seen_by_bob[0]["data"]["amount"].as_str(),
            seen_by_bob[1]["data"]["available"].as_str()
        ),
        (Some("1"), Some("1"))
    );
    assert!(
        seen_by_bob.iter().all(|e| e["subject"] == b),
        "bob sees only his wallet"
    );
    let envelope = seen_by_bob[1].as_object().unwrap();
    let mut keys: Vec<&str> = envelope.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "data",
            "datacontenttype",
            "dataschema",
            "id",
            "source",
            "specversion",
            "subject",
            "time",
            "type"
        ]
    );
    assert_eq!(
        envelope["dataschema"],
        "urn:coffer:schema:wallet.balance.updated:v1"
    );
    assert!(
        next_event(&mut bob_socket, Duration::from_millis(500))
            .await
            .is_none(),
        "nothing of alice's reaches bob"
    );

    // Bob goes away; money moves; he comes back with the last id he saw and gets what he missed.
    let last_seen = seen_by_bob[1]["id"].as_str().unwrap().to_string();
    drop(bob_socket);
    let transfer = json!({ "from_wallet_id": a, "to_wallet_id": b, "amount": "2" });
    assert_eq!(
        app.post("/v1/transfers", &alice.access_token, transfer)
            .await
            .status,
        201
    );
    broker::await_drained(&app.store, WAIT).await;
    let mut bob_socket = connect(app.address, Token::Header(&bob.access_token), Some(&last_seen)).await;
    let missed = events(&mut bob_socket, 2, WAIT).await;
    let got: Vec<(&str, &str)> = missed
        .iter()
        .map(|e| (e["type"].as_str().unwrap(), e["subject"].as_str().unwrap()))
        .collect();
    assert_eq!(
        got,
        [
            ("wallet.transaction.created", b.as_str()),
            ("wallet.balance.updated", b.as_str())
        ]
    );
    assert_eq!(missed[1]["data"]["available"], "3");
    assert!(missed
        .iter()
        .all(|e| e["id"].as_str().unwrap() > last_seen.as_str()));
    assert!(
        next_event(&mut bob_socket, Duration::from_millis(500))
            .await
            .is_none(),
        "no event twice"
    );

    // Still live after the resume: the next transfer arrives once.
    let transfer = json!({ "from_wallet_id": a, "to_wallet_id": b, "amount": "0.5" });
    assert_eq!(
        app.post("/v1/transfers", &alice.access_token, transfer)
            .await
            .status,
        201
    );
    let live = events(&mut bob_socket, 2, WAIT).await;
    assert_eq!(
        live.get(1).map(|e| e["data"]["available"].clone()),
        Some(json!("3.5"))
    );
    publisher.abort();
    consumer.abort();
    broker.cleanup().await;
}

#[tokio::test]
async fn the_stream_refuses_a_missing_or_bad_token_and_a_non_websocket_request() {
    let app = TestApp::spawn().await;
    let anonymous = app.send("GET", "/v1/stream", None, None, None).await;
    assert_eq!(
        (anonymous.status.as_u16(), anonymous.code()),
        (401, "unauthenticated")
    );
    let forged = app
        .send("GET", "/v1/stream?ticket=not-a-ticket", None, None, None)
        .await;
    assert_eq!(
        (forged.status.as_u16(), forged.code()),
        (401, "invalid_stream_ticket")
    );
    let alice = app.register().await;
    // A bearer token in the URL is not accepted at all.
    let in_url = app
        .send(
            "GET",
            &format!("/v1/stream?access_token={}", alice.access_token),
            None,
            None,
            None,
        )
        .await;
    assert_eq!(in_url.code(), "invalid_query");
    // A ticket works once.
    let ticket = app
        .post("/v1/stream/tickets", &alice.access_token, json!({}))
        .await;
    assert_eq!(ticket.headers["cache-control"], "no-store");
    let ticket = ticket.body["ticket"].as_str().unwrap().to_string();
    let mut socket = connect(app.address, Token::Ticket(&ticket), None).await;
    let again = app
        .send("GET", &format!("/v1/stream?ticket={ticket}"), None, None, None)
        .await;
    assert_eq!(
        (again.status.as_u16(), again.code()),
        (401, "invalid_stream_ticket")
    );
    // A client message beyond the 4 KiB limit ends the connection; one within it does not.
    let small = "x".repeat(coffer_api::stream::CLIENT_MESSAGE_BYTES_MAX);
    send_text(&mut socket, &small).await;
    assert!(!closed_within(&mut socket, Duration::from_millis(500)).await);
    send_text(&mut socket, &format!("{small}x")).await;
    assert!(closed_within(&mut socket, Duration::from_secs(5)).await);
    let plain = app.get("/v1/stream", &alice.access_token).await;
    assert_eq!(
        (plain.status.as_u16(), plain.code()),
        (400, "websocket_upgrade_required")
    );
    let bad_after = app.get("/v1/stream?after=nope", &alice.access_token).await;
    assert_eq!(bad_after.code(), "invalid_query");
}

/// A TCP relay to the shared broker whose connections can be cut (a network blip for one
/// client only: the broker itself is never restarted).
struct Blip {
    port: u16,
    links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    _accept: tokio::task::JoinHandle<()>,
}

impl Blip {
    async fn to_broker() -> Blip {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let links = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let accepted = links.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let link = tokio::spawn(async move {
                    if let Ok(mut broker) = tokio::net::TcpStream::connect("127.0.0.1:5672").await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut broker).await;
                    }
                });
                accepted.lock().unwrap().push(link);
            }
        });
        Blip {
            port,
            links,
            _accept: accept,
        }
    }

    fn cut(&self) {
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }
}

/// Issue 15 (found by the fault harness): a replica's consumer that lost the broker binds a new
/// queue when it is back; whatever the publishers sent meanwhile reached none of its sockets. So
/// every connection it fed ends then (1001), and its client resumes with `?after=`.
#[tokio::test]
async fn a_replica_whose_consumer_reconnects_ends_its_streams_so_clients_resume() {
    let broker = Broker::new().await;
    let hub = coffer_events::StreamHub::default();
    let blip = Blip::to_broker().await;
    let readiness = coffer_events::publisher::Readiness::default();
    let uri = format!("amqp://guest:guest@127.0.0.1:{}/%2f", blip.port);
    let consumer = tokio::spawn(coffer_events::consumer::run(
        uri,
        broker.exchange.clone(),
        hub.clone(),
        readiness.clone(),
    ));
    let ready = async {
        while !readiness.is_ready() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(WAIT, ready)
        .await
        .expect("the consumer connects");
    let mut connection = hub.subscribe("alice").unwrap();

    blip.cut();
    let ended = tokio::time::timeout(WAIT, connection.receiver.recv()).await;
    assert!(
        matches!(ended, Ok(None)),
        "the connection's feed ends once the consumer is back: {ended:?}"
    );
    assert!(
        !connection.overflowed(),
        "closed to resume, not as a slow consumer"
    );
    let _resumed = hub.subscribe("alice").unwrap();
    assert_eq!(hub.connections(), 1, "the resumed connection is fed");
    consumer.abort();
    broker.cleanup().await;
}
