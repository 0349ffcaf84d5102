//! `telework-bench`: how fast and how lean the relay chain is, beside baselines measured in
//! the same run (a direct TCP connection and a plain tokio copy-loop forwarder).
//!
//! Build everything first, then run: `cargo build --release --bins && target/release/telework-bench`.
#![forbid(unsafe_code)]

mod agents;
mod byte_counting;
mod cli;
mod cluster;
mod crypto_cost;
mod floor;
mod impaired;
mod procs;
mod report;
mod roaming;
mod scenarios;
mod stats;
mod target;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use telework_net::transport::TransportChoice;

use crate::cli::{Cli, Mode, Scenario};
use crate::procs::{start_forwarder, start_forwarder_chain, Chain, CpuSnapshot, Runtime};
use crate::report::{machine, print_table, Path, Results, Throughput};
use crate::stats::{median, percentile};

/// Tunnels in flight in the concurrent tunnel-rate runs.
const TUNNEL_WORKERS: usize = 64;
/// Seconds of the sustained tunnel-rate run.
const SUSTAINED_SECS: f64 = 10.0;
/// How long the relay's per-connection tunnel budget takes to refill from empty (burst 10,000
/// at 10,000 a second).
const TUNNEL_BUDGET_REFILL: std::time::Duration = std::time::Duration::from_secs(1);

fn main() -> anyhow::Result<()> {
    // The same memcpy as the programs under test, so the baselines and the floor compare like
    // with like.
    telework_net::glibc_tuning::reexec_if_needed();
    let cli = Cli::parse();
    let runtime = match cli.mode {
        Some(Mode::Forwarder {
            current_thread: true,
            ..
        }) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        _ => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?,
    };
    match cli.mode {
        Some(Mode::Forwarder { target, .. }) => runtime.block_on(forwarder(target)),
        Some(Mode::FloorServer { layer }) => runtime.block_on(floor::serve(layer)),
        None => {
            raise_fd_limit();
            runtime.block_on(bench(cli))
        }
    }
}

/// Raises this process's open-file limit (inherited by the relay it starts) as far as it
/// goes: a hundred thousand idle agents need a socket each, in this process and the relay.
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let wanted = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20);
    let hard = getrlimit(Resource::Nofile).maximum;
    let all = Rlimit {
        current: Some(wanted),
        maximum: Some(wanted),
    };
    if setrlimit(Resource::Nofile, all).is_err() {
        // Not privileged: as far as the hard limit allows.
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: hard,
                maximum: hard,
            },
        );
    }
    eprintln!("open-file limit: {:?}", getrlimit(Resource::Nofile).current);
}

/// The baseline: accept, connect to the target, copy both ways with tokio's copy loop.
async fn forwarder(target: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("forwarder listening on {}", listener.local_addr()?);
    loop {
        let (mut inbound, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = inbound.set_nodelay(true);
            if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                let _ = outbound.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

fn gbps(bytes_per_sec: f64) -> f64 {
    bytes_per_sec * 8.0 / 1e9
}

fn name(t: TransportChoice) -> String {
    match t {
        TransportChoice::Quic => "QUIC".into(),
        TransportChoice::Tcp => "TLS/TCP".into(),
        TransportChoice::Auto => "auto".into(),
    }
}

async fn bench(mut cli: Cli) -> anyhow::Result<()> {
    if cli.byte_counting {
        let json = cli
            .json
            .unwrap_or_else(|| PathBuf::from("bench/results-byte-counting.json"));
        return byte_counting::run(
            &cli.transports,
            cli.runs.max(5),
            cli.seconds.min(3.0),
            &json,
        )
        .await;
    }
    if cli.cluster {
        let quick = cli.quick;
        return cluster::run(cluster::Options {
            agents: if quick {
                cli.cluster_agents.min(1_000)
            } else {
                cli.cluster_agents
            },
            quic_agents: if quick {
                cli.cluster_quic_agents.min(1_000)
            } else {
                cli.cluster_quic_agents
            },
            transports: cli.transports,
            runs: if quick { 1 } else { cli.runs },
            seconds: if quick { 1.0 } else { 2.0 },
            json: cli.json.unwrap_or_else(cluster::default_json),
        })
        .await;
    }
    if cli.impaired {
        let json = cli
            .json
            .unwrap_or_else(|| PathBuf::from("bench/results-impaired.json"));
        return impaired::run(
            &cli.transports,
            cli.impaired_seconds,
            cli.impaired_round_trips,
            &json,
        )
        .await;
    }
    if cli.quick {
        cli.runs = 1;
        cli.seconds = 1.0;
        cli.agents = cli.agents.min(500);
        cli.sessions = 100;
        cli.tunnels = cli.tunnels.min(100);
    }
    let wall = Instant::now();
    let target = target::start().await?;
    let (forwarder, forwarder_addr) = start_forwarder(target, Runtime::MultiThread)?;
    // Each on the runtime of the process it stands in for: agent, relay, client.
    let (three_forwarders, three_forwarders_addr) = start_forwarder_chain(
        target,
        &[
            Runtime::CurrentThread,
            Runtime::MultiThread,
            Runtime::CurrentThread,
        ],
    )?;
    let mut r = Results {
        runs: cli.runs,
        machine: machine(),
        idle_sessions: cli.sessions,
        idle_tunnels: cli.tunnels,
        ..Results::default()
    };
    let b = &mut r.baselines;
    let n = cli.transports.len();
    let mut paths: Vec<Path> = cli
        .transports
        .iter()
        .map(|&t| Path {
            transport: name(t),
            ..Path::default()
        })
        .collect();

    let wanted = |s: Scenario| cli.only.is_empty() || cli.only.contains(&s);

    // Both chains stay up for the scenarios that alternate between them, so each run measures
    // the baselines and every transport back to back.
    let chains: Vec<Chain> = cli
        .transports
        .iter()
        .map(|&t| Chain::start(target, t).with_context(|| format!("starting the chain on {t:?}")))
        .collect::<anyhow::Result<_>>()?;

    // 1. Throughput, each way, each path; CPU of our processes per GB.
    if wanted(Scenario::Throughput) {
        b.aes_gcm_s_per_gb = median(
            &(0..cli.runs)
                .map(|_| scenarios::aes_gcm_pass())
                .collect::<Vec<_>>(),
        );
        b.memcpy_16_past_gb_per_s = scenarios::memcpy_gb_per_s(16);
        b.memcpy_1k_past_gb_per_s = scenarios::memcpy_gb_per_s(1024);
        let mut d_cpu = vec![];
        for upload in [true, false] {
            let (mut d, mut f) = (vec![], vec![]);
            let mut t = vec![vec![]; n];
            let mut ratio = vec![vec![]; n];
            let mut cpu = vec![vec![]; n];
            for _ in 0..cli.runs {
                let run = |addr| async move {
                    if upload {
                        scenarios::upload(addr, cli.seconds).await
                    } else {
                        scenarios::download(addr, cli.seconds).await
                    }
                };
                let before = procs::cpu_secs(std::process::id());
                let (direct, bytes) = run(target).await?;
                d.push(direct);
                d_cpu.push((procs::cpu_secs(std::process::id()) - before) / (bytes as f64 / 1e9));
                f.push(run(forwarder_addr).await?.0);
                for (i, chain) in chains.iter().enumerate() {
                    let before = chain.cpu();
                    let (rate, bytes) = run(chain.client_addr).await?;
                    let after = chain.cpu();
                    let gb = bytes as f64 / 1e9;
                    t[i].push(rate);
                    ratio[i].push(rate / direct);
                    cpu[i].push([
                        (after[0] - before[0]) / gb,
                        (after[1] - before[1]) / gb,
                        (after[2] - before[2]) / gb,
                    ]);
                }
            }
            let (dg, fg) = (gbps(median(&d)), gbps(median(&f)));
            if upload {
                (b.upload_direct_gbps, b.upload_forwarder_gbps) = (dg, fg);
            } else {
                (b.download_direct_gbps, b.download_forwarder_gbps) = (dg, fg);
            }
            for (i, path) in paths.iter_mut().enumerate() {
                let col = |k: usize| median(&cpu[i].iter().map(|c| c[k]).collect::<Vec<_>>());
                let out = Throughput {
                    telework_gbps: gbps(median(&t[i])),
                    // The median of each run's ratio: direct and ours measured back to back.
                    ratio_to_direct: median(&ratio[i]),
                    relay_cpu_s_per_gb: col(0),
                    agent_cpu_s_per_gb: col(1),
                    client_cpu_s_per_gb: col(2),
                    total_cpu_s_per_gb: col(0) + col(1) + col(2),
                };
                if upload {
                    path.upload = out;
                } else {
                    path.download = out;
                }
            }
            eprintln!(
                "throughput {}: done",
                if upload { "upload" } else { "download" }
            );
        }
        b.direct_hop_cpu_s_per_gb = median(&d_cpu);
    }

    // 2. Latency of 64-byte round trips.
    if wanted(Scenario::Latency) {
        let (mut dp50, mut dp99, mut fp50) = (vec![], vec![], vec![]);
        let (mut f3p50, mut f3p99, mut f3cpu) = (vec![], vec![], vec![]);
        let (mut tp50, mut tp99, mut tcpu) = (vec![vec![]; n], vec![vec![]; n], vec![vec![]; n]);
        let mut over_f3 = vec![vec![]; n];
        let mut crypto = vec![];
        // About 1 to 1.5 s per path per run: 2,000 (a quarter of a second) let one burst of
        // load on the shared host move a whole run's median by 5 to 10 µs.
        const LATENCY_SAMPLES: usize = 10_000;
        let per_round_trip = |ns: u64| ns as f64 / 1e3 / LATENCY_SAMPLES as f64;
        let forwarders: Vec<&procs::Proc> = three_forwarders.iter().collect();
        for _ in 0..cli.runs {
            let d = scenarios::latency(target, LATENCY_SAMPLES).await?;
            let f = scenarios::latency(forwarder_addr, LATENCY_SAMPLES).await?;
            let mut conn = scenarios::warmed_up(three_forwarders_addr).await?;
            let before = CpuSnapshot::take(&forwarders);
            let f3 = scenarios::round_trips(&mut conn, LATENCY_SAMPLES).await?;
            f3cpu.push(per_round_trip(
                CpuSnapshot::take(&forwarders).since(&before)?,
            ));
            let d50 = percentile(&d, 50.0);
            let f3_50 = percentile(&f3, 50.0);
            for (i, chain) in chains.iter().enumerate() {
                let ours = [&chain.relay, &chain.agent, &chain.client];
                let mut conn = scenarios::warmed_up(chain.client_addr).await?;
                let before = CpuSnapshot::take(&ours);
                let t = scenarios::round_trips(&mut conn, LATENCY_SAMPLES).await?;
                tcpu[i].push(per_round_trip(CpuSnapshot::take(&ours).since(&before)?));
                tp50[i].push(percentile(&t, 50.0));
                tp99[i].push(percentile(&t, 99.0));
                over_f3[i].push(percentile(&t, 50.0) - f3_50);
            }
            crypto.push(crypto_cost::round_trip_crypto()?);
            f3p50.push(f3_50);
            f3p99.push(percentile(&f3, 99.0));
            dp50.push(d50);
            dp99.push(percentile(&d, 99.0));
            fp50.push(percentile(&f, 50.0));
        }
        b.latency_direct_p50_us = median(&dp50);
        b.latency_direct_p99_us = median(&dp99);
        b.latency_forwarder_p50_us = median(&fp50);
        b.latency_three_forwarders_p50_us = median(&f3p50);
        b.latency_three_forwarders_p99_us = median(&f3p99);
        b.three_forwarders_added_p50_us =
            b.latency_three_forwarders_p50_us - b.latency_direct_p50_us;
        b.three_forwarders_cpu_us_per_round_trip = median(&f3cpu);
        crypto.sort_by(|a, b| a.round_trip_us.total_cmp(&b.round_trip_us));
        // The lower middle for an even count, as `stats::median`.
        b.round_trip_crypto = crypto[(crypto.len() - 1) / 2];
        for (i, path) in paths.iter_mut().enumerate() {
            path.latency_p50_us = median(&tp50[i]);
            path.latency_p99_us = median(&tp99[i]);
            path.added_p50_us = path.latency_p50_us - b.latency_direct_p50_us;
            path.added_p99_us = path.latency_p99_us - b.latency_direct_p99_us;
            path.added_p50_over_three_forwarders_us = median(&over_f3[i]);
            path.cpu_us_per_round_trip = median(&tcpu[i]);
        }
        eprintln!("latency: done");
    }

    // 3. New session (password handshake) to first byte.
    if wanted(Scenario::Setup) {
        for (chain, path) in chains.iter().zip(paths.iter_mut()) {
            let mut ttfb = vec![];
            for _ in 0..cli.runs.max(5) {
                ttfb.push(scenarios::time_to_first_byte(chain).await?);
            }
            path.new_session_ttfb_ms = median(&ttfb);
        }
        b.argon2id_ms = median(&(0..5).map(|_| scenarios::argon2id_ms()).collect::<Vec<_>>());
        eprintln!("set-up: done");
    }

    // 4. New tunnels per second in the chain's one session: one at a time; many at a time
    // from a refilled budget; many at a time for long enough to meet the budget's rate.
    if wanted(Scenario::Tunnels) {
        let secs = if cli.quick { 1.0 } else { 2.0 };
        for (chain, path) in chains.iter().zip(paths.iter_mut()) {
            let (mut seq, mut conc, mut refused) = (vec![], vec![], vec![]);
            for _ in 0..cli.runs {
                seq.push(
                    scenarios::tunnels_per_sec(chain.client_addr, 1, secs)
                        .await?
                        .per_sec,
                );
                tokio::time::sleep(TUNNEL_BUDGET_REFILL).await;
                let c = scenarios::tunnels_per_sec(chain.client_addr, TUNNEL_WORKERS, 1.0).await?;
                conc.push(c.per_sec);
                refused.push(c.refused as f64);
            }
            path.tunnels_per_sec_sequential = median(&seq);
            path.tunnels_per_sec_concurrent = median(&conc);
            path.tunnels_refused_concurrent = median(&refused) as u64;
            tokio::time::sleep(TUNNEL_BUDGET_REFILL).await;
            let sustained = if cli.quick { 3.0 } else { SUSTAINED_SECS };
            let s =
                scenarios::tunnels_per_sec(chain.client_addr, TUNNEL_WORKERS, sustained).await?;
            path.tunnels_per_sec_sustained = s.per_sec;
            path.tunnels_refused_sustained = s.refused;
        }
        eprintln!("tunnels: done");
    }

    // 5. Slow reader: memory stays bounded by the buffer caps.
    if wanted(Scenario::SlowReader) {
        for (chain, path) in chains.iter().zip(paths.iter_mut()) {
            let (mut rg, mut ag, mut wr) = (vec![], vec![], vec![]);
            for _ in 0..cli.runs {
                let secs = cli.seconds.min(8.0);
                let (relay_kib, agent_kib, written) =
                    scenarios::slow_reader(chain.client_addr, &chain.relay, &chain.agent, secs)
                        .await?;
                wr.push(written as f64 / 1e6 / secs);
                rg.push(relay_kib as f64 / 1024.0);
                ag.push(agent_kib as f64 / 1024.0);
            }
            path.slow_reader_relay_growth_mib = median(&rg);
            path.slow_reader_agent_growth_mib = median(&ag);
            path.slow_reader_written_mb_per_s = median(&wr);
        }
        eprintln!("slow reader: done");
    }
    drop(chains);

    // 6. Memory: idle tunnels in one session (agent + client), idle sessions (relay), each
    // run on fresh processes. Sessions log in from this one address, so that relay runs
    // without per-address limits (its lookup budget would otherwise pace the logins).
    if wanted(Scenario::Memory) {
        let no_limits = ["--no-per-address-limits".to_owned()];
        for (&t, path) in cli.transports.iter().zip(paths.iter_mut()) {
            let (mut per_tunnel, mut per_session) = (vec![], vec![]);
            for _ in 0..cli.runs {
                let chain = Chain::start(target, t)?;
                let (kib, conns) = scenarios::idle_tunnels(&chain, cli.tunnels)
                    .await
                    .context("idle tunnels")?;
                per_tunnel.push(kib);
                drop(conns);
                drop(chain);
                let chain = Chain::start_with(target, t, &no_limits)?;
                let (kib, sessions) = scenarios::idle_sessions(&chain, cli.sessions)
                    .await
                    .context("idle sessions")?;
                per_session.push(kib);
                drop(sessions);
            }
            path.agent_client_kib_per_idle_tunnel = median(&per_tunnel);
            path.relay_kib_per_idle_session = median(&per_session);
        }
        eprintln!("memory: done");
    }

    // 7. Idle agents on one relay on its default settings (but for its connection cap, raised
    // to fit the count), from several source addresses. One run each: it is long.
    if wanted(Scenario::Agents) {
        for (&t, path) in cli.transports.iter().zip(paths.iter_mut()) {
            let count = match t {
                TransportChoice::Quic => cli.quic_agents.unwrap_or(cli.agents),
                _ => cli.agents,
            };
            if let Err(e) = idle_agents(target, t, count, path).await {
                path.idle_agents_first_error = Some(format!("{e:#}"));
            }
            eprintln!(
                "idle agents over {}: {} online, {} failed, {} lost",
                path.transport,
                path.idle_agents_online,
                path.idle_agents_failed,
                path.idle_agents_lost
            );
        }
    }
    // 8. The libraries' floor: an idle connection in a process that holds nothing else.
    if wanted(Scenario::Floor) {
        let n = cli.agents.min(FLOOR_CONNECTIONS);
        let b = &mut r.baselines;
        b.floor_connections = n;
        b.floor_kib_tls = floor::kib_per_connection(floor::Layer::Tls, n).await?;
        b.floor_kib_tls_h2 = floor::kib_per_connection(floor::Layer::TlsH2, n).await?;
        b.floor_kib_quic = floor::kib_per_connection(floor::Layer::Quic, n).await?;
        eprintln!("floor: done");
    }
    drop(forwarder);
    drop(three_forwarders);

    r.paths = paths;
    r.wall_seconds = wall.elapsed().as_secs_f64();
    print_table(&r);
    let json = cli
        .json
        .unwrap_or_else(|| PathBuf::from("bench-results.json"));
    std::fs::write(&json, serde_json::to_string_pretty(&r)?)?;
    println!("\nJSON written to {}", json.display());
    Ok(())
}

/// Idle connections per layer in the floor scenario (at most `--agents`).
const FLOOR_CONNECTIONS: usize = 5_000;

/// Connections the relay may hold beyond the idle agents (its default cap is 20,000).
const CONNECTION_HEADROOM: usize = 1_000;

/// Brings `count` idle agents online on a fresh relay and records what it costs.
async fn idle_agents(
    target: SocketAddr,
    t: TransportChoice,
    count: usize,
    path: &mut Path,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        format!("max_connections = {}\n", count + CONNECTION_HEADROOM),
    )?;
    let chain = Chain::start_with(
        target,
        t,
        &["--config".to_owned(), config.display().to_string()],
    )?;
    let before = chain.relay.rss_kib();
    let started = Instant::now();
    let agents = agents::bring_online(chain.relay_addr, &chain.fingerprint, t, count, 32)
        .await
        .context("idle agents")?;
    path.idle_agents_bring_up_s = started.elapsed().as_secs_f64();
    // Long enough for every agent's keepalive to have gone round once.
    tokio::time::sleep(std::time::Duration::from_secs(16)).await;
    let after = chain.relay.rss_kib();
    path.idle_agents_online = agents.online();
    path.idle_agents_failed = agents.failed;
    path.idle_agents_lost = agents.lost();
    path.idle_agents_first_error = agents.first_error.clone();
    path.relay_rss_mib_with_idle_agents = after as f64 / 1024.0;
    path.relay_kib_per_idle_agent =
        after.saturating_sub(before) as f64 / agents.online().max(1) as f64;
    Ok(())
}
