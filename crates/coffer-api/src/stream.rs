//! `GET /v1/stream`: the user's events over a WebSocket (E2).
//!
//! Authentication: the access token in `Authorization: Bearer …`, or, for clients that cannot set
//! headers on a WebSocket (browsers), in `?access_token=`. The query string is never logged.
//! Resume: `?after=<event id>` first sends the user's events after that id from the outbox (at
//! most [`HISTORY_LIMIT`]; beyond it the socket closes with 4009 and the client reloads state over
//! REST), then the live feed; events are deduplicated by id. Heartbeat: a ping every
//! [`HEARTBEAT`]; no frame from the client for three of them closes with 4010. A client that
//! cannot keep up (its buffer in the hub is full) is closed with 4008.

use std::collections::HashSet;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use coffer_events::{CloudEvent, Live};
use serde::Deserialize;
use tokio::time::{timeout, Instant};
use tracing::Instrument;
use utoipa::IntoParams;

use crate::error::{ApiError, ApiResult};
use crate::extract::{bearer, ValidQuery};
use crate::ApiContext;

/// Most events a resuming client is sent from history.
pub const HISTORY_LIMIT: u32 = 500;
/// Interval of server pings.
pub const HEARTBEAT: Duration = Duration::from_secs(20);
/// Longest a single send to the client may take before the client counts as too slow.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Close codes (also in docs/events.md).
pub mod close {
    pub const GOING_AWAY: u16 = 1001;
    pub const TOO_SLOW: u16 = 4008;
    pub const RESUME_GAP: u16 = 4009;
    pub const HEARTBEAT_TIMEOUT: u16 = 4010;
    pub const TOO_MANY_CONNECTIONS: u16 = 4029;
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// The access token, for clients that cannot send an Authorization header.
    pub access_token: Option<String>,
    /// The id of the last event the client saw: missed events are sent first.
    #[param(format = Uuid)]
    pub after: Option<String>,
}

/// Open the event stream (WebSocket). Sends CloudEvents 1.0 JSON text frames; see docs/events.md.
#[utoipa::path(get, path = "/v1/stream", tag = "events", params(StreamQuery),
    responses((status = 101, description = "switching to the WebSocket protocol"),
              (status = 400, description = "invalid_query or websocket_upgrade_required", body = crate::error::Problem),
              (status = 401, description = "unauthenticated", body = crate::error::Problem)),
    security(("bearer" = []), ("access_token" = [])))]
pub async fn stream(
    State(ctx): State<ApiContext>,
    headers: HeaderMap,
    ValidQuery(query): ValidQuery<StreamQuery>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let token = bearer(&headers).or(query.access_token.as_deref());
    let token = token.ok_or(ApiError::Unauthenticated {
        code: "unauthenticated",
    })?;
    let principal = ctx.tokens().verify_access(token)?;
    if let Some(after) = &query.after {
        uuid::Uuid::parse_str(after)
            .map_err(|_| ApiError::invalid_field("invalid_query", "after", "not an event id"))?;
    }
    let upgrade = upgrade.map_err(|_| {
        ApiError::bad_request(
            "websocket_upgrade_required",
            "this endpoint speaks WebSocket only",
        )
    })?;
    let after = query.after;
    Ok(upgrade.on_upgrade(move |socket| serve(socket, ctx, principal.user_id, after)))
}

async fn serve(mut socket: WebSocket, ctx: ApiContext, user_id: String, after: Option<String>) {
    let Some(mut subscription) = ctx.stream_hub().subscribe(&user_id) else {
        return shut(
            socket,
            close::TOO_MANY_CONNECTIONS,
            "too many connections for this user",
        )
        .await;
    };
    // Subscribed first, history second: nothing committed in between can fall through the gap.
    let mut sent = HashSet::new();
    if let Some(after) = after {
        match send_history(&mut socket, &ctx, &user_id, &after, &mut sent).await {
            Ok(()) => {}
            Err(Some((code, reason))) => return shut(socket, code, reason).await,
            Err(None) => return,
        }
    }
    let mut heartbeat = tokio::time::interval_at(Instant::now() + HEARTBEAT, HEARTBEAT);
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            live = subscription.receiver.recv() => {
                if subscription.overflowed() {
                    return shut(socket, close::TOO_SLOW, "too slow: event buffer full; resume with ?after=").await;
                }
                let Some(live) = live else {
                    return shut(socket, close::GOING_AWAY, "server stream ended").await;
                };
                if !sent.contains(&live.event.id) {
                    if let Err(failure) = send_live(&mut socket, &live).await {
                        return failure.count(&ctx);
                    }
                }
            }
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > HEARTBEAT * 3 {
                    return shut(socket, close::HEARTBEAT_TIMEOUT, "no pong").await;
                }
                if let Err(failure) = send(&mut socket, Message::Ping(Default::default())).await {
                    return failure.count(&ctx);
                }
            }
            frame = socket.recv() => match frame {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => last_heard = Instant::now(),
            },
        }
    }
}

/// Sends the user's events after `after`; Err(Some(close)) to close with a reason.
async fn send_history(
    socket: &mut WebSocket,
    ctx: &ApiContext,
    user_id: &str,
    after: &str,
    sent: &mut HashSet<String>,
) -> Result<(), Option<(u16, &'static str)>> {
    let rows = coffer_events::history::missed_events(ctx.store(), user_id, after, HISTORY_LIMIT + 1)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "stream history unavailable");
            Some((1011, "history unavailable; retry"))
        })?;
    if rows.len() > HISTORY_LIMIT as usize {
        return Err(Some((
            close::RESUME_GAP,
            "resume gap too large: reload over REST, then reconnect",
        )));
    }
    for row in &rows {
        let event = CloudEvent::from_outbox(row);
        send_event(socket, &event)
            .await
            .map_err(|failure| failure.count(ctx))
            .map_err(|()| None)?;
        sent.insert(event.id);
    }
    Ok(())
}

/// Sends a live event; when it came with trace context, inside a span continuing that trace.
async fn send_live(socket: &mut WebSocket, live: &Live) -> Result<(), SendFailure> {
    let Some(parent) = &live.trace else {
        return send_event(socket, &live.event).await;
    };
    let span = tracing::info_span!(
        parent: None,
        "deliver",
        otel.name = "send /v1/stream",
        otel.kind = "producer",
        otel.status_code = tracing::field::Empty,
        messaging.operation.type = "send",
        messaging.operation.name = "send",
        messaging.destination.name = "/v1/stream",
        messaging.message.id = live.event.id.as_str(),
        network.protocol.name = "websocket",
    );
    coffer_telemetry::propagation::set_remote_parent(&span, parent);
    let sent = send_event(socket, &live.event).instrument(span.clone()).await;
    if sent.is_err() {
        span.record("otel.status_code", "ERROR");
    }
    sent
}

/// Why a send to the client failed: the socket is gone, or the client did not take the frame
/// within [`SEND_TIMEOUT`] (a slow consumer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SendFailure {
    Closed,
    TimedOut,
}

impl SendFailure {
    /// Counts a timed-out send as a slow consumer dropped (the connection closes after it).
    fn count(self, ctx: &ApiContext) {
        if self == SendFailure::TimedOut {
            ctx.stream_hub().slow_consumer_dropped("send_timeout");
        }
    }
}

async fn send_event(socket: &mut WebSocket, event: &CloudEvent) -> Result<(), SendFailure> {
    let text = serde_json::to_string(event).map_err(|_| SendFailure::Closed)?;
    send(socket, Message::Text(text.into())).await
}

async fn send(socket: &mut WebSocket, message: Message) -> Result<(), SendFailure> {
    match timeout(SEND_TIMEOUT, socket.send(message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(SendFailure::Closed),
        Err(_) => Err(SendFailure::TimedOut),
    }
}

async fn shut(mut socket: WebSocket, code: u16, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = send(&mut socket, Message::Close(Some(frame))).await;
}
