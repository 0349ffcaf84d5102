//! `GET /metrics` on the admin listener, scraped as Prometheus would and parsed with a
//! Prometheus text parser, before, during and after a session.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::Console;
use prometheus_parse::{Scrape, Value};
use telework_tests::TestClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PW: &str = "correct horse battery";

async fn scrape(console: &Console) -> Scrape {
    let response = console
        .http
        .get(console.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "no sign-in for Prometheus");
    let text = response.text().await.unwrap();
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

/// The value of `name` whose labels include every pair in `labels`; 0 when absent.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            Value::Summary(_) => panic!("{name} is not a summary"),
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_an_agent_and_a_session_from_start_to_end() {
    let console = Console::start().await;
    let relay = &console.relay;

    let before = scrape(&console).await;
    for name in [
        "telework_agents_online",
        "telework_sessions_active",
        "telework_tunnels_total",
        "telework_relayed_bytes_total",
    ] {
        assert!(
            before.samples.iter().any(|s| s.metric == name),
            "{name} missing before anything happened"
        );
        assert_eq!(value(&before, name, &[]), 0.0, "{name}");
    }

    let (_desktop, _agent) = relay.office_pc("pc-metrics", PW).await;
    let online = scrape(&console).await;
    assert_eq!(value(&online, "telework_agents_online", &[]), 1.0);
    // A single relay is one node of its own cluster, counted now (not at its last beat).
    let node = [("node", "relay")];
    assert_eq!(value(&online, "telework_node_up", &node), 1.0);
    assert_eq!(value(&online, "telework_node_agents", &node), 1.0);
    assert_eq!(value(&online, "telework_node_draining", &node), 0.0);
    assert_eq!(
        value(
            &online,
            "telework_handshakes_total",
            &[("role", "agent"), ("outcome", "ok")]
        ),
        2.0,
        "the registration and the hello"
    );

    let client = TestClient::serve(relay.login("pc-metrics", PW).await.unwrap()).await;
    let mut conn = tokio::net::TcpStream::connect(client.local).await.unwrap();
    let data = vec![5u8; 100_000];
    conn.write_all(&data).await.unwrap();
    let mut back = vec![0; data.len()];
    tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    let during = scrape(&console).await;
    assert_eq!(value(&during, "telework_sessions_active", &[]), 1.0);
    assert_eq!(
        value(&during, "telework_node_sessions", &[("node", "relay")]),
        1.0
    );
    assert!(
        value(&during, "telework_tunnels_total", &[]) >= 2.0,
        "login and desktop"
    );
    for direction in ["up", "down"] {
        let bytes = value(
            &during,
            "telework_relayed_bytes_total",
            &[("direction", direction)],
        );
        assert!(bytes >= 100_000.0, "{direction}: {bytes}");
    }
    assert!(value(&during, "telework_session_setup_seconds_count", &[]) >= 1.0);
    assert!(
        value(
            &during,
            "telework_handshakes_total",
            &[("role", "client"), ("outcome", "ok")]
        ) >= 2.0
    );

    // A lookup of an unknown computer ID is a refused client handshake.
    assert!(relay.login("pc-nobody", PW).await.is_err());
    drop(conn);
    client.stop().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let after = loop {
        let after = scrape(&console).await;
        if value(&after, "telework_sessions_active", &[]) == 0.0 {
            break after;
        }
        assert!(tokio::time::Instant::now() < deadline, "the session ends");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        value(
            &after,
            "telework_handshakes_total",
            &[("role", "client"), ("outcome", "unknown_id")]
        ),
        1.0
    );
    assert!(
        value(&after, "telework_relayed_bytes_total", &[])
            >= value(&during, "telework_relayed_bytes_total", &[]),
        "counters only grow"
    );
    assert_eq!(value(&after, "telework_agents_online", &[]), 1.0);
}
