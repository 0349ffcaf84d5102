//! Starting the real relay, agent and client binaries as separate processes, and reading
//! their CPU time and memory from /proc.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use telework_net::transport::TransportChoice;

/// A child process that is killed when dropped.
pub struct Proc {
    /// The process.
    pub child: Child,
}

impl Proc {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU seconds (user + system) used so far.
    pub fn cpu_secs(&self) -> f64 {
        cpu_secs(self.pid())
    }

    /// Resident memory in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A thread's time on a CPU as the scheduler counts it, in nanoseconds: the first field of a
/// `schedstat` file under /proc. `None` if it cannot be read (the thread has ended).
pub fn schedstat_ns(path: &Path) -> Option<u64> {
    let line = std::fs::read_to_string(path).ok()?;
    line.split_whitespace().next()?.parse().ok()
}

/// This thread's time on a CPU, in nanoseconds: for timing work in this process the way the
/// CPU rows time the programs, leaving out time the shared host takes the CPU away.
///
/// # Errors
/// If /proc/thread-self/schedstat cannot be read.
pub fn thread_cpu_ns() -> anyhow::Result<u64> {
    schedstat_ns(Path::new("/proc/thread-self/schedstat"))
        .context("cannot read CPU time from /proc/thread-self/schedstat")
}

/// The CPU time of every thread of some processes at one moment, from the scheduler's own
/// count (the first field of /proc/PID/task/TID/schedstat, in nanoseconds): fine enough for a
/// run of a fraction of a second, where clock ticks are not.
pub struct CpuSnapshot(HashMap<u64, u64>);

impl CpuSnapshot {
    /// Reads every thread of `procs`.
    pub fn take(procs: &[&Proc]) -> Self {
        let mut threads = HashMap::new();
        for p in procs {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", p.pid())) else {
                continue;
            };
            for task in tasks.flatten() {
                let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
                    continue;
                };
                if let Some(ns) = schedstat_ns(&task.path().join("schedstat")) {
                    threads.insert(tid, ns);
                }
            }
        }
        Self(threads)
    }

    /// CPU nanoseconds used since `earlier`. A thread started since counts in full; one that
    /// ended since is missed (it cannot be read any more).
    ///
    /// # Errors
    /// If no thread could be read at all.
    pub fn since(&self, earlier: &CpuSnapshot) -> anyhow::Result<u64> {
        if self.0.is_empty() || earlier.0.is_empty() {
            bail!("cannot read CPU time from /proc/PID/task/TID/schedstat");
        }
        Ok(self
            .0
            .iter()
            .map(|(tid, now)| now.saturating_sub(earlier.0.get(tid).copied().unwrap_or(0)))
            .sum())
    }
}

/// CPU seconds used by `pid` (fields 14 and 15 of /proc/PID/stat, in clock ticks of 1/100 s).
pub fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name may contain spaces; fields resume after the closing parenthesis.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After ')' the fields are numbered from 3 (state); utime is 14, stime is 15.
    (ticks(14 - 3) + ticks(15 - 3)) / 100.0
}

/// Resident set size of `pid` in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Where the telework binaries are: next to this one (cargo puts every workspace binary in
/// the same target directory).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let path = me.parent().context("binary directory")?.join(name);
    if !path.exists() {
        bail!(
            "{} not found: build all binaries first (cargo build --release --bins)",
            path.display()
        );
    }
    Ok(path)
}

pub fn read_line_with(child: &mut Child, prefix: &str, limit: Duration) -> anyhow::Result<String> {
    let stdout = child.stdout.take().context("stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    let wanted = prefix.to_owned();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix(&wanted) {
                let _ = tx.send(rest.to_owned());
            }
        }
    });
    rx.recv_timeout(limit)
        .with_context(|| format!("waiting for {prefix:?}"))
}

/// A relay, agent and client started as processes, forwarding to `target`.
pub struct Chain {
    /// The relay process.
    pub relay: Proc,
    /// The agent process.
    pub agent: Proc,
    /// The client process (`telework connect`).
    pub client: Proc,
    /// Where the client listens (what an RDP client would connect to).
    pub client_addr: SocketAddr,
    /// The relay's address.
    pub relay_addr: SocketAddr,
    /// The relay's certificate fingerprint.
    pub fingerprint: String,
    /// The transport agent and client were told to use.
    pub transport: TransportChoice,
    _dir: tempfile::TempDir,
}

/// The `--transport` value that names `choice`.
pub fn transport_arg(choice: TransportChoice) -> &'static str {
    match choice {
        TransportChoice::Auto => "auto",
        TransportChoice::Quic => "quic",
        TransportChoice::Tcp => "tcp",
    }
}

/// How the client names `choice` in its `connected to ID over ...` line.
fn transport_words(choice: TransportChoice) -> &'static str {
    match choice {
        TransportChoice::Quic => "QUIC",
        _ => "TLS/TCP",
    }
}

/// The computer ID and password the bench registers.
pub const BENCH_ID: &str = "bench-pc";
/// See [`BENCH_ID`].
pub const BENCH_PASSWORD: &str = "bench-connection-password";

impl Chain {
    /// Starts the three processes, the relay on its default settings, agent and client on
    /// `transport`, and waits until the client listens.
    pub fn start(target: SocketAddr, transport: TransportChoice) -> anyhow::Result<Self> {
        Self::start_with(target, transport, &[])
    }

    /// As [`Chain::start`], with more arguments for `telework-relay serve`.
    pub fn start_with(
        target: SocketAddr,
        transport: TransportChoice,
        relay_args: &[String],
    ) -> anyhow::Result<Self> {
        let relay = RelayProc::start(relay_args)?;
        let addr = relay.addr;
        Self::around(relay, target, transport, addr, addr)
    }

    /// An agent and a client on `transport` around a running relay, the agent dialling
    /// `agent_via` and the client `client_via` (the relay's address, or something in front
    /// of it), and waits until the client listens.
    pub fn around(
        relay: RelayProc,
        target: SocketAddr,
        transport: TransportChoice,
        agent_via: SocketAddr,
        client_via: SocketAddr,
    ) -> anyhow::Result<Self> {
        let RelayProc {
            proc: relay,
            addr: relay_addr,
            fingerprint,
            dir,
        } = relay;
        let agent = start_agent(
            &dir.path().join("agent"),
            BENCH_ID,
            agent_via,
            &fingerprint,
            target,
            transport,
        )?;

        // The agent needs a moment to come online; the client retries until it is.
        let started = Instant::now();
        let (client, client_addr) = loop {
            let mut client = Command::new(binary("telework")?)
                .args([
                    "connect",
                    BENCH_ID,
                    "--relay",
                    &client_via.to_string(),
                    "--relay-fingerprint",
                    &fingerprint,
                    "--transport",
                    transport_arg(transport),
                ])
                .args([
                    "--password-stdin",
                    "--launch",
                    "none",
                    "--listen",
                    "127.0.0.1:0",
                ])
                .env("TELEWORK_CONFIG_DIR", dir.path().join("client"))
                .env("RUST_LOG", "error")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()?;
            client
                .stdin
                .take()
                .context("stdin")?
                .write_all(format!("{BENCH_PASSWORD}\n").as_bytes())?;
            let prefix = format!("connected to {BENCH_ID} over ");
            match read_line_with(&mut client, &prefix, Duration::from_secs(5)) {
                Ok(rest) => {
                    let (over, addr) = rest
                        .split_once(": point your RDP client at ")
                        .unwrap_or_default();
                    if !over.starts_with(transport_words(transport)) {
                        let _ = client.kill();
                        let _ = client.wait();
                        bail!("asked for {transport:?}, the client is on {over}");
                    }
                    break (client, addr.trim().parse::<SocketAddr>()?);
                }
                Err(_) if started.elapsed() < Duration::from_secs(20) => {
                    let _ = client.kill();
                    let _ = client.wait();
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => bail!("client did not connect: {e}"),
            }
        };
        Ok(Self {
            relay,
            agent,
            client: Proc { child: client },
            client_addr,
            relay_addr,
            fingerprint,
            transport,
            _dir: dir,
        })
    }
}

/// Registers the office PC `id` through `via` (open registration) with the bench's password,
/// in `agent_dir`, and starts `telework-agent run` forwarding to `target`. The agent comes
/// online a moment later.
pub fn start_agent(
    agent_dir: &Path,
    id: &str,
    via: SocketAddr,
    fingerprint: &str,
    target: SocketAddr,
    transport: TransportChoice,
) -> anyhow::Result<Proc> {
    let agent_bin = binary("telework-agent")?;
    let status = Command::new(&agent_bin)
        .args([
            "register",
            "--relay",
            &via.to_string(),
            "--relay-fingerprint",
            fingerprint,
            "--id",
            id,
            "--transport",
            transport_arg(transport),
        ])
        .arg("--data-dir")
        .arg(agent_dir)
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("agent registration failed");
    }
    let mut set = Command::new(&agent_bin)
        .args(["set-password", "--password-stdin", "--data-dir"])
        .arg(agent_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    set.stdin
        .take()
        .context("stdin")?
        .write_all(format!("{BENCH_PASSWORD}\n").as_bytes())?;
    if !set.wait()?.success() {
        bail!("set-password failed");
    }
    let agent = Command::new(&agent_bin)
        .args(["run", "--target", &target.to_string()])
        .args(["--transport", transport_arg(transport), "--data-dir"])
        .arg(agent_dir)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok(Proc { child: agent })
}

/// A relay process started on its own: the first part of a [`Chain`].
pub struct RelayProc {
    /// The process.
    pub proc: Proc,
    /// Where it listens (TCP and UDP).
    pub addr: SocketAddr,
    /// Its certificate's fingerprint.
    pub fingerprint: String,
    /// Its data dir, and the chain's others beside it.
    dir: tempfile::TempDir,
}

impl RelayProc {
    /// Starts `telework-relay serve` on a free loopback port with `relay_args`.
    pub fn start(relay_args: &[String]) -> anyhow::Result<Self> {
        Self::start_in(tempfile::tempdir()?, "127.0.0.1:0", relay_args, None)
    }

    /// Starts `telework-relay serve` listening on `listen` with `relay_args`, its data
    /// directory [`RelayProc::data_dir`] of `dir` (which may hold a registry made
    /// beforehand). `fingerprint` is its certificate's when `relay_args` name one
    /// (`--cert`); otherwise the relay's own self-signed certificate's is read.
    pub fn start_in(
        dir: tempfile::TempDir,
        listen: &str,
        relay_args: &[String],
        fingerprint: Option<String>,
    ) -> anyhow::Result<Self> {
        let relay_dir = Self::data_dir(dir.path());
        let mut relay = Command::new(binary("telework-relay")?)
            .args(["serve", "--listen", listen, "--data-dir"])
            .arg(&relay_dir)
            .args(relay_args)
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let listening = read_line_with(
            &mut relay,
            "telework-relay listening on ",
            Duration::from_secs(10),
        )?;
        let addr: SocketAddr = listening
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .parse()?;
        let proc = Proc { child: relay };
        let fingerprint = match fingerprint {
            Some(f) => f,
            None => fingerprint_of(&relay_dir)?,
        };
        Ok(Self {
            proc,
            addr,
            fingerprint,
            dir,
        })
    }

    /// The relay's data directory inside `dir` (its SQLite registry is `relay.db` there).
    pub fn data_dir(dir: &Path) -> PathBuf {
        dir.join("relay")
    }
}

impl Chain {
    /// CPU seconds used so far by the relay, the agent and the client.
    pub fn cpu(&self) -> [f64; 3] {
        [
            self.relay.cpu_secs(),
            self.agent.cpu_secs(),
            self.client.cpu_secs(),
        ]
    }
}

fn fingerprint_of(relay_dir: &Path) -> anyhow::Result<String> {
    let out = Command::new(binary("telework-relay")?)
        .args(["fingerprint", "--data-dir"])
        .arg(relay_dir)
        .output()?;
    if !out.status.success() {
        bail!("telework-relay fingerprint failed");
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// The tokio runtime a forwarder runs on.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// Two worker threads (like the relay).
    MultiThread,
    /// One thread (like the agent and the client).
    CurrentThread,
}

/// The plain forwarder baseline, run as a separate process (this binary, `forwarder` mode).
pub fn start_forwarder(target: SocketAddr, runtime: Runtime) -> anyhow::Result<(Proc, SocketAddr)> {
    let mut command = Command::new(std::env::current_exe()?);
    command.args(["forwarder", "--target", &target.to_string()]);
    if runtime == Runtime::CurrentThread {
        command.arg("--current-thread");
    }
    let mut child = command.stdout(Stdio::piped()).spawn()?;
    let addr = read_line_with(
        &mut child,
        "forwarder listening on ",
        Duration::from_secs(5),
    )?;
    Ok((Proc { child }, addr.trim().parse()?))
}

/// Plain forwarders in series in front of `target`, one per entry of `runtimes` (the first
/// nearest the target); returns them and the address of the last one started.
pub fn start_forwarder_chain(
    target: SocketAddr,
    runtimes: &[Runtime],
) -> anyhow::Result<(Vec<Proc>, SocketAddr)> {
    let mut procs = Vec::with_capacity(runtimes.len());
    let mut next = target;
    for &runtime in runtimes {
        let (proc, addr) = start_forwarder(next, runtime)?;
        procs.push(proc);
        next = addr;
    }
    Ok((procs, next))
}
