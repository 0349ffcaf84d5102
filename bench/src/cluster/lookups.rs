//! Lookups per second through relay nodes and through the registry itself.

use super::*;

/// What a run of requests got back.
#[derive(Default)]
struct Rate {
    per_sec: f64,
    unexpected: u64,
    first_unexpected: Option<String>,
}

/// Lookups through relay nodes for `secs`: [`LOOKUP_CONNECTIONS`] client connections (the
/// client library's own, with a device key), connection `c` to `targets[c % len]` asking for
/// its IDs in turn, [`LOOKUP_IN_FLIGHT`] requests in flight on each. Answers that `expected`
/// accepts count.
async fn lookups(
    targets: &[(SocketAddr, Arc<Vec<ComputerId>>)],
    fingerprint: &str,
    transport: TransportChoice,
    secs: f64,
    expected: fn(&RelayToClient) -> bool,
) -> anyhow::Result<Rate> {
    let trust = RelayTrust::Fingerprint(fingerprint.parse()?);
    let (done, unexpected) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let first = Arc::new(std::sync::Mutex::new(None::<String>));
    let mut links = Vec::with_capacity(LOOKUP_CONNECTIONS);
    for c in 0..LOOKUP_CONNECTIONS {
        let (addr, ids) = &targets[c % targets.len()];
        let dialer = Dialer::new(addr.to_string().parse()?, &trust, Role::Client, transport)?;
        let device = Arc::new(MachineKey::generate().context("device key")?);
        let link = telework_client::link::Link::new(dialer, device);
        let connection = link.connection().await?;
        links.push((link, connection, ids.clone()));
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (c, (link, connection, ids)) in links.iter().enumerate() {
        for k in 0..LOOKUP_IN_FLIGHT {
            let (link, connection, ids) = (link.clone(), connection.clone(), ids.clone());
            let (done, unexpected, first) = (done.clone(), unexpected.clone(), first.clone());
            tasks.push(tokio::spawn(async move {
                let mut next = (c * LOOKUP_IN_FLIGHT + k) * 7919;
                while started.elapsed().as_secs_f64() < secs {
                    let id = &ids[next % ids.len()];
                    next += 1;
                    let stream = connection.open().await?;
                    let mut framed = Framed::new(stream);
                    framed.write(&link.connect_request(&connection, id)).await?;
                    let answer = framed
                        .read_within::<RelayToClient>(Duration::from_secs(10))
                        .await?;
                    if expected(&answer) {
                        done.fetch_add(1, Ordering::Relaxed);
                    } else {
                        unexpected.fetch_add(1, Ordering::Relaxed);
                        first
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert_with(|| format!("{id}: {answer:?}"));
                    }
                }
                Ok::<_, anyhow::Error>(())
            }));
        }
    }
    for t in tasks {
        t.await?.context("lookup")?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    drop(links);
    let first_unexpected = first.lock().unwrap_or_else(|e| e.into_inner()).take();
    Ok(Rate {
        per_sec: done.load(Ordering::Relaxed) as f64 / elapsed,
        unexpected: unexpected.load(Ordering::Relaxed),
        first_unexpected,
    })
}

/// [`Registry::presence_of`] for `ids` in turn from this process for `secs`, [`RAW_IN_FLIGHT`]
/// at a time; a call that finds no row counts as unexpected.
async fn presence_calls(
    registry: &Arc<Registry>,
    ids: &Arc<Vec<ComputerId>>,
    secs: f64,
) -> anyhow::Result<Rate> {
    let (done, missing) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let started = Instant::now();
    let tasks: Vec<_> = (0..RAW_IN_FLIGHT)
        .map(|w| {
            let (registry, ids) = (registry.clone(), ids.clone());
            let (done, missing) = (done.clone(), missing.clone());
            tokio::spawn(async move {
                let mut next = w * 7919;
                while started.elapsed().as_secs_f64() < secs {
                    let found = registry.presence_of(&ids[next % ids.len()]).await?;
                    next += 1;
                    if found.is_some() {
                        done.fetch_add(1, Ordering::Relaxed);
                    } else {
                        missing.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok::<_, anyhow::Error>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let unexpected = missing.load(Ordering::Relaxed);
    Ok(Rate {
        per_sec: done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64(),
        unexpected,
        first_unexpected: (unexpected > 0).then(|| "presence_of found no row".to_owned()),
    })
}

/// The single relay on SQLite, its registry made beforehand with as many machines and
/// presence rows as the cluster's.
pub(super) struct SqliteRelay {
    relay: RelayProc,
    /// The same file, open in this process for the raw calls.
    registry: Arc<Registry>,
}

impl SqliteRelay {
    pub(super) async fn start(
        cluster: &Cluster,
        fleet: &[Member],
        offline: &[Member],
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let data = RelayProc::data_dir(dir.path());
        std::fs::create_dir_all(&data)?;
        let registry = Arc::new(Registry::open(&data.join("relay.db"))?);
        register(&registry, fleet).await?;
        register(&registry, offline).await?;
        let since = telework_relay::cluster::now_ms() / 1000;
        registry
            .record_presence(
                fleet
                    .iter()
                    .map(|m| {
                        PresenceChange::Online(Presence {
                            id: m.id.clone(),
                            node: "elsewhere".to_owned(),
                            since,
                            since_ms: since * 1000,
                            address: "127.0.0.2:1".to_owned(),
                            transport: "TLS/TCP".to_owned(),
                            away_from: None,
                        })
                    })
                    .collect(),
            )
            .await?;
        let relay = RelayProc::start_in(
            dir,
            "127.0.0.1:0",
            &cluster.shared_args,
            Some(cluster.fingerprint.clone()),
        )?;
        Ok(Self { relay, registry })
    }
}

fn is_move_to(answer: &RelayToClient) -> bool {
    matches!(answer, RelayToClient::MoveTo(_))
}

fn is_offline(answer: &RelayToClient) -> bool {
    *answer == RelayToClient::Error(ErrorCode::Offline)
}

fn note(rates: &mut Vec<f64>, lookups: &mut Lookups, rate: Rate) {
    rates.push(rate.per_sec);
    lookups.unexpected_answers += rate.unexpected;
    if lookups.first_unexpected.is_none() {
        lookups.first_unexpected = rate.first_unexpected;
    }
}

/// The lookup measures, PostgreSQL and SQLite alternating, while the fleet is online.
pub(super) async fn measure_lookups(
    cluster: &Cluster,
    sqlite: &SqliteRelay,
    fleet: &Fleet,
    members: &[Member],
    offline: &Arc<Vec<ComputerId>>,
    opts: &Options,
) -> anyhow::Result<Lookups> {
    let transport = opts.transports[0];
    // For each node, the agents online at the others.
    let elsewhere: Vec<(SocketAddr, Arc<Vec<ComputerId>>)> = cluster
        .nodes
        .iter()
        .enumerate()
        .map(|(k, node)| {
            let ids = (0..members.len())
                .filter(|&i| fleet.node_of(i).is_some_and(|at| at != k))
                .map(|i| members[i].id.clone())
                .collect();
            (node.entry.addr, Arc::new(ids))
        })
        .collect();
    let offline_pg: Vec<_> = cluster
        .nodes
        .iter()
        .map(|n| (n.entry.addr, offline.clone()))
        .collect();
    let offline_sqlite = [(sqlite.relay.addr, offline.clone())];
    let online: Arc<Vec<ComputerId>> = Arc::new(members.iter().map(|m| m.id.clone()).collect());
    let fp = &cluster.fingerprint;
    let secs = opts.seconds;
    let mut l = Lookups {
        transport: name(transport),
        runs: opts.runs,
        seconds_each: secs,
        client_connections: LOOKUP_CONNECTIONS,
        in_flight_per_connection: LOOKUP_IN_FLIGHT,
        raw_calls_in_flight: RAW_IN_FLIGHT,
        ..Lookups::default()
    };
    let (mut moved, mut off_pg, mut off_sq, mut raw_pg, mut raw_sq) =
        (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..opts.runs {
        let r = lookups(&elsewhere, fp, transport, secs, is_move_to).await?;
        note(&mut moved, &mut l, r);
        let r = lookups(&offline_sqlite, fp, transport, secs, is_offline).await?;
        note(&mut off_sq, &mut l, r);
        let r = lookups(&offline_pg, fp, transport, secs, is_offline).await?;
        note(&mut off_pg, &mut l, r);
        let r = presence_calls(&sqlite.registry, &online, secs).await?;
        note(&mut raw_sq, &mut l, r);
        let r = presence_calls(&cluster.registry, &online, secs).await?;
        note(&mut raw_pg, &mut l, r);
    }
    l.move_to_per_sec_postgres = median(&moved);
    l.offline_per_sec_postgres = median(&off_pg);
    l.offline_per_sec_sqlite = median(&off_sq);
    l.presence_of_per_sec_postgres = median(&raw_pg);
    l.presence_of_per_sec_sqlite = median(&raw_sq);
    eprintln!(
        "lookups/s: MoveTo {:.0}; offline PostgreSQL {:.0}, SQLite {:.0}; presence_of PostgreSQL {:.0}, SQLite {:.0}",
        l.move_to_per_sec_postgres,
        l.offline_per_sec_postgres,
        l.offline_per_sec_sqlite,
        l.presence_of_per_sec_postgres,
        l.presence_of_per_sec_sqlite
    );
    Ok(l)
}
