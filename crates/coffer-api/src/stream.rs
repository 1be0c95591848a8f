//! `GET /v1/stream`: the user's events over a WebSocket (E2).
//!
//! Authentication: the access token in `Authorization: Bearer …`, or, for clients that cannot set
//! headers on a WebSocket (browsers), a single-use 30-second ticket from `POST /v1/stream/tickets`
//! in `?ticket=`: a bearer token never goes into a URL (where proxies and browsers keep it).
//! Resume: `?after=<event id>` first sends the user's events after that id from the outbox (at
//! most [`HISTORY_LIMIT`]; beyond it the socket closes with 4009 and the client reloads state over
//! REST), then the live feed; events are deduplicated by id. Heartbeat: a ping every
//! [`HEARTBEAT`]; no frame from the client for three of them closes with 4010. A client that
//! cannot keep up (its buffer in the hub is full) is closed with 4008. When the session of the token
//! it was opened with ends (logout, "sign out everywhere", a password change, a staff action, a
//! refresh token replayed), the stream closes with 4001 within the session check interval.

use std::collections::HashSet;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use coffer_events::{CloudEvent, Live};
use coffer_store::tickets::StreamTicketDoc;
use serde::{Deserialize, Serialize};
use tokio::time::{timeout, Instant};
use tracing::Instrument;
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ApiResult};
use crate::extract::{bearer, Principal, ValidQuery};
use crate::ApiContext;

/// Most events a resuming client is sent from history.
pub const HISTORY_LIMIT: u32 = 500;
/// Interval of server pings.
pub const HEARTBEAT: Duration = Duration::from_secs(20);
/// The largest message a client may send (it sends only pongs and a close frame).
pub const CLIENT_MESSAGE_BYTES_MAX: usize = 4 * 1024;
/// Shortest interval between two session checks of one stream.
const SESSION_CHECK_MIN: Duration = Duration::from_millis(250);
/// Longest a single send to the client may take before the client counts as too slow.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Close codes (also in docs/events.md).
pub mod close {
    pub const GOING_AWAY: u16 = 1001;
    /// The session of the token the stream was opened with was revoked or has ended.
    pub const SESSION_ENDED: u16 = 4001;
    pub const TOO_SLOW: u16 = 4008;
    pub const RESUME_GAP: u16 = 4009;
    pub const HEARTBEAT_TIMEOUT: u16 = 4010;
    pub const TOO_MANY_CONNECTIONS: u16 = 4029;
}

/// How long a stream ticket can be redeemed.
pub const TICKET_TTL: Duration = Duration::from_secs(30);

#[derive(Serialize, ToSchema)]
pub struct StreamTicket {
    /// Single use: `GET /v1/stream?ticket=…` within `expires_in` seconds.
    pub ticket: String,
    pub expires_in: u64,
}

/// A single-use ticket (30 s) to open the stream from a client that cannot set the Authorization
/// header on a WebSocket (a browser): no bearer token ever goes into a URL.
#[utoipa::path(post, path = "/v1/stream/tickets", tag = "events",
    responses((status = 201, body = StreamTicket),
              (status = 401, description = "unauthenticated or session_revoked", body = crate::error::Problem)),
    security(("bearer" = [])))]
pub async fn create_ticket(
    State(ctx): State<ApiContext>,
    principal: Principal,
) -> ApiResult<(StatusCode, Json<StreamTicket>)> {
    let ticket = crate::auth::new_refresh_token();
    let ttl = chrono::Duration::from_std(TICKET_TTL).expect("a short TTL");
    let owner = StreamTicketDoc {
        ticket_hash: String::new(),
        user_id: principal.user_id.clone(),
        role: principal.role,
        auth_time: principal.auth_time,
        session_id: principal.session_id.clone(),
        expires_at: coffer_store::codec::now() + ttl,
    };
    ctx.store().create_stream_ticket(&ticket, owner).await?;
    let expires_in = TICKET_TTL.as_secs();
    Ok((StatusCode::CREATED, Json(StreamTicket { ticket, expires_in })))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// A ticket from `POST /v1/stream/tickets`, for clients that cannot send an Authorization
    /// header; used once.
    pub ticket: Option<String>,
    /// The id of the last event the client saw: missed events are sent first.
    #[param(format = Uuid)]
    pub after: Option<String>,
}

/// Open the event stream (WebSocket). Sends CloudEvents 1.0 JSON text frames; see docs/events.md.
#[utoipa::path(get, path = "/v1/stream", tag = "events", params(StreamQuery),
    responses((status = 101, description = "switching to the WebSocket protocol"),
              (status = 400, description = "invalid_query or websocket_upgrade_required", body = crate::error::Problem),
              (status = 401, description = "unauthenticated", body = crate::error::Problem)),
    security(("bearer" = []), ("stream_ticket" = [])))]
pub async fn stream(
    State(ctx): State<ApiContext>,
    headers: HeaderMap,
    ValidQuery(query): ValidQuery<StreamQuery>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let principal = match (bearer(&headers), &query.ticket) {
        (Some(token), _) => ctx.tokens().verify_access(token)?,
        (None, Some(ticket)) => redeem(&ctx, ticket).await?,
        (None, None) => {
            return Err(ApiError::Unauthenticated {
                code: "unauthenticated",
            })
        }
    };
    crate::extract::require_active_session(&ctx, &principal).await?;
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
    // A client sends only pongs and a close: anything larger is refused by the protocol layer.
    let upgrade = upgrade
        .max_message_size(CLIENT_MESSAGE_BYTES_MAX)
        .max_frame_size(CLIENT_MESSAGE_BYTES_MAX);
    Ok(upgrade.on_upgrade(move |socket| serve(socket, ctx, principal, after)))
}

/// The caller a ticket was issued to; the ticket is spent.
async fn redeem(ctx: &ApiContext, ticket: &str) -> ApiResult<Principal> {
    let owner = ctx
        .store()
        .take_stream_ticket(ticket)
        .await?
        .ok_or(ApiError::Unauthenticated {
            code: "invalid_stream_ticket",
        })?;
    Ok(Principal {
        user_id: owner.user_id,
        role: owner.role,
        auth_time: owner.auth_time,
        session_id: owner.session_id,
    })
}

async fn serve(mut socket: WebSocket, ctx: ApiContext, principal: Principal, after: Option<String>) {
    let user_id = principal.user_id.clone();
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
    // A revoked session's streams close too, within the interval the session check allows.
    let check_every = ctx.config().session_check_interval.max(SESSION_CHECK_MIN);
    let mut session_check = tokio::time::interval_at(Instant::now() + check_every, check_every);
    loop {
        tokio::select! {
            _ = session_check.tick() => {
                let active = ctx.sessions().is_active(ctx.store(), &principal.session_id).await;
                // A database that cannot answer keeps the stream: the next tick asks again.
                if matches!(active, Ok(false)) {
                    return shut(socket, close::SESSION_ENDED, "session ended: log in again").await;
                }
            }
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
