//! A WebSocket client of `GET /v1/stream` for tests.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How a client presents its token.
pub enum Token<'a> {
    Header(&'a str),
    Query(&'a str),
}

/// Opens the stream of `address`, resuming after `after` if given.
pub async fn connect(address: std::net::SocketAddr, token: Token<'_>, after: Option<&str>) -> Socket {
    let mut query = Vec::new();
    if let Token::Query(t) = &token {
        query.push(format!("access_token={t}"));
    }
    if let Some(after) = after {
        query.push(format!("after={after}"));
    }
    let url = format!("ws://{address}/v1/stream?{}", query.join("&"));
    let mut request = url.into_client_request().expect("request");
    if let Token::Header(t) = token {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().expect("header"));
    }
    let (socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("websocket connect");
    socket
}

/// The next event (a JSON text frame), answering pings; None on close or after `wait`.
pub async fn next_event(socket: &mut Socket, wait: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let frame = tokio::time::timeout_at(deadline, socket.next())
            .await
            .ok()??
            .ok()?;
        match frame {
            Message::Text(text) => {
                let event: Value = serde_json::from_str(&text).ok()?;
                if let Err(problem) = crate::contract::check_event(&event) {
                    panic!("a stream event does not conform to docs/asyncapi.json: {problem}\n{event}");
                }
                return Some(event);
            }
            Message::Ping(payload) => socket.send(Message::Pong(payload)).await.ok()?,
            Message::Close(_) => return None,
            _ => {}
        }
    }
}

/// Collects events until `count` arrived or `wait` passed.
pub async fn events(socket: &mut Socket, count: usize, wait: Duration) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut seen = Vec::new();
    while seen.len() < count {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match next_event(socket, left).await {
            Some(event) => seen.push(event),
            None => break,
        }
    }
    seen
}
