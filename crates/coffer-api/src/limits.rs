//! S4 rate limits: per client IP on auth endpoints, per user and per IP on money endpoints.
//! Keyed GCRA limiters (`governor`); their key sets are pruned periodically so memory is bounded
//! by the number of recently active clients.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::RateLimits;
use crate::error::ApiError;
use crate::extract::bearer;
use crate::ApiContext;

pub struct Limiters {
    auth_ip: DefaultKeyedRateLimiter<IpAddr>,
    money_user: DefaultKeyedRateLimiter<String>,
    money_ip: DefaultKeyedRateLimiter<IpAddr>,
}

fn per_minute(count: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(count.max(1)).expect("at least one"))
}

impl Limiters {
    pub fn new(limits: &RateLimits) -> Self {
        Limiters {
            auth_ip: RateLimiter::keyed(per_minute(limits.auth_per_ip_per_minute)),
            money_user: RateLimiter::keyed(per_minute(limits.money_per_user_per_minute)),
            money_ip: RateLimiter::keyed(per_minute(limits.money_per_ip_per_minute)),
        }
    }

    /// Drops the state of keys that are idle again; run periodically.
    pub fn prune(&self) {
        self.auth_ip.retain_recent();
        self.money_user.retain_recent();
        self.money_ip.retain_recent();
    }
}

/// Prunes the limiters every minute for as long as they exist.
pub fn spawn_pruner(limiters: &Arc<Limiters>) {
    let weak = Arc::downgrade(limiters);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            let Some(limiters) = weak.upgrade() else { return };
            limiters.prune();
        }
    });
}

fn check<K: std::hash::Hash + Eq + Clone>(
    limiter: &DefaultKeyedRateLimiter<K>,
    key: &K,
) -> Result<(), ApiError> {
    limiter.check_key(key).map_err(|not_until| {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        ApiError::RateLimited {
            retry_after_seconds: wait.as_secs().max(1),
        }
    })
}

/// The client IP: the TCP peer, or the configured trusted proxy header's first address.
pub fn client_ip(ctx: &ApiContext, headers: &HeaderMap, peer: Option<SocketAddr>) -> Option<IpAddr> {
    if let Some(name) = &ctx.config().client_ip_header {
        let forwarded = headers.get(name.as_str()).and_then(|v| v.to_str().ok());
        if let Some(ip) = forwarded
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.trim().parse().ok())
        {
            return Some(ip);
        }
    }
    peer.map(|p| p.ip())
}

fn peer_of(request: &Request) -> Option<SocketAddr> {
    request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0)
}

pub async fn auth_limit(State(ctx): State<ApiContext>, request: Request, next: Next) -> Response {
    if let Some(ip) = client_ip(&ctx, request.headers(), peer_of(&request)) {
        if let Err(error) = check(&ctx.limiters().auth_ip, &ip) {
            ctx.metrics().rate_limited.with_label_values(&["auth_ip"]).inc();
            return error.into_response();
        }
    }
    next.run(request).await
}

pub async fn money_limit(State(ctx): State<ApiContext>, request: Request, next: Next) -> Response {
    if let Some(ip) = client_ip(&ctx, request.headers(), peer_of(&request)) {
        if let Err(error) = check(&ctx.limiters().money_ip, &ip) {
            ctx.metrics().rate_limited.with_label_values(&["money_ip"]).inc();
            return error.into_response();
        }
    }
    let user = bearer(request.headers()).and_then(|t| ctx.tokens().verify_access(t).ok());
    if let Some(user) = user {
        if let Err(error) = check(&ctx.limiters().money_user, &user.user_id) {
            ctx.metrics()
                .rate_limited
                .with_label_values(&["money_user"])
                .inc();
            return error.into_response();
        }
    }
    next.run(request).await
}
