//! `telework config` as an employee uses it: paste the operator's line once, then connect with
//! just the computer ID; the saved pin is checked, recent IDs are remembered, and no password
//! is ever saved.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Stdio;

mod common;

use common::{interrupt, round_trip, start, PW};
use telework_net::relay_profile::RelayProfile;
use telework_protocol::CertFingerprint;
use telework_tests::{EchoServer, TestRelay};
use tokio::process::Command;

/// `telework ARGS` with the profile in `profile` and no relay settings from the environment.
fn telework(profile: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_telework"));
    cmd.args(args)
        .env("TELEWORK_CONFIG_DIR", profile)
        .env_remove("TELEWORK_RELAY")
        .env_remove("TELEWORK_RELAY_FINGERPRINT")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs `telework ARGS` to the end; returns success, stdout and stderr.
async fn run(profile: &Path, args: &[&str]) -> (bool, String, String) {
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        telework(profile, args).output(),
    )
    .await
    .unwrap()
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn line_for(relay: &TestRelay, fingerprint: CertFingerprint) -> String {
    RelayProfile {
        relay: relay.addr.to_string().parse().unwrap(),
        fingerprint: Some(fingerprint),
    }
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_importing_the_operators_line_connect_needs_only_the_id() {
    let relay = TestRelay::start().await;
    let desktop = EchoServer::start().await;
    let _agent = relay
        .agent("pc-tanaka-01", PW)
        .target(desktop.addr)
        .run()
        .await;
    let profile = tempfile::tempdir().unwrap();

    let (ok, out, err) = run(
        profile.path(),
        &["config", "import", &line_for(&relay, relay.fingerprint)],
    )
    .await;
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!(
            "relay: {} (certificate pinned to {})",
            relay.addr, relay.fingerprint
        )),
        "{out}"
    );

    let connect = telework(
        profile.path(),
        &[
            "connect",
            "pc-tanaka-01",
            "--password-stdin",
            "--launch",
            "none",
        ],
    );
    let (mut child, addr, _stdout, _) = start(connect).await;
    assert_eq!(round_trip(&addr, b"from home").await, b"from home");
    interrupt(&mut child).await;

    let (ok, out, err) = run(profile.path(), &["config", "show"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("recent computer IDs: pc-tanaka-01"), "{out}");
    assert!(out.contains(&relay.fingerprint.to_string()), "{out}");
    assert!(out.contains("this device: "), "{out}");
    let saved = std::fs::read_to_string(profile.path().join("settings.toml")).unwrap();
    assert!(!saved.contains(PW), "no password in the settings: {saved}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_pin_is_checked_and_applies_only_to_its_relay() {
    let relay = TestRelay::start().await;
    let desktop = EchoServer::start().await;
    let _agent = relay.agent("pc-pin", PW).target(desktop.addr).run().await;
    let profile = tempfile::tempdir().unwrap();

    // A pin that is not the relay's: the connection is refused before the password is used.
    let (ok, _, err) = run(
        profile.path(),
        &[
            "config",
            "import",
            &line_for(&relay, CertFingerprint([7; 32])),
        ],
    )
    .await;
    assert!(ok, "{err}");
    let mut connect = telework(
        profile.path(),
        &[
            "connect",
            "pc-pin",
            "--password-stdin",
            "--launch",
            "none",
            "--transport",
            "tcp",
        ],
    );
    connect.stdin(Stdio::null());
    let out = connect.output().await.unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("fingerprint"), "{said}");

    // The same relay named on the command line with its own pin works: flags win.
    let addr = relay.addr.to_string();
    let fp = relay.fingerprint.to_string();
    let connect = telework(
        profile.path(),
        &[
            "connect",
            "pc-pin",
            "--password-stdin",
            "--launch",
            "none",
            "--relay",
            &addr,
            "--relay-fingerprint",
            &fp,
        ],
    );
    let (mut child, local, _stdout, _) = start(connect).await;
    assert_eq!(round_trip(&local, b"flags").await, b"flags");
    interrupt(&mut child).await;

    // Another relay on the command line never gets the saved pin: with no pin of its own it
    // is checked against the system's roots, which refuse a self-signed certificate.
    let other = TestRelay::start().await;
    let mut connect = telework(
        profile.path(),
        &[
            "connect",
            "pc-pin",
            "--password-stdin",
            "--launch",
            "none",
            "--relay",
            &other.addr.to_string(),
            "--transport",
            "tcp",
        ],
    );
    connect.stdin(Stdio::null());
    let out = connect.output().await.unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("certificate"), "{said}");
}

#[tokio::test]
async fn missing_or_damaged_settings_are_plain_errors() {
    let profile = tempfile::tempdir().unwrap();
    let (ok, _, err) = run(profile.path(), &["connect", "pc-1", "--password-stdin"]).await;
    assert!(!ok);
    assert!(
        err.contains("no relay is set: run 'telework config import"),
        "{err}"
    );

    let (ok, _, err) = run(
        profile.path(),
        &["config", "import", "relay.example.com:443"],
    )
    .await;
    assert!(!ok);
    assert!(err.contains("starts with 'tw-relay:'"), "{err}");
    let (ok, _, err) = run(
        profile.path(),
        &["config", "import", "tw-relay:relay.example.com:443/abc"],
    )
    .await;
    assert!(!ok);
    assert!(err.contains("cut short"), "{err}");

    let (ok, _, err) = run(
        profile.path(),
        &["config", "set", "proxy", "ftp://proxy:21"],
    )
    .await;
    assert!(!ok, "{err}");
    let (ok, out, err) = run(
        profile.path(),
        &[
            "config",
            "set",
            "relay",
            "relay.example.com:443",
            "--proxy",
            "http://alice:s3cret@proxy.example.com:3128",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("checked against this system's roots"), "{out}");
    let (_, out, _) = run(profile.path(), &["config", "show"]).await;
    assert!(
        out.contains("proxy: http://proxy.example.com:3128"),
        "{out}"
    );
    assert!(
        !out.contains("s3cret"),
        "the proxy password is not shown: {out}"
    );

    std::fs::write(profile.path().join("settings.toml"), "relay = 443\n").unwrap();
    let (ok, _, err) = run(profile.path(), &["config", "show"]).await;
    assert!(!ok);
    assert!(err.contains("settings.toml"), "{err}");
}

#[tokio::test]
async fn a_private_ca_is_checked_and_kept_in_the_profile() {
    let profile = tempfile::tempdir().unwrap();
    let downloads = tempfile::tempdir().unwrap();
    let not_pem = downloads.path().join("notes.txt");
    std::fs::write(&not_pem, "not a certificate\n").unwrap();
    let (ok, _, err) = run(
        profile.path(),
        &[
            "config",
            "set",
            "relay",
            "relay.example.com:443",
            "--relay-ca",
            not_pem.to_str().unwrap(),
        ],
    )
    .await;
    assert!(!ok);
    assert!(
        err.contains("notes.txt") && err.contains("no PEM certificate"),
        "{err}"
    );
    let (_, out, _) = run(profile.path(), &["config", "show"]).await;
    assert!(out.contains("relay: not set"), "nothing saved: {out}");

    // A PEM certificate block (the bytes are checked when a connection uses them).
    let ca = downloads.path().join("office-ca.pem");
    let pem = "-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n";
    std::fs::write(&ca, pem).unwrap();
    let (ok, out, err) = run(
        profile.path(),
        &[
            "config",
            "set",
            "relay",
            "relay.example.com:443",
            "--relay-ca",
            ca.to_str().unwrap(),
        ],
    )
    .await;
    assert!(ok, "{err}");
    let copy = profile.path().join("relay-ca.pem");
    assert!(
        out.contains(&format!("checked against the CA in {}", copy.display())),
        "{out}"
    );
    std::fs::remove_file(&ca).unwrap();
    assert_eq!(std::fs::read_to_string(&copy).unwrap(), pem);
    let (ok, out, _) = run(profile.path(), &["config", "show"]).await;
    assert!(ok && out.contains(&copy.display().to_string()), "{out}");
}
