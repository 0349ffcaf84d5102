//! `--log-format json`: every line the relay writes on standard error is a JSON object, and
//! what it prints for people on standard output stays as it was.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

fn relay() -> Command {
    Command::new(env!("CARGO_BIN_EXE_telework-relay"))
}

/// Every line parses as a JSON object with a level and a message; returns the messages.
fn json_lines(stderr: &str) -> Vec<String> {
    assert!(!stderr.trim().is_empty(), "something was logged");
    stderr
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            assert!(v["level"].is_string(), "{line}");
            assert!(v["timestamp"].is_string(), "{line}");
            v["fields"]["message"]
                .as_str()
                .unwrap_or_else(|| panic!("no message: {line}"))
                .to_owned()
        })
        .collect()
}

#[test]
fn serve_logs_json_lines_and_keeps_its_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = relay()
        .args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let listening = lines.next().unwrap().unwrap();
    assert!(listening.starts_with("telework-relay listening on 127.0.0.1:"));
    assert!(lines
        .next()
        .unwrap()
        .unwrap()
        .starts_with("certificate fingerprint: sha256:"));
    common::stop_gracefully(&mut child);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let messages = json_lines(&stderr);
    assert!(
        messages.iter().any(|m| m.contains("registration is open")),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m == "relay stopped"),
        "{messages:?}"
    );
}

#[test]
fn a_failing_command_reports_its_error_as_a_json_line_after_the_subcommand_too() {
    let dir = tempfile::tempdir().unwrap();
    let out = relay()
        .args(["machines", "remove", "pc-nobody", "--log-format", "json"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let messages = json_lines(&String::from_utf8(out.stderr).unwrap());
    assert!(
        messages
            .iter()
            .any(|m| m.contains("no machine is registered as pc-nobody")),
        "{messages:?}"
    );
}
