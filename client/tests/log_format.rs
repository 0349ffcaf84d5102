//! `telework --log-format json`: every line on standard error is a JSON object.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::process::{Command, Stdio};

#[test]
fn an_unreachable_relay_is_logged_as_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_telework"))
        .args([
            "connect",
            "pc-json",
            "--relay",
            "127.0.0.1:1",
            "--log-format",
            "json",
        ])
        .args(["--transport", "tcp", "--proxy", "none", "--launch", "none"])
        .args([
            "--relay-fingerprint",
            &format!("sha256:{}", "00".repeat(32)),
        ])
        .arg("--password-stdin")
        .arg("--config-dir")
        .arg(dir.path())
        .env("RUST_LOG", "info")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // It may fail before it reads the password: a broken pipe is fine.
    let _ = child.stdin.take().unwrap().write_all(b"password\n");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!stderr.trim().is_empty());
    for line in stderr.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string(), "{line}");
        assert!(v["fields"]["message"].is_string(), "{line}");
    }
    assert!(stderr.contains("\"program\":\"telework\""), "{stderr}");
}
