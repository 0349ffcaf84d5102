//! Wake-on-LAN across relay nodes: two in-process nodes on one registry; the waker is online
//! at one, the employee's wake request reaches the other, which passes it on through the
//! registry's `node_requests`. The waker's real magic packets go to the loopback network's
//! broadcast address, where a UDP socket of the test receives them; then the woken PC's
//! agent starts and the waiting client logs in. Also: a running waker's list changes reach
//! the relay, and a waker going offline takes its list with it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

use telework_agent::state::DataDir;
use telework_agent::wake::packet::{magic_packet, Mac};
use telework_agent::wake::send::BURST;
use telework_agent::wake::{WakeList, WakeTarget};
use telework_agent::{Agent, RunOptions};
use telework_client::wake::{wake_and_wait, WakeProgress};
use telework_client::LoginOptions;
use telework_relay::RelayOptions;
use telework_tests::{echo_once, run_until_online, TestClient, TestRelay};

const PASSWORD: &str = "correct horse battery staple";

fn node(name: &str) -> RelayOptions {
    RelayOptions {
        node_name: name.into(),
        ..RelayOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wake_request_at_one_node_reaches_a_waker_at_another() {
    let a = TestRelay::start_with(node("node-a")).await;
    let b = a.start_beside(node("node-b")).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while a.relay.cluster.others().is_empty() || b.relay.cluster.others().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the nodes did not see each other"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The sleeping PC: registered, then off.
    let (desktop, sleeper) = a.office_pc("pc-sleep", PASSWORD).await;
    let sleeper_data = sleeper.copy_data_dir();
    sleeper.stop().await;

    // The waker, online at whichever node is its home.
    let waker = a.agent("ws-01", PASSWORD).run().await;
    let ws: telework_protocol::ComputerId = "ws-01".parse().unwrap();
    let (home, other) = if a.relay.hub.is_online(&ws) {
        (&a, &b)
    } else {
        (&b, &a)
    };
    assert!(home.relay.hub.is_online(&ws) && !other.relay.hub.is_online(&ws));

    // The LAN stand-in: the loopback network's broadcast address, a port of our own.
    let listener = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let mac: Mac = "02:00:00:00:00:42".parse().unwrap();
    // Written directly: `wake add` refuses loopback addresses, which only a test wants.
    DataDir::open(waker.dir.path())
        .unwrap()
        .save_wake_list(&WakeList {
            targets: vec![WakeTarget {
                id: "pc-sleep".parse().unwrap(),
                mac,
                broadcast: Ipv4Addr::new(127, 255, 255, 255),
                port,
            }],
        })
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while home
        .relay
        .wake
        .wakers
        .of(&"pc-sleep".parse().unwrap())
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "the waker's list reached its node"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The employee asks the node without the waker.
    let target = other.target("pc-sleep");
    let steps = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = steps.clone();
    let waiting = tokio::spawn(async move {
        wake_and_wait(
            &target,
            &LoginOptions::default(),
            Duration::from_secs(60),
            move |s| seen.lock().unwrap().push(s),
        )
        .await
    });
    let packets = tokio::task::spawn_blocking(move || {
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 512];
        while got.len() < BURST && Instant::now() < deadline {
            if let Ok(n) = listener.recv(&mut buf) {
                got.push(buf[..n].to_vec());
            }
        }
        got
    })
    .await
    .unwrap();
    assert_eq!(packets.len(), BURST, "one burst through the other node");
    for p in &packets {
        assert_eq!(p.as_slice(), magic_packet(mac).as_slice());
    }
    assert_eq!(steps.lock().unwrap().first(), Some(&WakeProgress::Asked));

    // The PC wakes: its agent comes online (at its home node); the client's wait ends.
    let agent = Agent::open(
        DataDir::open(sleeper_data.path()).unwrap(),
        desktop.addr.to_string(),
        RunOptions::default(),
    )
    .unwrap();
    let running = run_until_online(agent).await;
    tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the wait ended once the PC was online")
        .unwrap()
        .unwrap();
    assert_eq!(steps.lock().unwrap().last(), Some(&WakeProgress::Online));
    let session = other.login("pc-sleep", PASSWORD).await.unwrap();
    let client = TestClient::serve(session).await;
    let mut conn = tokio::net::TcpStream::connect(client.local).await.unwrap();
    echo_once(&mut conn).await;

    // The node that was asked audited it, naming the node it passed the request to.
    let relay = other.relay.clone();
    assert!(
        tokio::task::spawn_blocking(move || relay.audit.flush(Duration::from_secs(5)))
            .await
            .unwrap()
    );
    let rows = other
        .relay
        .registry
        .audit_rows(&telework_relay::registry::AuditFilter {
            kind: Some("wake_requested".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].computer_id.as_deref(), Some("pc-sleep"));
    assert_eq!(rows[0].detail["result"], "sent");
    let home_name = format!("node:{}", home.relay.cluster.name());
    assert_eq!(rows[0].detail["wakers"][0], home_name.as_str());
    running.abort();
    waker.stop().await;
}

/// IT staff change the list on a running waker: the relay's index follows within seconds
/// (additions and removals), and forgets the waker when it goes offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_follows_a_running_wakers_list() {
    let relay = TestRelay::start().await;
    let waker = relay.agent("ws-02", PASSWORD).run().await;
    let data = DataDir::open(waker.dir.path()).unwrap();
    let (a, b): (telework_protocol::ComputerId, telework_protocol::ComputerId) =
        ("pc-a".parse().unwrap(), "pc-b".parse().unwrap());
    let target = |id: &telework_protocol::ComputerId| WakeTarget {
        id: id.clone(),
        mac: "02:00:00:00:00:01".parse().unwrap(),
        broadcast: Ipv4Addr::new(192, 0, 2, 255),
        port: 9,
    };
    let index = |id: &telework_protocol::ComputerId| relay.relay.wake.wakers.of(id);
    let ws: telework_protocol::ComputerId = "ws-02".parse().unwrap();
    data.save_wake_list(&WakeList {
        targets: vec![target(&a), target(&b)],
    })
    .unwrap();
    until("both listed", || {
        index(&a) == [ws.clone()] && index(&b) == [ws.clone()]
    })
    .await;
    data.save_wake_list(&WakeList {
        targets: vec![target(&b)],
    })
    .unwrap();
    until("pc-a removed", || {
        index(&a).is_empty() && index(&b) == [ws.clone()]
    })
    .await;
    waker.stop().await;
    until("forgotten once offline", || index(&b).is_empty()).await;
}

/// Waits (10 s at most) until `done`.
async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
