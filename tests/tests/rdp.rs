//! A real RDP session through the whole chain: Debian's xrdp (with xorgxrdp, on loopback, with
//! a local test user) as the office PC's desktop service, and FreeRDP's xfreerdp under Xvfb as
//! the employee's RDP client, connected through telework client → relay → agent.
//!
//! Needs the packages and test user from `tests/rdp/setup.sh` (`.ci/run` runs it) and root.
//! Set `TELEWORK_SKIP_RDP=1` to skip on a machine without them; CI never sets it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use telework_net::transport::TransportChoice;
use telework_tests::{TestClient, TestRelay};

const RDP_USER: &str = "twtest";
const RDP_PASSWORD: &str = "tw-Test-Pass-1";
const CONNECTION_PASSWORD: &str = "office-pc-connection-password";

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("rdp")
}

/// Stops the xrdp server however the test ends.
struct RdpServer {
    state: tempfile::TempDir,
}

impl RdpServer {
    fn start(port: u16) -> Self {
        let state = tempfile::tempdir().unwrap();
        let out = Command::new("bash")
            .arg(scripts().join("rdp-server.sh"))
            .args(["start", &port.to_string()])
            .arg(state.path())
            .output()
            .expect("run rdp-server.sh");
        assert!(
            out.status.success(),
            "xrdp did not start (run tests/rdp/setup.sh as root first):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Self { state }
    }
}

impl Drop for RdpServer {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(scripts().join("rdp-server.sh"))
            .arg("stop")
            .arg(self.state.path())
            .output();
    }
}

/// Runs xfreerdp against `port` and returns the script's exit code and verdict line.
async fn xfreerdp(port: u16, password: &str) -> (i32, String) {
    let out = tokio::process::Command::new("bash")
        .arg(scripts().join("rdp-client.sh"))
        .args(["127.0.0.1", &port.to_string(), RDP_USER, password])
        .env("TW_RDP_TIMEOUT", "40")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("rdp-client.sh ended")
        .unwrap();
    let verdict = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), verdict)
}

/// On a fresh machine, as root, installs xrdp, FreeRDP, Xvfb and the test user (the same
/// script `.ci/run` runs), so `cargo test` alone is enough. Without root, says what to do.
fn ensure_rdp_installed() {
    let have = |cmd: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {cmd}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if have("xrdp") && have("xfreerdp") && have("Xvfb") {
        return;
    }
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    assert_eq!(
        uid.as_deref().unwrap_or(""),
        "0",
        "the real RDP test needs xrdp, xorgxrdp, freerdp2-x11 and Xvfb: run 'sudo bash tests/rdp/setup.sh' \
         (or set TELEWORK_SKIP_RDP=1 to skip it)"
    );
    let status = Command::new("bash")
        .arg(scripts().join("setup.sh"))
        .status()
        .expect("run setup.sh");
    assert!(status.success(), "tests/rdp/setup.sh failed");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_rdp_desktop_through_client_relay_agent() {
    if std::env::var_os("TELEWORK_SKIP_RDP").is_some() {
        eprintln!("TELEWORK_SKIP_RDP is set: skipping the real RDP test");
        return;
    }
    ensure_rdp_installed();
    let rdp_port = free_port();
    let _server = RdpServer::start(rdp_port);

    // The same desktop over each transport in turn (one xrdp, so not in parallel).
    for transport in [TransportChoice::Quic, TransportChoice::Tcp] {
        telework_tests::TRANSPORT
            .scope(transport, async {
                let relay = TestRelay::start().await;
                let target = format!("127.0.0.1:{rdp_port}").parse().unwrap();
                let agent = relay
                    .agent("pc-xrdp", CONNECTION_PASSWORD)
                    .target(target)
                    .run()
                    .await;
                let client =
                    TestClient::serve(relay.login("pc-xrdp", CONNECTION_PASSWORD).await.unwrap())
                        .await;

                // The right Windows (here: Linux) password: the desktop appears in xfreerdp.
                let (code, verdict) = xfreerdp(client.local.port(), RDP_PASSWORD).await;
                assert_eq!(
                    code, 0,
                    "desktop should appear through the relay: {verdict}"
                );

                // A wrong desktop password: xrdp refuses the login, through the same chain.
                let (code, verdict) = xfreerdp(client.local.port(), "not-the-password").await;
                assert_eq!(code, 3, "xrdp should refuse a wrong password: {verdict}");

                client.stop().await.unwrap();
                agent.stop().await;
            })
            .await;
    }
}
