//! The command line of `telework-bench`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use telework_net::transport::TransportChoice;

use crate::floor;

/// Benchmarks for telework on loopback.
#[derive(Parser)]
#[command(about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) mode: Option<Mode>,
    /// The transports to measure, side by side in the same run.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [TransportChoice::Tcp, TransportChoice::Quic])]
    pub(crate) transports: Vec<TransportChoice>,
    /// Seconds per throughput run, each way.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) seconds: f64,
    /// Runs per scenario (medians are reported).
    #[arg(long, default_value_t = 3)]
    pub(crate) runs: usize,
    /// Idle agents on one relay, over TLS/TCP (one run; 100000 is the target, a long run).
    #[arg(long, default_value_t = 5_000)]
    pub(crate) agents: usize,
    /// Idle agents on one relay over QUIC [default: as --agents] (20000 is the target).
    #[arg(long)]
    pub(crate) quic_agents: Option<usize>,
    /// Idle sessions for the relay-memory scenario (500 fails today: "the office PC did not
    /// answer in time" after some hundreds of logins to one agent).
    #[arg(long, default_value_t = 100)]
    pub(crate) sessions: usize,
    /// Idle tunnels in one session for the agent-plus-client memory scenario (the relay lets
    /// a session have 256 streams open at once).
    #[arg(long, default_value_t = 200)]
    pub(crate) tunnels: usize,
    /// Where to write the JSON results [default: bench-results.json, or
    /// bench/results-impaired.json with --impaired, bench/results-cluster.json with
    /// --cluster].
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    /// Instead of the scenarios: both transports through the impairment forwarder (one on
    /// each side of the relay) at 0, 1 and 3 % loss and a 30 ms round trip, beside plain TCP
    /// through the same forwarders.
    #[arg(long)]
    pub(crate) impaired: bool,
    /// Instead of the scenarios: the relay's CPU per GB with and without counting relayed
    /// bytes (the metrics' and the console's), two chains side by side on each transport.
    #[arg(long)]
    pub(crate) byte_counting: bool,
    /// Instead of the scenarios: three relay nodes on one throwaway PostgreSQL beside one
    /// relay on SQLite: a node killed under --cluster-agents simulated agents, lookups per
    /// second, and new session to first byte (needs PostgreSQL's initdb and pg_ctl).
    #[arg(long)]
    pub(crate) cluster: bool,
    /// Simulated agents over the three nodes with --cluster, over TLS/TCP (1,000 with
    /// --quick).
    #[arg(long, default_value_t = 10_000)]
    pub(crate) cluster_agents: usize,
    /// The same over QUIC (at most --cluster-agents). 10,000 QUIC agents, three relays,
    /// PostgreSQL and the bench on two shared cores flap: connections that go 6 s without a
    /// packet while the processes wait for a CPU time out.
    #[arg(long, default_value_t = 2_000)]
    pub(crate) cluster_quic_agents: usize,
    /// Seconds per throughput run, each way, with --impaired.
    #[arg(long, default_value_t = 4.0)]
    pub(crate) impaired_seconds: f64,
    /// Timed 64-byte round trips per path and loss rate, with --impaired.
    #[arg(long, default_value_t = 300)]
    pub(crate) impaired_round_trips: usize,
    /// A short smoke run (1 run, 1 s, 500 agents, 100 sessions; with --cluster 1,000
    /// agents, 1 run of 1 s per lookup measure).
    #[arg(long)]
    pub(crate) quick: bool,
    /// Run only these scenarios (for profiling one of them); the others report zeros.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub(crate) only: Vec<Scenario>,
}

/// The scenarios, as `--only` names them.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Scenario {
    Throughput,
    Latency,
    Setup,
    Tunnels,
    SlowReader,
    Memory,
    Agents,
    Floor,
}

#[derive(Subcommand)]
pub(crate) enum Mode {
    /// Run the plain forwarder baseline (used by the bench itself).
    Forwarder {
        /// Where to forward.
        #[arg(long)]
        target: SocketAddr,
        /// Run on one thread (as the agent and the client do) instead of two workers.
        #[arg(long)]
        current_thread: bool,
    },
    /// Hold idle connections of one transport layer and nothing else (used by the bench
    /// itself, for the libraries' floor).
    FloorServer {
        /// What to hold.
        #[arg(long, value_enum)]
        layer: floor::Layer,
    },
}
