//! The audit log in the console (`/audit`, `/audit/export` as JSON lines) and the API
//! (`/api/v1/audit`): the registry's rows, filtered by computer ID, kind and time.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::{Extension, Json};

use super::actions::ActionError;
use super::auth::Operator;
use super::pages::utc;
use super::Console;
use crate::audit::{parse_age, unix_now, KINDS};
use crate::registry::{AuditFilter, AuditRow};

/// Rows shown or exported when the query gives no limit.
pub const DEFAULT_LIMIT: usize = 1_000;
/// The most rows one request returns.
pub const MAX_LIMIT: usize = 10_000;

/// The filter as a query string: every field optional, empty meaning none.
#[derive(Debug, Default, serde::Deserialize, serde::Serialize)]
pub struct AuditQuery {
    #[serde(default)]
    computer_id: String,
    #[serde(default)]
    kind: String,
    /// An age (`24h`, `7d`) or Unix seconds.
    #[serde(default)]
    since: String,
    /// An age (`1h`: until an hour ago) or Unix seconds.
    #[serde(default)]
    until: String,
    #[serde(default)]
    limit: Option<usize>,
}

/// Unix seconds from `text`: digits are Unix seconds, anything else an age before now.
fn moment(field: &str, text: &str) -> Result<Option<i64>, ActionError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse()
            .map(Some)
            .map_err(|_| ActionError::Invalid(format!("{field}: {text:?} is too large")));
    }
    let age = parse_age(text).map_err(|e| ActionError::Invalid(format!("{field}: {e}")))?;
    let secs = i64::try_from(age.as_secs()).unwrap_or(i64::MAX);
    Ok(Some(unix_now().saturating_sub(secs)))
}

impl AuditQuery {
    /// The registry filter it asks for.
    ///
    /// # Errors
    /// [`ActionError::Invalid`] naming the field.
    pub fn filter(&self) -> Result<AuditFilter, ActionError> {
        let kind = self.kind.trim();
        if !kind.is_empty() && !KINDS.contains(&kind) {
            return Err(ActionError::Invalid(format!(
                "kind: {kind:?} is not one of {}",
                KINDS.join(", ")
            )));
        }
        let computer_id = self.computer_id.trim();
        Ok(AuditFilter {
            since: moment("since", &self.since)?,
            until: moment("until", &self.until)?,
            computer_id: (!computer_id.is_empty()).then(|| computer_id.to_owned()),
            kind: (!kind.is_empty()).then(|| kind.to_owned()),
            limit: Some(self.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT)),
        })
    }
}

async fn rows(console: &Arc<Console>, query: &AuditQuery) -> Result<Vec<AuditRow>, ActionError> {
    let filter = query.filter()?;
    console
        .relay
        .registry
        .audit_rows(&filter)
        .await
        .map_err(ActionError::from)
}

/// A row as one JSON object, with its time as RFC 3339 UTC beside the Unix seconds.
fn json_row(row: &AuditRow) -> serde_json::Value {
    let mut value = serde_json::to_value(row).unwrap_or_default();
    let time = utc(row.at).replacen(' ', "T", 1).replace(" UTC", "Z");
    if let serde_json::Value::Object(map) = &mut value {
        map.insert("time".into(), time.into());
    }
    value
}

/// A row as shown.
struct RowView {
    time: String,
    kind: String,
    computer_id: String,
    address: String,
    actor: String,
    detail: String,
}

fn detail_text(detail: &serde_json::Value) -> String {
    match detail {
        serde_json::Value::Object(map) => map
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join("  "),
        other => other.to_string(),
    }
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage<'a> {
    title: &'a str,
    operator: &'a str,
    csrf: &'a str,
    error: String,
    kinds: &'static [&'static str],
    computer_id: &'a str,
    kind: &'a str,
    since: &'a str,
    until: &'a str,
    query: String,
    rows: Vec<RowView>,
}

/// `GET /audit`.
pub async fn page(
    State(console): State<Arc<Console>>,
    Extension(op): Extension<Operator>,
    Query(query): Query<AuditQuery>,
) -> Response {
    let (status, error, found) = match rows(&console, &query).await {
        Ok(found) => (StatusCode::OK, String::new(), found),
        Err(e) => (e.status(), e.to_string(), Vec::new()),
    };
    let rows = found
        .iter()
        .map(|r| RowView {
            time: utc(r.at),
            kind: r.kind.clone(),
            computer_id: r.computer_id.clone().unwrap_or_default(),
            address: r.address.clone().unwrap_or_default(),
            actor: r.actor.clone().unwrap_or_default(),
            detail: detail_text(&r.detail),
        })
        .collect();
    let page = AuditPage {
        title: "Audit log",
        operator: &op.name,
        csrf: &op.csrf,
        error,
        kinds: KINDS,
        computer_id: &query.computer_id,
        kind: &query.kind,
        since: &query.since,
        until: &query.until,
        query: serde_urlencoded::to_string(&query).unwrap_or_default(),
        rows,
    };
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response(),
    }
}

/// `GET /audit/export`: the rows as JSON lines, a download.
pub async fn export(
    State(console): State<Arc<Console>>,
    Query(query): Query<AuditQuery>,
) -> Response {
    match rows(&console, &query).await {
        Ok(found) => {
            let mut body = String::new();
            for row in &found {
                body.push_str(&json_row(row).to_string());
                body.push('\n');
            }
            (
                [
                    (header::CONTENT_TYPE, "application/x-ndjson"),
                    (
                        header::CONTENT_DISPOSITION,
                        "attachment; filename=\"telework-audit.jsonl\"",
                    ),
                ],
                body,
            )
                .into_response()
        }
        Err(e) => (e.status(), format!("{e}\n")).into_response(),
    }
}

/// `GET /api/v1/audit`.
pub async fn api(State(console): State<Arc<Console>>, Query(query): Query<AuditQuery>) -> Response {
    match rows(&console, &query).await {
        Ok(found) => Json(found.iter().map(json_row).collect::<Vec<_>>()).into_response(),
        Err(e) => (
            e.status(),
            Json(serde_json::json!({"error": e.to_string()})),
        )
            .into_response(),
    }
}
