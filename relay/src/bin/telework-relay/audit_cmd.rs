//! `telework-relay audit`: the audit log for people (one line per row) or for scripts (JSON
//! lines).

use telework_protocol::ComputerId;
use telework_relay::admin::cli::Store;
use telework_relay::admin::pages::utc;
use telework_relay::audit;
use telework_relay::registry::{AuditFilter, AuditRow};

use crate::{cli_runtime, open_registry};

#[derive(clap::Args)]
pub struct AuditArgs {
    #[command(flatten)]
    store: Store,
    /// Only rows from this recent: 90m, 24h, 7d [default: all].
    #[arg(long, value_name = "AGE")]
    since: Option<String>,
    /// Only rows about this computer ID.
    #[arg(long = "id", value_name = "COMPUTER_ID")]
    computer_id: Option<ComputerId>,
    /// Only rows of this kind (enrolled, removed, agent_online, agent_offline,
    /// session_started, session_ended, admin_action, lookups_refused, wake_requested,
    /// audit_dropped).
    #[arg(long)]
    kind: Option<String>,
    /// At most this many rows (the newest).
    #[arg(long)]
    limit: Option<usize>,
    /// One JSON object per line: id, at (Unix seconds), time (UTC, RFC 3339), kind,
    /// computer_id, address, actor, detail.
    #[arg(long)]
    json: bool,
}

pub fn show_audit(args: AuditArgs) -> anyhow::Result<()> {
    let since = match &args.since {
        Some(text) => {
            let age = audit::parse_age(text).map_err(|e| anyhow::anyhow!("--since {e}"))?;
            let age = i64::try_from(age.as_secs()).unwrap_or(i64::MAX);
            Some(audit::unix_now().saturating_sub(age))
        }
        None => None,
    };
    if let Some(kind) = &args.kind {
        anyhow::ensure!(
            audit::KINDS.contains(&kind.as_str()),
            "--kind {kind:?} is not one of {}",
            audit::KINDS.join(", ")
        );
    }
    let runtime = cli_runtime()?;
    let registry = runtime.block_on(open_registry(
        args.store.data_dir.as_deref(),
        args.store.database.as_deref(),
    ))?;
    let rows = runtime.block_on(registry.audit_rows(&AuditFilter {
        since,
        until: None,
        computer_id: args.computer_id.map(|id| id.as_str().to_owned()),
        kind: args.kind,
        limit: args.limit,
    }))?;
    for row in &rows {
        if args.json {
            println!("{}", audit_json(row));
        } else {
            println!("{}", audit_line(row));
        }
    }
    if rows.is_empty() && !args.json {
        telework_net::say!("no audit rows match");
    }
    Ok(())
}

/// A row as one JSON object: its columns, and its time as RFC 3339 UTC.
fn audit_json(row: &AuditRow) -> serde_json::Value {
    let mut value = serde_json::to_value(row).unwrap_or_default();
    let time = utc(row.at).replacen(' ', "T", 1).replace(" UTC", "Z");
    if let serde_json::Value::Object(map) = &mut value {
        map.insert("time".into(), time.into());
    }
    value
}

/// A row for people: time, kind, computer ID, address, then the detail as `key=value`.
fn audit_line(row: &AuditRow) -> String {
    let detail = match &row.detail {
        serde_json::Value::Object(map) => map
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k}={s:?}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    };
    let actor = row
        .actor
        .as_deref()
        .map_or(String::new(), |a| format!("by={a:?} "));
    let line = format!(
        "{}  {:<16} {:<20} {:<22} {actor}{detail}",
        utc(row.at),
        row.kind,
        row.computer_id.as_deref().unwrap_or("-"),
        row.address.as_deref().unwrap_or("-"),
    );
    line.trim_end().to_owned()
}
