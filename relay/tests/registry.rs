//! The registry's API, the same cases against both backends: SQLite (a file in a temporary
//! directory) and PostgreSQL (a throwaway cluster, [`telework_tests::postgres`]). Each case
//! gets two registries on one store, as a relay and a CLI command (or two nodes) have.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::pin::Pin;

use serde_json::json;
use telework_protocol::ComputerId;
use telework_relay::registry::{
    AuditFilter, AuditRow, NodeRow, Presence, PresenceChange, Registry, RegistryError,
    SessionChange, SessionRecord,
};
use telework_tests::postgres::Postgres;

type Case = fn(Registry, Registry) -> Pin<Box<dyn Future<Output = ()> + Send>>;

/// Every case, by name.
const CASES: &[(&str, Case)] = &[
    ("machines", |a, b| Box::pin(machines(a, b))),
    ("tokens", |a, b| Box::pin(tokens(a, b))),
    ("operators", |a, b| Box::pin(operators(a, b))),
    ("audit", |a, b| Box::pin(audit(a, b))),
    ("changes", |a, b| Box::pin(changes(a, b))),
    ("nodes", |a, b| Box::pin(nodes(a, b))),
    ("sessions", |a, b| Box::pin(sessions(a, b))),
];

fn online(id: &str, node: &str, since: i64) -> PresenceChange {
    PresenceChange::Online(Presence {
        id: pc(id),
        node: node.into(),
        since,
        since_ms: since * 1000,
        address: "192.0.2.1:5000".into(),
        transport: "QUIC".into(),
        away_from: None,
    })
}

fn offline(id: &str, node: &str, at: i64) -> PresenceChange {
    PresenceChange::Offline {
        id: pc(id),
        node: node.into(),
        at,
    }
}

/// Heartbeat rows, presence rows written by two nodes, and requests between them.
async fn nodes(a: Registry, b: Registry) {
    let row = |name: &str, expires_ms: i64| NodeRow {
        name: name.into(),
        public_addr: format!("{name}.example:443"),
        started: 1,
        expires_ms,
        draining: false,
        agents: 3,
        sessions: 1,
    };
    a.heartbeat(&row("relay-a", 10_000)).await.unwrap();
    b.heartbeat(&row("relay-b", 20_000)).await.unwrap();
    a.heartbeat(&NodeRow {
        draining: true,
        ..row("relay-a", 15_000)
    })
    .await
    .unwrap();
    let all = b.nodes().await.unwrap();
    assert_eq!(all.len(), 2);
    assert!(all[0].draining && all[0].expires_ms == 15_000 && all[0].live(14_999));
    assert!(!all[0].live(15_000));

    a.register(&pc("pc-1"), &[1; 32]).await.unwrap();
    a.record_presence(vec![online("pc-1", "relay-a", 100)])
        .await
        .unwrap();
    assert_eq!(
        b.presence_of(&pc("pc-1")).await.unwrap().unwrap().node,
        "relay-a"
    );
    assert_eq!(
        a.machine(&pc("pc-1")).await.unwrap().unwrap().last_seen,
        Some(100)
    );
    // The agent moves to b; a's late offline does not take b's row away.
    b.record_presence(vec![online("pc-1", "relay-b", 101)])
        .await
        .unwrap();
    a.record_presence(vec![offline("pc-1", "relay-a", 102)])
        .await
        .unwrap();
    let p = a.presence_of(&pc("pc-1")).await.unwrap().unwrap();
    assert_eq!((p.node.as_str(), p.since), ("relay-b", 101));
    // Within one second: the node left writes its online (earlier by the millisecond)
    // after the new node's; the newer row stays, and the late offline does not remove it.
    let at = |node: &str, ms: i64| {
        PresenceChange::Online(Presence {
            id: pc("pc-3"),
            node: node.into(),
            since: 200,
            since_ms: ms,
            address: "192.0.2.1:5000".into(),
            transport: "QUIC".into(),
            away_from: None,
        })
    };
    a.register(&pc("pc-3"), &[3; 32]).await.unwrap();
    b.record_presence(vec![at("relay-b", 200_900)])
        .await
        .unwrap();
    a.record_presence(vec![
        at("relay-a", 200_100),
        offline("pc-3", "relay-a", 200),
    ])
    .await
    .unwrap();
    assert_eq!(
        b.presence_of(&pc("pc-3")).await.unwrap().unwrap().node,
        "relay-b"
    );
    b.record_presence(vec![offline("pc-3", "relay-b", 201)])
        .await
        .unwrap();
    // An older online (a batch that was late) does not overwrite a newer one.
    a.record_presence(vec![online("pc-1", "relay-a", 90)])
        .await
        .unwrap();
    assert_eq!(
        a.presence_of(&pc("pc-1")).await.unwrap().unwrap().node,
        "relay-b"
    );
    b.record_presence(vec![
        online("pc-2", "relay-b", 103),
        offline("pc-1", "relay-b", 104),
    ])
    .await
    .unwrap();
    let ids: Vec<String> = a
        .presence()
        .await
        .unwrap()
        .iter()
        .map(|p| p.id.to_string())
        .collect();
    assert_eq!(ids, ["pc-2"]);
    assert_eq!(
        a.machine(&pc("pc-1")).await.unwrap().unwrap().last_seen,
        Some(104)
    );
    b.forget_node("relay-b", false).await.unwrap();
    assert!(a.presence().await.unwrap().is_empty());
    assert_eq!(a.nodes().await.unwrap().len(), 2);
    b.forget_node("relay-b", true).await.unwrap();
    assert_eq!(a.nodes().await.unwrap().len(), 1);

    a.request_node("relay-b", "end-session", "7").await.unwrap();
    a.request_node("relay-c", "end-session", "8").await.unwrap();
    let got = b.take_node_requests("relay-b").await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].kind.as_str(), got[0].target.as_str()),
        ("end-session", "7")
    );
    assert!(b.take_node_requests("relay-b").await.unwrap().is_empty());
}

fn started(node: &str, id: u64, at: i64) -> SessionChange {
    SessionChange::Started(SessionRecord {
        node: node.into(),
        id,
        computer_id: format!("pc-{id}"),
        client: "198.51.100.7:40000".into(),
        device: "ab".repeat(16),
        transport: "TLS/TCP".into(),
        started: at,
    })
}

fn ended(node: &str, id: u64) -> SessionChange {
    SessionChange::Ended {
        node: node.into(),
        id,
    }
}

/// Live sessions written by two nodes: each lists the other's, either finds one by node and
/// id, ends remove rows, and forgetting a node clears its rows only.
async fn sessions(a: Registry, b: Registry) {
    a.record_sessions(vec![
        started("relay-a", 1, 100),
        started("relay-a", 2, 101),
        started("relay-a", 3, 102),
        ended("relay-a", 2),
    ])
    .await
    .unwrap();
    // Ids are per node: relay-b's session 1 is another session.
    b.record_sessions(vec![started("relay-b", 1, 99)])
        .await
        .unwrap();
    let seen_by_b: Vec<(String, u64)> = b
        .sessions_elsewhere("relay-b")
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.node, s.id))
        .collect();
    assert_eq!(seen_by_b, [("relay-a".into(), 1), ("relay-a".into(), 3)]);
    let seen_by_a = a.sessions_elsewhere("relay-a").await.unwrap();
    assert_eq!(seen_by_a.len(), 1);
    assert_eq!(
        seen_by_a[0],
        SessionRecord {
            node: "relay-b".into(),
            id: 1,
            computer_id: "pc-1".into(),
            client: "198.51.100.7:40000".into(),
            device: "ab".repeat(16),
            transport: "TLS/TCP".into(),
            started: 99,
        }
    );
    let found = b.cluster_session("relay-a", 3).await.unwrap().unwrap();
    assert_eq!((found.computer_id.as_str(), found.started), ("pc-3", 102));
    assert!(b.cluster_session("relay-a", 2).await.unwrap().is_none());
    assert!(b.cluster_session("relay-c", 1).await.unwrap().is_none());
    // An end for a session whose start was never written (dropped) changes nothing.
    a.record_sessions(vec![ended("relay-a", 9)]).await.unwrap();
    // A node that starts again clears what its last run left, requests about its sessions
    // too (the new run numbers its sessions from 1 again).
    b.request_node("relay-a", "end-session", "1").await.unwrap();
    a.forget_node("relay-a", false).await.unwrap();
    assert!(b.sessions_elsewhere("relay-b").await.unwrap().is_empty());
    assert!(a.take_node_requests("relay-a").await.unwrap().is_empty());
    assert_eq!(a.sessions_elsewhere("relay-a").await.unwrap().len(), 1);
    b.forget_node("relay-b", true).await.unwrap();
    assert!(a.sessions_elsewhere("relay-a").await.unwrap().is_empty());
}

fn pc(id: &str) -> ComputerId {
    id.parse().unwrap()
}

async fn machines(reg: Registry, _: Registry) {
    let id = pc("pc-1");
    reg.register(&id, &[1; 32]).await.unwrap();
    reg.register(&id, &[1; 32]).await.unwrap();
    assert!(matches!(
        reg.register(&id, &[2; 32]).await,
        Err(RegistryError::IdTaken)
    ));
    let m = reg.machine(&id).await.unwrap().unwrap();
    assert_eq!(m.public_key, vec![1; 32]);
    assert!(m.created > 0 && m.last_seen.is_none() && !m.disabled);
    assert!(reg.machine(&pc("pc-2")).await.unwrap().is_none());
    reg.register(&pc("pc-0"), &[0; 32]).await.unwrap();
    reg.record_presence(vec![online("pc-1", "relay", 100)])
        .await
        .unwrap();
    let all = reg.machines().await.unwrap();
    let ids: Vec<&str> = all.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["pc-0", "pc-1"]);
    assert!(all[1].last_seen.is_some() && all[0].last_seen.is_none());
    assert!(reg.set_disabled(&id, true).await.unwrap());
    assert!(reg.machine(&id).await.unwrap().unwrap().disabled);
    assert!(reg.set_disabled(&id, false).await.unwrap());
    assert!(!reg.machine(&id).await.unwrap().unwrap().disabled);
    assert!(!reg.set_disabled(&pc("pc-2"), true).await.unwrap());
    assert!(reg.remove(&id).await.unwrap());
    assert!(!reg.remove(&id).await.unwrap());
    assert!(reg.machine(&id).await.unwrap().is_none());
    // The ID is free again, for any key.
    reg.register(&id, &[2; 32]).await.unwrap();
}

async fn tokens(reg: Registry, _: Registry) {
    let once = reg.create_token(1, 3600).await.unwrap();
    assert!(once.starts_with("tw1-"));
    reg.consume_token(&once).await.unwrap();
    assert!(matches!(
        reg.consume_token(&once).await,
        Err(RegistryError::BadToken)
    ));
    let expired = reg.create_token(5, 0).await.unwrap();
    assert!(matches!(
        reg.consume_token(&expired).await,
        Err(RegistryError::BadToken)
    ));
    assert!(matches!(
        reg.consume_token("tw1-unknown").await,
        Err(RegistryError::BadToken)
    ));
    let (token, id) = reg
        .create_labelled_token(3, 3600, Some("tanaka's PC"), Some("alice"))
        .await
        .unwrap();
    assert_eq!(id.len(), 12);
    let listed = reg.enrolment_tokens().await.unwrap();
    assert_eq!(listed.len(), 3);
    let mine = listed.iter().find(|t| t.id == id).unwrap();
    assert_eq!(mine.label.as_deref(), Some("tanaka's PC"));
    assert_eq!(mine.created_by.as_deref(), Some("alice"));
    assert_eq!(mine.uses_left, 3);
    assert!(mine.usable());
    assert!(listed.iter().filter(|t| t.id != id).all(|t| !t.usable()));
    assert!(!format!("{listed:?}").contains(&token[4..]));
    reg.consume_token(&token).await.unwrap();
    let listed = reg.enrolment_tokens().await.unwrap();
    assert_eq!(listed.iter().find(|t| t.id == id).unwrap().uses_left, 2);
    assert!(reg.revoke_token(&id.to_uppercase()).await.unwrap());
    assert!(!reg.revoke_token(&id).await.unwrap());
    assert!(!reg.revoke_token("'; DROP TABLE").await.unwrap());
    assert!(matches!(
        reg.consume_token(&token).await,
        Err(RegistryError::BadToken)
    ));
}

async fn operators(reg: Registry, other: Registry) {
    assert!(reg
        .set_operator("alice", "correct horse battery")
        .await
        .unwrap());
    assert!(other
        .check_operator("alice", "correct horse battery")
        .await
        .unwrap());
    assert!(!reg
        .check_operator("alice", "wrong horse battery")
        .await
        .unwrap());
    assert!(!reg
        .check_operator("bob", "correct horse battery")
        .await
        .unwrap());
    assert!(!reg
        .set_operator("alice", "another long password")
        .await
        .unwrap());
    assert!(reg
        .check_operator("alice", "another long password")
        .await
        .unwrap());
    assert!(matches!(
        reg.set_operator("alice", "short").await,
        Err(RegistryError::Invalid(_))
    ));
    assert!(matches!(
        reg.set_operator("al ice", "correct horse battery").await,
        Err(RegistryError::Invalid(_))
    ));
    reg.set_operator("bob", "correct horse battery")
        .await
        .unwrap();
    assert_eq!(reg.operators().await.unwrap(), ["alice", "bob"]);

    let (id, secret) = reg.create_api_token("nightly script").await.unwrap();
    assert!(secret.starts_with("twa1-"));
    assert!(reg.api_tokens().await.unwrap()[0].last_used.is_none());
    assert_eq!(
        other.api_token_name(&secret).await.unwrap().as_deref(),
        Some("nightly script")
    );
    assert_eq!(reg.api_token_name("twa1-nope").await.unwrap(), None);
    let listed = reg.api_tokens().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id);
    assert!(listed[0].last_used.is_some());
    assert!(matches!(
        reg.create_api_token("").await,
        Err(RegistryError::Invalid(_))
    ));
    assert!(reg.revoke_api_token(&id).await.unwrap());
    assert!(!reg.revoke_api_token(&id).await.unwrap());
    assert_eq!(reg.api_token_name(&secret).await.unwrap(), None);
}

fn row(at: i64, kind: &str, id: Option<&str>) -> AuditRow {
    AuditRow {
        id: 0,
        at,
        kind: kind.into(),
        computer_id: id.map(Into::into),
        address: Some("192.0.2.1:5000".into()),
        actor: Some("cli".into()),
        detail: json!({ "n": at, "why": "test" }),
    }
}

async fn audit(reg: Registry, other: Registry) {
    reg.record_audit(&row(100, "agent_online", Some("pc-1")))
        .await
        .unwrap();
    reg.record_audit_batch(&[
        row(200, "agent_offline", Some("pc-1")),
        row(300, "agent_online", Some("pc-2")),
        row(400, "lookups_refused", None),
    ])
    .await
    .unwrap();
    let all = other.audit_rows(&AuditFilter::default()).await.unwrap();
    let ats: Vec<i64> = all.iter().map(|r| r.at).collect();
    assert_eq!(ats, [400, 300, 200, 100]);
    assert_eq!(all[3].detail, json!({ "n": 100, "why": "test" }));
    assert_eq!(all[3].address.as_deref(), Some("192.0.2.1:5000"));
    assert_eq!(all[3].actor.as_deref(), Some("cli"));
    assert_eq!(all[0].computer_id, None);
    assert!(all.windows(2).all(|w| w[0].id != w[1].id));
    let rows = |filter: AuditFilter| {
        let reg = &reg;
        async move {
            reg.audit_rows(&filter)
                .await
                .unwrap()
                .iter()
                .map(|r| r.at)
                .collect::<Vec<i64>>()
        }
    };
    let pc1 = AuditFilter {
        computer_id: Some("pc-1".into()),
        ..Default::default()
    };
    assert_eq!(rows(pc1).await, [200, 100]);
    let online = AuditFilter {
        kind: Some("agent_online".into()),
        ..Default::default()
    };
    assert_eq!(rows(online).await, [300, 100]);
    let window = AuditFilter {
        since: Some(200),
        until: Some(400),
        ..Default::default()
    };
    assert_eq!(rows(window).await, [300, 200]);
    let newest = AuditFilter {
        limit: Some(1),
        ..Default::default()
    };
    assert_eq!(rows(newest).await, [400]);
    // The audit writer's own thread, outside the runtime.
    let batch = [row(500, "enrolled", Some("pc-3"))];
    tokio::task::spawn_blocking(move || reg.record_audit_blocking(&batch).map(|()| reg))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(other.prune_audit(200).await.unwrap(), 1);
    assert_eq!(other.prune_audit(200).await.unwrap(), 0);
    let left: Vec<i64> = other
        .audit_rows(&AuditFilter::default())
        .await
        .unwrap()
        .iter()
        .map(|r| r.at)
        .collect();
    assert_eq!(left, [500, 400, 300, 200]);
}

/// The counter the registration watcher polls: up on every removal or disabling by anyone,
/// the same for every connection, and not moved by other writes.
async fn changes(relay: Registry, cli: Registry) {
    assert_eq!(
        relay.schema_version().await.unwrap(),
        telework_relay::registry::SCHEMA_VERSION
    );
    assert_eq!(
        cli.schema_version().await.unwrap(),
        telework_relay::registry::SCHEMA_VERSION
    );
    let id = pc("pc-1");
    relay.register(&id, &[3; 32]).await.unwrap();
    let before = relay.changes().await.unwrap();
    assert_eq!(cli.changes().await.unwrap(), before);
    relay
        .record_presence(vec![online("pc-1", "relay", 100)])
        .await
        .unwrap();
    relay.create_token(1, 60).await.unwrap();
    relay.register(&pc("pc-2"), &[4; 32]).await.unwrap();
    assert_eq!(relay.changes().await.unwrap(), before, "other writes");
    assert!(cli.set_disabled(&id, true).await.unwrap());
    let disabled = relay.changes().await.unwrap();
    assert!(disabled > before);
    assert!(!cli.set_disabled(&pc("pc-9"), true).await.unwrap());
    assert!(!cli.remove(&pc("pc-9")).await.unwrap());
    assert_eq!(relay.changes().await.unwrap(), disabled, "nothing changed");
    assert!(cli.remove(&id).await.unwrap());
    assert!(relay.changes().await.unwrap() > disabled);
    assert!(relay.machine(&id).await.unwrap().is_none());
}

macro_rules! sqlite_cases {
    ($($name:ident),*) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let path = dir.path().join("relay.db");
                    let a = super::Registry::open(&path).unwrap();
                    let b = super::Registry::open(&path).unwrap();
                    assert_eq!(a.backend_name(), "sqlite");
                    super::$name(a, b).await;
                }
            )*
        }
    };
}
sqlite_cases!(machines, tokens, operators, audit, changes, nodes, sessions);

/// Every case against one throwaway cluster, each in a database of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_passes_every_case() {
    let Some(pg) = tokio::task::spawn_blocking(Postgres::start).await.unwrap() else {
        return;
    };
    for (name, case) in CASES {
        let url = pg.create_database(name);
        let a = Registry::connect(&url).await.unwrap();
        let b = Registry::connect(&url).await.unwrap();
        assert_eq!(a.backend_name(), "postgres");
        eprintln!("postgres: {name}");
        case(a, b).await;
    }
    // Opening again migrates nothing twice.
    let again = Registry::connect(&pg.url()).await.unwrap();
    let again2 = Registry::connect(&pg.url()).await.unwrap();
    assert_eq!(
        again.schema_version().await.unwrap(),
        telework_relay::registry::SCHEMA_VERSION
    );
    assert_eq!(again2.changes().await.unwrap(), 0);
    drop(pg);
}

#[tokio::test]
async fn a_bad_database_url_is_a_clear_error() {
    let err = Registry::connect("postgres://nobody@127.0.0.1:1/none")
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("registry database error"), "{err}");
}

/// TLS to the database: verified against the CA the URL names; a server that only takes TLS
/// refuses a plain connection; a certificate nobody vouches for is refused at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_checks_the_server_certificate() {
    let Some((pg, ca)) = tokio::task::spawn_blocking(Postgres::start_tls)
        .await
        .unwrap()
    else {
        return;
    };
    let url = pg.url();
    let ca = ca.to_str().unwrap();
    let reg = Registry::connect(&format!("{url}?sslmode=require&sslrootcert={ca}"))
        .await
        .unwrap();
    reg.register(&pc("pc-tls"), &[5; 32]).await.unwrap();
    assert!(reg.machine(&pc("pc-tls")).await.unwrap().is_some());
    let plain = Registry::connect(&format!("{url}?sslmode=disable")).await;
    let err = plain
        .err()
        .expect("a plain connection is refused")
        .to_string();
    assert!(
        err.contains("pg_hba.conf") || err.contains("28000"),
        "{err}"
    );
    let started = std::time::Instant::now();
    let untrusted = Registry::connect(&format!("{url}?sslmode=require")).await;
    let err = untrusted
        .err()
        .expect("an unknown CA is refused")
        .to_string();
    assert!(
        err.contains("certificate") || err.contains("Certificate"),
        "{err}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "not retried: {err}"
    );
}
