//! The `telework` binary as an employee uses it, against a relay and agent run in process:
//! connect, use the local address, Ctrl-C; and the one-line errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Stdio;
use std::time::Duration;

use telework_tests::{EchoServer, TestRelay};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

const PW: &str = "employee-connection-password";

fn telework(relay: &TestRelay, id: &str) -> Command {
    let profile = std::env::temp_dir().join(format!("tw-cli-profile-{}", rand::random::<u64>()));
    telework_in(relay, id, &profile)
}

/// `telework connect` with the profile (device key, pins) in `profile`.
fn telework_in(relay: &TestRelay, id: &str, profile: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_telework"));
    cmd.args([
        "connect",
        id,
        "--relay",
        &relay.addr.to_string(),
        "--password-stdin",
        "--launch",
        "none",
    ])
    .args(["--relay-fingerprint", &relay.fingerprint.to_string()])
    .env("TELEWORK_CONFIG_DIR", profile)
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    cmd
}

/// Runs `telework connect` to completion with `password`; returns exit code and stderr.
async fn run_to_end(relay: &TestRelay, id: &str, password: &str) -> (Option<i32>, String) {
    run_to_end_with(telework(relay, id), password).await
}

/// Runs `cmd` to completion with `password`, ending it with Ctrl-C if it connects; returns
/// exit code and stderr.
async fn run_to_end_with(mut cmd: Command, password: &str) -> (Option<i32>, String) {
    let mut child = cmd.spawn().unwrap();
    // A usage error exits before reading the password: a broken pipe is fine here.
    let _ = child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .await;
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_serves_the_local_address_until_ctrl_c() {
    let relay = TestRelay::start().await;
    let desktop = EchoServer::start().await;
    let _agent = relay.agent("pc-cli", PW).target(desktop.addr).run().await;

    let mut child = telework(&relay, "PC-CLI").spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{PW}\n").as_bytes())
        .await
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let Some(line) = tokio::time::timeout(Duration::from_secs(20), stdout.next_line())
        .await
        .unwrap()
        .unwrap()
    else {
        let mut err = String::new();
        let mut pipe = child.stderr.take().unwrap();
        pipe.read_to_string(&mut err).await.unwrap();
        panic!("telework printed no address; stderr: {err}");
    };
    let addr = line
        .strip_prefix("connected to pc-cli: point your RDP client at ")
        .expect(&line)
        .to_owned();

    for _ in 0..2 {
        let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
        conn.write_all(b"ping through the binary").await.unwrap();
        conn.shutdown().await.unwrap();
        let mut back = Vec::new();
        conn.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"ping through the binary");
    }
    assert_eq!(desktop.connections(), 2);

    std::process::Command::new("kill")
        .args(["-INT", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    let rest = stdout.next_line().await.unwrap().unwrap_or_default();
    assert_eq!(rest, "session closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_one_plain_line() {
    let relay = TestRelay::start().await;
    let desktop = EchoServer::start().await;
    let _agent = relay.agent("pc-cli", PW).target(desktop.addr).run().await;

    // Nothing pinned yet: a failure cannot be told apart from a relay pretending to be the
    // office PC, so it is not confirmed and no count is shown.
    let profile = tempfile::tempdir().unwrap();
    let (code, err) = run_to_end_with(
        telework_in(&relay, "pc-cli", profile.path()),
        "not the password",
    )
    .await;
    assert_eq!(code, Some(1));
    assert!(
        err.contains("telework: wrong password, or the relay is not talking to the real office PC"),
        "{err}"
    );
    // After a first successful login (which pins the office PC, and says so once), a wrong
    // password is confirmed by the office PC itself, with the tries left for this device.
    let mut first = telework_in(&relay, "pc-cli", profile.path());
    first.stdin(Stdio::piped());
    let mut child = first.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(format!("{PW}\n").as_bytes()).await.unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), stdout.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap_or_default();
    assert!(line.starts_with("connected to pc-cli"), "{line}");
    child.kill().await.unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .await
        .unwrap();
    assert_eq!(
        err.matches("first connection to pc-cli").count(),
        1,
        "{err}"
    );
    let (code, err) = run_to_end_with(
        telework_in(&relay, "pc-cli", profile.path()),
        "not the password",
    )
    .await;
    assert_eq!(code, Some(1));
    assert!(
        err.contains("telework: wrong password, 4 tries left before the office PC locks out"),
        "{err}"
    );
    assert!(!err.contains("first connection"), "{err}");

    let (code, err) = run_to_end(&relay, "pc-nobody", PW).await;
    assert_eq!(code, Some(1));
    assert!(
        err.contains("telework: no office PC is registered under that computer ID"),
        "{err}"
    );

    let (code, err) = run_to_end(&relay, "bad id!", PW).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("computer ID may only contain"), "{err}");
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_dir_that_others_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let relay = TestRelay::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().display().to_string();
    for (mode, who) in [(0o777, "every user"), (0o770, "its group")] {
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        let mut cmd = telework(&relay, "pc-cli");
        cmd.env("TELEWORK_CONFIG_DIR", dir.path());
        let mut child = cmd.spawn().unwrap();
        let _ = child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{PW}\n").as_bytes())
            .await;
        let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!("refusing to use {path}"))
                && err.contains(who)
                && err.contains(&format!("chmod 700 {path}")),
            "{err}"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
