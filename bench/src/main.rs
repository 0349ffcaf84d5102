//! `telework-bench`: how fast and how lean the relay chain is, beside baselines measured in
//! the same run (a direct TCP connection and a plain tokio copy-loop forwarder).
//!
//! Build everything first, then run: `cargo build --release --bins && target/release/telework-bench`.
#![forbid(unsafe_code)]

mod agents;
mod crypto_cost;
mod procs;
mod scenarios;
mod stats;
mod target;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::procs::{
    start_forwarder, start_forwarder_chain, Chain, CpuSnapshot, Runtime, BENCH_ID, BENCH_PASSWORD,
};
use crate::stats::{median, percentile};

/// Benchmarks for telework on loopback.
#[derive(Parser)]
#[command(about)]
struct Cli {
    #[command(subcommand)]
    mode: Option<Mode>,
    /// Seconds per throughput run, each way.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Runs per scenario (medians are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Idle agents for the memory scenario.
    #[arg(long, default_value_t = 10_000)]
    agents: usize,
    /// Idle sessions for the memory scenario.
    #[arg(long, default_value_t = 1_000)]
    sessions: usize,
    /// Where to write the JSON results.
    #[arg(long, default_value = "bench-results.json")]
    json: PathBuf,
    /// A short smoke run (1 run, 1 s, 500 agents, 100 sessions).
    #[arg(long)]
    quick: bool,
    /// Run only these scenarios (for profiling one of them); the others report zeros.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Scenario>,
}

/// The scenarios, as `--only` names them.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    Throughput,
    Latency,
    Setup,
    SlowReader,
    Memory,
}

#[derive(Subcommand)]
enum Mode {
    /// Run the plain forwarder baseline (used by the bench itself).
    Forwarder {
        /// Where to forward.
        #[arg(long)]
        target: SocketAddr,
        /// Run on one thread (as the agent and the client do) instead of two workers.
        #[arg(long)]
        current_thread: bool,
    },
}

#[derive(Serialize, Default)]
struct Throughput {
    direct_gbps: f64,
    forwarder_gbps: f64,
    telework_gbps: f64,
    ratio_to_direct: f64,
    relay_cpu_s_per_gb: f64,
    agent_cpu_s_per_gb: f64,
    client_cpu_s_per_gb: f64,
    total_cpu_s_per_gb: f64,
    /// CPU of the bench's own sender and receiver per GB on the direct path: what one TCP hop
    /// costs, both ends, at full speed.
    direct_hop_cpu_s_per_gb: f64,
    /// The least CPU our three processes can need per GB: each of them receives on one hop and
    /// sends on the next (three hops' worth) and runs two AES-256-GCM passes.
    floor_cpu_s_per_gb: f64,
    /// The most any design with our three processes can reach on this machine's cores, from the
    /// floor plus the sender's and receiver's own hop: as a fraction of direct.
    ceiling_ratio_to_direct: f64,
}

#[derive(Serialize, Default)]
struct Results {
    machine: String,
    runs: usize,
    upload: Throughput,
    download: Throughput,
    latency_direct_p50_us: f64,
    latency_direct_p99_us: f64,
    latency_forwarder_p50_us: f64,
    /// Three plain forwarders in series: as many processes and crossings as our chain (client,
    /// relay, agent) with no protocol and no crypto, so its added latency is what this machine
    /// charges for the crossings alone.
    latency_three_forwarders_p50_us: f64,
    latency_three_forwarders_p99_us: f64,
    three_forwarders_added_p50_us: f64,
    /// CPU of the three middle processes per round trip over the timed round trips: time on
    /// a CPU as the scheduler counts it, every thread (interrupt time is left out where the
    /// kernel accounts it separately). The path is serial, so this is most of the latency.
    three_forwarders_cpu_us_per_round_trip: f64,
    telework_cpu_us_per_round_trip: f64,
    /// The cryptography of one round trip (TLS on both hops, the end-to-end records), in
    /// one process with no sockets: how much of the CPU difference above it explains.
    round_trip_crypto: crypto_cost::RoundTripCrypto,
    latency_telework_p50_us: f64,
    latency_telework_p99_us: f64,
    added_p50_us: f64,
    added_p99_us: f64,
    new_session_ttfb_ms: f64,
    argon2id_ms: f64,
    /// One AES-256-GCM pass over 16 KiB records (our record layer's sealer), CPU s per GB.
    aes_gcm_s_per_gb: f64,
    /// 16 KiB copies in this process (tuned as the programs are), GB/s, with the destination
    /// 16 bytes past the source modulo 4 KiB (where `rep movsb` is slow on AMD Zen 3+), and
    /// 1 KiB past.
    memcpy_16_past_gb_per_s: f64,
    memcpy_1k_past_gb_per_s: f64,
    tunnels_per_sec: f64,
    idle_agents: usize,
    relay_kib_per_idle_agent: f64,
    idle_sessions: usize,
    relay_kib_per_idle_session: f64,
    slow_reader_relay_growth_mib: f64,
    slow_reader_agent_growth_mib: f64,
    slow_reader_written_mb_per_s: f64,
    wall_seconds: f64,
}

fn main() -> anyhow::Result<()> {
    // The same memcpy as the programs under test, so the baselines and the floor compare like
    // with like.
    telework_net::memcpy_tuning::reexec_if_needed();
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
        None => runtime.block_on(bench(cli)),
    }
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

async fn bench(mut cli: Cli) -> anyhow::Result<()> {
    if cli.quick {
        cli.runs = 1;
        cli.seconds = 1.0;
        cli.agents = 500;
        cli.sessions = 100;
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
        ..Results::default()
    };

    let wanted = |s: Scenario| cli.only.is_empty() || cli.only.contains(&s);

    // 1. Throughput, each way, each path; CPU of our processes per GB.
    let chain = Chain::start(target)?;
    if wanted(Scenario::Throughput) {
        r.aes_gcm_s_per_gb = median(
            &(0..cli.runs)
                .map(|_| scenarios::aes_gcm_pass())
                .collect::<Vec<_>>(),
        );
        r.memcpy_16_past_gb_per_s = scenarios::memcpy_gb_per_s(16);
        r.memcpy_1k_past_gb_per_s = scenarios::memcpy_gb_per_s(1024);
    }
    for (upload, out) in [(true, &mut r.upload), (false, &mut r.download)] {
        if !wanted(Scenario::Throughput) {
            break;
        }
        let (mut d, mut d_cpu, mut f, mut t) = (vec![], vec![], vec![], vec![]);
        let (mut relay_c, mut agent_c, mut client_c) = (vec![], vec![], vec![]);
        for _ in 0..cli.runs {
            let run = |addr| async move {
                if upload {
                    scenarios::upload(addr, cli.seconds).await
                } else {
                    scenarios::download(addr, cli.seconds).await
                }
            };
            let before = procs::cpu_secs(std::process::id());
            let (rate, bytes) = run(target).await?;
            d.push(rate);
            d_cpu.push((procs::cpu_secs(std::process::id()) - before) / (bytes as f64 / 1e9));
            f.push(run(forwarder_addr).await?.0);
            let before = (
                chain.relay.cpu_secs(),
                chain.agent.cpu_secs(),
                chain.client.cpu_secs(),
            );
            let (rate, bytes) = run(chain.client_addr).await?;
            let gb = bytes as f64 / 1e9;
            t.push(rate);
            relay_c.push((chain.relay.cpu_secs() - before.0) / gb);
            agent_c.push((chain.agent.cpu_secs() - before.1) / gb);
            client_c.push((chain.client.cpu_secs() - before.2) / gb);
        }
        out.direct_gbps = gbps(median(&d));
        out.forwarder_gbps = gbps(median(&f));
        out.telework_gbps = gbps(median(&t));
        out.ratio_to_direct = out.telework_gbps / out.direct_gbps;
        out.relay_cpu_s_per_gb = median(&relay_c);
        out.agent_cpu_s_per_gb = median(&agent_c);
        out.client_cpu_s_per_gb = median(&client_c);
        out.total_cpu_s_per_gb =
            out.relay_cpu_s_per_gb + out.agent_cpu_s_per_gb + out.client_cpu_s_per_gb;
        out.direct_hop_cpu_s_per_gb = median(&d_cpu);
        out.floor_cpu_s_per_gb = 3.0 * out.direct_hop_cpu_s_per_gb + 6.0 * r.aes_gcm_s_per_gb;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let ceiling_gbps =
            gbps(cores * 1e9 / (out.floor_cpu_s_per_gb + out.direct_hop_cpu_s_per_gb));
        out.ceiling_ratio_to_direct = ceiling_gbps / out.direct_gbps;
        eprintln!(
            "throughput {}: done",
            if upload { "upload" } else { "download" }
        );
    }

    // 2. Latency of 64-byte round trips.
    let (mut dp50, mut dp99, mut fp50, mut tp50, mut tp99) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut f3p50, mut f3p99, mut f3cpu, mut tcpu) = (vec![], vec![], vec![], vec![]);
    let mut crypto = vec![];
    // About 1 to 1.5 s per path per run: 2,000 (a quarter of a second) let one burst of
    // load on the shared host move a whole run's median by 5 to 10 µs.
    const LATENCY_SAMPLES: usize = 10_000;
    let per_round_trip = |ns: u64| ns as f64 / 1e3 / LATENCY_SAMPLES as f64;
    let ours = [&chain.relay, &chain.agent, &chain.client];
    let forwarders: Vec<&procs::Proc> = three_forwarders.iter().collect();
    for _ in 0..cli.runs {
        if !wanted(Scenario::Latency) {
            break;
        }
        let d = scenarios::latency(target, LATENCY_SAMPLES).await?;
        let f = scenarios::latency(forwarder_addr, LATENCY_SAMPLES).await?;
        let mut conn = scenarios::warmed_up(three_forwarders_addr).await?;
        let before = CpuSnapshot::take(&forwarders);
        let f3 = scenarios::round_trips(&mut conn, LATENCY_SAMPLES).await?;
        f3cpu.push(per_round_trip(
            CpuSnapshot::take(&forwarders).since(&before)?,
        ));
        let mut conn = scenarios::warmed_up(chain.client_addr).await?;
        let before = CpuSnapshot::take(&ours);
        let t = scenarios::round_trips(&mut conn, LATENCY_SAMPLES).await?;
        tcpu.push(per_round_trip(CpuSnapshot::take(&ours).since(&before)?));
        crypto.push(crypto_cost::round_trip_crypto()?);
        f3p50.push(percentile(&f3, 50.0));
        f3p99.push(percentile(&f3, 99.0));
        dp50.push(percentile(&d, 50.0));
        dp99.push(percentile(&d, 99.0));
        fp50.push(percentile(&f, 50.0));
        tp50.push(percentile(&t, 50.0));
        tp99.push(percentile(&t, 99.0));
    }
    r.latency_direct_p50_us = median(&dp50);
    r.latency_direct_p99_us = median(&dp99);
    r.latency_forwarder_p50_us = median(&fp50);
    r.latency_three_forwarders_p50_us = median(&f3p50);
    r.latency_three_forwarders_p99_us = median(&f3p99);
    r.three_forwarders_added_p50_us = r.latency_three_forwarders_p50_us - r.latency_direct_p50_us;
    r.three_forwarders_cpu_us_per_round_trip = median(&f3cpu);
    r.telework_cpu_us_per_round_trip = median(&tcpu);
    if !crypto.is_empty() {
        crypto.sort_by(|a, b| a.round_trip_us.total_cmp(&b.round_trip_us));
        // The lower middle for an even count, as `stats::median`.
        r.round_trip_crypto = crypto[(crypto.len() - 1) / 2];
    }
    r.latency_telework_p50_us = median(&tp50);
    r.latency_telework_p99_us = median(&tp99);
    r.added_p50_us = r.latency_telework_p50_us - r.latency_direct_p50_us;
    r.added_p99_us = r.latency_telework_p99_us - r.latency_direct_p99_us;
    eprintln!("latency: done");

    // 3. New session (password handshake) to first byte; tunnels per second in a session.
    let mut ttfb = vec![];
    let mut tps = vec![];
    for _ in 0..cli.runs.max(5) {
        if !wanted(Scenario::Setup) {
            break;
        }
        ttfb.push(
            scenarios::time_to_first_byte(
                chain.relay_addr,
                &chain.fingerprint,
                BENCH_ID,
                BENCH_PASSWORD,
            )
            .await?,
        );
    }
    for _ in 0..cli.runs {
        if !wanted(Scenario::Setup) {
            break;
        }
        tps.push(
            scenarios::tunnels_per_sec(chain.client_addr, 8, (cli.seconds / 3.0).max(1.0)).await?,
        );
    }
    r.new_session_ttfb_ms = median(&ttfb);
    r.argon2id_ms = median(&(0..5).map(|_| scenarios::argon2id_ms()).collect::<Vec<_>>());
    r.tunnels_per_sec = median(&tps);
    eprintln!("set-up: done");

    // 5. Slow reader: memory stays bounded by the buffer caps.
    let (mut rg, mut ag, mut wr) = (vec![], vec![], vec![]);
    for _ in 0..cli.runs {
        if !wanted(Scenario::SlowReader) {
            break;
        }
        let secs = cli.seconds.min(8.0);
        let (relay_kib, agent_kib, written) =
            scenarios::slow_reader(chain.client_addr, &chain.relay, &chain.agent, secs).await?;
        wr.push(written as f64 / 1e6 / secs);
        rg.push(relay_kib as f64 / 1024.0);
        ag.push(agent_kib as f64 / 1024.0);
    }
    r.slow_reader_relay_growth_mib = median(&rg);
    r.slow_reader_agent_growth_mib = median(&ag);
    r.slow_reader_written_mb_per_s = median(&wr);
    eprintln!("slow reader: done");
    drop(chain);

    // 4. Memory: idle agents and idle sessions, each run on a fresh relay.
    let (mut per_agent, mut per_session) = (vec![], vec![]);
    for _ in 0..cli.runs {
        if !wanted(Scenario::Memory) {
            break;
        }
        let chain = Chain::start(target)?;
        let before = chain.relay.rss_kib();
        let conns = agents::bring_online(
            chain.relay_addr,
            &chain.fingerprint,
            telework_net::transport::TransportChoice::Tcp,
            cli.agents,
            32,
        )
        .await
        .context("idle agents")?;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        per_agent.push(chain.relay.rss_kib().saturating_sub(before) as f64 / cli.agents as f64);
        drop(conns);
        drop(chain);
        let chain = Chain::start(target)?;
        target::reset_idle_count();
        let (kib, conns) = scenarios::idle_sessions(chain.client_addr, &chain.relay, cli.sessions)
            .await
            .context("idle sessions")?;
        per_session.push(kib);
        drop(conns);
    }
    r.idle_agents = cli.agents;
    r.relay_kib_per_idle_agent = median(&per_agent);
    r.idle_sessions = cli.sessions;
    r.relay_kib_per_idle_session = median(&per_session);
    eprintln!("memory: done");
    drop(forwarder);
    drop(three_forwarders);

    r.wall_seconds = wall.elapsed().as_secs_f64();
    print_table(&r);
    std::fs::write(&cli.json, serde_json::to_string_pretty(&r)?)?;
    println!("\nJSON written to {}", cli.json.display());
    Ok(())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} cores, {cpu}")
}

fn print_table(r: &Results) {
    println!(
        "telework benchmark ({} runs each, medians; {})",
        r.runs, r.machine
    );
    println!();
    println!("| scenario | direct | forwarder | telework | ratio / added | target |");
    println!("|---|---|---|---|---|---|");
    for (name, t) in [
        ("upload Gbit/s", &r.upload),
        ("download Gbit/s", &r.download),
    ] {
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} | {:.2} of direct | >= 0.17 |",
            t.direct_gbps, t.forwarder_gbps, t.telework_gbps, t.ratio_to_direct
        );
        println!(
            "| {name}: CPU s/GB relay / agent / client / total | | | {:.2} / {:.2} / {:.2} / {:.2} | | relay <= 1.0, total <= 3.0 |",
            t.relay_cpu_s_per_gb, t.agent_cpu_s_per_gb, t.client_cpu_s_per_gb, t.total_cpu_s_per_gb
        );
        println!(
            "| {name}: floor CPU s/GB (3 x direct hop {:.2} + 6 x AES-GCM {:.2}); CPU-bound ceiling | | | {:.2}; {:.2} of direct | | |",
            t.direct_hop_cpu_s_per_gb, r.aes_gcm_s_per_gb, t.floor_cpu_s_per_gb, t.ceiling_ratio_to_direct
        );
    }
    println!(
        "| 16 KiB memcpy GB/s, destination 16 B / 1 KiB past the source mod 4 KiB | | | {:.1} / {:.1} | | |",
        r.memcpy_16_past_gb_per_s, r.memcpy_1k_past_gb_per_s
    );
    println!(
        "| 64 B round trip p50 (us) | {:.0} | {:.0} | {:.0} | {:+.0} | added <= 100 |",
        r.latency_direct_p50_us,
        r.latency_forwarder_p50_us,
        r.latency_telework_p50_us,
        r.added_p50_us
    );
    println!(
        "| 64 B round trip p50 (us), three plain forwarders in series | {:.0} | {:.0} | | {:+.0} | |",
        r.latency_direct_p50_us,
        r.latency_three_forwarders_p50_us,
        r.three_forwarders_added_p50_us
    );
    println!(
        "| 64 B round trip: CPU us of the three middle processes, three forwarders / ours | | {:.0} | {:.0} | {:+.0} | |",
        r.three_forwarders_cpu_us_per_round_trip,
        r.telework_cpu_us_per_round_trip,
        r.telework_cpu_us_per_round_trip - r.three_forwarders_cpu_us_per_round_trip
    );
    let c = &r.round_trip_crypto;
    println!(
        "| 64 B round trip: CPU us of its cryptography, in a hot loop in one process (4 x TLS {:.2} + 2 x end-to-end {:.2}) | | | {:.1} | | |",
        c.tls_pair_us, c.e2e_pair_us, c.round_trip_us
    );
    println!(
        "| 64 B round trip p99 (us) | {:.0} | | {:.0} | {:+.0} | added p99 <= 2 x added p50 |",
        r.latency_direct_p99_us, r.latency_telework_p99_us, r.added_p99_us
    );
    println!(
        "| new session to first byte (ms) | | | {:.1} | | < 20 |",
        r.new_session_ttfb_ms
    );
    println!(
        "| ... of which the client's Argon2id (ms) | | | {:.1} | {:.1} without it | |",
        r.argon2id_ms,
        r.new_session_ttfb_ms - r.argon2id_ms
    );
    println!(
        "| new tunnels per second in a session | | | {:.0} | | >= 1000 |",
        r.tunnels_per_sec
    );
    println!(
        "| relay KiB per idle agent ({}) | | | {:.1} | | <= 16 |",
        r.idle_agents, r.relay_kib_per_idle_agent
    );
    println!(
        "| relay KiB per idle session ({}) | | | {:.1} | | <= 48 |",
        r.idle_sessions, r.relay_kib_per_idle_session
    );
    println!(
        "| slow reader (1 MB/s) growth MiB relay / agent; writer MB/s | | | {:.1} / {:.1}; {:.2} | | relay < 16 |",
        r.slow_reader_relay_growth_mib, r.slow_reader_agent_growth_mib, r.slow_reader_written_mb_per_s
    );
    println!("\nwall time {:.0} s", r.wall_seconds);
}
