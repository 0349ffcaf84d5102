//! Limits by who, not by where: many office PCs behind one address come online together, and a
//! client connection's tunnels are capped per connection.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use telework_net::framed::Framed;
use telework_net::transport::dial::Dialer;
use telework_net::transport::Role;
use telework_protocol::messages::{AgentToRelay, RelayOpens, RelayToAgent, PROTOCOL_VERSION};
use telework_protocol::proof::MachineKey;
use telework_protocol::ComputerId;
use telework_tests::{on_both_transports, TestRelay};

/// Office PCs behind one address, registered beforehand; how many come online at once.
const OFFICE: usize = 1_000;

/// Comes online as an agent does after a relay restart: dial, and on failure wait the agent's
/// own back-off (0.5 s doubling, full jitter) and try again.
async fn come_online(dialer: Dialer, id: ComputerId, key: MachineKey) -> impl Send {
    let mut backoff = telework_agent::backoff::Backoff::default();
    let connection = loop {
        match dialer.dial().await {
            Ok(d) => break d.connection,
            Err(_) => tokio::time::sleep(backoff.next_delay(rand::random::<f64>())).await,
        }
    };
    let mut f = Framed::new(connection.accept().await.unwrap());
    assert!(matches!(
        f.read::<RelayOpens>().await.unwrap(),
        RelayOpens::Control { .. }
    ));
    f.write(&AgentToRelay::Hello {
        version: PROTOCOL_VERSION,
        proof: key.prove(&id, connection.channel_binding()),
        id,
    })
    .await
    .unwrap();
    assert_eq!(
        f.read::<RelayToAgent>().await.unwrap(),
        RelayToAgent::Welcome
    );
    (connection, f)
}

on_both_transports! {
    /// After a relay restart every PC of an office behind one NAT address reconnects at once:
    /// the per-address limit on new connections charges only those that fail, so all are
    /// online within 10 s (on the relay's default limits, 20 new connections a second with
    /// a burst of 100 per address, they would need 45 s if every one were charged).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_office_behind_one_address_is_online_within_ten_seconds() {
        let relay = TestRelay::start().await;
        let mut machines = Vec::with_capacity(OFFICE);
        for i in 0..OFFICE {
            let id: ComputerId = format!("office-pc-{i}").parse().unwrap();
            let key = MachineKey::generate().unwrap();
            relay.relay.registry.register(&id, &key.public_key()).unwrap();
            machines.push((id, key));
        }
        let dialer = relay.dialer(Role::Agent);
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for (id, key) in machines {
            tasks.spawn(come_online(dialer.clone(), id, key));
        }
        let mut online = Vec::with_capacity(OFFICE);
        while let Some(agent) = tasks.join_next().await {
            online.push(agent.unwrap());
        }
        let took = started.elapsed();
        assert_eq!(relay.relay.hub.agents_online(), OFFICE);
        assert!(took < Duration::from_secs(10), "{OFFICE} agents took {took:?}");
        eprintln!("{OFFICE} agents from one address online in {took:?}");
    }
}
