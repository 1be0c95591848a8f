//! S4 rate limits: per client IP on auth endpoints, per user and per IP on money endpoints, on
//! read routes and on stream upgrades; every limited response says its closest limit in the IETF
//! `RateLimit-Policy` / `RateLimit` headers.
//! Keyed GCRA limiters (`governor`); their key sets are pruned periodically so memory is bounded
//! by the number of recently active clients.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::config::RateLimits;
use crate::error::ApiError;
use crate::extract::bearer;
use crate::ApiContext;

/// A keyed GCRA limiter that reports its state (for the `RateLimit` headers).
type Limiter<K> = RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock, StateInformationMiddleware>;

/// One limit: a name (the `RateLimit-Policy` item), a quota per minute and its limiter.
struct Policy<K: std::hash::Hash + Eq + Clone> {
    name: &'static str,
    per_minute: u32,
    limiter: Limiter<K>,
}

impl<K: std::hash::Hash + Eq + Clone> Policy<K> {
    fn new(name: &'static str, per_minute: u32) -> Self {
        let per_minute = per_minute.max(1);
        let quota = Quota::per_minute(NonZeroU32::new(per_minute).expect("at least one"));
        Policy {
            name,
            per_minute,
            limiter: RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>(),
        }
    }

    /// Takes one request from `key`'s budget; the verdict either way.
    fn check(&self, key: &K) -> Verdict {
        match self.limiter.check_key(key) {
            Ok(state) => {
                let remaining = state.remaining_burst_capacity();
                // The budget refills one request every 60 / quota seconds.
                let missing = u64::from(self.per_minute.saturating_sub(remaining));
                let reset_seconds = (missing * 60).div_ceil(u64::from(self.per_minute));
                Verdict {
                    name: self.name,
                    quota: self.per_minute,
                    remaining,
                    reset_seconds,
                    refused: false,
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Verdict {
                    name: self.name,
                    quota: self.per_minute,
                    remaining: 0,
                    reset_seconds: wait.as_secs().max(1),
                    refused: true,
                }
            }
        }
    }
}

/// What one limit said of a request.
#[derive(Debug, Clone, Copy)]
pub struct Verdict {
    name: &'static str,
    quota: u32,
    remaining: u32,
    reset_seconds: u64,
    refused: bool,
}

impl Verdict {
    /// The closest limit of several: a refusal, else the one with the least left.
    fn closest(verdicts: &[Verdict]) -> Option<Verdict> {
        verdicts.iter().copied().min_by_key(|v| (!v.refused, v.remaining))
    }

    /// Sets the IETF `RateLimit-Policy` and `RateLimit` headers
    /// (draft-ietf-httpapi-ratelimit-headers): the quota per 60 s window, what is left of it and
    /// the seconds until it is whole again (or until the refused request may be retried).
    fn annotate(&self, response: &mut Response) {
        let policy = format!("\"{}\";q={};w=60", self.name, self.quota);
        let state = format!("\"{}\";r={};t={}", self.name, self.remaining, self.reset_seconds);
        for (name, value) in [("ratelimit-policy", policy), ("ratelimit", state)] {
            if let Ok(value) = HeaderValue::from_str(&value) {
                response.headers_mut().insert(name, value);
            }
        }
    }
}

pub struct Limiters {
    auth_ip: Policy<IpAddr>,
    money_user: Policy<String>,
    money_ip: Policy<IpAddr>,
    reads_user: Policy<String>,
    reads_ip: Policy<IpAddr>,
}

impl Limiters {
    pub fn new(limits: &RateLimits) -> Self {
        Limiters {
            auth_ip: Policy::new("auth_ip", limits.auth_per_ip_per_minute),
            money_user: Policy::new("money_user", limits.money_per_user_per_minute),
            money_ip: Policy::new("money_ip", limits.money_per_ip_per_minute),
            reads_user: Policy::new("reads_user", limits.reads_per_user_per_minute),
            reads_ip: Policy::new("reads_ip", limits.reads_per_ip_per_minute),
        }
    }

    /// Drops the state of keys that are idle again; run periodically.
    pub fn prune(&self) {
        self.auth_ip.limiter.retain_recent();
        self.money_user.limiter.retain_recent();
        self.money_ip.limiter.retain_recent();
        self.reads_user.limiter.retain_recent();
        self.reads_ip.limiter.retain_recent();
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

/// A network of trusted proxies, `addr/prefix` (`10.0.0.0/8`, `fd00::/8`) or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (address, prefix) = text.trim().split_once('/').unwrap_or((text.trim(), ""));
        let network: IpAddr = address
            .parse()
            .map_err(|_| format!("{text:?} is not an IP network"))?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = if prefix.is_empty() {
            bits
        } else {
            prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(|| format!("{text:?}: the prefix must be 0 to {bits}"))?
        };
        Ok(Cidr { network, prefix })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The key a client IP is limited by: an IPv4 address, or the /64 of an IPv6 address (one
/// subscriber's allocation: keying by full address would give each attacker 2^64 budgets).
pub fn rate_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & (u128::MAX << 64)).into()),
        v4 => v4,
    }
}

/// The client IP of a request that reached us from `peer`. Without a configured header it is the
/// peer. With one, the header is believed only when the peer is a trusted proxy (any peer counts
/// as the one trusted proxy when no networks are configured): its comma-separated hops are read
/// right to left (each proxy appends the address it saw) and the first hop that is not a trusted
/// proxy is the client. The left-most entries are whatever the client wrote and are never taken
/// while an untrusted hop stands to their right.
pub fn client_ip_from(forwarded: Option<&str>, peer: IpAddr, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));
    let Some(forwarded) = forwarded else { return peer };
    if !trusted.is_empty() && !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    for hop in forwarded.rsplit(',') {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            // A hop we cannot read: what lies left of it cannot be trusted either.
            return client;
        };
        client = ip;
        if !is_trusted(ip) {
            return ip;
        }
    }
    client
}

/// The client IP: the TCP peer, or the right-most untrusted hop of the configured proxy header.
pub fn client_ip(ctx: &ApiContext, headers: &HeaderMap, peer: Option<SocketAddr>) -> Option<IpAddr> {
    let peer = peer?.ip();
    let config = ctx.config();
    let Some(name) = &config.client_ip_header else {
        return Some(peer);
    };
    let forwarded = headers.get(name.as_str()).and_then(|v| v.to_str().ok());
    Some(client_ip_from(forwarded, peer, &config.trusted_proxies))
}

/// The client IP of a request, as an extractor (None when the server runs without peer info).
pub struct ClientIp(pub Option<IpAddr>);

impl axum::extract::FromRequestParts<ApiContext> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        ctx: &ApiContext,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
        Ok(ClientIp(client_ip(ctx, &parts.headers, peer)))
    }
}

/// Failed logins per (account, client network): after `max` failures within `window`, that
/// pair is refused (429) until the window ends, even with the right password. An attacker from
/// elsewhere throttles only its own networks: the owner, from theirs, still logs in. Bounded: at
/// most [`LOGIN_KEYS_MAX`] pairs are remembered; beyond it, expired ones go first, then all.
pub struct LoginFailures {
    max: u32,
    window: Duration,
    entries: std::sync::Mutex<std::collections::HashMap<LoginKey, (u32, std::time::Instant)>>,
}

/// An account (lower-cased e-mail) and the client network it was tried from.
type LoginKey = (String, Option<IpAddr>);

/// Most (account, network) pairs remembered by [`LoginFailures`].
pub const LOGIN_KEYS_MAX: usize = 100_000;

impl LoginFailures {
    pub fn new(max: u32, window: Duration) -> Self {
        LoginFailures {
            max: max.max(1),
            window,
            entries: Default::default(),
        }
    }

    fn key(email: &str, ip: Option<IpAddr>) -> LoginKey {
        (email.trim().to_lowercase(), ip.map(rate_key))
    }

    /// Refuses a login attempt of a pair that failed too often within the window.
    pub fn check(&self, email: &str, ip: Option<IpAddr>) -> Result<(), ApiError> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let Some((failures, since)) = entries.get(&Self::key(email, ip)).copied() else {
            return Ok(());
        };
        let elapsed = since.elapsed();
        if elapsed >= self.window {
            entries.remove(&Self::key(email, ip));
            return Ok(());
        }
        if failures >= self.max {
            let wait = self.window - elapsed;
            return Err(ApiError::RateLimited {
                retry_after_seconds: wait.as_secs().max(1),
            });
        }
        Ok(())
    }

    /// Counts a failed attempt (wrong password or code).
    pub fn failed(&self, email: &str, ip: Option<IpAddr>) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= LOGIN_KEYS_MAX {
            let window = self.window;
            entries.retain(|_, (_, since)| since.elapsed() < window);
            if entries.len() >= LOGIN_KEYS_MAX {
                entries.clear();
            }
        }
        let window = self.window;
        let entry = entries
            .entry(Self::key(email, ip))
            .or_insert((0, std::time::Instant::now()));
        if entry.1.elapsed() >= window {
            *entry = (0, std::time::Instant::now());
        }
        entry.0 += 1;
    }

    /// Forgets a pair's failures after a successful login.
    pub fn succeeded(&self, email: &str, ip: Option<IpAddr>) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.remove(&Self::key(email, ip));
    }
}

/// Bounds the password hashes computed at once (argon2id takes memory and CPU by design): beyond
/// the bound a request is answered `503 retry_later` with `Retry-After` instead of queueing
/// without limit.
pub struct HashingSlots(std::sync::Arc<tokio::sync::Semaphore>);

impl HashingSlots {
    pub fn new(concurrent_max: usize) -> Self {
        HashingSlots(std::sync::Arc::new(tokio::sync::Semaphore::new(
            concurrent_max.max(1),
        )))
    }

    /// A slot for one hash, or `retry_later`.
    pub fn acquire(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        self.0
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::RetryLater {
                retry_after_seconds: 1,
            })
    }
}

fn peer_of(request: &Request) -> Option<SocketAddr> {
    request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0)
}

/// Runs `request` unless one of `verdicts` refused it; the closest limit's headers either way.
async fn limited(ctx: &ApiContext, verdicts: &[Verdict], request: Request, next: Next) -> Response {
    let closest = Verdict::closest(verdicts);
    let mut response = match closest {
        Some(verdict) if verdict.refused => {
            ctx.metrics()
                .rate_limited
                .with_label_values(&[verdict.name])
                .inc();
            ApiError::RateLimited {
                retry_after_seconds: verdict.reset_seconds,
            }
            .into_response()
        }
        _ => next.run(request).await,
    };
    if let Some(verdict) = closest {
        verdict.annotate(&mut response);
    }
    response
}

/// The verdicts of a per-IP and a per-user limit (the user from a valid access token).
fn ip_and_user(
    ctx: &ApiContext,
    request: &Request,
    by_ip: &Policy<IpAddr>,
    by_user: &Policy<String>,
) -> Vec<Verdict> {
    let mut verdicts = Vec::with_capacity(2);
    if let Some(ip) = client_ip(ctx, request.headers(), peer_of(request)) {
        verdicts.push(by_ip.check(&rate_key(ip)));
    }
    let user = bearer(request.headers()).and_then(|t| ctx.tokens().verify_access(t).ok());
    if let Some(user) = user {
        verdicts.push(by_user.check(&user.user_id));
    }
    verdicts
}

pub async fn auth_limit(State(ctx): State<ApiContext>, request: Request, next: Next) -> Response {
    let verdicts: Vec<Verdict> = client_ip(&ctx, request.headers(), peer_of(&request))
        .map(|ip| ctx.limiters().auth_ip.check(&rate_key(ip)))
        .into_iter()
        .collect();
    limited(&ctx, &verdicts, request, next).await
}

pub async fn money_limit(State(ctx): State<ApiContext>, request: Request, next: Next) -> Response {
    let limiters = ctx.limiters();
    let verdicts = ip_and_user(&ctx, &request, &limiters.money_ip, &limiters.money_user);
    limited(&ctx, &verdicts, request, next).await
}

/// Read routes and stream upgrades: per user and per client IP.
pub async fn reads_limit(State(ctx): State<ApiContext>, request: Request, next: Next) -> Response {
    let limiters = ctx.limiters();
    let verdicts = ip_and_user(&ctx, &request, &limiters.reads_ip, &limiters.reads_user);
    limited(&ctx, &verdicts, request, next).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn the_client_is_the_right_most_hop_that_is_not_a_trusted_proxy() {
        let trusted = nets(&["10.0.0.0/8", "fd00::/8"]);
        let peer = ip("10.1.2.3");
        // The client wrote "1.1.1.1" itself; the edge proxy appended the address it saw.
        let header = Some("1.1.1.1, 203.0.113.7, 10.9.9.9");
        assert_eq!(client_ip_from(header, peer, &trusted), ip("203.0.113.7"));
        // Every hop trusted: the left-most one.
        assert_eq!(
            client_ip_from(Some("10.2.2.2, 10.3.3.3"), peer, &trusted),
            ip("10.2.2.2")
        );
        // An unreadable hop: nothing left of it is believed.
        assert_eq!(
            client_ip_from(Some("1.1.1.1, garbage, 10.3.3.3"), peer, &trusted),
            ip("10.3.3.3")
        );
        // A peer that is no trusted proxy: the header is the client's own words.
        assert_eq!(
            client_ip_from(header, ip("198.51.100.1"), &trusted),
            ip("198.51.100.1")
        );
        assert_eq!(client_ip_from(None, peer, &trusted), peer);
    }

    #[test]
    fn with_no_networks_configured_the_peer_is_the_one_trusted_proxy() {
        let header = Some("1.1.1.1, 203.0.113.7");
        assert_eq!(client_ip_from(header, ip("127.0.0.1"), &[]), ip("203.0.113.7"));
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(
            rate_key(ip("2001:db8:1:2:aaaa::1")),
            rate_key(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(rate_key(ip("2001:db8:1:2::1")), rate_key(ip("2001:db8:1:3::1")));
        assert_eq!(rate_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        assert!("10.0.0.0/8"
            .parse::<Cidr>()
            .unwrap()
            .contains(ip("::ffff:10.4.4.4")));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("8.8.8.8")));
    }
}
