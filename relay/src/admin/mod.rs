//! The admin listener: Prometheus metrics, the operators' web console and its JSON API, on
//! an address of its own (loopback by default; TLS is required anywhere else).
//!
//! # Layout
//! - this file: the listener, its limits and the route table ([`ROUTES`]), which both the
//!   router and the OpenAPI test read.
//! - [`auth`]: sign-in sessions, CSRF tokens, the sign-in rate limit, and the guard every
//!   route passes through.
//! - [`actions`]: what an operator can do, shared by pages and API, each one audited.
//! - [`audit_view`]: the audit log page, its JSON-lines export and its API.
//! - [`live`]: the machines, sessions and nodes tables, and the server-sent events that
//!   refresh them.
//! - [`cluster_view`]: the nodes page, and ending a session on any node.
//! - [`pages`] and [`api`]: the HTML pages (askama templates in `relay/templates/`) and the
//!   JSON API (`docs/admin-api.yaml`).

pub mod actions;
pub mod api;
pub mod audit_view;
pub mod auth;
pub mod cli;
pub mod cluster_view;
pub mod live;
pub mod pages;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tower_http::limit::RequestBodyLimitLayer;
use tracing::{debug, info, warn, Instrument};

use crate::Relay;

/// The default admin address: loopback only.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9480";

/// Limits of the admin listener.
#[derive(Clone)]
pub struct AdminOptions {
    /// TLS for the listener; `None` serves plain HTTP (loopback only, checked by the config).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// How long a client has to send a request's header (and a TLS handshake).
    pub header_timeout: Duration,
    /// How long one request may take, body included (not the event stream).
    pub request_timeout: Duration,
    /// The largest request body.
    pub body_limit: usize,
    /// Most connections open at once.
    pub max_connections: usize,
    /// How long open requests may finish after shutdown starts.
    pub shutdown_grace: Duration,
}

impl Default for AdminOptions {
    fn default() -> Self {
        Self {
            tls: None,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            body_limit: 16 * 1024,
            max_connections: 256,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone who reaches the listener (sign-in page, metrics, style sheet and script).
    Public,
    /// A signed-in operator; others are sent to the sign-in page.
    Page,
    /// A signed-in operator or an API token; others get 401.
    Api,
}

/// One route of the admin listener.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// HTTP method, upper case.
    pub method: &'static str,
    /// Path in axum's (and OpenAPI's) `{param}` syntax.
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
}

/// Declares every route once: the [`ROUTES`] table and the router come from the same lines.
macro_rules! routes {
    ($( $method:ident $path:literal $access:ident => $handler:expr, )*) => {
        /// Every route the admin listener serves.
        pub const ROUTES: &[Route] = &[
            $( Route { method: stringify!($method), path: $path, access: Access::$access }, )*
        ];

        fn route_table() -> Router<Arc<Console>> {
            Router::new() $( .route($path, routes!(@method $method)($handler)) )*
        }
    };
    (@method GET) => { get };
    (@method POST) => { post };
    (@method DELETE) => { delete };
}

routes! {
    GET "/" Page => pages::home,
    GET "/signin" Public => pages::signin_form,
    POST "/signin" Public => pages::signin,
    POST "/signout" Page => pages::signout,
    GET "/machines" Page => pages::machines,
    POST "/machines/{id}/disable" Page => pages::disable_machine,
    POST "/machines/{id}/enable" Page => pages::enable_machine,
    POST "/machines/{id}/remove" Page => pages::remove_machine,
    GET "/sessions" Page => pages::sessions,
    POST "/sessions/{id}/end" Page => pages::end_session,
    GET "/nodes" Page => cluster_view::page,
    POST "/nodes/{node}/sessions/{id}/end" Page => cluster_view::end_session,
    GET "/tokens" Page => pages::tokens,
    POST "/tokens" Page => pages::create_token,
    POST "/tokens/{id}/revoke" Page => pages::revoke_token,
    GET "/audit" Page => audit_view::page,
    GET "/audit/export" Page => audit_view::export,
    GET "/events" Page => live::events,
    GET "/metrics" Public => metrics,
    GET "/static/{file}" Public => pages::asset,
    GET "/api/v1/machines" Api => api::machines,
    POST "/api/v1/machines/{id}/disable" Api => api::disable_machine,
    POST "/api/v1/machines/{id}/enable" Api => api::enable_machine,
    DELETE "/api/v1/machines/{id}" Api => api::remove_machine,
    GET "/api/v1/sessions" Api => api::sessions,
    DELETE "/api/v1/sessions/{id}" Api => api::end_session,
    GET "/api/v1/nodes" Api => cluster_view::api_nodes,
    DELETE "/api/v1/nodes/{node}/sessions/{id}" Api => cluster_view::api_end_session,
    GET "/api/v1/tokens" Api => api::tokens,
    POST "/api/v1/tokens" Api => api::create_token,
    DELETE "/api/v1/tokens/{id}" Api => api::revoke_token,
    GET "/api/v1/audit" Api => audit_view::api,
}

/// What every admin request shares.
pub struct Console {
    /// The relay being administered.
    pub relay: Arc<Relay>,
    /// Signed-in operators.
    pub sessions: auth::WebSessions,
    /// Failed sign-ins per address and per name.
    pub sign_in_failures: auth::SignInLimiter,
    /// Whether the listener serves TLS (cookies then carry `Secure`).
    pub tls: bool,
    /// Changes of the machines and sessions tables, for the event stream.
    pub changes: tokio::sync::watch::Receiver<u64>,
    /// Cancelled when the listener stops (ends event streams).
    pub stopping: CancellationToken,
    options: AdminOptions,
}

/// The admin router for `console`: routes, the guard, limits and security headers.
pub fn router(console: Arc<Console>) -> Router {
    let options = console.options.clone();
    route_table()
        .route_layer(middleware::from_fn_with_state(console.clone(), auth::guard))
        .layer(middleware::from_fn_with_state(console.clone(), time_limit))
        .layer(DefaultBodyLimit::max(options.body_limit))
        .layer(RequestBodyLimitLayer::new(options.body_limit))
        .layer(middleware::from_fn(security_headers))
        .with_state(console)
}

/// Cuts off a request (its body included) after the request timeout; the event stream runs
/// until the listener stops.
async fn time_limit(State(console): State<Arc<Console>>, req: Request, next: Next) -> Response {
    if req.uri().path() == "/events" {
        return next.run(req).await;
    }
    match tokio::time::timeout(console.options.request_timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => (StatusCode::REQUEST_TIMEOUT, "request took too long\n").into_response(),
    }
}

async fn security_headers(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// `GET /metrics`: the relay's Prometheus text, for scrapers, without sign-in.
async fn metrics(State(console): State<Arc<Console>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        console.relay.metrics_text(),
    )
        .into_response()
}

/// Serves the admin console on `listener` until `shutdown` completes, then lets open
/// requests finish for the grace period.
pub async fn serve(
    relay: Arc<Relay>,
    listener: TcpListener,
    options: AdminOptions,
    shutdown: impl Future<Output = ()>,
) {
    let stopping = CancellationToken::new();
    let tasks = TaskTracker::new();
    let (changed, changes) = tokio::sync::watch::channel(0);
    tasks.spawn(live::watch_changes(
        relay.clone(),
        changed,
        stopping.clone(),
    ));
    let console = Arc::new(Console {
        relay,
        sessions: auth::WebSessions::default(),
        sign_in_failures: auth::SignInLimiter::default(),
        tls: options.tls.is_some(),
        changes,
        stopping: stopping.clone(),
        options: options.clone(),
    });
    let app = router(console);
    let acceptor = options.tls.clone().map(TlsAcceptor::from);
    let slots = Arc::new(Semaphore::new(options.max_connections));
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(%e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "admin connection limit reached; closing");
            continue;
        };
        let (app, acceptor, options, stopping) = (
            app.clone(),
            acceptor.clone(),
            options.clone(),
            stopping.clone(),
        );
        let span = tracing::debug_span!("admin", %peer);
        tasks.spawn(
            async move {
                let _slot = slot;
                match acceptor {
                    None => serve_connection(tcp, peer, app, &options, stopping).await,
                    Some(acceptor) => {
                        let handshake = acceptor.accept(tcp);
                        match tokio::time::timeout(options.header_timeout, handshake).await {
                            Ok(Ok(tls)) => {
                                serve_connection(tls, peer, app, &options, stopping).await;
                            }
                            Ok(Err(e)) => debug!(%e, "admin TLS handshake failed"),
                            Err(_) => debug!("admin TLS handshake timed out"),
                        }
                    }
                }
            }
            .instrument(span),
        );
    }
    drop(listener);
    stopping.cancel();
    tasks.close();
    if tokio::time::timeout(options.shutdown_grace, tasks.wait())
        .await
        .is_err()
    {
        warn!("admin requests still open after the grace period; closing them");
    }
    info!("admin listener stopped");
}

async fn serve_connection<S>(
    io: S,
    peer: SocketAddr,
    app: Router,
    options: &AdminOptions,
    stopping: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(req.map(axum::body::Body::new))
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                debug!(%e, "admin connection ended");
            }
        }
        () = stopping.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(options.shutdown_grace, conn).await;
        }
    }
}
