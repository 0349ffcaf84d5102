//! The console's and the API's view of the other relay nodes: the nodes page, and ending a
//! session held by any node (the node answering ends its own; another is asked through the
//! registry, see [`actions::end_session_on`]).

use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::json;

use super::actions::{self, ActionError, Ending};
use super::auth::Operator;
use super::pages::{done, render, utc};
use super::Console;

/// A nodes row as shown.
struct NodeView {
    name: String,
    here: bool,
    up: bool,
    state: &'static str,
    public_addr: String,
    agents: String,
    sessions: String,
    started: String,
    last_beat: String,
}

#[derive(Template)]
#[template(path = "nodes.html")]
struct NodesPage<'a> {
    title: &'a str,
    operator: &'a str,
    csrf: &'a str,
    here: &'a str,
    up: usize,
    rows: Vec<NodeView>,
}

/// `GET /nodes`: every relay node sharing the registry, with its agents, sessions and state.
pub async fn page(
    State(console): State<Arc<Console>>,
    Extension(op): Extension<Operator>,
) -> Response {
    let relay = &console.relay;
    let rows: Vec<NodeView> = relay
        .cluster
        .status(relay)
        .into_iter()
        .map(|n| {
            // A gone node's counts are those of its last beat, not what it holds now.
            let count = |c: i64| if n.up { c.to_string() } else { String::new() };
            NodeView {
                state: match (n.up, n.draining) {
                    (false, _) => "down",
                    (true, true) => "draining",
                    (true, false) => "serving",
                },
                agents: count(n.agents),
                sessions: count(n.sessions),
                started: utc(n.started),
                last_beat: utc(n.last_beat),
                name: n.name,
                here: n.here,
                up: n.up,
                public_addr: n.public_addr,
            }
        })
        .collect();
    render(
        StatusCode::OK,
        &NodesPage {
            title: "Relay nodes",
            operator: &op.name,
            csrf: &op.csrf,
            here: relay.cluster.name(),
            up: rows.iter().filter(|n| n.up).count(),
            rows,
        },
    )
}

/// `GET /api/v1/nodes`.
pub async fn api_nodes(State(console): State<Arc<Console>>) -> Response {
    Json(console.relay.cluster.status(&console.relay)).into_response()
}

/// Parses a session id from a path.
fn session_id(text: &str, node: &str) -> Result<u64, ActionError> {
    text.parse()
        .map_err(|_| ActionError::NotFound(format!("no live session {text:?} on {node}")))
}

/// `POST /nodes/{node}/sessions/{id}/end`.
pub async fn end_session(
    State(console): State<Arc<Console>>,
    Extension(op): Extension<Operator>,
    Path((node, id)): Path<(String, String)>,
) -> Response {
    let result = match session_id(&id, &node) {
        Ok(id) => actions::end_session_on(&console, &op.name, &node, id)
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    };
    done(result, &op, "/sessions")
}

/// `DELETE /api/v1/nodes/{node}/sessions/{id}`: 204 when this node ended it, 202 when
/// another node was asked to.
pub async fn api_end_session(
    State(console): State<Arc<Console>>,
    Extension(op): Extension<Operator>,
    Path((node, id)): Path<(String, String)>,
) -> Response {
    let result = match session_id(&id, &node) {
        Ok(id) => actions::end_session_on(&console, &op.name, &node, id).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(Ending::Ended) => StatusCode::NO_CONTENT.into_response(),
        Ok(Ending::Asked) => StatusCode::ACCEPTED.into_response(),
        Err(e) => (e.status(), Json(json!({ "error": e.to_string() }))).into_response(),
    }
}
