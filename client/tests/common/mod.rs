//! Running the `telework` binary in the client's command-level tests.
// Each test file uses its own part of these.
#![allow(dead_code)]

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use telework_tests::TestRelay;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// The connection password of the office PCs these tests start.
pub const PW: &str = "employee-connection-password";

/// `telework connect ID` against `relay`, with `extra` arguments and `PATH` starting with
/// `path_first`, and a new profile of its own.
pub fn telework(relay: &TestRelay, id: &str, extra: &[&str], path_first: Option<&Path>) -> Command {
    let profile = std::env::temp_dir().join(format!("tw-cli-profile-{}", rand::random::<u64>()));
    telework_in(relay, id, &profile, extra, path_first)
}

/// As [`telework`], with the profile (device key, pins) in `profile`.
pub fn telework_in(
    relay: &TestRelay,
    id: &str,
    profile: &Path,
    extra: &[&str],
    path_first: Option<&Path>,
) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_telework"));
    cmd.args(["connect", id, "--relay", &relay.addr.to_string()])
        .args(["--password-stdin"])
        .args(["--relay-fingerprint", &relay.fingerprint.to_string()])
        .args(extra)
        .env("TELEWORK_CONFIG_DIR", profile)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(dir) = path_first {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let paths = std::iter::once(dir.to_owned()).chain(std::env::split_paths(&path));
        cmd.env("PATH", std::env::join_paths(paths).unwrap());
    }
    cmd
}

/// Starts `cmd`, types the password, and returns the child, the local address it printed, the
/// rest of its standard output and the line it printed.
pub async fn start(mut cmd: Command) -> (Child, String, Lines<BufReader<ChildStdout>>, String) {
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{PW}\n").as_bytes())
        .await
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), stdout.next_line())
        .await
        .expect("telework printed its address in time")
        .unwrap();
    let Some(line) = line else {
        panic!(
            "telework printed no address; stderr: {}",
            stderr(&mut child).await
        );
    };
    let (_, addr) = line
        .split_once(": point your RDP client at ")
        .unwrap_or_else(|| panic!("{line}"));
    (child, addr.to_owned(), stdout, line.clone())
}

pub async fn stderr(child: &mut Child) -> String {
    let mut err = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = tokio::time::timeout(Duration::from_secs(10), pipe.read_to_string(&mut err)).await;
    }
    err
}

/// Ctrl-C: telework ends the session and exits with success.
pub async fn interrupt(child: &mut Child) {
    std::process::Command::new("kill")
        .args(["-INT", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("telework stopped on Ctrl-C")
        .unwrap();
    assert!(status.success(), "{status}");
}

/// Sends `data` to the local port and returns what comes back once it is half-closed.
pub async fn round_trip(addr: &str, data: &[u8]) -> Vec<u8> {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(data).await.unwrap();
    conn.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    back
}
