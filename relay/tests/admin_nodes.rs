//! Two relay nodes on one registry, each with its admin listener: one node's console and API
//! list the other node, its agents and its sessions (and `/metrics` has a gauge per node),
//! and end a session held by the other node, which that node carries out at its next
//! heartbeat; the action is audited where it was taken, and only a signed-in operator (with
//! the CSRF token) or an API token can do it. Disabling an office PC from one node ends its
//! sessions on the other.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::Console;
use telework_client::ClientError;
use telework_protocol::{ComputerId, ErrorCode};
use telework_relay::admin::AdminOptions;
use telework_relay::registry::AuditFilter;
use telework_relay::RelayOptions;
use telework_tests::{TestClient, TestRelay};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PW: &str = "correct horse battery";

fn node(name: &str) -> RelayOptions {
    RelayOptions {
        node_name: name.to_owned(),
        ..RelayOptions::default()
    }
}

/// Polls `check` every 100 ms until it gives a value, for at most `secs` seconds.
async fn within<T, F: std::future::Future<Output = Option<T>>>(
    secs: u64,
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A computer ID whose home, of the two nodes, is `home`.
fn id_at_home(home: &str) -> ComputerId {
    (0..100)
        .map(|i| format!("pc-{i}").parse::<ComputerId>().unwrap())
        .find(|id| {
            telework_relay::cluster::placement::home(id, ["node-a", "node-b"], &[]) == Some(home)
        })
        .unwrap()
}

async fn get_json(console: &Console, path: &str, token: &str) -> serde_json::Value {
    let response = console
        .http
        .get(console.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_sees_every_node_and_ends_a_session_on_another() {
    let a = TestRelay::start_with(node("node-a")).await;
    let b = a.start_beside(node("node-b")).await;
    let console = Console::with_relay(a, AdminOptions::default()).await;
    let relay_a = console.relay.relay.clone();
    let relay_b = b.relay.clone();
    within(10, "each node sees the other", || {
        let seen = !relay_a.cluster.others().is_empty() && !relay_b.cluster.others().is_empty();
        async move { seen.then_some(()) }
    })
    .await;

    // An office PC whose home is node-b, and a session through node-b.
    let pc = id_at_home("node-b");
    let (_desktop, _agent) = b.office_pc(pc.as_str(), PW).await;
    assert_eq!(relay_b.hub.agents_online(), 1);
    let client = TestClient::serve(b.login(pc.as_str(), PW).await.unwrap()).await;
    let mut rdp = tokio::net::TcpStream::connect(client.local).await.unwrap();
    rdp.write_all(&[9; 1000]).await.unwrap();
    let mut back = [0; 1000];
    rdp.read_exact(&mut back).await.unwrap();
    let session = relay_b.sessions.list()[0].id;

    let (_, token) = relay_a.registry.create_api_token("script").await.unwrap();
    // node-a's API: both nodes, node-b holding the agent and the session as of its beat.
    let nodes = within(10, "node-b's beat counts its agent and session", || {
        let (console, token) = (&console, &token);
        async move {
            let nodes = get_json(console, "/api/v1/nodes", token).await;
            let b = nodes.as_array()?.iter().find(|n| n["name"] == "node-b")?;
            (b["agents"] == 1 && b["sessions"] == 1).then(|| nodes.clone())
        }
    })
    .await;
    assert_eq!(nodes.as_array().unwrap().len(), 2, "{nodes}");
    assert_eq!(nodes[0]["name"], "node-a");
    assert_eq!(nodes[0]["here"], true);
    assert_eq!(nodes[1]["up"], true);
    assert_eq!(nodes[1]["draining"], false);
    assert_eq!(nodes[1]["public_addr"], b.addr.to_string());

    // The machine is online at node-b, as node-a's console sees it.
    let machines = get_json(&console, "/api/v1/machines", &token).await;
    let row = &machines.as_array().unwrap()[0];
    assert_eq!(row["id"], pc.as_str());
    assert_eq!(row["online"], true);
    assert_eq!(row["node"], "node-b");

    // The session, from the sessions table node-b writes in batches.
    let sessions = within(10, "node-b's session is listed by node-a", || {
        let (console, token) = (&console, &token);
        async move {
            let rows = get_json(console, "/api/v1/sessions", token).await;
            (rows.as_array()?.len() == 1).then_some(rows)
        }
    })
    .await;
    let row = &sessions[0];
    assert_eq!(row["node"], "node-b");
    assert_eq!(row["here"], false);
    assert_eq!(row["id"], session);
    assert_eq!(row["computer_id"], pc.as_str());
    assert!(
        row["bytes_up"].is_null(),
        "no byte counts from another node"
    );

    // /metrics on node-a: a gauge per node.
    let metrics = console
        .http
        .get(console.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "telework_node_up{node=\"node-a\"} 1",
        "telework_node_up{node=\"node-b\"} 1",
        "telework_node_agents{node=\"node-b\"} 1",
        "telework_node_sessions{node=\"node-b\"} 1",
        "telework_node_agents{node=\"node-a\"} 0",
        "telework_node_draining{node=\"node-b\"} 0",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }

    // The console page lists it with a form that ends it on node-b.
    let signed = console.sign_in().await;
    let page = console
        .http
        .get(console.url("/sessions"))
        .header("cookie", &signed.cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let end = format!("/nodes/node-b/sessions/{session}/end");
    assert!(page.contains(&format!("action=\"{end}\"")), "{page}");
    let nodes_page = console
        .http
        .get(console.url("/nodes"))
        .header("cookie", &signed.cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        nodes_page.contains("data-node=\"node-b\"") && nodes_page.contains("serving"),
        "{nodes_page}"
    );

    // Without the CSRF token, or for no such session or node, nothing is asked.
    let post = |path: String, csrf: Option<String>| {
        let request = console
            .http
            .post(console.url(&path))
            .header("cookie", &signed.cookie);
        let form: Vec<(&str, String)> = csrf.map(|c| vec![("csrf", c)]).unwrap_or_default();
        async move { request.form(&form).send().await.unwrap() }
    };
    assert_eq!(post(end.clone(), None).await.status(), 403);
    let missing = post(
        "/nodes/node-b/sessions/999/end".into(),
        Some(signed.csrf.clone()),
    )
    .await;
    assert_eq!(missing.status(), 404);
    assert!(missing
        .text()
        .await
        .unwrap()
        .contains("no live session 999 on node-b"));
    let api = |path: &str| {
        console
            .http
            .delete(console.url(path))
            .bearer_auth(&token)
            .send()
    };
    let nowhere = api("/api/v1/nodes/node-z/sessions/1").await.unwrap();
    assert_eq!(nowhere.status(), 404);
    assert!(nowhere.text().await.unwrap().contains("no live relay node"));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(relay_b.sessions.count(), 1, "nothing was asked of node-b");

    // The operator ends it from node-a; node-b ends it at its next beat.
    let ended = post(end, Some(signed.csrf.clone())).await;
    assert_eq!(ended.status(), 303);
    assert_eq!(ended.headers()["location"], "/sessions");
    let stopped = tokio::time::timeout(Duration::from_secs(10), client.task)
        .await
        .expect("the client is told within a heartbeat or two")
        .unwrap();
    assert!(
        matches!(stopped, Err(ClientError::Relay(ErrorCode::EndedByOperator))),
        "{stopped:?}"
    );
    within(10, "the ended session leaves the table", || {
        let registry = relay_a.registry.clone();
        async move {
            let rows = registry.sessions_elsewhere("node-a").await.unwrap();
            rows.is_empty().then_some(())
        }
    })
    .await;

    // Audited on node-a, as an end of a local session is.
    let audit = relay_a.audit.clone();
    assert!(
        tokio::task::spawn_blocking(move || audit.flush(Duration::from_secs(5)))
            .await
            .unwrap()
    );
    let actions = relay_a
        .registry
        .audit_rows(&AuditFilter {
            kind: Some("admin_action".into()),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    let end_row = actions
        .iter()
        .find(|r| r.detail["action"] == "session_end")
        .expect("the end is audited");
    assert_eq!(end_row.actor.as_deref(), Some(common::OPERATOR));
    assert_eq!(end_row.computer_id.as_deref(), Some(pc.as_str()));
    assert_eq!(
        end_row.detail["target"],
        format!("session {session} on node-b")
    );

    // A clean stop of node-b takes its row away: node-a lists itself only.
    b.stop().await;
    within(10, "node-b leaves node-a's list", || {
        let (console, token) = (&console, &token);
        async move {
            let nodes = get_json(console, "/api/v1/nodes", token).await;
            (nodes.as_array()?.len() == 1).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_token_ends_a_session_on_another_node_with_202() {
    let a = TestRelay::start_with(node("node-a")).await;
    let b = a.start_beside(node("node-b")).await;
    let console = Console::with_relay(a, AdminOptions::default()).await;
    let relay_b = b.relay.clone();
    within(10, "node-a sees node-b", || {
        let seen = !console.relay.relay.cluster.others().is_empty();
        async move { seen.then_some(()) }
    })
    .await;
    let pc = id_at_home("node-b");
    let (_desktop, _agent) = b.office_pc(pc.as_str(), PW).await;
    let client = TestClient::serve(b.login(pc.as_str(), PW).await.unwrap()).await;
    let mut rdp = tokio::net::TcpStream::connect(client.local).await.unwrap();
    rdp.write_all(&[1; 10]).await.unwrap();
    let mut back = [0; 10];
    rdp.read_exact(&mut back).await.unwrap();
    let session = relay_b.sessions.list()[0].id;
    let registry = console.relay.relay.registry.clone();
    within(10, "the session is recorded", || {
        let registry = registry.clone();
        async move { registry.cluster_session("node-b", session).await.unwrap() }
    })
    .await;

    let (_, token) = registry.create_api_token("script").await.unwrap();
    let path = format!("/api/v1/nodes/node-b/sessions/{session}");
    let unsigned = console
        .http
        .delete(console.url(&path))
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 401);
    let response = console
        .http
        .delete(console.url(&path))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let stopped = tokio::time::timeout(Duration::from_secs(10), client.task)
        .await
        .expect("the client is told")
        .unwrap();
    assert!(
        matches!(stopped, Err(ClientError::Relay(ErrorCode::EndedByOperator))),
        "{stopped:?}"
    );
    // Disabling the office PC from node-a's console ends its next session on node-b too.
    let client = TestClient::serve(b.login(pc.as_str(), PW).await.unwrap()).await;
    let mut rdp = tokio::net::TcpStream::connect(client.local).await.unwrap();
    rdp.write_all(&[2; 10]).await.unwrap();
    rdp.read_exact(&mut back).await.unwrap();
    let disabled = console
        .http
        .post(console.url(&format!("/api/v1/machines/{pc}/disable")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(disabled.status(), 204);
    let stopped = tokio::time::timeout(Duration::from_secs(10), client.task)
        .await
        .expect("node-b sees the change within its registration check")
        .unwrap();
    assert!(
        matches!(stopped, Err(ClientError::Relay(ErrorCode::Disabled))),
        "{stopped:?}"
    );

    // The same route serves the node answering's own sessions (204 when it ends one).
    let local = console
        .http
        .delete(console.url("/api/v1/nodes/node-a/sessions/1"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(local.status(), 404, "node-a has no session 1");
}
