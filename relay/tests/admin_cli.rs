//! `telework-relay admin …` and the admin listener's start-up checks, as an operator runs
//! the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Output, Stdio};

use telework_relay::registry::Registry;

fn relay() -> Command {
    Command::new(env!("CARGO_BIN_EXE_telework-relay"))
}

fn with_stdin(mut command: Command, input: &str) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn add_user(dir: &std::path::Path, name: &str, input: &str) -> Output {
    let mut command = relay();
    command
        .args(["admin", "add-user", name, "--password-stdin", "--data-dir"])
        .arg(dir);
    with_stdin(command, input)
}

/// Stderr as text, checked to be one line.
fn one_line_error(out: &Output) -> String {
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr.clone()).unwrap();
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    err
}

#[test]
fn add_user_reads_the_password_from_stdin_and_stores_argon2id() {
    let dir = tempfile::tempdir().unwrap();
    let out = add_user(dir.path(), "alice", "correct horse battery\n");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        "added operator alice"
    );
    let registry = Registry::open(&dir.path().join("relay.db")).unwrap();
    assert!(
        telework_tests::block_on(registry.check_operator("alice", "correct horse battery"))
            .unwrap()
    );
    drop(registry);
    let out = add_user(dir.path(), "alice", "another long password\r\n");
    assert!(out.status.success());
    assert!(String::from_utf8(out.stdout).unwrap().contains("changed"));
    let db = std::fs::read(dir.path().join("relay.db")).unwrap();
    let text = String::from_utf8_lossy(&db);
    assert!(text.contains("$argon2id$"));
    assert!(!text.contains("another long password"));
}

#[test]
fn bad_input_gets_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = one_line_error(&add_user(dir.path(), "alice", ""));
    assert!(err.contains("no password"), "{err}");
    let err = one_line_error(&add_user(dir.path(), "alice", "\n"));
    assert!(err.contains("no password"), "{err}");
    let err = one_line_error(&add_user(dir.path(), "alice", "short\n"));
    assert!(err.contains("too short"), "{err}");
    let err = one_line_error(&add_user(dir.path(), "al ice", "correct horse battery\n"));
    assert!(err.contains("not a user name"), "{err}");
    let mut no_flag = relay();
    no_flag
        .args(["admin", "add-user", "alice", "--data-dir"])
        .arg(dir.path());
    let out = with_stdin(no_flag, "correct horse battery\n");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--password-stdin"));
    let mut revoke = relay();
    revoke
        .args(["admin", "token", "revoke", "nope", "--data-dir"])
        .arg(dir.path());
    let err = one_line_error(&revoke.output().unwrap());
    assert!(err.contains("no API token"), "{err}");
}

#[test]
fn token_create_prints_the_secret_once_and_list_never_does() {
    let dir = tempfile::tempdir().unwrap();
    let out = relay()
        .args([
            "admin",
            "token",
            "create",
            "--name",
            "nightly",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let secret = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(
        secret.starts_with("twa1-") && secret.len() == 5 + 64,
        "{secret}"
    );
    let registry = Registry::open(&dir.path().join("relay.db")).unwrap();
    assert_eq!(
        telework_tests::block_on(registry.api_token_name(&secret))
            .unwrap()
            .as_deref(),
        Some("nightly")
    );
    let id = telework_tests::block_on(registry.api_tokens()).unwrap()[0]
        .id
        .clone();
    drop(registry);
    let list = relay()
        .args(["admin", "token", "list", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let list = String::from_utf8(list.stdout).unwrap();
    assert!(list.contains(&id) && list.contains("nightly"), "{list}");
    assert!(!list.contains(&secret[5..]));
    let revoked = relay()
        .args(["admin", "token", "revoke", &id, "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(revoked.status.success());
}

#[test]
fn plain_http_off_loopback_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = relay()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "0.0.0.0:0",
            "--admin-tls",
            "off",
            "--data-dir",
        ])
        .arg(dir.path())
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let err = one_line_error(&out);
    assert!(
        err.contains("admin_listen") && err.contains("not a loopback address"),
        "{err}"
    );
}

#[test]
fn the_binary_announces_its_admin_console_and_serves_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = relay()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--admin-tls",
            "on",
            "--data-dir",
        ])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let admin = lines
        .by_ref()
        .map(|l| l.unwrap())
        .find(|l| l.starts_with("admin console on "))
        .unwrap();
    let url = admin.strip_prefix("admin console on ").unwrap().to_owned();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let metrics = runtime.block_on(async {
        reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .build()
            .unwrap()
            .get(format!("{url}metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    assert!(metrics.contains("telework_agents_online"), "{metrics}");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}
