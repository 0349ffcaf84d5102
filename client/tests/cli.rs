//! The `telework` binary as an employee uses it, against a relay and agent run in process:
//! connect, use the local address, Ctrl-C; and the one-line errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

mod common;

use common::{interrupt, round_trip, start, stderr, PW};
use telework_tests::{EchoServer, TestRelay};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::process::Command;

/// `telework connect ID` as an employee runs it here, no RDP client started.
fn telework(relay: &TestRelay, id: &str) -> Command {
    common::telework(relay, id, &["--launch", "none"], None)
}

/// As [`telework`], with the profile (device key, pins) in `profile`.
fn telework_in(relay: &TestRelay, id: &str, profile: &std::path::Path) -> Command {
    common::telework_in(relay, id, profile, &["--launch", "none"], None)
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

    let (mut child, addr, mut stdout, line) = start(telework(&relay, "PC-CLI")).await;
    assert!(
        line.starts_with("connected to pc-cli over QUIC: "),
        "{line}"
    );
    for _ in 0..2 {
        assert_eq!(
            round_trip(&addr, b"ping through the binary").await,
            b"ping through the binary"
        );
    }
    assert_eq!(desktop.connections(), 2);

    interrupt(&mut child).await;
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
    let (mut child, _addr, _stdout, line) =
        start(telework_in(&relay, "pc-cli", profile.path())).await;
    assert!(line.starts_with("connected to pc-cli"), "{line}");
    child.kill().await.unwrap();
    let err = stderr(&mut child).await;
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

/// A relay, an echo desktop and its agent `{prefix}-{transport}`, and `telework connect` to it
/// on `transport` with one round trip made through the local address; the program's stdout
/// is returned so that it stays open.
async fn connected(
    prefix: &str,
    transport: &str,
) -> (
    TestRelay,
    EchoServer,
    telework_tests::TestAgent,
    tokio::process::Child,
    String,
    tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) {
    let relay = TestRelay::start().await;
    let desktop = EchoServer::start().await;
    let id = format!("{prefix}-{transport}");
    let agent = relay.agent(&id, PW).target(desktop.addr).run().await;
    let cmd = common::telework(
        &relay,
        &id,
        &["--launch", "none", "--transport", transport],
        None,
    );
    let (child, addr, stdout, _line) = start(cmd).await;
    assert_eq!(round_trip(&addr, b"before").await, b"before");
    (relay, desktop, agent, child, addr, stdout)
}

/// A relay restart mid-session: the employee reads one line, types no password, and the next
/// connection of the RDP client works, on each transport.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_restart_is_one_line_and_no_password() {
    for transport in ["quic", "tcp"] {
        let (relay, _desktop, _agent, mut child, addr, _stdout) =
            connected("pc-restart", transport).await;
        let mut errors = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();

        let _relay = relay.restart().await;
        let reconnected = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = errors.next_line().await.unwrap() {
                if line.contains("reconnected") {
                    return line;
                }
            }
            panic!("telework exited");
        })
        .await
        .expect("a line saying the session is back");
        assert_eq!(
            reconnected, "reconnected to the relay (the desktop reconnects by itself)",
            "{transport}"
        );
        assert_eq!(round_trip(&addr, b"after").await, b"after", "{transport}");
        interrupt(&mut child).await;
    }
}

/// An operator ends the session from the relay's console: the employee reads one plain line,
/// the program exits with failure and does not reconnect, on each transport.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_ending_the_session_is_one_line_and_no_reconnect() {
    for transport in ["quic", "tcp"] {
        let (relay, _desktop, _agent, mut child, _addr, _stdout) =
            connected("pc-ended", transport).await;
        let live = relay.relay.sessions.list();
        assert_eq!(live.len(), 1, "{transport}");
        assert!(relay.relay.end_session(live[0].id));

        let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
            .await
            .expect("telework exits")
            .unwrap();
        assert!(!status.success(), "{transport}");
        let said = stderr(&mut child).await;
        assert!(
            said.lines()
                .any(|l| l == "telework: the relay operator ended the session"),
            "{transport}: {said}"
        );
        assert!(!said.contains("reconnected"), "{transport}: {said}");
        assert_eq!(relay.relay.sessions.count(), 0, "{transport}");
    }
}
