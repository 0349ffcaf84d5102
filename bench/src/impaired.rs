//! `telework-bench --impaired`: both transports through the impairment forwarder of the tests
//! crate, one on the client's side of the relay and one on the agent's, at several loss rates
//! and a 30 ms round trip in all; beside them, plain TCP through the same two forwarders in
//! series (no telework: what the forwarders' model alone lets through).

use std::net::SocketAddr;
use std::path::Path as FsPath;
use std::time::{Duration, Instant};

use serde::Serialize;
use telework_net::transport::TransportChoice;
use telework_tests::impair::{Impairer, Impairments};

use crate::procs::{Chain, RelayProc};
use crate::report::machine;
use crate::stats::percentile;
use crate::{name, scenarios, target};

/// Loss each way on each side, in percent.
const LOSSES: [f64; 3] = [0.0, 1.0, 3.0];
/// Each side's round trip: the client's and the agent's make 30 ms in all.
const SIDE_ROUND_TRIP: Duration = Duration::from_millis(15);
/// Round trips made before the timed ones.
const WARM_UP: usize = 10;
/// The seed of the client's side (the agent's is the next): every run meets the same losses.
const SEED: u64 = 2026;

/// One path at one loss rate.
#[derive(Serialize)]
struct Row {
    path: String,
    loss_percent_each_way_each_side: f64,
    round_trip_ms: f64,
    download_mbit_s: f64,
    upload_mbit_s: f64,
    round_trip_p50_ms: f64,
    round_trip_p99_ms: f64,
    /// Datagrams (QUIC) or segments (TCP) the forwarders lost on purpose during the row.
    lost_on_purpose: u64,
}

#[derive(Serialize)]
struct Results {
    machine: String,
    seconds_each_way: f64,
    round_trips: usize,
    seed: u64,
    rows: Vec<Row>,
    wall_seconds: f64,
}

/// Runs every loss rate on every transport and the plain baseline; prints the table and
/// writes the JSON to `json`.
pub async fn run(
    transports: &[TransportChoice],
    seconds: f64,
    samples: usize,
    json: &FsPath,
) -> anyhow::Result<()> {
    let wall = Instant::now();
    let target = target::start().await?;
    let mut rows = vec![];
    for loss in LOSSES {
        let side = |seed| Impairments::symmetric(loss, SIDE_ROUND_TRIP, seed);
        // Plain TCP: client-side forwarder, then the agent side's, then the target.
        let agent_side = Impairer::start(target, side(SEED + 1)).await;
        let client_side = Impairer::start(agent_side.addr, side(SEED)).await;
        let mut row = measure(client_side.addr, seconds, samples).await?;
        row.path = "plain TCP (baseline)".into();
        row.loss_percent_each_way_each_side = loss;
        row.lost_on_purpose = lost(&[&agent_side, &client_side]);
        rows.push(row);
        drop((agent_side, client_side));

        for &t in transports {
            let relay = RelayProc::start(&[])?;
            let agent_side = Impairer::start(relay.addr, side(SEED + 1)).await;
            let client_side = Impairer::start(relay.addr, side(SEED)).await;
            let (a, c) = (agent_side.addr, client_side.addr);
            // The chain's start-up blocks (it waits for the processes' lines): off the
            // runtime's workers, which carry the forwarders meanwhile.
            let chain = tokio::task::spawn_blocking(move || Chain::around(relay, target, t, a, c))
                .await??;
            let mut row = measure(chain.client_addr, seconds, samples).await?;
            row.path = name(t);
            row.loss_percent_each_way_each_side = loss;
            row.lost_on_purpose = lost(&[&agent_side, &client_side]);
            rows.push(row);
            drop(chain);
            eprintln!("impaired: {loss} % over {}: done", name(t));
        }
    }
    let r = Results {
        machine: machine(),
        seconds_each_way: seconds,
        round_trips: samples,
        seed: SEED,
        rows,
        wall_seconds: wall.elapsed().as_secs_f64(),
    };
    print_table(&r);
    std::fs::write(json, serde_json::to_string_pretty(&r)?)?;
    println!("\nJSON written to {}", json.display());
    Ok(())
}

/// Download, upload and 64-byte round trips through `addr`.
async fn measure(addr: SocketAddr, seconds: f64, samples: usize) -> anyhow::Result<Row> {
    let (down, _) = scenarios::download(addr, seconds).await?;
    let (up, _) = scenarios::upload(addr, seconds).await?;
    let mut conn = scenarios::open(addr, target::ECHO).await?;
    scenarios::round_trips(&mut conn, WARM_UP).await?;
    let rtts = scenarios::round_trips(&mut conn, samples).await?;
    Ok(Row {
        path: String::new(),
        loss_percent_each_way_each_side: 0.0,
        round_trip_ms: (SIDE_ROUND_TRIP * 2).as_secs_f64() * 1e3,
        download_mbit_s: down * 8.0 / 1e6,
        upload_mbit_s: up * 8.0 / 1e6,
        round_trip_p50_ms: percentile(&rtts, 50.0) / 1e3,
        round_trip_p99_ms: percentile(&rtts, 99.0) / 1e3,
        lost_on_purpose: 0,
    })
}

fn lost(forwarders: &[&Impairer]) -> u64 {
    use std::sync::atomic::Ordering::Relaxed;
    forwarders
        .iter()
        .map(|f| {
            let c = f.counters();
            c.datagrams_lost.load(Relaxed) + c.segments_lost.load(Relaxed)
        })
        .sum()
}

fn print_table(r: &Results) {
    println!(
        "telework through impaired networks (one run; {:.0} s each way, {} round trips; {})",
        r.seconds_each_way, r.round_trips, r.machine
    );
    println!();
    println!(
        "| path | loss each way, each side | round trip | download Mbit/s | upload Mbit/s \
         | 64 B round trip p50 | p99 |"
    );
    println!("|---|---|---|---|---|---|---|");
    for row in &r.rows {
        println!(
            "| {} | {} % | {:.0} ms | {:.1} | {:.1} | {:.1} ms | {:.1} ms |",
            row.path,
            row.loss_percent_each_way_each_side,
            row.round_trip_ms,
            row.download_mbit_s,
            row.upload_mbit_s,
            row.round_trip_p50_ms,
            row.round_trip_p99_ms
        );
    }
}
