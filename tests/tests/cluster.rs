//! Three relay nodes (the real binary) on one PostgreSQL: agents spread by rendezvous
//! hashing, clients sent to the node holding the office PC, a killed node's agents and
//! sessions back elsewhere within seconds, a drained node's sessions let finish, one node's
//! admin API showing and ending another node's session.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use telework_client::Session;
use telework_protocol::ComputerId;
use telework_relay::cluster::placement;
use telework_tests::cluster::{admin_request, TestCluster};
use telework_tests::desktop::{echo_once, EchoServer};
use telework_tests::{AgentBuilder, TestAgent, TestClient};
use tokio::net::TcpStream;

const PASSWORD: &str = "correct horse battery staple";

fn names(cluster: &TestCluster) -> Vec<String> {
    cluster.nodes.iter().map(|n| n.name.clone()).collect()
}

/// The home of `id` among the cluster's nodes, as every node computes it.
fn home(cluster: &TestCluster, id: &str) -> String {
    let names = names(cluster);
    let id: ComputerId = id.parse().unwrap();
    placement::home(&id, names.iter().map(String::as_str), &[])
        .unwrap()
        .to_owned()
}

/// An ID (`prefix-N`) whose home is node `node`.
fn id_homed_at(cluster: &TestCluster, prefix: &str, node: usize) -> String {
    (0..1000)
        .map(|i| format!("{prefix}-{i}"))
        .find(|id| home(cluster, id) == cluster.nodes[node].name)
        .unwrap()
}

/// Waits until `id`'s presence row names a node `ok` accepts; returns that node.
async fn wait_presence(
    cluster: &TestCluster,
    id: &str,
    within: Duration,
    ok: impl Fn(&str) -> bool,
) -> String {
    let id: ComputerId = id.parse().unwrap();
    let deadline = Instant::now() + within;
    loop {
        if let Some(p) = cluster.registry.presence_of(&id).await.unwrap() {
            if ok(&p.node) {
                return p.node;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{id} not where expected within {within:?}: {:?}",
            cluster.registry.presence_of(&id).await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An office PC `id` with an echo desktop, reaching the cluster through node `entry`, online.
async fn office_pc(cluster: &TestCluster, entry: usize, id: &str) -> (EchoServer, TestAgent) {
    let desktop = EchoServer::start().await;
    let agent = cluster
        .agent(entry, id, Some(PASSWORD))
        .target(desktop.addr)
        .run()
        .await;
    (desktop, agent)
}

/// An employee's session with `id` through node `entry`, and one desktop connection through
/// it that echoes.
async fn connected(cluster: &TestCluster, entry: usize, id: &str) -> (TestClient, TcpStream) {
    let session = Session::login(&cluster.target(entry, id), PASSWORD.as_bytes())
        .await
        .unwrap();
    let client = TestClient::serve(session).await;
    let mut conn = TcpStream::connect(client.local).await.unwrap();
    echo_once(&mut conn).await;
    (client, conn)
}

/// Starts the agents together and waits until each is online.
async fn run_all(builders: impl Iterator<Item = AgentBuilder>) -> Vec<TestAgent> {
    let mut set = tokio::task::JoinSet::new();
    for b in builders {
        set.spawn(b.run());
    }
    set.join_all().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_spread_over_three_nodes_and_clients_are_sent_to_theirs() {
    let Some(cluster) = TestCluster::start(3).await else {
        return;
    };
    const AGENTS: usize = 1_000;
    let mut agents = Vec::new();
    for chunk in 0..AGENTS / 100 {
        let builders = (0..100).map(|i| {
            let n = chunk * 100 + i;
            cluster.agent(n % 3, &format!("pc-{n:04}"), None)
        });
        agents.extend(run_all(builders).await);
    }
    // Every agent ends at its home, whichever node it first reached.
    let deadline = Instant::now() + Duration::from_secs(20);
    let counts = loop {
        let presence = cluster.presence().await;
        let at_home = presence
            .iter()
            .filter(|p| p.node == home(&cluster, p.id.as_str()))
            .count();
        if at_home == AGENTS {
            let mut counts: HashMap<String, usize> = HashMap::new();
            for p in &presence {
                *counts.entry(p.node.clone()).or_default() += 1;
            }
            break counts;
        }
        assert!(
            Instant::now() < deadline,
            "{at_home} of {AGENTS} agents at their home node ({} presence rows)",
            presence.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("agents per node: {counts:?}");
    for name in names(&cluster) {
        let n = counts.get(&name).copied().unwrap_or(0);
        assert!(
            (300..=367).contains(&n),
            "{name} has {n} of {AGENTS} agents: not within 10 % of even ({counts:?})"
        );
    }
    // Each node's heartbeat row counts its agents (as of its last beat).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = cluster.live_nodes().await;
        if rows.iter().all(|r| r.agents as usize == counts[&r.name]) {
            break;
        }
        assert!(Instant::now() < deadline, "{rows:?} against {counts:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A client asking node 1 for a PC at home on node 3 is sent there and gets a session.
    let id = id_homed_at(&cluster, "pc-office", 2);
    let (_desktop, _agent) = office_pc(&cluster, 0, &id).await;
    wait_presence(&cluster, &id, Duration::from_secs(10), |n| n == "node-3").await;
    let (_client, _conn) = connected(&cluster, 0, &id).await;
    drop(agents);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_s_agents_are_online_elsewhere_and_the_session_resumes() {
    let Some(mut cluster) = TestCluster::start(3).await else {
        return;
    };
    let id = id_homed_at(&cluster, "pc-kill", 1);
    let (_desktop, _agent) = office_pc(&cluster, 0, &id).await;
    wait_presence(&cluster, &id, Duration::from_secs(10), |n| n == "node-2").await;
    // More agents on the node that dies.
    let mut others = Vec::new();
    for i in 0..200 {
        let other = format!("pc-other-{i}");
        if home(&cluster, &other) == "node-2" {
            others.push(other);
        }
    }
    let _others = run_all(others.iter().map(|o| cluster.agent(0, o, None))).await;
    let (client, _conn) = connected(&cluster, 0, &id).await;

    cluster.kill(1);
    let killed = Instant::now();
    let elsewhere = |n: &str| n != "node-2";
    wait_presence(&cluster, &id, Duration::from_secs(10), elsewhere).await;
    for other in &others {
        wait_presence(&cluster, other, Duration::from_secs(10), elsewhere).await;
    }
    eprintln!(
        "{} agents online elsewhere {:?} after the kill",
        others.len() + 1,
        killed.elapsed()
    );
    assert!(killed.elapsed() <= Duration::from_secs(10));

    // The RDP client reconnects: a new local connection gets a tunnel through the node the
    // office PC is on now, with no password.
    let resumed = async {
        loop {
            let mut conn = TcpStream::connect(client.local).await.unwrap();
            let attempt = tokio::time::timeout(Duration::from_secs(5), async {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                conn.write_all(b"ping").await?;
                let mut back = [0u8; 4];
                conn.read_exact(&mut back).await?;
                Ok::<_, std::io::Error>(back == *b"ping")
            })
            .await;
            if matches!(attempt, Ok(Ok(true))) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(45), resumed)
        .await
        .expect("the session resumed through another node");
    eprintln!("session resumed {:?} after the kill", killed.elapsed());
    assert!(!client.task.is_finished(), "the session is still on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_moves_its_agents_and_lets_open_sessions_finish() {
    let Some(mut cluster) = TestCluster::start(3).await else {
        return;
    };
    let id = id_homed_at(&cluster, "pc-drain", 1);
    let (_desktop, _agent) = office_pc(&cluster, 1, &id).await;
    wait_presence(&cluster, &id, Duration::from_secs(10), |n| n == "node-2").await;
    let (client, mut open) = connected(&cluster, 1, &id).await;

    cluster.terminate(1);
    let moved = wait_presence(&cluster, &id, Duration::from_secs(10), |n| n != "node-2").await;
    let names = names(&cluster);
    let expected = placement::home(
        &id.parse().unwrap(),
        names.iter().map(String::as_str).filter(|n| *n != "node-2"),
        &[],
    )
    .unwrap();
    assert_eq!(moved, expected, "the agent went to its next node");
    // The desktop connection open through the draining node carries on...
    for _ in 0..5 {
        echo_once(&mut open).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // ...and a new one goes through the agent's new node.
    let mut new = TcpStream::connect(client.local).await.unwrap();
    echo_once(&mut new).await;
    assert!(
        cluster.process(1).running(),
        "the node waits for its session"
    );
    // The open connection lives until the grace period ends; then the node stops, and the
    // session's control tunnel comes back through another node by itself.
    let draining = Instant::now();
    let code =
        tokio::task::block_in_place(|| cluster.process(1).wait_exit(Duration::from_secs(15)));
    assert_eq!(code, Some(0), "{}", cluster.process(1).output());
    assert!(
        draining.elapsed() >= Duration::from_secs(5),
        "cut before the grace period"
    );
    echo_once(&mut new).await;
    let mut after = TcpStream::connect(client.local).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), echo_once(&mut after))
        .await
        .expect("a new connection after the drain");
    assert!(!client.task.is_finished(), "the session is still on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_takes_about_a_third_and_nobody_else_moves() {
    let Some(mut cluster) = TestCluster::start(2).await else {
        return;
    };
    const AGENTS: usize = 90;
    let ids: Vec<String> = (0..AGENTS).map(|n| format!("pc-join-{n:03}")).collect();
    let _agents = run_all(
        ids.iter()
            .enumerate()
            .map(|(n, id)| cluster.agent(n % 2, id, None)),
    )
    .await;
    let settled = |cluster: &TestCluster, presence: &[telework_relay::registry::Presence]| {
        presence.len() == AGENTS
            && presence
                .iter()
                .all(|p| p.node == home(cluster, p.id.as_str()))
    };
    let before = wait_settled(&cluster, settled).await;

    cluster.add_node();
    cluster.wait_live(3, Duration::from_secs(10)).await;
    let after = wait_settled(&cluster, settled).await;
    let mut moved = 0;
    for (id, (node, since)) in &after {
        let (old_node, old_since) = &before[id];
        if node == old_node {
            assert_eq!(
                since, old_since,
                "{id} reconnected though its home did not change"
            );
        } else {
            assert_eq!(node, "node-3", "{id} moved from {old_node} to {node}");
            moved += 1;
        }
    }
    eprintln!("{moved} of {AGENTS} agents moved to the new node");
    assert!((20..=40).contains(&moved), "{moved} of {AGENTS} moved");
}

/// Waits until `done` holds for the presence rows (20 s at most); returns each agent's node
/// and the second it came online there.
async fn wait_settled(
    cluster: &TestCluster,
    done: impl Fn(&TestCluster, &[telework_relay::registry::Presence]) -> bool,
) -> HashMap<String, (String, i64)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let presence = cluster.presence().await;
        if done(cluster, &presence) {
            return presence
                .into_iter()
                .map(|p| (p.id.to_string(), (p.node, p.since)))
                .collect();
        }
        assert!(Instant::now() < deadline, "not settled: {presence:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_database_restarts_online_agents_are_served_and_registration_waits() {
    let Some(cluster) = TestCluster::start(2).await else {
        return;
    };
    let id = id_homed_at(&cluster, "pc-db", 0);
    let (_desktop, _agent) = office_pc(&cluster, 0, &id).await;
    let (client, mut open) = connected(&cluster, 0, &id).await;

    tokio::task::block_in_place(|| cluster.pg.stop());
    // Past the nodes' heartbeat expiry: each keeps serving with the view it had.
    tokio::time::sleep(Duration::from_secs(8)).await;
    echo_once(&mut open).await;
    let mut new = TcpStream::connect(client.local).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), echo_once(&mut new))
        .await
        .expect("a new tunnel while the database is down");

    // A registration started during the outage waits, and succeeds once it is back.
    let other = id_homed_at(&cluster, "pc-db-new", 0);
    let registering = tokio::spawn(cluster.agent(0, &other, None).run());
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::block_in_place(|| cluster.pg.start_again());
    let _registered = tokio::time::timeout(Duration::from_secs(30), registering)
        .await
        .expect("the registration finished after the database came back")
        .unwrap();
    wait_presence(&cluster, &other, Duration::from_secs(10), |n| n == "node-1").await;
    cluster.wait_live(2, Duration::from_secs(10)).await;
    echo_once(&mut open).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_cannot_reach_its_home_stays_where_it_is_and_presence_says_so() {
    let Some(mut cluster) = TestCluster::start(2).await else {
        return;
    };
    // Node 2 announces an address nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = closed.local_addr().unwrap().to_string();
    drop(closed);
    cluster.kill(1);
    cluster.nodes[1].public_addr = Some(nowhere);
    cluster.run(1);
    cluster.wait_live(2, Duration::from_secs(10)).await;
    let id = id_homed_at(&cluster, "pc-away", 1);
    let (_desktop, _agent) = office_pc(&cluster, 0, &id).await;
    wait_presence(&cluster, &id, Duration::from_secs(15), |n| n == "node-1").await;
    let p = cluster
        .registry
        .presence_of(&id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        p.away_from.as_deref(),
        Some("node-2"),
        "{p:?}\n{}",
        cluster.process(0).output()
    );
    // It is reachable where it is.
    let (_client, _conn) = connected(&cluster, 0, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_s_admin_api_lists_and_ends_a_session_held_by_another() {
    let Some(cluster) = TestCluster::start_with_admin(2).await else {
        return;
    };
    let id = id_homed_at(&cluster, "pc-ops", 1);
    let (_desktop, _agent) = office_pc(&cluster, 1, &id).await;
    let (client, _conn) = connected(&cluster, 1, &id).await;

    // node-2 records its session in PostgreSQL, in a batch off the client's request.
    let deadline = Instant::now() + Duration::from_secs(10);
    let recorded = loop {
        let rows = cluster.registry.sessions_elsewhere("node-1").await.unwrap();
        if let Some(row) = rows.into_iter().find(|s| s.computer_id == id) {
            break row;
        }
        assert!(
            Instant::now() < deadline,
            "node-2's session is not recorded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(recorded.node, "node-2");

    let (_, token) = cluster.registry.create_api_token("ops").await.unwrap();
    let admin = cluster.nodes[0].admin.unwrap();
    // node-1 lists it once its beat has seen node-2 (every 2 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, sessions) = admin_request(admin, "GET", "/api/v1/sessions", &token).await;
        assert_eq!(status, 200, "{sessions}");
        if sessions.contains("\"node\":\"node-2\"") && sessions.contains(&id) {
            break;
        }
        assert!(Instant::now() < deadline, "node-1 lists {sessions}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // node-1's metrics count node-2's agent and session once node-2 has beaten.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, metrics) = admin_request(admin, "GET", "/metrics", "").await;
        if metrics.contains("telework_node_sessions{node=\"node-2\"} 1")
            && metrics.contains("telework_node_agents{node=\"node-2\"} 1")
        {
            assert!(metrics.contains("telework_node_up{node=\"node-1\"} 1"));
            break;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let path = format!("/api/v1/nodes/node-2/sessions/{}", recorded.id);
    let (status, body) = admin_request(admin, "DELETE", &path, "twa1-wrong").await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = admin_request(admin, "DELETE", &path, &token).await;
    assert_eq!(status, 202, "{body}");
    let ended = tokio::time::timeout(Duration::from_secs(10), client.task)
        .await
        .expect("node-2 ends the session at its next beat")
        .unwrap();
    assert!(
        matches!(
            ended,
            Err(telework_client::ClientError::Relay(
                telework_protocol::ErrorCode::EndedByOperator
            ))
        ),
        "{ended:?}"
    );
}
