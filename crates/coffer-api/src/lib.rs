//! Coffer's HTTP API v1.
//!
//! Handlers are thin: parse and authorize, call one store function, map its typed error to a
//! problem document in one place ([`error::ApiError`]). Routes are declared once, with their
//! OpenAPI description, through `utoipa-axum`, so the document cannot miss a route.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod address_book;
pub mod admin;
pub mod auth;
pub mod bulk;
pub mod chain;
pub mod config;
pub mod console;
pub mod conversions;
pub mod devices;
pub mod error;
pub mod extract;
pub mod graphql;
pub mod idempotency;
pub mod keepalive;
pub mod liabilities;
pub mod limits;
pub mod metrics;
pub mod mfa;
pub mod money;
pub mod openapi;
pub mod ops;
pub mod returns;
pub mod sessions;
pub mod statements;
pub mod stream;
pub mod transactions;
pub mod views;
pub mod wallets;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{header, HeaderName, HeaderValue};
use axum::middleware::{from_fn, from_fn_with_state, Next};
use axum::response::Response;
use axum::Router;
use coffer_domain::LiveCatalog;
use coffer_store::Store;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use config::ApiConfig;

/// The state every handler shares.
#[derive(Clone)]
pub struct ApiContext {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    config: ApiConfig,
    assets: LiveCatalog,
    tokens: auth::TokenService,
    sessions: sessions::SessionCheck,
    limiters: Arc<limits::Limiters>,
    login_failures: limits::LoginFailures,
    hashing: limits::HashingSlots,
    metrics: metrics::HttpMetrics,
    registry: prometheus::Registry,
    reconciler: coffer_store::reconcile::Reconciler,
    stream_hub: coffer_events::StreamHub,
    health: coffer_telemetry::health::Health,
}

impl ApiContext {
    /// Builds the context; registers the HTTP metrics into `registry` (served at /metrics).
    /// `/readyz` checks the database in the background until [`ApiContext::with_health`] names
    /// every dependency. Call it inside the runtime.
    pub fn new(
        store: Store,
        config: ApiConfig,
        assets: LiveCatalog,
        registry: prometheus::Registry,
    ) -> prometheus::Result<Self> {
        let limiters = Arc::new(limits::Limiters::new(&config.rate_limits));
        let login_failures = limits::LoginFailures::new(
            config.rate_limits.login_failures_max,
            config.rate_limits.login_failure_window,
        );
        let hashing = limits::HashingSlots::new(config.rate_limits.password_hashing_concurrent_max);
        limits::spawn_pruner(&limiters);
        let metrics = metrics::HttpMetrics::new(&registry)?;
        for chain in config.chain_rpcs.keys() {
            metrics.init_chain(chain);
        }
        let tokens = auth::TokenService::new(&config);
        let sessions = sessions::SessionCheck::new(config.session_check_interval);
        let stream_metrics = coffer_events::StreamMetrics::new(&registry)?;
        let reconciler = coffer_store::reconcile::Reconciler {
            config: config.reconcile.clone(),
            custody: Arc::new(coffer_store::reconcile::NoChainConfigured),
            metrics: coffer_store::reconcile::ReconcileMetrics::new(&registry)?,
        };
        let health = store_health(&store).start();
        Ok(ApiContext {
            inner: Arc::new(Inner {
                health,
                store,
                config,
                assets,
                tokens,
                sessions,
                limiters,
                login_failures,
                hashing,
                metrics,
                registry,
                reconciler,
                stream_hub: coffer_events::StreamHub::with_metrics(
                    coffer_events::hub::DEFAULT_BUFFER,
                    coffer_events::hub::DEFAULT_MAX_PER_USER,
                    stream_metrics,
                ),
            }),
        })
    }

    /// Uses `source` for the custody check of on-demand reconciliations (before the context is shared).
    pub fn with_custody_source(mut self, source: Arc<dyn coffer_store::reconcile::CustodySource>) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("the custody source is set before the context is cloned")
            .reconciler
            .custody = source;
        self
    }

    /// Uses `health` for `/readyz` (before the context is shared): the binary adds the stream
    /// consumer's broker channel to the database.
    pub fn with_health(mut self, health: coffer_telemetry::health::Health) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("the health checks are set before the context is cloned")
            .health = health;
        self
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The dependencies `/readyz` reports.
    pub fn health(&self) -> &coffer_telemetry::health::Health {
        &self.inner.health
    }
    pub fn config(&self) -> &ApiConfig {
        &self.inner.config
    }
    pub fn assets(&self) -> &LiveCatalog {
        &self.inner.assets
    }
    pub fn tokens(&self) -> &auth::TokenService {
        &self.inner.tokens
    }
    /// Whether an access token's session is still active (see [`sessions`]).
    pub fn sessions(&self) -> &sessions::SessionCheck {
        &self.inner.sessions
    }
    /// Failed logins per account and client network.
    pub fn login_failures(&self) -> &limits::LoginFailures {
        &self.inner.login_failures
    }
    /// The bound on concurrent password hashing.
    pub fn hashing(&self) -> &limits::HashingSlots {
        &self.inner.hashing
    }
    pub fn limiters(&self) -> &limits::Limiters {
        &self.inner.limiters
    }
    pub fn metrics(&self) -> &metrics::HttpMetrics {
        &self.inner.metrics
    }
    pub fn registry(&self) -> &prometheus::Registry {
        &self.inner.registry
    }
    pub fn reconciler(&self) -> &coffer_store::reconcile::Reconciler {
        &self.inner.reconciler
    }

    /// The connections of `GET /v1/stream`; the binary feeds it from the broker.
    pub fn stream_hub(&self) -> &coffer_events::StreamHub {
        &self.inner.stream_hub
    }
}

/// The readiness check of the database every role that holds a [`Store`] starts from.
pub fn store_health(store: &Store) -> coffer_telemetry::health::HealthBuilder {
    let store = store.clone();
    coffer_telemetry::health::Health::builder().ping("mongodb", move || {
        let store = store.clone();
        async move { store.ping().await.map_err(|e| e.to_string()) }
    })
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .bearer_format("JWT")
            .build();
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Coffer API", version = "2.0.0", description = "Custodial wallet API. Amounts are decimal strings; errors are application/problem+json with a stable `code` (see docs/api.md)."),
    modifiers(&BearerAuth),
    tags((name = "auth"), (name = "wallets"), (name = "money"), (name = "transactions"), (name = "operations"), (name = "admin"), (name = "events"), (name = "devices"), (name = "liabilities"))
)]
struct ApiDoc;

/// The route groups, each with the layers it needs.
struct Groups {
    operations: OpenApiRouter<ApiContext>,
    /// `/metrics`, routed unless the process serves it on its own port.
    metrics: OpenApiRouter<ApiContext>,
    auth: OpenApiRouter<ApiContext>,
    reads: OpenApiRouter<ApiContext>,
    writes: OpenApiRouter<ApiContext>,
    money: OpenApiRouter<ApiContext>,
    bulk: OpenApiRouter<ApiContext>,
    admin_reads: OpenApiRouter<ApiContext>,
    admin_writes: OpenApiRouter<ApiContext>,
}

fn groups() -> Groups {
    Groups {
        operations: OpenApiRouter::new()
            .routes(routes!(ops::healthz))
            .routes(routes!(ops::readyz))
            .routes(routes!(ops::openapi_json))
            .routes(routes!(chain::webhook)),
        metrics: OpenApiRouter::new().routes(routes!(ops::metrics)),
        auth: OpenApiRouter::new()
            .routes(routes!(auth::register))
            .routes(routes!(auth::login))
            .routes(routes!(auth::refresh))
            .routes(routes!(auth::logout))
            .routes(routes!(auth::logout_all))
            .routes(routes!(auth::change_password)),
        reads: OpenApiRouter::new()
            .routes(routes!(wallets::list_wallets))
            .routes(routes!(wallets::get_wallet))
            .routes(routes!(wallets::wallet_ledger))
            .routes(routes!(statements::statement))
            .routes(routes!(statements::statement_csv))
            .routes(routes!(transactions::list_transactions))
            .routes(routes!(transactions::get_transaction))
            .routes(routes!(stream::stream))
            .routes(routes!(stream::create_ticket))
            .routes(routes!(chain::deposit_address))
            .routes(routes!(chain::wallet_deposits))
            .routes(routes!(liabilities::wallet_liability_proof))
            // Public, but limited per client IP like every read (no token: no per-user limit).
            .routes(routes!(liabilities::get_liabilities))
            .routes(routes!(devices::list_devices))
            .routes(routes!(address_book::list_addresses))
            // Read-only GraphQL over the same reads: a POST, but no side effect and no Idempotency-Key.
            .routes(routes!(graphql::graphql)),
        writes: OpenApiRouter::new()
            .routes(routes!(wallets::create_wallet))
            .routes(routes!(devices::register_device))
            .routes(routes!(devices::trust_device))
            .routes(routes!(devices::revoke_device))
            .routes(routes!(address_book::save_address))
            .routes(routes!(address_book::remove_address))
            .routes(routes!(conversions::create_quote)),
        money: OpenApiRouter::new()
            .routes(routes!(money::create_transfer))
            .routes(routes!(money::create_deposit))
            .routes(routes!(money::create_withdrawal))
            .routes(routes!(conversions::create_conversion))
            .routes(routes!(returns::create_refund))
            .routes(routes!(returns::create_dispute))
            .routes(routes!(returns::resolve_dispute)),
        bulk: bulk::router(),
        admin_reads: admin::reads(),
        admin_writes: admin::writes(),
    }
}

/// Every route the API serves, as (method, path template), read from the OpenAPI document: the
/// router and the document are built from the same registrations (`utoipa-axum`), so this list
/// cannot drift from either.
pub fn routes() -> Vec<(String, String)> {
    openapi::operations(openapi())
        .into_iter()
        .map(|(method, path, _)| (method, path))
        .collect()
}

/// The OpenAPI 3.1 document of every route (built once).
pub fn openapi() -> &'static serde_json::Value {
    static DOCUMENT: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    DOCUMENT.get_or_init(build_openapi)
}

/// [`openapi`] as served and committed (docs/openapi.json): pretty JSON.
pub fn openapi_json() -> String {
    serde_json::to_string_pretty(openapi()).expect("the document serializes")
}

fn build_openapi() -> serde_json::Value {
    let g = groups();
    // The same layers as in `router_with`.
    let mut layers = openapi::Layers::default();
    layers.add(g.auth.get_openapi(), false, true);
    layers.add(g.writes.get_openapi(), true, true);
    layers.add(g.money.get_openapi(), true, true);
    layers.add(g.bulk.get_openapi(), true, true);
    layers.add(g.admin_writes.get_openapi(), true, true);
    layers.add(g.reads.get_openapi(), false, true);
    layers.add(g.admin_reads.get_openapi(), false, true);
    let doc = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(g.operations)
        .merge(g.metrics)
        .merge(g.auth)
        .merge(g.reads)
        .merge(g.writes)
        .merge(g.money)
        .merge(g.bulk)
        .merge(g.admin_reads)
        .merge(g.admin_writes)
        .into_openapi();
    let mut doc = serde_json::to_value(doc).expect("the document serializes");
    openapi::finish(&mut doc, &layers);
    doc
}

/// The application, with its layers.
pub fn router(ctx: ApiContext) -> Router {
    router_with(ctx, Router::new())
}

/// The application with `extra` routes under the same layers (a test reaches a failing handler
/// through it).
pub fn router_with(ctx: ApiContext, extra: Router<ApiContext>) -> Router {
    let g = groups();
    let (mut operations, _) = g.operations.split_for_parts();
    if ctx.config().metrics_on_api_port {
        operations = operations.merge(g.metrics.split_for_parts().0);
    }
    let (auth, _) = g.auth.split_for_parts();
    let (reads, _) = g.reads.split_for_parts();
    let (writes, _) = g.writes.split_for_parts();
    let (money, _) = g.money.split_for_parts();
    let (bulk, _) = g.bulk.split_for_parts();
    let (admin_reads, _) = g.admin_reads.split_for_parts();
    let (admin_writes, _) = g.admin_writes.split_for_parts();
    // Admin writes take Idempotency-Key like every mutating route.
    let admin_writes = admin_writes
        .route_layer(from_fn_with_state(ctx.clone(), idempotency::middleware))
        .route_layer(from_fn_with_state(ctx.clone(), limits::money_limit));
    let auth = auth.route_layer(from_fn_with_state(ctx.clone(), limits::auth_limit));
    let reads = reads.route_layer(from_fn_with_state(ctx.clone(), limits::reads_limit));
    let admin_reads = admin_reads.route_layer(from_fn_with_state(ctx.clone(), limits::reads_limit));
    let writes = writes
        .route_layer(from_fn_with_state(ctx.clone(), idempotency::middleware))
        .route_layer(from_fn_with_state(ctx.clone(), limits::money_limit));
    // Money routes store their idempotent response in the movement's own transaction.
    let money = money
        .route_layer(from_fn_with_state(ctx.clone(), idempotency::money_middleware))
        .route_layer(from_fn_with_state(ctx.clone(), limits::money_limit));
    // Bulk postings: each deposit's reference is its ledger key; the whole answer is kept for the
    // Idempotency-Key, and the body may be larger than other requests'.
    let bulk = bulk
        .route_layer(from_fn_with_state(ctx.clone(), idempotency::middleware))
        .route_layer(axum::Extension(idempotency::BodyLimitBytes(
            bulk::BULK_BODY_LIMIT_BYTES,
        )))
        .route_layer(from_fn_with_state(ctx.clone(), limits::money_limit))
        .route_layer(DefaultBodyLimit::max(bulk::BULK_BODY_LIMIT_BYTES));
    let request_id = HeaderName::from_static("x-request-id");
    Router::new()
        .merge(operations)
        .merge(auth)
        .merge(reads)
        .merge(writes)
        .merge(money)
        .merge(bulk)
        .merge(admin_reads)
        .merge(admin_writes)
        // The support console: HTML pages, not part of the JSON API's document.
        .merge(console::router(&ctx))
        .merge(extra)
        .fallback(|| async { error::ApiError::NotFound })
        // A known path with a method it does not take: problem+json 405 (axum adds `Allow`).
        .method_not_allowed_fallback(|| async { error::ApiError::MethodNotAllowed })
        // Inside the metrics layer, so a panic is counted and logged as the 500 it becomes.
        .route_layer(CatchPanicLayer::custom(panic_response))
        .route_layer(from_fn(openapi::location_header))
        .route_layer(from_fn_with_state(ctx.clone(), metrics::track))
        .layer(DefaultBodyLimit::max(ctx.config().body_limit_bytes))
        .layer(from_fn(echo_traceparent))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(http_span)
                .on_response(RecordStatus),
        )
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        // Every response is private to its caller (balances, transactions, tokens): no cache may
        // keep it unless a handler says otherwise, and no browser may sniff a JSON body as HTML.
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        // Outermost, so that every answer, the fallbacks' included, says when it closes.
        .layer(from_fn(keepalive::close_when_body_unread))
        .with_state(ctx)
}

/// A handler that panicked answers like any other internal error: a problem+json 500 with no
/// detail (the panic message may hold data; the panic hook has printed it to stderr already).
fn panic_response(_payload: Box<dyn std::any::Any + Send + 'static>) -> Response {
    use axum::response::IntoResponse;
    error::ApiError::Internal("a handler panicked".into()).into_response()
}

/// Routes whose path parameter identifies a person: their `url.path` is the template.
const ROUTES_NAMING_A_USER: &[&str] = &[
    "/v1/admin/users/{id}/wallets",
    "/v1/admin/users/{id}/sessions/revoke",
];

/// The server span of a request, with the OpenTelemetry HTTP attributes; its parent is the
/// client's span when the request carries a valid W3C `traceparent`. The path holds object ids
/// (a user's id only as its template), never secrets; the query string, bodies and other
/// headers are left out. The same fields are in every log line of the request.
fn http_span(request: &Request) -> tracing::Span {
    let headers = request.headers();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let method = request.method().as_str();
    // Layers added with `Router::layer` run after routing, so the route template is known.
    let route = request.extensions().get::<MatchedPath>().map(MatchedPath::as_str);
    let name = match route {
        Some(route) => format!("{method} {route}"),
        None => method.to_string(),
    };
    let path = match route {
        Some(route) if ROUTES_NAMING_A_USER.contains(&route) => route,
        _ => request.uri().path(),
    };
    let span = tracing::info_span!(
        "http",
        otel.name = name.as_str(),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = method,
        http.route = tracing::field::Empty,
        url.path = path,
        http.response.status_code = tracing::field::Empty,
        request_id = header("x-request-id").unwrap_or(""),
    );
    if let Some(route) = route {
        span.record("http.route", route);
    }
    coffer_telemetry::propagation::set_parent_from_traceparent(
        &span,
        header("traceparent"),
        header("tracestate"),
    );
    span
}

/// Records the status on the request's span (an error status for 5xx only: a 4xx is the
/// client's), then logs the response as before.
#[derive(Clone, Copy)]
struct RecordStatus;

impl<B> tower_http::trace::OnResponse<B> for RecordStatus {
    fn on_response(self, response: &Response<B>, latency: std::time::Duration, span: &tracing::Span) {
        let status = response.status().as_u16();
        span.record("http.response.status_code", status);
        if status >= 500 {
            span.record("otel.status_code", "ERROR");
        }
        DefaultOnResponse::new()
            .level(tracing::Level::INFO)
            .on_response(response, latency, span)
    }
}

/// Echoes a valid W3C `traceparent` so a client can correlate its request with our traces.
async fn echo_traceparent(request: Request, next: Next) -> Response {
    let traceparent = request
        .headers()
        .get("traceparent")
        .cloned()
        .filter(valid_traceparent);
    // Outbox rows written by this request carry its trace context to the broker.
    let scoped = traceparent
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut response = match scoped {
        Some(text) => {
            coffer_store::model::TRACEPARENT
                .scope(text, next.run(request))
                .await
        }
        None => next.run(request).await,
    };
    if let Some(value) = traceparent {
        response.headers_mut().insert("traceparent", value);
    }
    response
}

fn valid_traceparent(value: &HeaderValue) -> bool {
    let Ok(text) = value.to_str() else { return false };
    let parts: Vec<&str> = text.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    parts.len() == 4 && hex(parts[0], 2) && hex(parts[1], 32) && hex(parts[2], 16) && hex(parts[3], 2)
}

/// Serves the API on `listener` until `shutdown` resolves, then drains in-flight requests.
pub async fn serve(
    ctx: ApiContext,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(ctx, Router::new(), listener, shutdown).await
}

/// [`serve`] with `extra` routes (see [`router_with`]).
pub async fn serve_with(
    ctx: ApiContext,
    extra: Router<ApiContext>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // Without TCP_NODELAY a response written in two segments waits for the client's delayed ACK
    // (~40 ms on Linux): measured, it quadrupled the latency of every request.
    let listener = listener.tap_io(|stream| {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::warn!(%error, "could not set TCP_NODELAY");
        }
    });
    let app = router_with(ctx, extra).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_routes_naming_a_user_are_routes() {
        let routes = routes();
        for route in ROUTES_NAMING_A_USER {
            assert!(routes.iter().any(|(_, path)| path == route), "{route} is routed");
        }
    }
}
