//! Who is asking: sign-in sessions (random ids in memory, 12 hours), CSRF tokens, the
//! sign-in rate limit, and [`guard`], which every route passes through.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};

use super::{Access, Console, ROUTES};

/// How long a sign-in lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Most signed-in sessions kept at once; the oldest go first.
const MAX_SESSIONS: usize = 1_000;
/// The session cookie's name.
pub const SESSION_COOKIE: &str = "telework_admin";
/// The sign-in form's CSRF cookie (double-submit: the form carries the same value).
pub const SIGNIN_COOKIE: &str = "telework_signin";
/// The form field and the API header that carry the CSRF token.
pub const CSRF_FIELD: &str = "csrf";
/// See [`CSRF_FIELD`].
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Failed sign-ins allowed per address, and per user name, in [`FAILURE_WINDOW`].
pub const MAX_FAILURES: usize = 5;
/// See [`MAX_FAILURES`].
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// A random 32-byte secret in hex: session ids and CSRF tokens.
pub fn random_secret() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// Compares two secrets in time that does not depend on where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// One signed-in operator.
#[derive(Debug, Clone)]
struct WebSession {
    operator: String,
    csrf: String,
    expires: Instant,
}

/// The signed-in sessions, by id.
#[derive(Default)]
pub struct WebSessions {
    by_id: Mutex<HashMap<String, WebSession>>,
}

impl WebSessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, WebSession>> {
        self.by_id.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a session for `operator`; returns its id (the cookie) and CSRF token.
    pub fn start(&self, operator: &str) -> (String, String) {
        let now = Instant::now();
        let mut sessions = self.lock();
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(id, _)| id.clone())
            {
                sessions.remove(&oldest);
            }
        }
        let (id, csrf) = (random_secret(), random_secret());
        sessions.insert(
            id.clone(),
            WebSession {
                operator: operator.to_owned(),
                csrf: csrf.clone(),
                expires: now + SESSION_LIFETIME,
            },
        );
        (id, csrf)
    }

    /// The operator and CSRF token of session `id`, if it is live.
    fn find(&self, id: &str) -> Option<(String, String)> {
        let sessions = self.lock();
        let s = sessions.get(id)?;
        (s.expires > Instant::now()).then(|| (s.operator.clone(), s.csrf.clone()))
    }

    /// Ends session `id`.
    pub fn end(&self, id: &str) {
        self.lock().remove(id);
    }
}

/// Failed sign-ins per address and per name, in a sliding window.
#[derive(Default)]
pub struct SignInLimiter {
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl SignInLimiter {
    fn keys(ip: IpAddr, name: &str) -> [String; 2] {
        [format!("ip {ip}"), format!("user {name}")]
    }

    /// Whether a sign-in from `ip` as `name` must wait.
    pub fn blocked(&self, ip: IpAddr, name: &str) -> bool {
        let now = Instant::now();
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        Self::keys(ip, name).iter().any(|key| {
            failures.get(key).is_some_and(|times| {
                times
                    .iter()
                    .filter(|t| now.duration_since(**t) < FAILURE_WINDOW)
                    .count()
                    >= MAX_FAILURES
            })
        })
    }

    /// Counts a failed sign-in from `ip` as `name`.
    pub fn failed(&self, ip: IpAddr, name: &str) {
        let now = Instant::now();
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if failures.len() > 10_000 {
            failures.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|t| now.duration_since(*t) < FAILURE_WINDOW)
            });
        }
        for key in Self::keys(ip, name) {
            let times = failures.entry(key).or_default();
            while times
                .front()
                .is_some_and(|t| now.duration_since(*t) >= FAILURE_WINDOW)
            {
                times.pop_front();
            }
            if times.len() < MAX_FAILURES {
                times.push_back(now);
            }
        }
    }
}

/// The operator behind a request, put in its extensions by [`guard`].
#[derive(Debug, Clone)]
pub struct Operator {
    /// The operator's name, or `token:NAME` for an API token.
    pub name: String,
    /// The session's CSRF token, for the forms of the page (empty for API tokens).
    pub csrf: String,
    /// The session id, for sign-out.
    pub session: Option<String>,
}

/// The value of cookie `name` in the request headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// A `Set-Cookie` value with the console's flags (`Secure` over TLS).
pub fn set_cookie(console: &Console, name: &str, value: &str, max_age: Duration) -> String {
    let secure = if console.tls { "; Secure" } else { "" };
    format!(
        "{name}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}",
        max_age.as_secs()
    )
}

/// The client's address (set by the listener for every connection).
pub fn peer(req_extensions: &axum::http::Extensions) -> IpAddr {
    req_extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

fn unauthenticated(access: Access) -> Response {
    match access {
        Access::Api => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            axum::Json(serde_json::json!({"error": "sign in, or send an API token"})),
        )
            .into_response(),
        _ => Redirect::to("/signin").into_response(),
    }
}

fn forbidden() -> Response {
    (
        StatusCode::FORBIDDEN,
        "missing or wrong CSRF token: reload the page and try again\n",
    )
        .into_response()
}

/// Lets a request through only if its route allows the caller: public routes for anyone,
/// pages for a signed-in operator, the API for an operator or an API token. A request that
/// changes something with the sign-in cookie must carry the session's CSRF token (form
/// field [`CSRF_FIELD`], or header [`CSRF_HEADER`]).
pub async fn guard(State(console): State<Arc<Console>>, req: Request, next: Next) -> Response {
    let matched = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let method = req.method().clone();
    let access = ROUTES
        .iter()
        .find(|r| Some(r.path) == matched.as_deref() && r.method == method.as_str())
        .map_or(Access::Page, |r| r.access);
    if access == Access::Public {
        return next.run(req).await;
    }
    let writes = method != Method::GET && method != Method::HEAD;
    if access == Access::Api {
        if let Some(secret) = bearer(req.headers()) {
            let name = console
                .relay
                .registry
                .api_token_name(secret)
                .await
                .ok()
                .flatten();
            return match name {
                Some(name) => {
                    let mut req = req;
                    req.extensions_mut().insert(Operator {
                        name: format!("token:{name}"),
                        csrf: String::new(),
                        session: None,
                    });
                    next.run(req).await
                }
                None => unauthenticated(access),
            };
        }
    }
    let Some(session) = cookie(req.headers(), SESSION_COOKIE) else {
        return unauthenticated(access);
    };
    let Some((name, csrf)) = console.sessions.find(&session) else {
        return unauthenticated(access);
    };
    let mut req = req;
    if writes {
        let given = match access {
            Access::Api => req
                .headers()
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            _ => {
                let (parts, body) = req.into_parts();
                let Ok(bytes) = axum::body::to_bytes(body, console.options.body_limit).await else {
                    return (StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n")
                        .into_response();
                };
                let field = form_field(&bytes, CSRF_FIELD);
                req = Request::from_parts(parts, Body::from(bytes));
                field
            }
        };
        if !given.is_some_and(|g| same_secret(&g, &csrf)) {
            return forbidden();
        }
    }
    req.extensions_mut().insert(Operator {
        name,
        csrf,
        session: Some(session),
    });
    next.run(req).await
}

/// The value of `field` in a URL-encoded form body.
pub fn form_field(body: &[u8], field: &str) -> Option<String> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == field)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_blocks_after_five_failures_by_address_or_by_name() {
        let limiter = SignInLimiter::default();
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        for _ in 0..MAX_FAILURES {
            assert!(!limiter.blocked(a, "alice"));
            limiter.failed(a, "alice");
        }
        assert!(limiter.blocked(a, "bob"), "same address");
        assert!(limiter.blocked(b, "alice"), "same name");
        assert!(!limiter.blocked(b, "bob"));
    }

    #[test]
    fn sessions_expire_and_end() {
        let sessions = WebSessions::default();
        let (id, csrf) = sessions.start("alice");
        assert_eq!(sessions.find(&id), Some(("alice".into(), csrf)));
        sessions.end(&id);
        assert_eq!(sessions.find(&id), None);
        assert!(same_secret("abc", "abc") && !same_secret("abc", "abd") && !same_secret("a", "ab"));
    }

    #[test]
    fn cookies_and_form_fields_are_found() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, "a=1; telework_admin=xyz".parse().unwrap());
        assert_eq!(cookie(&headers, SESSION_COOKIE).as_deref(), Some("xyz"));
        assert_eq!(cookie(&headers, "b"), None);
        assert_eq!(
            form_field(b"uses=1&csrf=ab%2Bc", CSRF_FIELD).as_deref(),
            Some("ab+c")
        );
    }
}
