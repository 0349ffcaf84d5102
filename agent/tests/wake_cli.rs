//! `telework-agent wake add|list|remove` as IT staff use them: clear errors for bad input,
//! an owner-only list file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

fn wake(dir: &tempfile::TempDir, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_telework-agent"))
        .arg("wake")
        .args(args)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn wake_list_is_managed_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = wake(&dir, &["list"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("wakes no other PC"), "{}", text(&out));

    for (mac, says) in [
        ("AA:BB:CC:DD:EE", "six pairs of hex digits"),
        ("AA:BB:CC:DD:EE:GG", "six pairs of hex digits"),
        ("FF:FF:FF:FF:FF:FF", "broadcast or multicast"),
        ("00:00:00:00:00:00", "not a network card's address"),
    ] {
        let out = wake(&dir, &["add", "pc-tanaka-01", "--mac", mac]);
        assert_eq!(out.status.code(), Some(2), "{mac}: {}", text(&out));
        assert!(text(&out).contains(says), "{mac}: {}", text(&out));
    }
    let out = wake(
        &dir,
        &[
            "add",
            "pc-tanaka-01",
            "--mac",
            "aa-bb-cc-dd-ee-ff",
            "--port",
            "0",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("port 0 cannot be used"),
        "{}",
        text(&out)
    );
    let out = wake(
        &dir,
        &[
            "add",
            "pc-tanaka-01",
            "--mac",
            "aa-bb-cc-dd-ee-ff",
            "--broadcast",
            "127.0.0.1",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("cannot be used as the broadcast"),
        "{}",
        text(&out)
    );

    let out = wake(
        &dir,
        &[
            "add",
            "pc-tanaka-01",
            "--mac",
            "aa-bb-cc-dd-ee-ff",
            "--broadcast",
            "192.168.1.255",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("can now wake pc-tanaka-01 (AA:BB:CC:DD:EE:FF"),
        "{}",
        text(&out)
    );
    let file = dir.path().join("wake.toml");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the list is owner-only");
    let out = wake(&dir, &["list"]);
    assert!(
        text(&out).contains("pc-tanaka-01") && text(&out).contains("192.168.1.255:9"),
        "{}",
        text(&out)
    );

    let out = wake(&dir, &["remove", "pc-tanaka-01"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = wake(&dir, &["remove", "pc-tanaka-01"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("not on this PC's wake list"),
        "{}",
        text(&out)
    );
}
