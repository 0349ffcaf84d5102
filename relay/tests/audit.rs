//! The audit log as an operator reads it: a real `telework-relay` serves, an agent enrols
//! with a token and comes online and goes, a client looks up IDs that are not there; then
//! `telework-relay audit` prints the rows, filtered; old rows are pruned.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use telework_agent::state::{AgentSettings, DataDir};
use telework_agent::{Agent, RunOptions};
use telework_net::framed::Framed;
use telework_net::tls::RelayTrust;
use telework_net::transport::dial::Dialer;
use telework_net::transport::{Role, TransportChoice};
use telework_protocol::messages::RelayToClient;
use telework_protocol::{CertFingerprint, ErrorCode};
use telework_relay::registry::{AuditRow, Registry};

fn relay() -> Command {
    Command::new(env!("CARGO_BIN_EXE_telework-relay"))
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A relay process on a free loopback port; its address and certificate fingerprint.
struct Served {
    child: Child,
    addr: std::net::SocketAddr,
    fingerprint: CertFingerprint,
}

fn serve(dir: &Path, extra: &[&str]) -> Served {
    let mut child = relay()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let listening = lines.next().unwrap().unwrap();
    let addr = listening
        .strip_prefix("telework-relay listening on ")
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("{listening}"))
        .parse()
        .unwrap();
    let fp = lines.next().unwrap().unwrap();
    let fingerprint = fp
        .strip_prefix("certificate fingerprint: ")
        .unwrap()
        .parse()
        .unwrap();
    Served {
        child,
        addr,
        fingerprint,
    }
}

/// SIGTERM, and the relay's graceful stop (which stores the last audit rows).
fn stop(mut served: Served) {
    common::stop_gracefully(&mut served.child);
}

fn audit(dir: &Path, args: &[&str]) -> Output {
    relay()
        .args(["audit", "--data-dir"])
        .arg(dir)
        .args(args)
        .output()
        .unwrap()
}

/// `audit --json` with `args`: one object per line.
fn audit_json(dir: &Path, args: &[&str]) -> Vec<Value> {
    let out = audit(dir, &[&["--json"], args].concat());
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

fn kinds(rows: &[Value]) -> Vec<&str> {
    rows.iter().map(|r| r["kind"].as_str().unwrap()).collect()
}

/// Asks the relay for `ids` on one client connection; each must be refused as unknown or
/// rate limited.
async fn look_up(served: &Served, ids: impl Iterator<Item = String>) {
    let dialer = Dialer::new(
        served.addr.to_string().parse().unwrap(),
        &RelayTrust::Fingerprint(served.fingerprint),
        Role::Client,
        TransportChoice::Auto,
    )
    .unwrap();
    let connection = dialer.dial().await.unwrap().connection;
    for id in ids {
        let mut f = Framed::new(connection.open().await.unwrap());
        f.write(&telework_tests::connect_request(&connection, &id))
            .await
            .unwrap();
        let answer = f.read::<RelayToClient>().await.unwrap();
        assert!(
            matches!(
                answer,
                RelayToClient::Error(ErrorCode::UnknownId | ErrorCode::RateLimited)
            ),
            "{answer:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolment_presence_and_refusals_are_audited_and_filtered() {
    let dir = tempfile::tempdir().unwrap();
    let relay_dir = dir.path().join("relay");
    let served = serve(&relay_dir, &["--registration", "token"]);
    let out = relay()
        .args(["token", "create", "--data-dir"])
        .arg(&relay_dir)
        .output()
        .unwrap();
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    // An office PC enrols with the token, comes online, and stops.
    let data = DataDir::open(&dir.path().join("agent")).unwrap();
    let settings = AgentSettings {
        computer_id: "pc-audit-01".parse().unwrap(),
        relay: served.addr.to_string(),
        relay_fingerprint: Some(served.fingerprint.to_string()),
        relay_ca: None,
        transport: TransportChoice::Auto,
        proxy: None,
    };
    telework_agent::register::register(&data, &settings, Some(token))
        .await
        .unwrap();
    let agent = Agent::open(data, "127.0.0.1:9".into(), RunOptions::default()).unwrap();
    let mut online = agent.online();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(agent.clone().run(async move {
        let _ = rx.await;
    }));
    tokio::time::timeout(Duration::from_secs(10), online.wait_for(|up| *up))
        .await
        .unwrap()
        .unwrap();
    look_up(&served, (0..3).map(|i| format!("no-such-pc-{i}"))).await;
    // IT staff retire the PC: the relay drops its agent, which stops.
    let mut remove = relay();
    remove
        .args(["machines", "remove", "pc-audit-01", "--data-dir"])
        .arg(&relay_dir);
    let out = tokio::task::spawn_blocking(move || remove.output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("the agent stops when its registration is removed")
        .unwrap()
        .unwrap_err();
    drop(tx);
    tokio::task::spawn_blocking(move || stop(served))
        .await
        .unwrap();

    // An old row, as if from last week.
    let registry = Registry::open(&relay_dir.join("relay.db")).unwrap();
    registry
        .record_audit(&AuditRow {
            id: 0,
            at: now() - 7 * 86_400,
            kind: "agent_online".into(),
            computer_id: Some("pc-old".into()),
            address: Some("198.51.100.1:1000".into()),
            actor: None,
            detail: json!({ "transport": "QUIC" }),
        })
        .await
        .unwrap();

    let rows = audit_json(&relay_dir, &[]);
    let ours: Vec<&Value> = rows
        .iter()
        .filter(|r| r["computer_id"] == "pc-audit-01")
        .collect();
    let mut ours_kinds: Vec<&str> = ours.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    // The removal and the disconnection it causes may share a second, in either order.
    ours_kinds[..2].sort_unstable();
    assert_eq!(
        ours_kinds,
        ["agent_offline", "removed", "agent_online", "enrolled"],
        "newest first: {rows:#?}"
    );
    let of = |kind: &str| *ours.iter().find(|r| r["kind"] == kind).unwrap();
    let (offline, online, enrolled) = (of("agent_offline"), of("agent_online"), of("enrolled"));
    assert_eq!(enrolled["detail"]["with_token"], json!(true));
    assert_eq!(offline["detail"]["reason"], "registration removed");
    assert_eq!(of("removed")["actor"], "cli");
    for row in [offline, online, enrolled] {
        assert!(
            row["address"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{row}"
        );
        assert!(row["time"].as_str().unwrap().ends_with('Z'), "{row}");
        assert!(row["at"].as_i64().unwrap() > now() - 600, "{row}");
    }
    let transport = online["detail"]["transport"].as_str().unwrap();
    assert!(["QUIC", "TLS/TCP"].contains(&transport), "{online}");
    assert_eq!(offline["detail"]["transport"], transport);
    assert!(offline["detail"]["online_secs"].is_u64(), "{offline}");
    assert!(offline["detail"]["reason"].is_string(), "{offline}");

    // Three unknown IDs from one address: one summary row.
    let refused: Vec<&Value> = rows
        .iter()
        .filter(|r| r["kind"] == "lookups_refused")
        .collect();
    let total: u64 = refused
        .iter()
        .map(|r| r["detail"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 3, "{refused:#?}");
    assert!(refused.len() <= 2, "one row a minute: {refused:#?}");
    assert_eq!(refused[0]["address"], "127.0.0.1");

    // Filters.
    let by_id = audit_json(&relay_dir, &["--id", "pc-audit-01"]);
    assert_eq!(by_id.len(), 4, "{by_id:#?}");
    let by_kind = audit_json(&relay_dir, &["--kind", "agent_online"]);
    assert_eq!(by_kind.len(), 2, "ours and the old one: {by_kind:#?}");
    let recent = audit_json(&relay_dir, &["--since", "24h", "--kind", "agent_online"]);
    assert_eq!(kinds(&recent), ["agent_online"]);
    assert_eq!(recent[0]["computer_id"], "pc-audit-01");
    let week = audit_json(&relay_dir, &["--since", "8d", "--id", "pc-old"]);
    assert_eq!(week.len(), 1);

    // For people: a table, newest first.
    let out = audit(&relay_dir, &["--id", "pc-audit-01"]);
    let table = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    let line = lines[2];
    assert!(
        line.contains("UTC") && line.contains("agent_online"),
        "{table}"
    );
    assert!(line.contains("pc-audit-01") && line.contains("127.0.0.1:"));
    assert!(
        line.contains(&format!("transport={transport:?}")),
        "{table}"
    );
    assert!(table.contains("by=\"cli\""), "{table}");

    // Bad input is one line that says what is wrong.
    for (args, expect) in [
        (
            &["--since", "3x"][..],
            "--since \"3x\" is not an age like 90m, 24h or 7d",
        ),
        (&["--kind", "logins"][..], "--kind \"logins\" is not one of"),
    ] {
        let out = audit(&relay_dir, args);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(expect), "{err}");
    }
}

#[test]
fn rows_older_than_audit_days_are_pruned_at_start_and_zero_days_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let row = |days_ago: i64, id: &str| AuditRow {
        id: 0,
        at: now() - days_ago * 86_400 - 60,
        kind: "enrolled".into(),
        computer_id: Some(id.into()),
        address: None,
        actor: None,
        detail: json!({ "with_token": false }),
    };
    // Make the data dir as the relay does (owner-only), then add rows.
    let out = audit(dir.path(), &[]);
    assert!(out.status.success(), "{out:?}");
    let registry = Registry::open(&dir.path().join("relay.db")).unwrap();
    telework_tests::block_on(registry.record_audit_batch(&[
        row(10, "pc-ten-days"),
        row(3, "pc-three-days"),
        row(0, "pc-today"),
    ]))
    .unwrap();
    drop(registry);

    let out = relay()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--audit-days",
            "0",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("audit_days"),
        "0 days is refused"
    );

    let served = serve(dir.path(), &["--audit-days", "5"]);
    let ids = || -> Vec<String> {
        audit_json(dir.path(), &["--kind", "enrolled"])
            .iter()
            .map(|r| r["computer_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let started = Instant::now();
    while ids().len() == 3 {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "pruned at start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(ids(), ["pc-today", "pc-three-days"]);
    stop(served);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_refused_lookups_from_one_address_is_one_row_a_minute() {
    const LOOKUPS: usize = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let served = serve(dir.path(), &[]);
    look_up(&served, (0..LOOKUPS).map(|i| format!("probe-{i}"))).await;
    tokio::task::spawn_blocking(move || stop(served))
        .await
        .unwrap();
    let rows = audit_json(dir.path(), &["--kind", "lookups_refused"]);
    let total: u64 = rows
        .iter()
        .map(|r| r["detail"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(total, LOOKUPS as u64);
    // The burst may straddle a minute's end, but no more.
    assert!(rows.len() <= 2, "{rows:#?}");
    let kinds = &rows[0]["detail"]["kinds"];
    assert!(kinds["rate_limited"].as_u64().unwrap() > 0, "{kinds}");
}
