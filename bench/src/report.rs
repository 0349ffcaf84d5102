//! The results a run collects, as JSON and as the table the README shows.

use serde::Serialize;

use crate::crypto_cost;
use crate::{SUSTAINED_SECS, TUNNEL_WORKERS};

#[derive(Serialize, Default, Clone, Copy)]
pub(crate) struct Throughput {
    pub(crate) telework_gbps: f64,
    pub(crate) ratio_to_direct: f64,
    pub(crate) relay_cpu_s_per_gb: f64,
    pub(crate) agent_cpu_s_per_gb: f64,
    pub(crate) client_cpu_s_per_gb: f64,
    pub(crate) total_cpu_s_per_gb: f64,
}

/// What was measured without our programs, in the same run.
#[derive(Serialize, Default)]
pub(crate) struct Baselines {
    pub(crate) upload_direct_gbps: f64,
    pub(crate) upload_forwarder_gbps: f64,
    pub(crate) download_direct_gbps: f64,
    pub(crate) download_forwarder_gbps: f64,
    /// CPU of the bench's own sender and receiver per GB on the direct path: what one TCP hop
    /// costs, both ends, at full speed.
    pub(crate) direct_hop_cpu_s_per_gb: f64,
    pub(crate) latency_direct_p50_us: f64,
    pub(crate) latency_direct_p99_us: f64,
    pub(crate) latency_forwarder_p50_us: f64,
    /// Three plain forwarders in series: as many processes and crossings as our chain (client,
    /// relay, agent) with no protocol and no crypto, so its added latency is what this machine
    /// charges for the crossings alone.
    pub(crate) latency_three_forwarders_p50_us: f64,
    pub(crate) latency_three_forwarders_p99_us: f64,
    pub(crate) three_forwarders_added_p50_us: f64,
    /// CPU of the three middle processes per round trip over the timed round trips: time on
    /// a CPU as the scheduler counts it, every thread.
    pub(crate) three_forwarders_cpu_us_per_round_trip: f64,
    /// The cryptography of one round trip over TLS/TCP (TLS on both hops, the end-to-end
    /// records), in one process with no sockets.
    pub(crate) round_trip_crypto: crypto_cost::RoundTripCrypto,
    /// Idle connections held for each layer of the floor.
    pub(crate) floor_connections: usize,
    /// Resident KiB per idle connection in a process that holds only TLS 1.3 over TCP.
    pub(crate) floor_kib_tls: f64,
    /// The same with HTTP/2 on top, set up by the relay's own accept.
    pub(crate) floor_kib_tls_h2: f64,
    /// The same for QUIC, set up by the relay's own endpoint and accept.
    pub(crate) floor_kib_quic: f64,
    pub(crate) argon2id_ms: f64,
    /// One AES-256-GCM pass over 16 KiB records (our record layer's sealer), CPU s per GB.
    pub(crate) aes_gcm_s_per_gb: f64,
    pub(crate) memcpy_16_past_gb_per_s: f64,
    pub(crate) memcpy_1k_past_gb_per_s: f64,
}

/// Everything measured through our programs on one transport.
#[derive(Serialize, Default)]
pub(crate) struct Path {
    pub(crate) transport: String,
    pub(crate) upload: Throughput,
    pub(crate) download: Throughput,
    pub(crate) latency_p50_us: f64,
    pub(crate) latency_p99_us: f64,
    pub(crate) added_p50_us: f64,
    pub(crate) added_p99_us: f64,
    /// Added p50 minus the three forwarders' added p50.
    pub(crate) added_p50_over_three_forwarders_us: f64,
    pub(crate) cpu_us_per_round_trip: f64,
    pub(crate) new_session_ttfb_ms: f64,
    /// One tunnel at a time.
    pub(crate) tunnels_per_sec_sequential: f64,
    /// [`TUNNEL_WORKERS`] in flight, 1 s after the relay's budget has refilled.
    pub(crate) tunnels_per_sec_concurrent: f64,
    pub(crate) tunnels_refused_concurrent: u64,
    /// [`TUNNEL_WORKERS`] in flight for [`SUSTAINED_SECS`]: past the relay's burst of 10,000.
    pub(crate) tunnels_per_sec_sustained: f64,
    pub(crate) tunnels_refused_sustained: u64,
    pub(crate) idle_agents_online: usize,
    pub(crate) idle_agents_failed: usize,
    pub(crate) idle_agents_lost: usize,
    pub(crate) idle_agents_first_error: Option<String>,
    pub(crate) idle_agents_bring_up_s: f64,
    pub(crate) relay_rss_mib_with_idle_agents: f64,
    pub(crate) relay_kib_per_idle_agent: f64,
    pub(crate) relay_kib_per_idle_session: f64,
    pub(crate) agent_client_kib_per_idle_tunnel: f64,
    pub(crate) slow_reader_relay_growth_mib: f64,
    pub(crate) slow_reader_agent_growth_mib: f64,
    pub(crate) slow_reader_written_mb_per_s: f64,
}

#[derive(Serialize, Default)]
pub(crate) struct Results {
    pub(crate) machine: String,
    pub(crate) runs: usize,
    pub(crate) idle_sessions: usize,
    pub(crate) idle_tunnels: usize,
    pub(crate) baselines: Baselines,
    pub(crate) paths: Vec<Path>,
    pub(crate) wall_seconds: f64,
}

pub(crate) fn machine() -> String {
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

pub(crate) fn print_table(r: &Results) {
    let b = &r.baselines;
    println!(
        "telework benchmark ({} runs each, medians; {})",
        r.runs, r.machine
    );
    println!();
    let names: Vec<&str> = r.paths.iter().map(|p| p.transport.as_str()).collect();
    println!(
        "| measure | direct | plain forwarder(s) | {} | target |",
        names.join(" | ")
    );
    println!("|---|---|---|{}---|", "---|".repeat(names.len()));
    let row =
        |measure: &str, direct: String, fwd: String, f: &dyn Fn(&Path) -> String, target: &str| {
            let cells: Vec<String> = r.paths.iter().map(f).collect();
            println!(
                "| {measure} | {direct} | {fwd} | {} | {target} |",
                cells.join(" | ")
            );
        };
    let tcp_path = r.paths.iter().find(|p| p.transport == "TLS/TCP");
    for (way, d, f) in [
        ("upload", b.upload_direct_gbps, b.upload_forwarder_gbps),
        (
            "download",
            b.download_direct_gbps,
            b.download_forwarder_gbps,
        ),
    ] {
        let t = |p: &Path| {
            if way == "upload" {
                p.upload
            } else {
                p.download
            }
        };
        row(
            &format!("{way} Gbit/s (ratio to direct; QUIC: to TLS/TCP)"),
            format!("{d:.2}"),
            format!("{f:.2}"),
            &|p| {
                let mut s = format!("{:.2} ({:.2})", t(p).telework_gbps, t(p).ratio_to_direct);
                if let (Some(tcp), true) = (tcp_path, p.transport == "QUIC") {
                    s += &format!(
                        "; {:.2} of TLS/TCP",
                        t(p).telework_gbps / t(tcp).telework_gbps
                    );
                }
                s
            },
            "TLS/TCP >= 0.2 of direct; QUIC >= 0.3 of TLS/TCP",
        );
        row(
            &format!("{way}: CPU s/GB relay / agent / client"),
            String::new(),
            String::new(),
            &|p| {
                format!(
                    "{:.2} / {:.2} / {:.2}",
                    t(p).relay_cpu_s_per_gb,
                    t(p).agent_cpu_s_per_gb,
                    t(p).client_cpu_s_per_gb
                )
            },
            "",
        );
    }
    row(
        "64 B round trip p50 / p99 (us)",
        format!(
            "{:.0} / {:.0}",
            b.latency_direct_p50_us, b.latency_direct_p99_us
        ),
        format!(
            "1: {:.0}; 3: {:.0} / {:.0}",
            b.latency_forwarder_p50_us,
            b.latency_three_forwarders_p50_us,
            b.latency_three_forwarders_p99_us
        ),
        &|p| format!("{:.0} / {:.0}", p.latency_p50_us, p.latency_p99_us),
        "",
    );
    row(
        "added p50 (us): over direct; over three forwarders (QUIC: over TLS/TCP)",
        String::new(),
        format!("3: {:+.0}", b.three_forwarders_added_p50_us),
        &|p| {
            let mut s = format!(
                "{:+.0}; {:+.0}",
                p.added_p50_us, p.added_p50_over_three_forwarders_us
            );
            if let (Some(tcp), true) = (tcp_path, p.transport == "QUIC") {
                s += &format!(" ({:+.0})", p.latency_p50_us - tcp.latency_p50_us);
            }
            s
        },
        "TLS/TCP <= +15 over three forwarders; QUIC <= +20 over TLS/TCP",
    );
    row(
        "64 B round trip: CPU us of the three middle processes",
        String::new(),
        format!("3: {:.0}", b.three_forwarders_cpu_us_per_round_trip),
        &|p| format!("{:.0}", p.cpu_us_per_round_trip),
        "",
    );
    row(
        &format!(
            "new session to first byte (ms; client Argon2id alone {:.1})",
            b.argon2id_ms
        ),
        String::new(),
        String::new(),
        &|p| format!("{:.1}", p.new_session_ttfb_ms),
        "< 20",
    );
    row(
        &format!(
            "new tunnels/s in one session: one at a time; {TUNNEL_WORKERS} in flight (refused)"
        ),
        String::new(),
        String::new(),
        &|p| {
            format!(
                "{:.0}; {:.0} ({})",
                p.tunnels_per_sec_sequential,
                p.tunnels_per_sec_concurrent,
                p.tunnels_refused_concurrent
            )
        },
        ">= 5,000",
    );
    row(
        &format!("... {TUNNEL_WORKERS} in flight for {SUSTAINED_SECS:.0} s, past the relay's budget (burst 10,000, then 10,000/s) (refused)"),
        String::new(),
        String::new(),
        &|p| format!("{:.0} ({})", p.tunnels_per_sec_sustained, p.tunnels_refused_sustained),
        "",
    );
    row(
        "idle agents on one relay: online (failed, lost); relay RSS MiB",
        String::new(),
        String::new(),
        &|p| {
            format!(
                "{} ({}, {}); {:.0}",
                p.idle_agents_online,
                p.idle_agents_failed,
                p.idle_agents_lost,
                p.relay_rss_mib_with_idle_agents
            )
        },
        "100,000 TLS/TCP, 20,000 QUIC, no errors",
    );
    row(
        "relay KiB per idle agent",
        String::new(),
        String::new(),
        &|p| format!("{:.1}", p.relay_kib_per_idle_agent),
        "TLS/TCP <= 8, QUIC <= 16",
    );
    row(
        &format!("relay KiB per idle session ({})", r.idle_sessions),
        String::new(),
        String::new(),
        &|p| format!("{:.1}", p.relay_kib_per_idle_session),
        "<= 24",
    );
    row(
        &format!(
            "agent + client KiB per idle tunnel ({} in one session)",
            r.idle_tunnels
        ),
        String::new(),
        String::new(),
        &|p| format!("{:.1}", p.agent_client_kib_per_idle_tunnel),
        "<= 64",
    );
    row(
        "slow reader (1 MB/s): growth MiB relay / agent; writer MB/s",
        String::new(),
        String::new(),
        &|p| {
            format!(
                "{:.1} / {:.1}; {:.2}",
                p.slow_reader_relay_growth_mib,
                p.slow_reader_agent_growth_mib,
                p.slow_reader_written_mb_per_s
            )
        },
        "relay < 16",
    );
    let c = &b.round_trip_crypto;
    println!(
        "\nbaselines: AES-256-GCM {:.2} s/GB; direct hop {:.2} CPU s/GB; 16 KiB memcpy {:.1} / {:.1} GB/s (16 B / 1 KiB past); round-trip crypto over TLS/TCP {:.1} us (4 x TLS {:.2} + 2 x end-to-end {:.2})",
        b.aes_gcm_s_per_gb, b.direct_hop_cpu_s_per_gb, b.memcpy_16_past_gb_per_s, b.memcpy_1k_past_gb_per_s,
        c.round_trip_us, c.tls_pair_us, c.e2e_pair_us
    );
    println!(
        "the libraries alone, KiB per idle connection ({} each, a process holding nothing else): TLS 1.3 {:.1}; TLS + HTTP/2 {:.1}; QUIC {:.1}",
        b.floor_connections, b.floor_kib_tls, b.floor_kib_tls_h2, b.floor_kib_quic
    );
    println!("wall time {:.0} s", r.wall_seconds);
}
