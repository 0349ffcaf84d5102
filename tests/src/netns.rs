//! Real network boundaries for tests: Linux network namespaces made with `ip netns`, joined by
//! veth pairs, filtered with `nft` (Debian's `iproute2` and `nftables`).
//!
//! [`Networks::create`] makes three namespaces, unique to the test (prefix, pid, counter), so
//! tests run in parallel:
//!
//! ```text
//!  home                    relay                         office
//!  eth0 10.13.1.2/24 ◀──▶ home 10.13.1.1/24
//!                          office 10.13.2.1/24 ◀──▶ eth0 10.13.2.2/24
//! ```
//!
//! `home` (the employee's PC) and `office` (the office PC and its desktop service) route
//! through `relay`, which forwards between them and where the relay listens on both of its
//! addresses. Every address lives only inside these namespaces; the host's interfaces and
//! routes are never touched. Dropping [`Networks`] kills what still runs in its namespaces and
//! deletes them; namespaces left by a test process that died are removed by the next one.
//!
//! Programs run inside a namespace with [`Ns::spawn`] (`ip netns exec`, killed on drop), and
//! test code runs there with [`Ns::thread`]: a thread that has entered the namespace, so the
//! sockets it makes live there.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Every namespace the harness makes starts with this (then the pid and a counter).
pub const PREFIX: &str = "twnet";

/// The relay namespace's address facing `home`.
pub const RELAY_HOME_SIDE: Ipv4Addr = Ipv4Addr::new(10, 13, 1, 1);
/// The relay namespace's address facing `office`.
pub const RELAY_OFFICE_SIDE: Ipv4Addr = Ipv4Addr::new(10, 13, 2, 1);
/// `home`'s first address.
pub const HOME_ADDR: Ipv4Addr = Ipv4Addr::new(10, 13, 1, 2);
/// `office`'s address.
pub const OFFICE_ADDR: Ipv4Addr = Ipv4Addr::new(10, 13, 2, 2);
/// The port the relay listens on (TCP and UDP), inside the relay namespace.
pub const RELAY_PORT: u16 = 443;

/// Deadline for each `ip`/`nft` command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Why these tests cannot run here (not root, `ip` or `nft` missing), or `None` if they can.
pub fn unavailable() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("network-namespace tests need root (run cargo test as root)".into());
    }
    for (tool, package) in [("ip", "iproute2"), ("nft", "nftables")] {
        let found = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!(
                "'{tool}' is missing: install Debian's {package} (tests/rdp/setup.sh does)"
            ));
        }
    }
    None
}

/// Runs `program args`, bounded in time; panics with its output if it fails.
pub fn run(program: &str, args: &[&str]) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{program} {args:?} took more than {COMMAND_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// One network namespace (deleted by the [`Networks`] that made it).
#[derive(Clone, Debug)]
pub struct Ns {
    /// Its name for `ip netns`.
    pub name: String,
}

impl Ns {
    /// Runs `ip ARGS` inside this namespace (`ip -n NAME ARGS`).
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Runs a short command inside this namespace and waits for it.
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        let mut all = vec!["netns", "exec", &self.name, program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// As [`Ns::exec`], but `None` when the command fails instead of a panic.
    pub fn try_exec(&self, program: &str, args: &[&str]) -> Option<Output> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .ok()?;
        out.status.success().then_some(out)
    }

    /// Loads an nftables ruleset (the text `nft -f` reads) into this namespace.
    pub fn nft(&self, ruleset: &str) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run nft");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(ruleset.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "nft rejected the ruleset: {}\n{ruleset}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts `program args` inside this namespace; it is killed when the result is dropped.
    pub fn spawn(&self, program: &Path, args: &[&str]) -> NsProcess {
        self.spawn_with(program, args, &[])
    }

    /// [`Ns::spawn`] with extra environment variables.
    pub fn spawn_with(&self, program: &Path, args: &[&str], env: &[(&str, &str)]) -> NsProcess {
        // `ip netns exec` enters the namespace and then executes the program itself: the pid
        // is the program's, so killing it kills the program.
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.name])
            .arg(program)
            .args(args);
        watched(command, program, env)
    }

    /// Runs `f` on a new thread that has entered this namespace (sockets it makes live
    /// here), and returns its handle.
    pub fn thread<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            rustix::thread::move_into_link_name_space(
                ns.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .unwrap_or_else(|e| panic!("setns {path}: {e}"));
            f()
        })
    }

    /// A TCP connection made from inside this namespace (to a client's local port, say).
    pub async fn connect(&self, addr: SocketAddr) -> tokio::net::TcpStream {
        let conn = self
            .thread(move || std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        conn.set_nonblocking(true).unwrap();
        tokio::net::TcpStream::from_std(conn).unwrap()
    }
}

/// Starts `program args` in this test's own network namespace (loopback tests); it is
/// killed when the result is dropped.
pub fn spawn_here(program: &Path, args: &[&str], env: &[(&str, &str)]) -> NsProcess {
    let mut command = Command::new(program);
    command.args(args);
    watched(command, program, env)
}

/// Runs `command` with its output lines collected.
fn watched(mut command: Command, program: &Path, env: &[(&str, &str)]) -> NsProcess {
    command
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
    let lines = Arc::new(Lines::default());
    for out in [
        child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|e| Box::new(e) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                lines.push(line);
            }
        });
    }
    NsProcess {
        name: program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        stdin: child.stdin.take(),
        child,
        lines,
    }
}

/// The output lines of a process, as they come.
#[derive(Default)]
struct Lines {
    all: Mutex<Vec<String>>,
    more: Condvar,
}

impl Lines {
    fn push(&self, line: String) {
        self.all.lock().unwrap().push(line);
        self.more.notify_all();
    }
}

/// A program running inside a namespace; killed (SIGKILL) and reaped when dropped.
pub struct NsProcess {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Arc<Lines>,
}

impl NsProcess {
    /// Writes `line` and a newline to its standard input (a password, say).
    pub fn write_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Waits until a line of its stdout or stderr contains `needle`, looking at the lines
    /// already printed too; returns that line, or panics after `timeout` with all it printed.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        self.try_wait_for(needle, 0, timeout).unwrap_or_else(|| {
            panic!(
                "{} did not print '{needle}' within {timeout:?}; it printed:\n{}",
                self.name,
                self.output()
            )
        })
    }

    /// Waits until a line from number `from` on (0 is the first) contains `needle`.
    pub fn try_wait_for(&self, needle: &str, from: usize, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut all = self.lines.all.lock().unwrap();
        loop {
            if let Some(line) = all.iter().skip(from).find(|l| l.contains(needle)) {
                return Some(line.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            all = self.lines.more.wait_timeout(all, left).unwrap().0;
        }
    }

    /// How many lines it has printed so far.
    pub fn line_count(&self) -> usize {
        self.lines.all.lock().unwrap().len()
    }

    /// Everything it printed so far, one line each.
    pub fn output(&self) -> String {
        self.lines.all.lock().unwrap().join("\n")
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits (bounded by `timeout`) for it to exit; returns its exit code (-1 for a signal),
    /// or `None` if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills it with SIGKILL (no chance to clean up) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NsProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The three namespaces of a test, deleted on drop (also when the test panics).
pub struct Networks {
    /// The employee's PC.
    pub home: Ns,
    /// The office PC and its desktop service.
    pub office: Ns,
    /// The public relay, routing between the other two.
    pub relay: Ns,
}

impl Networks {
    /// Makes the three namespaces and their links, or returns `None` after printing why
    /// network-namespace tests cannot run here (the test then passes as skipped).
    pub fn create() -> Option<Self> {
        if let Some(why) = unavailable() {
            eprintln!("skipping the network-namespace test: {why}");
            return None;
        }
        remove_stale();
        let prefix = format!(
            "{PREFIX}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let ns = |role: &str| Ns {
            name: format!("{prefix}-{role}"),
        };
        // Made before any namespace exists, so a failure below still deletes them all.
        let nets = Self {
            home: ns("home"),
            office: ns("office"),
            relay: ns("relay"),
        };
        for n in [&nets.home, &nets.office, &nets.relay] {
            run("ip", &["netns", "add", &n.name]);
            n.ip(&["link", "set", "lo", "up"]);
        }
        let r = &nets.relay;
        for (side, ns, here, there) in [
            ("home", &nets.home, RELAY_HOME_SIDE, HOME_ADDR),
            ("office", &nets.office, RELAY_OFFICE_SIDE, OFFICE_ADDR),
        ] {
            r.ip(&[
                "link", "add", side, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
            ]);
            r.ip(&["addr", "add", &format!("{here}/24"), "dev", side]);
            r.ip(&["link", "set", side, "up"]);
            ns.ip(&["addr", "add", &format!("{there}/24"), "dev", "eth0"]);
            ns.ip(&["link", "set", "eth0", "up"]);
            ns.ip(&["route", "add", "default", "via", &here.to_string()]);
        }
        r.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
        Some(nets)
    }

    /// The address `home` reaches the relay at.
    pub fn relay_from_home(&self) -> SocketAddr {
        SocketAddr::from((RELAY_HOME_SIDE, RELAY_PORT))
    }

    /// The address `office` reaches the relay at.
    pub fn relay_from_office(&self) -> SocketAddr {
        SocketAddr::from((RELAY_OFFICE_SIDE, RELAY_PORT))
    }

    /// Drops every UDP packet from `office` where it enters the relay's namespace, silently,
    /// as a firewall that blocks UDP does (the office's own sends still succeed).
    pub fn drop_udp_from_office(&self) {
        self.relay.nft(
            "table inet tw_udp {\n\
             \x20 chain pre { type filter hook prerouting priority -300; policy accept;\n\
             \x20   iifname \"office\" meta l4proto udp drop\n\
             \x20 }\n\
             }\n",
        );
    }

    /// Lets `office` reach nothing but `allowed` over TCP (and its own loopback): the office
    /// of a company whose only way out is its HTTP proxy. A hook for the proxy test, which
    /// starts the proxy in the relay namespace with [`Ns::spawn`].
    pub fn restrict_office_to(&self, allowed: SocketAddr) {
        let ip = allowed.ip();
        let port = allowed.port();
        self.office.nft(&format!(
            "table inet tw_only {{\n\
             \x20 chain out {{ type filter hook output priority 0; policy drop;\n\
             \x20   oifname \"lo\" accept\n\
             \x20   ct state established,related accept\n\
             \x20   ip daddr {ip} tcp dport {port} accept\n\
             \x20 }}\n\
             }}\n"
        ));
    }

    /// Moves `home` to a new address in another subnet, as a laptop moving from Wi-Fi to a
    /// phone's hotspot does: the relay's side gains the new subnet's gateway `new_gateway`,
    /// home's old address goes (taking its routes with it), the new one comes and the default
    /// route points at the new gateway. The old subnet stays routed on the relay's side, so
    /// packets to the old address are lost rather than refused.
    pub fn move_home(&self, new_addr: Ipv4Addr, new_gateway: Ipv4Addr) {
        self.relay
            .ip(&["addr", "add", &format!("{new_gateway}/24"), "dev", "home"]);
        let current = self.home_addresses();
        for old in &current {
            self.home
                .ip(&["addr", "del", &format!("{old}/24"), "dev", "eth0"]);
        }
        self.home
            .ip(&["addr", "add", &format!("{new_addr}/24"), "dev", "eth0"]);
        self.home.ip(&[
            "route",
            "replace",
            "default",
            "via",
            &new_gateway.to_string(),
        ]);
    }

    /// `home`'s IPv4 addresses on its link to the relay.
    pub fn home_addresses(&self) -> Vec<Ipv4Addr> {
        let out = self.home.ip(&["-4", "-o", "addr", "show", "dev", "eth0"]);
        let text = String::from_utf8_lossy(&out.stdout);
        let words: Vec<&str> = text.split_whitespace().collect();
        words
            .windows(2)
            .filter(|w| w[0] == "inet")
            .filter_map(|w| w[1].split('/').next()?.parse().ok())
            .collect()
    }
}

impl Drop for Networks {
    fn drop(&mut self) {
        for n in [&self.home, &self.office, &self.relay] {
            delete_namespace(&n.name);
        }
    }
}

/// Kills whatever still runs in namespace `name` (only ever one of ours) and deletes it.
fn delete_namespace(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
    }
    let _ = Command::new("ip").args(["netns", "del", name]).status();
}

/// Deletes namespaces with our prefix whose test process is gone (a test run killed before
/// its guards ran).
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let mut parts = name.split('-');
        if parts.next() != Some(PREFIX) {
            continue;
        }
        let Some(pid) = parts.next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("removing the stale network namespace {name}");
            delete_namespace(name);
        }
    }
}

/// The path of one of the workspace's programs (`telework-relay`, `telework-agent`,
/// `telework`), built first (once per test process) with the profile this test was built
/// with, so a test never runs a stale binary.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        // target/<profile>/deps/<test binary>
        let me = std::env::current_exe().unwrap();
        let dir = me.parent().unwrap().parent().unwrap().to_path_buf();
        let profile = dir.file_name().unwrap().to_string_lossy().into_owned();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = Command::new(cargo);
        // Not the variables cargo set for this test (`CARGO_MANIFEST_DIR` and the like):
        // build scripts that read them would run again, and so would the outer build.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            let config = [
                "CARGO_HOME",
                "CARGO_TARGET_DIR",
                "CARGO_BUILD_",
                "CARGO_PROFILE_",
            ]
            .iter()
            .any(|keep| key.starts_with(keep));
            if (key.starts_with("CARGO_") && !config) || key == "OUT_DIR" {
                command.env_remove(&*key);
            }
        }
        let status = command
            .args(["build", "--bins", "--profile"])
            .arg(if profile == "debug" { "dev" } else { &profile })
            .args([
                "-p",
                "telework-relay",
                "-p",
                "telework-agent",
                "-p",
                "telework-client",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build for the programs");
        assert!(status.success(), "building the programs failed");
        dir
    });
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing", path.display());
    path
}
