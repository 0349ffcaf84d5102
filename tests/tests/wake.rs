//! Wake-on-LAN across real network boundaries (issue 16, part 5): the real `telework-relay`
//! in `relay`, a real always-on waker `telework-agent` in `office` with a second interface on
//! an "office LAN" (its own namespace, with a broadcast address), a UDP listener on that LAN
//! on port 9 standing in for the sleeping PC's network card, and the real `telework` in
//! `home`.
//!
//! ```text
//!  home ── relay ── office (waker agent, echo service)
//!                     lan0 192.168.77.1/24 brd 192.168.77.255
//!                       │ veth
//!                     lan: eth0 192.168.77.20/24, UDP listener on :9
//! ```
//!
//! Needs root, `ip` and `nft`; without them the test prints why and passes as skipped.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use telework_agent::wake::packet::{magic_packet, Mac};
use telework_agent::wake::send::BURST;
use telework_tests::echo_once;
use telework_tests::netns::{binary, run, Networks, Ns};
use telework_tests::netns_chain::{
    AgentProcess, ClientProcess, OfficeServices, PreparedAgent, RelayProcess,
};

const PASSWORD: &str = "correct horse battery staple";
const SLEEPER: &str = "pc-tanaka-01";
const SLEEPER_MAC: &str = "aa-bb-cc-dd-ee-01";
const LAN_BROADCAST: &str = "192.168.77.255";
const WAKER_LAN_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);

/// The office LAN: a namespace of our own behind a veth from `office`, deleted on drop.
struct OfficeLan {
    ns: Ns,
}

impl OfficeLan {
    fn create(office: &Ns) -> Self {
        // Named after `office` (prefix and pid), so a killed run's leftovers are found.
        let ns = Ns {
            name: format!("{}-lan", office.name),
        };
        run("ip", &["netns", "add", &ns.name]);
        let lan = Self { ns };
        lan.ns.ip(&["link", "set", "lo", "up"]);
        office.ip(&[
            "link",
            "add",
            "lan0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &lan.ns.name,
        ]);
        office.ip(&["addr", "add", "192.168.77.1/24", "brd", "+", "dev", "lan0"]);
        office.ip(&["link", "set", "lan0", "up"]);
        lan.ns
            .ip(&["addr", "add", "192.168.77.20/24", "brd", "+", "dev", "eth0"]);
        lan.ns.ip(&["link", "set", "eth0", "up"]);
        let shown =
            String::from_utf8(office.ip(&["-4", "addr", "show", "dev", "lan0"]).stdout).unwrap();
        assert!(shown.contains(&format!("brd {LAN_BROADCAST}")), "{shown}");
        lan
    }
}

impl Drop for OfficeLan {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.ns.name])
            .status();
    }
}

/// A datagram and where it came from.
type Datagram = (SocketAddr, Vec<u8>);

/// Every UDP datagram arriving on port 9 of the office LAN, with its source, until dropped.
struct Listener {
    got: Arc<Mutex<Vec<Datagram>>>,
    stop: Arc<AtomicBool>,
}

impl Listener {
    fn start(lan: &Ns) -> Self {
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, s) = (got.clone(), stop.clone());
        let (ready_tx, ready) = std::sync::mpsc::channel();
        lan.thread(move || {
            let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 9)).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            ready_tx.send(()).unwrap();
            let mut buf = [0u8; 2048];
            while !s.load(SeqCst) {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    g.lock().unwrap().push((from, buf[..n].to_vec()));
                }
            }
        });
        ready.recv_timeout(Duration::from_secs(5)).unwrap();
        Self { got, stop }
    }

    fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    /// Waits (bounded) until at least `n` datagrams arrived; returns them all.
    fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Datagram> {
        let deadline = Instant::now() + timeout;
        while self.count() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.got.lock().unwrap().clone()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
    }
}

fn agent_command(nets: &Networks, args: &[&str]) -> String {
    let out = nets
        .office
        .exec(binary("telework-agent").to_str().unwrap(), args);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn audit_rows(relay_data: &Path) -> String {
    let out = run(
        binary("telework-relay").to_str().unwrap(),
        &[
            "audit",
            "--data-dir",
            relay_data.to_str().unwrap(),
            "--kind",
            "wake_requested",
            "--json",
        ],
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The whole flow, as IT staff and employees would do it: the waker is told about the
/// sleeping PC while running; `telework connect --wake` makes exactly one burst of correct
/// magic packets arrive on the LAN; a second request inside the window and a request for a
/// PC nobody can wake send nothing; without `--wake` and without a terminal the client says
/// what to do and exits, on a terminal it asks and waits once answered; once the PC's agent
/// starts, the waiting clients connect and the desktop (an echo service) works; the audit log
/// has every request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_on_lan_through_the_relay_reaches_the_office_lan() {
    let Some(nets) = Networks::create() else {
        return;
    };
    let lan = OfficeLan::create(&nets.office);
    let listener = Listener::start(&lan.ns);
    let relay = RelayProcess::start(&nets);
    let office = OfficeServices::start(&nets.office);

    // The PC that sleeps: registered, not running.
    let sleeper = PreparedAgent::new(&nets, &relay, SLEEPER, PASSWORD, "auto", &[]);
    // The always-on waker, told about the sleeper while it runs.
    let waker = AgentProcess::start(&nets, &relay, "ws-01", PASSWORD, office.echo, "auto");
    waker
        .process
        .wait_for("online over", Duration::from_secs(15));
    let data = waker.data.to_str().unwrap();
    let added = agent_command(
        &nets,
        &[
            "wake",
            "add",
            SLEEPER,
            "--mac",
            SLEEPER_MAC,
            "--broadcast",
            LAN_BROADCAST,
            "--port",
            "9",
            "--data-dir",
            data,
        ],
    );
    assert!(added.contains("can now wake pc-tanaka-01"), "{added}");
    let listed = agent_command(&nets, &["wake", "list", "--data-dir", data]);
    assert!(
        listed.contains("AA:BB:CC:DD:EE:01") && listed.contains("192.168.77.255:9"),
        "{listed}"
    );
    relay
        .process
        .wait_for("the agent can wake office PCs", Duration::from_secs(10));

    // No terminal, no --wake: says so and exits, without waiting for an answer.
    let mut asked = ClientProcess::spawn(&nets, &relay, SLEEPER, PASSWORD, "auto", &[]);
    let code = asked.process.wait_exit(Duration::from_secs(20));
    let said = asked.process.output();
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("pc-tanaka-01 is offline; 'telework connect pc-tanaka-01 --wake'"),
        "{said}"
    );
    assert_eq!(listener.count(), 0, "nothing sent without --wake");

    // --wake: one burst of correct magic packets for the right MAC, from the waker.
    let started = Instant::now();
    let woken = ClientProcess::spawn(
        &nets,
        &relay,
        SLEEPER,
        PASSWORD,
        "auto",
        &["--wake", "--wake-timeout", "90"],
    );
    woken.process.wait_for(
        "pc-tanaka-01 is offline: asked a PC in its office to wake it",
        Duration::from_secs(15),
    );
    let packets = listener.wait_for(BURST, Duration::from_secs(5));
    let mac: Mac = SLEEPER_MAC.parse().unwrap();
    assert_eq!(packets.len(), BURST, "{packets:?}");
    for (from, bytes) in &packets {
        assert_eq!(bytes.as_slice(), magic_packet(mac).as_slice());
        assert_eq!(bytes.len(), 102);
        assert_eq!(
            from.ip(),
            std::net::IpAddr::V4(WAKER_LAN_ADDR),
            "sent by the waker"
        );
    }
    eprintln!(
        "{} magic packets on the office LAN {:?} after the client started",
        packets.len(),
        started.elapsed()
    );
    assert!(
        !woken.process.output().contains("ws-01"),
        "the client is never told which PC woke it"
    );

    // A second request inside the window: answered, waits too, but sends nothing.
    let second = ClientProcess::spawn(
        &nets,
        &relay,
        SLEEPER,
        PASSWORD,
        "auto",
        &["--wake", "--wake-timeout", "90"],
    );
    second
        .process
        .wait_for("it was asked to wake moments ago", Duration::from_secs(15));

    // On a terminal (a pty from `script`), without --wake: the employee is asked, answers y,
    // and waits with the others (inside the window: nothing more is sent).
    let profile = tempfile::tempdir().unwrap();
    let command = format!(
        "{} connect {SLEEPER} --relay {} --relay-fingerprint {} --launch none --password-stdin \
         --config-dir {}",
        binary("telework").display(),
        nets.relay_from_home(),
        relay.fingerprint,
        profile.path().display()
    );
    let mut on_terminal = nets.home.spawn_with(
        Path::new("/usr/bin/script"),
        &["-qefc", &command, "/dev/null"],
        &[("NO_COLOR", "1")],
    );
    on_terminal.write_line(PASSWORD);
    on_terminal.write_line("y");
    on_terminal.wait_for(
        "pc-tanaka-01 is offline. Ask a PC in its office to wake it? [y/N]",
        Duration::from_secs(15),
    );
    on_terminal.wait_for("it was asked to wake moments ago", Duration::from_secs(15));

    // A PC nobody can wake (not even registered): the same answer as for any such ID.
    let mut nobody =
        ClientProcess::spawn(&nets, &relay, "pc-nobody", PASSWORD, "auto", &["--wake"]);
    assert_eq!(nobody.process.wait_exit(Duration::from_secs(20)), Some(1));
    assert!(
        nobody
            .process
            .output()
            .contains("pc-nobody is offline and no PC in its office can wake it"),
        "{}",
        nobody.process.output()
    );
    // Give stray packets time to arrive: there must be none.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        listener.count(),
        BURST,
        "no packet for the second or unknown request"
    );

    // The client shows progress while it waits.
    woken.process.wait_for(
        "waiting for pc-tanaka-01 to come online … 10 s",
        Duration::from_secs(15),
    );

    // The PC "wakes": its agent starts; both waiting clients log in and the desktop works.
    let sleeper = sleeper.run(&nets, office.echo);
    sleeper
        .process
        .wait_for("online over", Duration::from_secs(15));
    let local = woken.wait_connected(Duration::from_secs(20));
    woken
        .process
        .wait_for("pc-tanaka-01 is online", Duration::from_secs(1));
    let mut conn = nets.home.connect(local).await;
    echo_once(&mut conn).await;
    let local2 = second.wait_connected(Duration::from_secs(20));
    let mut conn2 = nets.home.connect(local2).await;
    echo_once(&mut conn2).await;
    on_terminal.wait_for("point your RDP client at", Duration::from_secs(20));
    eprintln!(
        "woken and connected {:?} after the first request",
        started.elapsed()
    );

    // The audit log: who asked (the client's address), which PC, which waker, what came of it.
    let deadline = Instant::now() + Duration::from_secs(15);
    let rows = loop {
        let rows = audit_rows(&relay.data_dir);
        if rows.lines().count() >= 4 || Instant::now() > deadline {
            break rows;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    eprintln!("{rows}");
    let lines: Vec<&str> = rows.lines().collect();
    assert_eq!(lines.len(), 4, "{rows}");
    let find = |result: &str| {
        lines
            .iter()
            .find(|l| l.contains(&format!("\"result\":\"{result}\"")))
            .unwrap_or_else(|| panic!("no {result} row in {rows}"))
            .to_string()
    };
    let sent = find("sent");
    assert!(
        sent.contains("\"computer_id\":\"pc-tanaka-01\"")
            && sent.contains("\"wakers\":[\"ws-01\"]")
            && sent.contains("10.13.1.2:"),
        "{sent}"
    );
    assert!(find("rate-limited").contains("pc-tanaka-01"));
    assert!(find("no waker online").contains("pc-nobody"));
    drop(sleeper);
    drop(waker);
    drop(listener);
    drop(lan);
}
