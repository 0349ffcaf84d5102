//! Limits by who, not by where: many office PCs behind one address come online together, and a
//! client connection's tunnels are capped per connection.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use telework_net::framed::Framed;
use telework_net::transport::dial::Dialer;
use telework_net::transport::Role;
use telework_protocol::messages::{
    AgentToRelay, RelayOpens, RelayToAgent, RelayToClient, PROTOCOL_VERSION,
};
use telework_protocol::proof::MachineKey;
use telework_protocol::ComputerId;
use telework_protocol::ErrorCode;
use telework_tests::{on_both_transports, TestRelay};

/// Office PCs behind one address, registered beforehand; how many come online at once.
const OFFICE: usize = 1_000;

/// Comes online as an agent does after a relay restart: dial, prove the machine key, and on
/// any failure wait the agent's own back-off and start again.
async fn come_online(dialer: Dialer, id: ComputerId, key: MachineKey) -> impl Send {
    let mut backoff = telework_agent::backoff::Backoff::default();
    loop {
        let attempt = async {
            let connection = dialer.dial().await.ok()?.connection;
            let mut f = Framed::new(connection.accept().await.ok()?);
            let RelayOpens::Control { .. } = f.read::<RelayOpens>().await.ok()? else {
                panic!("the relay's first stream is the control stream");
            };
            f.write(&AgentToRelay::Hello {
                version: PROTOCOL_VERSION,
                proof: key.prove(&id, connection.channel_binding()),
                id: id.clone(),
                unreachable: Vec::new(),
            })
            .await
            .ok()?;
            match f.read::<RelayToAgent>().await.ok()? {
                RelayToAgent::Welcome { .. } => Some((connection, f)),
                // What the agent gives up on; anything else (a hello that missed the relay's
                // deadline on a loaded machine) it retries.
                RelayToAgent::Error(
                    code @ (ErrorCode::UnknownId | ErrorCode::BadProof | ErrorCode::VersionTooOld),
                ) => panic!("the relay refused a registered agent: {code:?}"),
                _ => None,
            }
        };
        if let Some(online) = attempt.await {
            return online;
        }
        tokio::time::sleep(backoff.next_delay(rand::random::<f64>())).await;
    }
}

on_both_transports! {
    /// After a relay restart every PC of an office behind one NAT address reconnects at once:
    /// the per-address limit on new connections charges only connections that fail to
    /// authenticate, so all come online and the address keeps its budget (on the default
    /// limits, 20 new connections a second after a burst of 100, charging every one would
    /// take 45 s). How long it takes is the benchmark's to measure; alone in a debug build
    /// it is about 6 s.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_office_behind_one_address_comes_online_and_keeps_its_budget() {
        let relay = TestRelay::start().await;
        let mut machines = Vec::with_capacity(OFFICE);
        for i in 0..OFFICE {
            let id: ComputerId = format!("office-pc-{i}").parse().unwrap();
            let key = MachineKey::generate().unwrap();
            relay
                .relay
                .registry
                .register(&id, &key.public_key())
                .await
                .unwrap();
            machines.push((id, key));
        }
        let dialer = relay.dialer(Role::Agent);
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for (id, key) in machines {
            tasks.spawn(tokio::time::timeout(
                Duration::from_secs(120),
                come_online(dialer.clone(), id, key),
            ));
        }
        let mut online = Vec::with_capacity(OFFICE);
        while let Some(agent) = tasks.join_next().await {
            online.push(agent.unwrap().expect("online within 2 minutes"));
        }
        let took = started.elapsed();
        assert_eq!(relay.relay.hub.agents_online(), OFFICE);
        assert!(
            relay
                .relay
                .limiters
                .connections
                .has_token("127.0.0.1".parse().unwrap(), Instant::now()),
            "the address used up its budget for new connections"
        );
        eprintln!("{OFFICE} agents from one address online in {took:?}");
    }
}

on_both_transports! {
    /// A client connection may hold at most 256 streams open at once: the 257th waits until
    /// others end (the transport's own stream limit, so the relay never holds more).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_connection_holds_at_most_256_open_streams() {
        let relay = TestRelay::start().await;
        let (_desktop, _agent) = relay.office_pc("pc-cap", "cap-password").await;
        let connection = relay.client_connection().await;
        let mut open = Vec::new();
        for _ in 0..256 {
            let mut f = Framed::new(
                tokio::time::timeout(Duration::from_secs(5), connection.open())
                    .await
                    .expect("within the limit, a stream opens at once")
                    .unwrap(),
            );
            f.write(&telework_tests::connect_request(&connection, "pc-cap"))
                .await
                .unwrap();
            assert_eq!(
                f.read::<RelayToClient>().await.unwrap(),
                RelayToClient::Paired
            );
            open.push(f);
        }
        let one_more = tokio::time::timeout(Duration::from_millis(500), async {
            let mut s = connection.open().await.unwrap();
            // On QUIC the stream exists for the relay only once it carries bytes.
            tokio::io::AsyncWriteExt::write_all(&mut s, b"x").await.unwrap();
            s
        })
        .await;
        assert!(one_more.is_err(), "a 257th stream opened");
        // quinn announces new stream credit in batches of an eighth of the limit.
        open.truncate(256 - 40);
        tokio::time::timeout(Duration::from_secs(5), connection.open())
            .await
            .expect("a stream opens once another has ended")
            .unwrap();
    }
}
