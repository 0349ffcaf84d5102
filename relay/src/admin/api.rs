//! The JSON API under `/api/v1/`, documented in `docs/admin-api.yaml`. Callers sign in like
//! the console (cookie, plus the CSRF token in `X-CSRF-Token` for writes) or send
//! `Authorization: Bearer <token>` with a token from `telework-relay admin token create`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::json;

use super::actions::{self, ActionError};
use super::auth::Operator;
use super::{live, Console};

/// An error as JSON: `{"error": "..."}` with its status.
fn error(e: &ActionError) -> Response {
    (e.status(), Json(json!({ "error": e.to_string() }))).into_response()
}

fn done(result: Result<(), ActionError>) -> Response {
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error(&e),
    }
}

/// `GET /api/v1/machines`.
pub async fn machines(State(console): State<Arc<Console>>) -> Response {
    match live::machines(&console.relay).await {
        Ok(rows) => Json(rows).into_response(),
        Err(e) => error(&e.into()),
    }
}

/// `POST /api/v1/machines/{id}/disable`.
pub async fn disable_machine(
    State(console): State<Arc<Console>>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
) -> Response {
    match actions::computer_id(&id) {
        Ok(id) => done(actions::set_disabled(&console, &op.name, id, true).await),
        Err(e) => error(&e),
    }
}

/// `POST /api/v1/machines/{id}/enable`.
pub async fn enable_machine(
    State(console): State<Arc<Console>>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
) -> Response {
    match actions::computer_id(&id) {
        Ok(id) => done(actions::set_disabled(&console, &op.name, id, false).await),
        Err(e) => error(&e),
    }
}

/// `DELETE /api/v1/machines/{id}`.
pub async fn remove_machine(
    State(console): State<Arc<Console>>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
) -> Response {
    match actions::computer_id(&id) {
        Ok(id) => done(actions::remove_machine(&console, &op.name, id).await),
        Err(e) => error(&e),
    }
}

/// `GET /api/v1/sessions`: this node's sessions, then the other live nodes'.
pub async fn sessions(State(console): State<Arc<Console>>) -> Response {
    let mut rows = live::sessions(&console.relay);
    match live::sessions_elsewhere(&console.relay).await {
        Ok(elsewhere) => {
            rows.extend(elsewhere);
            Json(rows).into_response()
        }
        Err(e) => error(&e.into()),
    }
}

/// `DELETE /api/v1/sessions/{id}`: a session of this node.
pub async fn end_session(
    State(console): State<Arc<Console>>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
) -> Response {
    match id.parse() {
        Ok(id) => done(actions::end_session(&console, &op.name, id)),
        Err(_) => error(&ActionError::NotFound(format!("no live session {id:?}"))),
    }
}

/// `GET /api/v1/tokens`.
pub async fn tokens(State(console): State<Arc<Console>>) -> Response {
    match actions::tokens(&console).await {
        Ok(rows) => Json(rows).into_response(),
        Err(e) => error(&e),
    }
}

/// The body of `POST /api/v1/tokens`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTokenRequest {
    /// Registrations it allows (default 1).
    #[serde(default = "one")]
    uses: u32,
    /// Hours it stays valid (default 24).
    #[serde(default = "day")]
    hours: u64,
    /// A label to recognise it by.
    #[serde(default)]
    label: Option<String>,
}

fn one() -> u32 {
    1
}

fn day() -> u64 {
    24
}

/// `POST /api/v1/tokens`: the new token, shown once.
pub async fn create_token(
    State(console): State<Arc<Console>>,
    Extension(op): Extension<Operator>,
    Json(body): Json<NewTokenRequest>,
) -> Response {
    match actions::create_token(&console, &op.name, body.uses, body.hours, body.label).await {
        Ok(new) => (StatusCode::CREATED, Json(new)).into_response(),
        Err(e) => error(&e),
    }
}

/// `DELETE /api/v1/tokens/{id}`.
pub async fn revoke_token(
    State(console): State<Arc<Console>>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
) -> Response {
    done(actions::revoke_token(&console, &op.name, id).await)
}
