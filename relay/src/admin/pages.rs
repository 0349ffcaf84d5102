//! The console's HTML pages, rendered from the askama templates in `relay/templates/`.

use std::sync::Arc;

use askama::Template;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::{Extension, Form};

use super::actions::{self, ActionError, NewToken};
use super::auth::{self, Operator, SESSION_COOKIE, SESSION_LIFETIME, SIGNIN_COOKIE};
use super::{live, Console};

/// Unix seconds as `2026-12-04 15:34:37 UTC`.
pub fn utc(unix: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(unix) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => format!("unix {unix}"),
    }
}

/// Renders `page`, or a bare 500 if its template fails.
pub fn render(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::warn!(%e, "rendering a console page failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage<'a> {
    title: &'a str,
    operator: &'a str,
    csrf: &'a str,
    message: String,
    back: &'a str,
}

/// An error page for a failed action, with a link back.
pub fn failed(op: &Operator, e: &ActionError, back: &str) -> Response {
    render(
        e.status(),
        &MessagePage {
            title: "Not done",
            operator: &op.name,
            csrf: &op.csrf,
            message: e.to_string(),
            back,
        },
    )
}

/// A redirect to `back` when the action was done, else an error page.
pub fn done(result: Result<(), ActionError>, op: &Operator, back: &'static str) -> Response {
    match result {
        Ok(()) => Redirect::to(back).into_response(),
        Err(e) => failed(op, &e, back),
    }
}

/// `GET /`: the machines page.
pub async fn home() -> Redirect {
    Redirect::to("/machines")
}

#[derive(Template)]
#[template(path = "signin.html")]
struct SignInPage<'a> {
    title: &'a str,
    operator: &'a str,
    csrf: &'a str,
    error: &'a str,
}

/// The sign-in form with a fresh CSRF value, which it also sets as a cookie.
fn signin_page(console: &Console, status: StatusCode, error: &str) -> Response {
    let csrf = auth::random_secret();
    let mut response = render(
        status,
        &SignInPage {
            title: "Sign in",
            operator: "",
            csrf: &csrf,
            error,
        },
    );
    if let Ok(v) = auth::set_cookie(
        console,
        SIGNIN_COOKIE,
        &csrf,
        std::time::Duration::from_secs(3600),
    )
    .parse()
    {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}

/// `GET /signin`.
pub async fn signin_form(State(console): State<Arc<Console>>) -> Response {
    signin_page(&console, StatusCode::OK, "")
}

/// The sign-in form's fields.
#[derive(serde::Deserialize)]
pub struct SignInForm {
    name: String,
    password: String,
    #[serde(default)]
    csrf: String,
}

/// What a failed sign-in says, whether the name or the password was wrong.
pub const SIGNIN_FAILED: &str = "Wrong user name or password.";
/// What a rate-limited sign-in says.
pub const SIGNIN_LIMITED: &str = "Too many failed sign-ins: wait a minute and try again.\n";

/// `POST /signin`.
pub async fn signin(
    State(console): State<Arc<Console>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: axum::http::HeaderMap,
    Form(form): Form<SignInForm>,
) -> Response {
    let expected = auth::cookie(&headers, SIGNIN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !auth::same_secret(&expected, &form.csrf) {
        return (
            StatusCode::FORBIDDEN,
            "missing or wrong CSRF token: reload the sign-in page and try again\n",
        )
            .into_response();
    }
    let ip = peer.ip();
    if console.sign_in_failures.blocked(ip, &form.name) {
        return (StatusCode::TOO_MANY_REQUESTS, SIGNIN_LIMITED).into_response();
    }
    let ok = console
        .relay
        .registry
        .check_operator(&form.name, &form.password)
        .await
        .unwrap_or(false);
    if !ok {
        console.sign_in_failures.failed(ip, &form.name);
        tracing::info!(%peer, "failed console sign-in");
        return signin_page(&console, StatusCode::UNAUTHORIZED, SIGNIN_FAILED);
    }
    let (session, _) = console.sessions.start(&form.name);
    actions::audit(
        &console,
        &form.name,
        "sign_in",
        None,
        Some(&peer.to_string()),
    );
    let mut response = Redirect::to("/machines").into_response();
    for cookie in [
        auth::set_cookie(&console, SESSION_COOKIE, &session, SESSION_LIFETIME),
        auth::set_cookie(&console, SIGNIN_COOKIE, "", std::time::Duration::ZERO),
    ] {
        if let Ok(v) = cookie.parse() {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    response
}

/// `POST /signout`.
pub async fn signout(
    State(console): State<Arc<Console>>,
    Extension(op): Extension<Operator>,
) -> Response {
    if let Some(session) = &op.session {
        console.sessions.end(session);
    }
    actions::audit(&console, &op.name, "sign_out", None, None);
    let mut response = Redirect::to("/signin").into_response();
    if let Ok(v) = auth::set_cookie(&console, SESSION_COOKIE, "", std::time::Duration::ZERO).parse()
    {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}

/// A machines row as shown.
struct MachineView {
    id: String,
    online: bool,
    disabled: bool,
    node: String,
    transport: String,
    since: String,
    address: String,
    agent_version: String,
    registered: String,
    last_seen: String,
}

#[derive(Template)]
#[template(path = "machines.html")]
struct MachinesPage<'a> {
    title: &'a str,
    operator: &'a str,
    csrf: &'a str,
    online: usize,
    rows: Vec<MachineView>,
}

/// `GET /machines`.
pub async fn machines(
    State(console): State<Arc<Console>>,
    Extension(op): Extension<Operator>,
) -> Response {
    let rows = match live::machines(&console.relay).await {
        Ok(rows) => rows,
        _ => return failed(&op, &ActionError::Internal, "/machines"),
    };
    let rows: Vec<MachineView> = rows
        .into_iter()
        .map(|m| MachineView {
            node: m.node.unwrap_or_default(),
            transport: m.transport.unwrap_or_default(),
            since: m.online_since.map(utc).unwrap_or_default(),
            address: m.address.unwrap_or_default(),
            agent_version: m.agent_version.unwrap_or_default(),
            registered: utc(m.registered),
            last_seen: m.last_seen.map_or_else(|| "never".into(), utc),
            id: m.id,
            online: m.online,
            disabled: m.disabled,
        })
        .collect();
    render(
        StatusCode::OK,
        &MachinesPage {
            title: "Machines",
            operator: &op.name,
            csrf: &op.csrf,
            online: rows.iter().filter(|m| m.online).count(),
            rows,
        },
    )
}

/// `POST /machines/{id}/disable`.
pub async fn disable_machine(
    State(console): State<Arc<Console>>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
) -> Response {
    let result = match actions::computer_id(&id) {
        Ok(id) => actions::set_disabled(&console, &op.name, id, true).await,
        Err(e) => Err(e),
    };
    done(result, &op, "/machines")
}

/// `POST /machines/{id}/enable`.
pub async fn enable_machine(
    State(console): State<Arc<Console>>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
) -> Response {
    let result = match actions::computer_id(&id) {
        Ok(id) => actions::set_disabled(&console, &op.name, id, false).await,
        Err(e) => Err(e),
    };
    done(result, &op, "/machines")
}

/// `POST /machines/{id}/remove`.
pub async fn remove_machine(
    State(console): State<Arc<Console>>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
) -> Response {
    let result = match actions::computer_id(&id) {
        Ok(id) => actions::remove_machine(&console, &op.name, id).await,
        Err(e) => Err(e),
    };
    done(result, &op, "/machines")
}

/// A sessions row as shown.
struct SessionView {
    node: String,
    id: u64,
    computer_id: String,
    client: String,
    device: String,
    device_short: String,
    transport: String,
    started: String,
    /// Byte and tunnel counts, blank for another node's session (it does not publish them).
    bytes_up: String,
    bytes_down: String,
    tunnels: String,
    /// Where its "End session" form posts.
    end: String,
}

#[derive(Template)]
#[template(path = "sessions.html")]
struct SessionsPage<'a> {
    title: &'a str,
    operator: &'a str,
    csrf: &'a str,
    /// Why other nodes' sessions are missing, if they are.
    error: String,
    rows: Vec<SessionView>,
}

fn shown<T: ToString>(count: Option<T>) -> String {
    count.map(|c| c.to_string()).unwrap_or_default()
}

/// `GET /sessions`: this node's sessions, then the other live nodes'.
pub async fn sessions(
    State(console): State<Arc<Console>>,
    Extension(op): Extension<Operator>,
) -> Response {
    let mut rows = live::sessions(&console.relay);
    // Without the registry this node's own sessions can still be seen and ended.
    let error = match live::sessions_elsewhere(&console.relay).await {
        Ok(elsewhere) => {
            rows.extend(elsewhere);
            String::new()
        }
        Err(e) => format!("Sessions on other nodes cannot be listed now: {e}"),
    };
    let rows = rows
        .into_iter()
        .map(|s| SessionView {
            end: if s.here {
                format!("/sessions/{}/end", s.id)
            } else {
                format!("/nodes/{}/sessions/{}/end", s.node, s.id)
            },
            device_short: s.device.chars().take(23).collect(),
            node: s.node,
            id: s.id,
            computer_id: s.computer_id,
            client: s.client,
            device: s.device,
            transport: s.transport,
            started: utc(s.started),
            bytes_up: shown(s.bytes_up),
            bytes_down: shown(s.bytes_down),
            tunnels: shown(s.tunnels),
        })
        .collect();
    render(
        StatusCode::OK,
        &SessionsPage {
            title: "Live sessions",
            operator: &op.name,
            csrf: &op.csrf,
            error,
            rows,
        },
    )
}

/// `POST /sessions/{id}/end`.
pub async fn end_session(
    State(console): State<Arc<Console>>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
) -> Response {
    let result = match id.parse() {
        Ok(id) => actions::end_session(&console, &op.name, id),
        Err(_) => Err(ActionError::NotFound(format!("no live session {id:?}"))),
    };
    done(result, &op, "/sessions")
}

/// A tokens row as shown.
struct TokenView {
    id: String,
    label: String,
    created_by: String,
    created: String,
    expires: String,
    uses_left: u32,
    usable: bool,
}

#[derive(Template)]
#[template(path = "tokens.html")]
struct TokensPage<'a> {
    title: &'a str,
    operator: &'a str,
    csrf: &'a str,
    error: String,
    created: Option<NewToken>,
    rows: Vec<TokenView>,
}

async fn tokens_page(
    console: &Arc<Console>,
    op: &Operator,
    status: StatusCode,
    created: Option<NewToken>,
    error: String,
) -> Response {
    let rows = match actions::tokens(console).await {
        Ok(rows) => rows,
        Err(e) => return failed(op, &e, "/tokens"),
    };
    let rows = rows
        .into_iter()
        .map(|t| TokenView {
            usable: t.usable(),
            id: t.id,
            label: t.label.unwrap_or_default(),
            created_by: t.created_by.unwrap_or_default(),
            created: utc(t.created),
            expires: utc(t.expires),
            uses_left: t.uses_left,
        })
        .collect();
    render(
        status,
        &TokensPage {
            title: "Enrolment tokens",
            operator: &op.name,
            csrf: &op.csrf,
            error,
            created,
            rows,
        },
    )
}

/// `GET /tokens`.
pub async fn tokens(
    State(console): State<Arc<Console>>,
    Extension(op): Extension<Operator>,
) -> Response {
    tokens_page(&console, &op, StatusCode::OK, None, String::new()).await
}

/// The new-token form's fields.
#[derive(serde::Deserialize)]
pub struct NewTokenForm {
    uses: u32,
    hours: u64,
    #[serde(default)]
    label: String,
}

/// `POST /tokens`: creates a token and shows it, once.
pub async fn create_token(
    State(console): State<Arc<Console>>,
    Extension(op): Extension<Operator>,
    Form(form): Form<NewTokenForm>,
) -> Response {
    match actions::create_token(&console, &op.name, form.uses, form.hours, Some(form.label)).await {
        Ok(new) => tokens_page(&console, &op, StatusCode::OK, Some(new), String::new()).await,
        Err(e) => tokens_page(&console, &op, e.status(), None, e.to_string()).await,
    }
}

/// `POST /tokens/{id}/revoke`.
pub async fn revoke_token(
    State(console): State<Arc<Console>>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
) -> Response {
    done(
        actions::revoke_token(&console, &op.name, id).await,
        &op,
        "/tokens",
    )
}

/// `GET /static/{file}`: the style sheet and the script, compiled in (nothing is read from
/// disk, so no path can reach a file).
pub async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "console.css" => (
            include_str!("../../assets/console.css"),
            "text/css; charset=utf-8",
        ),
        "console.js" => (
            include_str!("../../assets/console.js"),
            "text/javascript; charset=utf-8",
        ),
        _ => return (StatusCode::NOT_FOUND, "not found\n").into_response(),
    };
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}
