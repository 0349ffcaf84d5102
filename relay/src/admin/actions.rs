//! What an operator can do, shared by the pages and the API. Every action that changes
//! something is audited with the operator's name through [`audit`].

use std::sync::Arc;

use telework_protocol::ComputerId;
use tracing::info;

use super::Console;
use crate::audit::{Actor, AuditEvent};
use crate::registry::RegistryError;

/// Why an action failed.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// Nothing by that id.
    #[error("{0}")]
    NotFound(String),
    /// The input is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The blocking task was lost.
    #[error("internal error")]
    Internal,
}

impl ActionError {
    /// The HTTP status that says it.
    pub fn status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self {
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Invalid(_) | Self::Registry(RegistryError::Invalid(_)) => StatusCode::BAD_REQUEST,
            Self::Registry(_) | Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Records that `operator` did `action`, on `computer_id` and/or `target`.
pub fn audit(
    console: &Console,
    operator: &str,
    action: &str,
    computer_id: Option<&ComputerId>,
    target: Option<&str>,
) {
    info!(
        operator,
        action,
        computer_id = computer_id.map(ComputerId::as_str),
        target,
        "admin action"
    );
    console.relay.audit.record(AuditEvent::AdminAction {
        operator: operator.to_owned(),
        action: action.to_owned(),
        computer_id: computer_id.cloned(),
        target: target.map(str::to_owned),
    });
}

/// Parses a computer ID from a path.
///
/// # Errors
/// [`ActionError::NotFound`]: no machine can have that ID.
pub fn computer_id(text: &str) -> Result<ComputerId, ActionError> {
    text.parse()
        .map_err(|_| ActionError::NotFound(format!("no machine is registered as {text:?}")))
}

/// Disables (or enables) machine `id`; a disabled machine's agent is dropped at once, its
/// sessions end, and it is refused until it is enabled again.
///
/// # Errors
/// [`ActionError::NotFound`] if it is not registered.
pub async fn set_disabled(
    console: &Arc<Console>,
    operator: &str,
    id: ComputerId,
    disabled: bool,
) -> Result<(), ActionError> {
    if !console.relay.set_disabled(&id, disabled).await? {
        return Err(ActionError::NotFound(format!(
            "no machine is registered as {id}"
        )));
    }
    let action = if disabled {
        "machine_disable"
    } else {
        "machine_enable"
    };
    audit(console, operator, action, Some(&id), None);
    Ok(())
}

/// Removes machine `id`'s registration, disconnects its agent and ends its sessions.
///
/// # Errors
/// [`ActionError::NotFound`] if it is not registered.
pub async fn remove_machine(
    console: &Arc<Console>,
    operator: &str,
    id: ComputerId,
) -> Result<(), ActionError> {
    if !console.relay.remove_machine(&id).await? {
        return Err(ActionError::NotFound(format!(
            "no machine is registered as {id}"
        )));
    }
    console.relay.audit.record(AuditEvent::Removed {
        id: id.clone(),
        by: Actor::Operator(operator.to_owned()),
    });
    audit(console, operator, "machine_remove", Some(&id), None);
    Ok(())
}

/// Ends live session `id` of this node: the client is told the relay operator ended it.
///
/// # Errors
/// [`ActionError::NotFound`] if no such session is live.
pub fn end_session(console: &Console, operator: &str, id: u64) -> Result<(), ActionError> {
    let computer = console
        .relay
        .sessions
        .list()
        .into_iter()
        .find(|s| s.id == id)
        .map(|s| s.computer_id);
    if !console.relay.end_session(id) {
        return Err(ActionError::NotFound(format!("no live session {id}")));
    }
    let node = console.relay.cluster.name();
    audit(
        console,
        operator,
        "session_end",
        computer.as_ref(),
        Some(&format!("session {id} on {node}")),
    );
    Ok(())
}

/// How a session was ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// It was this node's: it has ended.
    Ended,
    /// It is another node's: that node was asked, and ends it at its next heartbeat.
    Asked,
}

/// Ends live session `id` of relay node `node`, this one or another live one. Another node
/// is asked through the registry (a `node_requests` row it takes at its next heartbeat,
/// within [`crate::cluster::HEARTBEAT`]); the action is audited here, as a local one is.
///
/// # Errors
/// [`ActionError::NotFound`] if there is no such live node, or it has no such session.
pub async fn end_session_on(
    console: &Console,
    operator: &str,
    node: &str,
    id: u64,
) -> Result<Ending, ActionError> {
    let relay = &console.relay;
    if node == relay.cluster.name() {
        return end_session(console, operator, id).map(|()| Ending::Ended);
    }
    if relay.cluster.node(node).is_none() {
        return Err(ActionError::NotFound(format!(
            "no live relay node is called {node:?}"
        )));
    }
    let Some(session) = relay.registry.cluster_session(node, id).await? else {
        return Err(ActionError::NotFound(format!(
            "no live session {id} on {node}"
        )));
    };
    relay
        .registry
        .request_node(node, "end-session", &id.to_string())
        .await?;
    let computer = session.computer_id.parse::<ComputerId>().ok();
    audit(
        console,
        operator,
        "session_end",
        computer.as_ref(),
        Some(&format!("session {id} on {node}")),
    );
    Ok(Ending::Asked)
}

/// Most registrations one enrolment token may allow.
pub const MAX_TOKEN_USES: u32 = 10_000;
/// Longest an enrolment token may stay valid, in hours (a year).
pub const MAX_TOKEN_HOURS: u64 = 24 * 366;

/// A new enrolment token: the secret (shown once) and its id.
#[derive(Debug, serde::Serialize)]
pub struct NewToken {
    /// The token to hand to IT staff; not kept by the relay.
    pub token: String,
    /// Its id, for listing and revoking.
    pub id: String,
    /// Registrations it allows.
    pub uses: u32,
    /// Hours it stays valid.
    pub hours: u64,
}

/// Creates an enrolment token for `uses` registrations within `hours`.
///
/// # Errors
/// [`ActionError::Invalid`] for values out of range.
pub async fn create_token(
    console: &Arc<Console>,
    operator: &str,
    uses: u32,
    hours: u64,
    label: Option<String>,
) -> Result<NewToken, ActionError> {
    if !(1..=MAX_TOKEN_USES).contains(&uses) {
        return Err(ActionError::Invalid(format!(
            "uses must be between 1 and {MAX_TOKEN_USES}"
        )));
    }
    if !(1..=MAX_TOKEN_HOURS).contains(&hours) {
        return Err(ActionError::Invalid(format!(
            "hours must be between 1 and {MAX_TOKEN_HOURS}"
        )));
    }
    let label = label.map(|l| l.trim().to_owned()).filter(|l| !l.is_empty());
    if label
        .as_ref()
        .is_some_and(|l| l.chars().count() > 64 || l.chars().any(char::is_control))
    {
        return Err(ActionError::Invalid(
            "a label is at most 64 printable characters".into(),
        ));
    }
    let by = operator.to_owned();
    let (token, id) = console
        .relay
        .registry
        .create_labelled_token(
            uses,
            hours.saturating_mul(3600),
            label.as_deref(),
            Some(&by),
        )
        .await?;
    audit(console, operator, "token_create", None, Some(&id));
    Ok(NewToken {
        token,
        id,
        uses,
        hours,
    })
}

/// Revokes enrolment token `id`.
///
/// # Errors
/// [`ActionError::NotFound`] if there is no such token.
pub async fn revoke_token(
    console: &Arc<Console>,
    operator: &str,
    id: String,
) -> Result<(), ActionError> {
    if !console.relay.registry.revoke_token(&id).await? {
        return Err(ActionError::NotFound(format!("no enrolment token {id}")));
    }
    audit(console, operator, "token_revoke", None, Some(&id));
    Ok(())
}

/// Every enrolment token.
///
/// # Errors
/// A registry error.
pub async fn tokens(
    console: &Arc<Console>,
) -> Result<Vec<crate::registry::EnrolmentToken>, ActionError> {
    Ok(console.relay.registry.enrolment_tokens().await?)
}
