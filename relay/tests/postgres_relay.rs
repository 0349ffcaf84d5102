//! The relay binary on a PostgreSQL registry, as an operator runs it: `serve --database
//! postgres://…`, an agent registering and coming online, `machines --database …` listing
//! it with the node it is online at, and `machines remove` from another process disconnecting it within seconds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use telework_agent::state::{AgentSettings, DataDir};
use telework_agent::AgentError;
use telework_protocol::ErrorCode;
use telework_tests::postgres::Postgres;

fn relay() -> Command {
    Command::new(env!("CARGO_BIN_EXE_telework-relay"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_on_postgres_registers_lists_and_removes_machines() {
    let Some(pg) = tokio::task::spawn_blocking(Postgres::start).await.unwrap() else {
        return;
    };
    let url = pg.url();
    let dir = tempfile::tempdir().unwrap();
    let mut child = relay()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--no-admin",
            "--node-name",
            "relay-pg",
            "--database",
        ])
        .arg(&url)
        .arg("--data-dir")
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let listening = lines.next().unwrap().unwrap();
    let relay_addr = listening
        .strip_prefix("telework-relay listening on ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("{listening}"))
        .to_owned();
    let fp_line = lines.next().unwrap().unwrap();
    let fingerprint = fp_line.strip_prefix("certificate fingerprint: ").unwrap();
    let machines = |args: &[&str]| {
        let out = relay()
            .arg("machines")
            .args(args)
            .args(["--database", &url])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };

    let agent_dir = tempfile::tempdir().unwrap();
    let data = DataDir::open(agent_dir.path()).unwrap();
    let settings = AgentSettings {
        computer_id: "pc-pg".parse().unwrap(),
        relay: relay_addr,
        relay_fingerprint: Some(fingerprint.to_owned()),
        relay_ca: None,
        transport: Default::default(),
        proxy: None,
    };
    telework_agent::register::register(&data, &settings, None)
        .await
        .unwrap();
    let agent = telework_agent::Agent::load(data, "127.0.0.1:9".into()).unwrap();
    let running = telework_tests::run_until_online(agent.clone()).await;

    // The registry is in PostgreSQL: no SQLite file beside the certificate.
    assert!(!dir.path().join("relay.db").exists());
    // Presence is written in batches, off the agent's hello: it shows within moments.
    let deadline = Instant::now() + Duration::from_secs(10);
    let listing = loop {
        let (code, listing) = machines(&[]);
        assert_eq!(code, Some(0), "{listing}");
        if listing.contains("online at relay-pg") || Instant::now() > deadline {
            break listing;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let line = listing.lines().find(|l| l.starts_with("pc-pg")).unwrap();
    assert!(line.ends_with("online at relay-pg"), "{line}");
    assert!(line.contains("registered 20"), "{line}");
    assert!(!line.contains("last seen never"), "{line}");

    let removed_at = Instant::now();
    let (code, said) = machines(&["remove", "pc-pg"]);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("removed pc-pg"), "{said}");
    let ended = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the agent was disconnected within 10 s of the removal")
        .unwrap();
    assert!(
        matches!(ended, Err(AgentError::Refused(ErrorCode::UnknownId))),
        "{ended:?}"
    );
    // The watcher polls every 2 s; allow for a loaded machine.
    assert!(
        removed_at.elapsed() < Duration::from_secs(5),
        "{:?}",
        removed_at.elapsed()
    );
    let (code, listing) = machines(&["list"]);
    assert_eq!(code, Some(0), "{listing}");
    assert!(listing.contains("no machines are registered"), "{listing}");

    // The relay's audit writer (its own thread) stored the agent's arrival in PostgreSQL.
    let online = relay()
        .args(["audit", "--kind", "agent_online", "--database", &url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&online.stdout);
    assert!(
        online.status.success() && text.contains("pc-pg"),
        "{online:?}"
    );
    // The removal is in the audit log, read from PostgreSQL too.
    let out = relay()
        .args(["audit", "--kind", "removed", "--database", &url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("pc-pg"), "{out:?}");

    // The other commands an operator runs against the shared registry.
    let token = relay()
        .args(["token", "create", "--database", &url])
        .output()
        .unwrap();
    assert!(token.status.success(), "{token:?}");
    let token = String::from_utf8(token.stdout).unwrap().trim().to_owned();
    let mut add_user = relay()
        .args([
            "admin",
            "add-user",
            "alice",
            "--password-stdin",
            "--database",
            &url,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = add_user.stdin.take().unwrap();
        stdin.write_all(b"correct horse battery\n").unwrap();
    }
    assert!(add_user.wait().unwrap().success());
    let registry = telework_relay::registry::Registry::connect(&url)
        .await
        .unwrap();
    assert!(registry
        .check_operator("alice", "correct horse battery")
        .await
        .unwrap());
    registry.consume_token(&token).await.unwrap();
    assert_eq!(
        registry.schema_version().await.unwrap(),
        telework_relay::registry::SCHEMA_VERSION
    );

    child.kill().unwrap();
    child.wait().unwrap();
    drop(pg);
}
