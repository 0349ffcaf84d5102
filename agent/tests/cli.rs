//! The `telework-agent` binary as IT staff use it: register (with and without a token), set
//! the password, run, and stop on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use telework_relay::{Registration, RelayOptions};
use telework_tests::{EchoServer, TestRelay};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_telework-agent"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn run_blocking(mut cmd: Command, stdin: Option<&'static str>) -> Output {
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut pipe = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            pipe.write_all(s.as_bytes()).unwrap();
        }
        drop(pipe);
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_set_password_run_and_stop() {
    let relay = TestRelay::start_with(RelayOptions {
        registration: Registration::Token,
        ..Default::default()
    })
    .await;
    let desktop = EchoServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("agent");
    let register = |token: Option<String>, fp: String| {
        let mut cmd = agent();
        cmd.args([
            "register",
            "--relay",
            &relay.addr.to_string(),
            "--id",
            "PC-IT-01",
            "--relay-fingerprint",
            &fp,
        ])
        .arg("--data-dir")
        .arg(&data);
        if let Some(t) = token {
            cmd.args(["--token", &t]);
        }
        cmd
    };

    let out = run_blocking(register(None, relay.fingerprint.to_string()), None).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("the relay requires an enrolment token"),
        "{}",
        text(&out)
    );

    let wrong_fp = format!("sha256:{}", "00".repeat(32));
    let out = run_blocking(register(Some("tw1-x".into()), wrong_fp), None).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("certificate we do not trust"),
        "{}",
        text(&out)
    );

    let out = run_blocking(
        register(Some("tw1-forged".into()), relay.fingerprint.to_string()),
        None,
    )
    .await;
    assert!(
        text(&out).contains("enrolment token is not valid"),
        "{}",
        text(&out)
    );

    let token = relay.relay.registry.create_token(1, 3600).await.unwrap();
    let out = run_blocking(register(Some(token), relay.fingerprint.to_string()), None).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("registered as computer ID: pc-it-01"));

    let mut set = agent();
    set.args(["set-password", "--password-stdin", "--data-dir"])
        .arg(&data);
    let out = run_blocking(set, Some("short\n")).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("at least 8 characters"),
        "{}",
        text(&out)
    );
    let mut set = agent();
    set.args(["set-password", "--password-stdin", "--data-dir"])
        .arg(&data);
    let out = run_blocking(set, Some("it-staff-chose-this\n")).await;
    assert!(out.status.success(), "{}", text(&out));
    let stored = std::fs::read(data.join("password.opaque")).unwrap();
    assert!(!stored.windows(19).any(|w| w == b"it-staff-chose-this"));

    let mut child = agent()
        .args(["run", "--target", &desktop.addr.to_string(), "--data-dir"])
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let id = "pc-it-01".parse().unwrap();
    for _ in 0..100 {
        if relay.relay.hub.is_online(&id) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(relay.relay.hub.is_online(&id), "agent came online");
    let session = relay
        .login("pc-it-01", "it-staff-chose-this")
        .await
        .unwrap();
    let tunnel = session.opener().open().await.unwrap();
    // A round trip through the agent binary; once the echo is back, the desktop has surely
    // counted the connection (its accept runs on another task and can lag `open`).
    let (local, mut app) = tokio::io::duplex(1024);
    let pump = tokio::spawn(tunnel.pump(local));
    let back = tokio::time::timeout(Duration::from_secs(10), async {
        app.write_all(b"through the agent binary").await.unwrap();
        app.shutdown().await.unwrap();
        let mut back = Vec::new();
        app.read_to_end(&mut back).await.unwrap();
        pump.await.unwrap().unwrap();
        back
    })
    .await
    .expect("the echo came back in time");
    assert_eq!(back, b"through the agent binary");
    assert_eq!(desktop.connections(), 1);

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn run_before_register_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = agent()
        .args(["run", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("not registered yet: run 'telework-agent register' first"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlock_clears_a_lockout_on_the_running_agent() {
    let relay = TestRelay::start().await;
    let (_desktop, office) = relay.office_pc("pc-unlock", "the-right-password").await;
    for _ in 0..5 {
        let _ = relay.login("pc-unlock", "a stranger's guess").await;
    }
    let locked = relay.login("pc-unlock", "the-right-password").await;
    assert!(
        matches!(
            locked,
            Err(telework_client::ClientError::Refused(
                telework_protocol::e2e::messages::Refusal::LockedOut { .. }
            ))
        ),
        "{:?}",
        locked.err()
    );
    let out = run_blocking(agent_cmd_in(&office.dir, &["unlock"]), None).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("cleared 5 failed login(s)"),
        "{}",
        text(&out)
    );
    relay
        .login("pc-unlock", "the-right-password")
        .await
        .expect("the running agent takes the unlock at once");
    let out = run_blocking(agent_cmd_in(&office.dir, &["unlock"]), None).await;
    assert!(text(&out).contains("nothing to clear"), "{}", text(&out));
}

/// `telework-agent ARGS --data-dir DIR`.
fn agent_cmd_in(dir: &tempfile::TempDir, args: &[&str]) -> Command {
    let mut cmd = agent();
    cmd.args(args).arg("--data-dir").arg(dir.path());
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_shows_the_default_session_limit_and_devices_need_whole_fingerprints() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_blocking(agent_cmd_in(&dir, &["policy", "show"]), None).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("maximum session: 24h (default)"),
        "{}",
        text(&out)
    );
    let out = run_blocking(
        agent_cmd_in(&dir, &["policy", "set", "--max-session", "10h"]),
        None,
    )
    .await;
    assert!(
        text(&out).contains("maximum session: 10h"),
        "{}",
        text(&out)
    );
    let out = run_blocking(
        agent_cmd_in(&dir, &["policy", "set", "--max-session", "0"]),
        None,
    )
    .await;
    assert!(!out.status.success());
    assert!(text(&out).contains("sessions always end"), "{}", text(&out));

    let data = telework_agent::state::DataDir::open(dir.path()).unwrap();
    let mut devices = data.lock_devices().unwrap();
    devices.admit(&[7; 32], "home", 1, true);
    devices.save().unwrap();
    let fingerprint = telework_protocol::proof::key_fingerprint(&[7; 32]);
    let out = run_blocking(
        agent_cmd_in(&dir, &["devices", "approve", &fingerprint[..6]]),
        None,
    )
    .await;
    assert!(!out.status.success());
    assert!(text(&out).contains("too short"), "{}", text(&out));
    let out = run_blocking(
        agent_cmd_in(&dir, &["devices", "approve", &fingerprint]),
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
}

/// Runs `telework-agent COMMAND --password-stdin --data-dir DIR` with `password`.
async fn with_password(command: &str, data: &std::path::Path, password: &'static str) -> Output {
    let mut cmd = agent();
    cmd.args([command, "--password-stdin", "--data-dir"])
        .arg(data);
    run_blocking(cmd, Some(password)).await
}

/// The identity-key fingerprint a command printed (`... identity key HEX ...`).
fn printed_key(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let rest = stdout
        .split("identity key ")
        .nth(1)
        .unwrap_or_else(|| panic!("no identity key in {stdout}"));
    rest.split(|c: char| !c.is_ascii_hexdigit())
        .next()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_password_keeps_the_identity_key_and_rotate_key_changes_it() {
    use telework_agent::state::{AgentSettings, DataDir};
    use telework_client::profile::Profile;
    use telework_client::{ClientError, LoginOptions, Session};

    let relay = TestRelay::start().await;
    let desktop = EchoServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data_path = dir.path().join("agent");
    let data = DataDir::open(&data_path).unwrap();
    let settings = AgentSettings {
        computer_id: "pc-keep".parse().unwrap(),
        relay: relay.addr.to_string(),
        relay_fingerprint: Some(relay.fingerprint.to_string()),
        relay_ca: None,
        transport: Default::default(),
        proxy: None,
    };
    telework_agent::register::register(&data, &settings, None)
        .await
        .unwrap();

    let out = with_password("set-password", &data_path, "first-password\n").await;
    assert!(out.status.success(), "{}", text(&out));
    let first_key = printed_key(&out);

    // The agent reads the record on every login, so one running agent sees every change.
    let agent = telework_agent::Agent::load(data, desktop.addr.to_string()).unwrap();
    let _running = telework_tests::run_until_online(agent).await;

    let home = tempfile::tempdir().unwrap();
    let profile = Profile::open(home.path()).unwrap();
    let options = LoginOptions {
        profile: Some(profile.clone()),
        ..LoginOptions::default()
    };
    let target = relay.target("pc-keep");
    Session::login_with(&target, b"first-password", &options)
        .await
        .expect("the first login pins the key");

    let out = with_password("set-password", &data_path, "second-password\n").await;
    assert!(out.status.success(), "{}", text(&out));
    Session::login_with(&target, b"second-password", &options)
        .await
        .expect("the pinned client logs in with the new password, no key warning");
    assert!(text(&out).contains("unchanged"), "{}", text(&out));
    assert_eq!(printed_key(&out), first_key, "{}", text(&out));
    let old = Session::login_with(&target, b"first-password", &options)
        .await
        .err()
        .expect("the old password no longer works");
    assert!(
        !matches!(old, ClientError::AgentKeyChanged { .. }),
        "{old:?}"
    );

    let out = with_password("rotate-key", &data_path, "third-password\n").await;
    assert!(out.status.success(), "{}", text(&out));
    let new_key = printed_key(&out);
    assert_ne!(new_key, first_key);
    assert!(
        text(&out).contains("telework forget pc-keep"),
        "{}",
        text(&out)
    );
    let err = Session::login_with(&target, b"third-password", &options)
        .await
        .err()
        .expect("the pinned client refuses the new key");
    assert!(
        matches!(err, ClientError::AgentKeyChanged { .. }),
        "{err:?}"
    );
    assert!(profile.forget(&"pc-keep".parse().unwrap()).unwrap());
    Session::login_with(&target, b"third-password", &options)
        .await
        .expect("after 'telework forget' the new key is pinned");

    // A damaged record is not silently replaced by a new key.
    std::fs::write(data_path.join("password.opaque"), b"not a record").unwrap();
    let out = with_password("set-password", &data_path, "fourth-password\n").await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("is damaged") && text(&out).contains("telework-agent rotate-key"),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read(data_path.join("password.opaque")).unwrap(),
        b"not a record"
    );
    let out = with_password("rotate-key", &data_path, "fourth-password\n").await;
    assert!(out.status.success(), "{}", text(&out));
}

#[cfg(unix)]
#[test]
fn a_data_dir_that_others_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().display().to_string();
    for (mode, who) in [(0o777, "every user"), (0o770, "its group")] {
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        for args in [
            &["run", "--data-dir"][..],
            &[
                "register",
                "--relay",
                "127.0.0.1:9",
                "--id",
                "pc-x",
                "--data-dir",
            ],
            &["policy", "show", "--data-dir"],
        ] {
            let out = agent()
                .args(args)
                .arg(dir.path())
                .stdin(Stdio::null())
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains(&format!("refusing to use {path}"))
                    && err.contains(who)
                    && err.contains(&format!("chmod 700 {path}")),
                "{args:?}: {err}"
            );
        }
        // Nothing was written into it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
