//! `telework-bench --byte-counting`: what counting relayed bytes (for the console's live
//! sessions and the metrics) costs the relay. Two chains run side by side on each transport,
//! one relay counting and one started with `--no-byte-counts`, and the bulk runs alternate
//! between them, so both meet the same machine load; the result is the relay's CPU seconds
//! per GB of each, and the median of the ratios of runs made back to back (the target: at
//! most 1.02), which a machine whose load drifts disturbs less than a ratio of medians.

use std::path::Path as FsPath;

use serde::Serialize;
use telework_net::transport::TransportChoice;

use crate::procs::Chain;
use crate::report::machine;
use crate::stats::median;
use crate::{name, scenarios, target};

#[derive(Serialize)]
struct Row {
    transport: String,
    counting_relay_cpu_s_per_gb: f64,
    not_counting_relay_cpu_s_per_gb: f64,
    ratio: f64,
    runs: usize,
    seconds_each: f64,
}

#[derive(Serialize)]
struct Results {
    machine: String,
    rows: Vec<Row>,
}

/// Runs `runs` uploads and downloads of `secs` through each relay, alternating.
pub async fn run(
    transports: &[TransportChoice],
    runs: usize,
    secs: f64,
    json: &FsPath,
) -> anyhow::Result<()> {
    let target = target::start().await?;
    let mut rows = Vec::new();
    for &t in transports {
        let counting = Chain::start(target, t)?;
        let baseline = Chain::start_with(target, t, &["--no-byte-counts".to_owned()])?;
        let (mut with, mut without, mut ratios) = (vec![], vec![], vec![]);
        for i in 0..runs * 2 {
            let upload = i % 2 == 0;
            // Which goes first alternates too, so neither always runs on a warmer machine.
            let order: [(&Chain, bool); 2] = if i % 4 < 2 {
                [(&counting, true), (&baseline, false)]
            } else {
                [(&baseline, false), (&counting, true)]
            };
            let mut pair = [0.0; 2];
            for (chain, is_counting) in order {
                let before = chain.cpu()[0];
                let (_, bytes) = if upload {
                    scenarios::upload(chain.client_addr, secs).await?
                } else {
                    scenarios::download(chain.client_addr, secs).await?
                };
                let per_gb = (chain.cpu()[0] - before) / (bytes as f64 / 1e9);
                if is_counting {
                    with.push(per_gb);
                    pair[0] = per_gb;
                } else {
                    without.push(per_gb);
                    pair[1] = per_gb;
                }
            }
            ratios.push(pair[0] / pair[1]);
        }
        let (w, wo, ratio) = (median(&with), median(&without), median(&ratios));
        eprintln!(
            "{}: relay CPU s/GB counting {w:.3}, not counting {wo:.3}, ratio {ratio:.3}",
            name(t)
        );
        rows.push(Row {
            transport: name(t),
            counting_relay_cpu_s_per_gb: w,
            not_counting_relay_cpu_s_per_gb: wo,
            ratio,
            runs: with.len(),
            seconds_each: secs,
        });
    }
    println!("| transport | relay CPU s/GB, counting | not counting | ratio (target <= 1.02) |");
    println!("|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.3} | {:.3} | {:.3} |",
            r.transport, r.counting_relay_cpu_s_per_gb, r.not_counting_relay_cpu_s_per_gb, r.ratio
        );
    }
    let results = Results {
        machine: machine(),
        rows,
    };
    std::fs::write(json, serde_json::to_string_pretty(&results)?)?;
    eprintln!("wrote {}", json.display());
    Ok(())
}
