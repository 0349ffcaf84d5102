//! `telework-agent --log-format json`: every line on standard error is a JSON object.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

#[test]
fn a_relay_that_cannot_be_reached_is_logged_as_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_telework-agent"))
        .args(["--log-format", "json", "register", "--relay", "127.0.0.1:1"])
        .args(["--id", "pc-json", "--transport", "tcp", "--proxy", "none"])
        .args([
            "--relay-fingerprint",
            &format!("sha256:{}", "00".repeat(32)),
        ])
        .arg("--data-dir")
        .arg(dir.path().join("agent"))
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!stderr.trim().is_empty());
    for line in stderr.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string(), "{line}");
        assert!(v["fields"]["message"].is_string(), "{line}");
    }
    let last: serde_json::Value = serde_json::from_str(stderr.lines().last().unwrap()).unwrap();
    assert_eq!(last["level"], "ERROR", "{stderr}");
    assert_eq!(last["fields"]["program"], "telework-agent", "{stderr}");
}
