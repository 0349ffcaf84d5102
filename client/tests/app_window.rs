//! `telework app` as an employee uses it: a real window on a real X server (Xvfb, Mesa's
//! software OpenGL), keystrokes typed with xdotool, a relay and an office PC's agent in
//! process, and an echo service as the office desktop. Screenshots go to
//! `target/screenshots/` (each test prints the paths).
//!
//! Needs Xvfb, xdotool and ImageMagick (`.ci/run` installs them); without them the tests
//! fail, they do not skip.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::PW;
use telework_net::relay_profile::RelayProfile;
use telework_tests::{EchoServer, TestRelay};

/// How long any one thing in the window may take: connecting includes Argon2id.
const STEP: Duration = Duration::from_secs(40);

/// An X server of our own, stopped on drop.
struct Xvfb {
    child: Child,
    display: String,
}

impl Xvfb {
    fn start() -> Self {
        // -displayfd: Xvfb picks a free display and writes its number once it accepts
        // clients, so there is neither a fixed number nor a wait-and-hope.
        let mut child = Command::new("Xvfb")
            .args([
                "-displayfd",
                "1",
                "-screen",
                "0",
                "1280x800x24",
                "-nolisten",
                "tcp",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("Xvfb runs (apt-get install xvfb; .ci/run installs it)");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(out).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut xvfb = Self {
            child,
            display: String::new(),
        };
        let number = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("Xvfb says its display number within 20 s");
        let number = number.trim();
        assert!(
            !number.is_empty() && number.chars().all(|c| c.is_ascii_digit()),
            "Xvfb display number: {number:?}"
        );
        xvfb.display = format!(":{number}");
        xvfb
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `telework app` on `display`, its standard output read line by line; killed on drop.
struct App {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    display: String,
    window: String,
}

impl App {
    fn start(display: &str, profile: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_telework"))
            .args(["app", "--launch", "none", "--config-dir"])
            .arg(profile)
            .env("DISPLAY", display)
            .env_remove("WAYLAND_DISPLAY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let err_tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            if !text.trim().is_empty() {
                let _ = err_tx.send(format!("[stderr] {text}"));
            }
        });
        let mut app = Self {
            child,
            lines,
            seen: Vec::new(),
            display: display.to_owned(),
            window: String::new(),
        };
        // The window by its title; --sync waits for it, `timeout` bounds the wait.
        let found = app.xdotool(&["search", "--sync", "--onlyvisible", "--name", "^telework$"]);
        app.window = found
            .lines()
            .next()
            .unwrap_or_else(|| panic!("no telework window; output: {:?}", app.seen))
            .to_owned();
        // No window manager under Xvfb: give the window the keyboard and the pointer.
        app.xdotool(&["mousemove", "--window", &app.window.clone(), "40", "40"]);
        app.xdotool(&["windowfocus", "--sync", &app.window.clone()]);
        // Written once the first frame is drawn and the cursor is in its first box.
        app.wait_for("the window is open");
        app
    }

    /// Runs xdotool against this display, bounded by `timeout`.
    fn xdotool(&self, args: &[&str]) -> String {
        let out = Command::new("timeout")
            .arg("20")
            .arg("xdotool")
            .args(args)
            .env("DISPLAY", &self.display)
            .output()
            .expect("xdotool runs (apt-get install xdotool; .ci/run installs it)");
        assert!(
            out.status.success(),
            "xdotool {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Types `text` into the focused box and presses Return, as a person would.
    fn type_and_return(&self, text: &str) {
        if !text.is_empty() {
            self.xdotool(&["type", "--delay", "40", text]);
        }
        self.key("Return");
    }

    fn key(&self, key: &str) {
        self.xdotool(&["key", key]);
    }

    /// Waits for a status line the app prints that starts with `prefix`.
    fn wait_for(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + STEP;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no status line starting with {prefix:?} within {STEP:?}; the window said: {:#?}",
                    self.seen
                ),
            }
        }
    }

    /// Takes screenshots of the window until one shows the status dot in `colour` (the window
    /// may not have drawn the newest status yet), keeps it as `name`, and returns its path.
    fn screenshot_showing(&self, name: &str, colour: &str) -> PathBuf {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .unwrap()
            .join("screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        let mut pixels = 0;
        for _ in 0..50 {
            let status = Command::new("timeout")
                .args(["20", "import", "-window", &self.window])
                .arg(&path)
                .env("DISPLAY", &self.display)
                .status()
                .expect("ImageMagick's import runs (.ci/run installs imagemagick)");
            assert!(status.success(), "import -window {}", self.window);
            pixels = pixels_of(&path, colour);
            if pixels >= DOT_PIXELS {
                println!("screenshot: {}", path.display());
                return path;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "{} shows {pixels} pixels of the status colour {colour}, not a status dot",
            path.display()
        );
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A filled status dot of radius 6 at zoom 1.15 covers well over this many pixels; text and
/// anti-aliased edges in that exact colour cover far fewer.
const DOT_PIXELS: u64 = 60;

/// The status dot's colours, as in the window (`telework_client::app::view`).
const GREEN: &str = "#1e9646";
const RED: &str = "#c82828";
const ORANGE: &str = "#e09614";

/// How many pixels of `image` have (nearly) `colour`. `/usr/bin/convert` by its full path:
/// some machines put a stand-in of that name earlier on PATH.
fn pixels_of(image: &Path, colour: &str) -> u64 {
    let out = Command::new("timeout")
        .args(["20", "/usr/bin/convert"])
        .arg(image)
        .args([
            "-alpha",
            "off",
            "-fuzz",
            "4%",
            "-fill",
            "black",
            "+opaque",
            colour,
            "-fill",
            "white",
            "-opaque",
            colour,
            "-format",
            "%[fx:round(mean*w*h)]",
            "info:",
        ])
        .output()
        .expect("ImageMagick's convert runs");
    assert!(
        out.status.success(),
        "convert: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// `telework ARGS --config-dir PROFILE` to completion; its standard output.
fn telework(args: &[&str], profile: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_telework"))
        .args(args)
        .arg("--config-dir")
        .arg(profile)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "telework {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The relay's one line, as its operator hands it out.
fn relay_line(relay: &TestRelay) -> String {
    RelayProfile {
        relay: relay.addr.to_string().parse().unwrap(),
        fingerprint: Some(relay.fingerprint),
    }
    .to_string()
}

/// The local address in a "connected to … : point your RDP client at ADDR" line.
fn local_address(line: &str) -> String {
    line.rsplit_once("point your RDP client at ")
        .unwrap_or_else(|| panic!("{line}"))
        .1
        .to_owned()
}

/// A relay and the office PC `id` with an echo service as its desktop, on a runtime that
/// keeps serving them while the test drives the window from this thread.
struct Office {
    relay: TestRelay,
    desktop: EchoServer,
    agent: telework_tests::TestAgent,
    runtime: tokio::runtime::Runtime,
}

impl Office {
    fn start(id: &str) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (relay, desktop, agent) = runtime.block_on(async {
            let relay = TestRelay::start().await;
            let desktop = EchoServer::start().await;
            let agent = relay.agent(id, PW).target(desktop.addr).run().await;
            (relay, desktop, agent)
        });
        Self {
            relay,
            desktop,
            agent,
            runtime,
        }
    }

    /// Bytes through the app's local address, the relay and the agent to the echo service.
    fn round_trip(&self, addr: &str, data: &[u8]) {
        let back = self.runtime.block_on(common::round_trip(addr, data));
        assert_eq!(back, data);
    }

    /// Waits (bounded) until the relay has no session left.
    fn wait_no_sessions(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.relay.relay.sessions.count() > 0 {
            assert!(
                Instant::now() < deadline,
                "the relay still has a session after Disconnect"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The local port no longer accepts once the session is over.
fn refused(addr: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2)) {
            Err(_) => return true,
            Ok(_) if Instant::now() > deadline => return false,
            Ok(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The whole story with a profile set up by `telework config import`: connect, use the
/// desktop, Disconnect; a wrong password, then the right one; Disconnect again.
#[test]
fn connect_wrong_password_and_disconnect_in_the_window() {
    let office = Office::start("pc-app");
    let profile = tempfile::tempdir().unwrap();
    let saved = telework(
        &["config", "import", &relay_line(&office.relay)],
        profile.path(),
    );
    assert!(saved.starts_with("saved. relay: "), "{saved}");
    let xvfb = Xvfb::start();
    let started = Instant::now();
    let mut app = App::start(&xvfb.display, profile.path());

    // The cursor starts in the computer-ID box; Return moves it to the password box, and
    // Return there presses Connect.
    app.type_and_return("pc-app");
    app.type_and_return(PW);
    app.wait_for("connecting to pc-app through ");
    let line = app.wait_for("connected to pc-app over ");
    let addr = local_address(&line);
    office.round_trip(&addr, b"first session through the window");
    assert!(
        telework(&["config", "show"], profile.path()).contains("recent computer IDs: pc-app"),
        "the window's login remembers the ID"
    );

    // Disconnect has the keyboard once connected: Return presses it.
    app.key("Return");
    app.wait_for("session closed");
    assert!(refused(&addr), "{addr} still accepts after Disconnect");
    office.wait_no_sessions();

    // The cursor is back in the password box. The office PC is pinned now, so it confirms a
    // wrong password itself and says how many tries are left.
    app.type_and_return("not the password");
    app.wait_for("error: wrong password, 4 tries left before the office PC locks out");
    app.screenshot_showing("app-wrong-password.png", RED);

    // The password box was cleared and has the cursor: the right password connects.
    app.type_and_return(PW);
    let line = app.wait_for("connected to pc-app over ");
    let addr = local_address(&line);
    app.screenshot_showing("app-connected.png", GREEN);
    office.round_trip(&addr, b"second session through the window");
    assert_eq!(office.desktop.connections(), 2);

    app.key("Return");
    app.wait_for("session closed");
    assert!(refused(&addr), "{addr} still accepts after Disconnect");
    office.wait_no_sessions();
    println!("the window test took {:?}", started.elapsed());
}

/// A new employee: no relay saved, so the window asks for the operator's line (a damaged one
/// gets a plain error); then an office PC that asks for a one-time code, typed in the code box.
#[test]
fn the_relay_line_and_the_one_time_code_in_the_window() {
    let office = Office::start("pc-code");
    let secret = telework_tests::it_staff::require_totp(&office.agent);
    let profile = tempfile::tempdir().unwrap();
    let xvfb = Xvfb::start();
    let mut app = App::start(&xvfb.display, profile.path());

    // The cursor starts in the relay-line box. A line cut short is refused in plain words
    // and kept for fixing; select it all and paste the whole one.
    let line = relay_line(&office.relay);
    app.type_and_return(&line[..line.len() - 5]);
    app.wait_for("error: the relay profile's certificate pin is damaged or cut short");
    app.key("ctrl+a");
    app.type_and_return(&line);
    app.wait_for(&format!("saved the relay {}", office.relay.addr));
    assert!(
        telework(&["config", "show"], profile.path()).contains(&format!(
            "relay: {} (certificate pinned to",
            office.relay.addr
        )),
        "the line from the window is saved in the profile"
    );

    app.type_and_return("pc-code");
    app.type_and_return(PW);
    app.wait_for("waiting for the one-time code");
    app.screenshot_showing("app-one-time-code.png", ORANGE);
    let code = secret.code_at(telework_agent::unix_now());
    app.type_and_return(&code);
    let line = app.wait_for("connected to pc-code over ");
    app.screenshot_showing("app-first-connection.png", GREEN);
    office.round_trip(&local_address(&line), b"with a second factor");
    assert!(
        app.seen
            .iter()
            .any(|l| l.starts_with("first connection to pc-code")),
        "the first login says it pinned the office PC: {:#?}",
        app.seen
    );
}

/// An office PC that went to sleep: the window says it is offline and offers to wake it;
/// Return presses "Wake it and connect", a PC in its office sends the magic packets, the PC's
/// agent comes online, and the window logs in with the password already typed.
#[test]
fn an_offline_office_pc_is_woken_from_the_window() {
    use std::net::{Ipv4Addr, UdpSocket};
    use telework_agent::state::DataDir;
    use telework_agent::wake::packet::{magic_packet, Mac};
    use telework_agent::wake::{WakeList, WakeTarget};
    use telework_agent::{Agent, RunOptions};

    let office = Office::start("ws-01");
    let sleeper_id: telework_protocol::ComputerId = "pc-sleep".parse().unwrap();
    // The sleeping PC: registered, then off.
    let (desktop, sleeper_data) = office.runtime.block_on(async {
        let (desktop, sleeper) = office.relay.office_pc("pc-sleep", PW).await;
        let data = sleeper.copy_data_dir();
        sleeper.stop().await;
        (desktop, data)
    });
    // The office LAN stand-in: the loopback network's broadcast address, a port of our own.
    let lan = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    lan.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mac: Mac = "02:00:00:00:00:43".parse().unwrap();
    // Written directly: `wake add` refuses loopback addresses, which only a test wants.
    DataDir::open(office.agent.dir.path())
        .unwrap()
        .save_wake_list(&WakeList {
            targets: vec![WakeTarget {
                id: sleeper_id.clone(),
                mac,
                broadcast: Ipv4Addr::new(127, 255, 255, 255),
                port: lan.local_addr().unwrap().port(),
            }],
        })
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while office.relay.relay.wake.wakers.of(&sleeper_id).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the waker's list reached the relay"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let profile = tempfile::tempdir().unwrap();
    telework(
        &["config", "import", &relay_line(&office.relay)],
        profile.path(),
    );
    let xvfb = Xvfb::start();
    let mut app = App::start(&xvfb.display, profile.path());
    app.type_and_return("pc-sleep");
    app.type_and_return(PW);
    app.wait_for("error: the office PC is offline");
    app.key("Return");
    app.wait_for("pc-sleep is offline: asked a PC in its office to wake it");
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + Duration::from_secs(10);
    let packet = loop {
        if let Ok(n) = lan.recv(&mut buf) {
            break buf[..n].to_vec();
        }
        assert!(
            Instant::now() < deadline,
            "no magic packet on the office LAN"
        );
    };
    assert_eq!(packet, magic_packet(mac).as_slice());

    // The PC wakes: its agent comes online, and the window logs in.
    let agent = Agent::open(
        DataDir::open(sleeper_data.path()).unwrap(),
        desktop.addr.to_string(),
        RunOptions::default(),
    )
    .unwrap();
    let running = office
        .runtime
        .block_on(telework_tests::run_until_online(agent));
    app.wait_for("pc-sleep is online");
    let line = app.wait_for("connected to pc-sleep over ");
    office.round_trip(&local_address(&line), b"good morning");
    running.abort();
}

/// Without a display the window says so in one line and the command fails.
#[test]
fn without_a_display_the_app_says_so() {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_telework"))
        .args(["app", "--launch", "none", "--config-dir"])
        .arg(profile.path())
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim(),
        "telework: cannot open the window: no desktop display here (DISPLAY is not set); on a \
         computer without a desktop, use 'telework connect'"
    );
}
