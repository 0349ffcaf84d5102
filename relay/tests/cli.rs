//! The `telework-relay` binary as an operator uses it: first start, fingerprint, the line for
//! employees, tokens, bad
//! configuration, and a graceful stop on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn relay() -> Command {
    Command::new(env!("CARGO_BIN_EXE_telework-relay"))
}

/// Starts `relay serve` on a free loopback port with `dir` as its data dir; returns it with its
/// stdout lines, the first of which (the listening line) has been checked.
fn serve(
    dir: &std::path::Path,
    configure: impl FnOnce(&mut Command),
) -> (
    std::process::Child,
    std::io::Lines<BufReader<std::process::ChildStdout>>,
) {
    let mut command = relay();
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--no-admin",
            "--data-dir",
        ])
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    configure(&mut command);
    let mut child = command.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let listening = lines.next().unwrap().unwrap();
    assert!(
        listening.starts_with("telework-relay listening on 127.0.0.1:"),
        "{listening}"
    );
    (child, lines)
}

#[test]
fn first_start_prints_a_fingerprint_that_the_fingerprint_command_repeats_and_sigterm_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let early = relay()
        .args([
            "client-profile",
            "--address",
            "relay.example.com:443",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!early.status.success());
    let said = String::from_utf8_lossy(&early.stderr);
    assert!(said.contains("start the relay once first"), "{said}");
    let (mut child, mut lines) = serve(dir.path(), |_| {});
    let fp_line = lines.next().unwrap().unwrap();
    let printed = fp_line
        .strip_prefix("certificate fingerprint: ")
        .unwrap()
        .to_owned();
    assert!(
        printed.starts_with("sha256:") && printed.len() == 7 + 64,
        "{printed}"
    );

    let out = relay()
        .args(["fingerprint", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), printed);

    // The line for employees: printed at start (the relay listens on a known address) and by
    // `client-profile` for the public address, with the same certificate pin.
    let employees = lines.next().unwrap().unwrap();
    let announced = employees
        .strip_prefix("employees connect after: telework config import ")
        .unwrap_or_else(|| panic!("{employees}"));
    let pin = announced.rsplit_once('/').unwrap().1;
    assert!(announced.starts_with("tw-relay:127.0.0.1:"), "{announced}");
    let out = relay()
        .args([
            "client-profile",
            "--address",
            "relay.example.com:443",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let line: telework_net::relay_profile::RelayProfile =
        String::from_utf8(out.stdout).unwrap().parse().unwrap();
    assert_eq!(line.relay.to_string(), "relay.example.com:443");
    assert_eq!(line.fingerprint.unwrap().to_string(), printed);
    assert!(line.to_string().ends_with(&format!("/{pin}")));

    #[cfg(unix)]
    {
        let key = std::fs::metadata(dir.path().join("relay-key.pem")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            key.permissions().mode() & 0o777,
            0o600,
            "private key is owner-only"
        );
    }

    let status = common::stop_gracefully(&mut child);
    assert!(status.success(), "graceful stop exits 0, got {status}");
}

#[test]
fn tokens_are_printed_and_machines_listed() {
    let dir = tempfile::tempdir().unwrap();
    let out = relay()
        .args(["token", "create", "--uses", "3", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap();
    assert!(token.trim().starts_with("tw1-"), "{token}");
    let out = relay()
        .args(["machines", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[test]
fn bad_configuration_is_a_clear_error_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("relay.toml");
    std::fs::write(&bad, "listen = \"0.0.0.0:443\"\nmax_conections = 5\n").unwrap();
    let out = relay()
        .arg("serve")
        .arg("--config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("relay.toml") && err.contains("max_conections"),
        "{err}"
    );

    let out = relay()
        .args(["serve", "--listen", "not-an-address", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("invalid setting listen"));

    let out = relay()
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .args([
            "--cert",
            "/nonexistent/cert.pem",
            "--key",
            "/nonexistent/key.pem",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("/nonexistent/cert.pem"));

    // Another program holds the UDP port: QUIC cannot serve there, and the message says
    // how to run on TCP alone.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let taken = udp.local_addr().unwrap().to_string();
    let out = relay()
        .args(["serve", "--listen", &taken, "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains(&format!("cannot listen on {taken}")) && err.contains("--no-quic"),
        "{err}"
    );

    let out = relay().args(["serve", "--bogus-flag"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "clap usage error");

    let out = relay()
        .args(["fingerprint", "--data-dir"])
        .arg(dir.path().join("empty"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("start the relay once first"));
}

/// The relay runs with glibc's heap tunables, and on an AMD CPU with fast short `rep movsb`
/// with its copy threshold raised: it executes itself again, keeping its pid, its name and the
/// operator's own tunables.
#[cfg(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64"))]
#[test]
fn the_relay_runs_with_glibc_tuned_and_keeps_the_operators_tunables() {
    use telework_net::glibc_tuning::{wanted_tunables, Start, REEXEC_MARK};
    let operators = "glibc.malloc.arena_max=2";
    let dir = tempfile::tempdir().unwrap();
    let (mut child, _lines) = serve(dir.path(), |c| {
        c.env("GLIBC_TUNABLES", operators).env_remove(REEXEC_MARK);
    });
    let environ = std::fs::read(format!("/proc/{}/environ", child.id())).unwrap();
    let environ = String::from_utf8_lossy(&environ).into_owned();
    let var = |name: &str| {
        environ
            .split('\0')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_owned)
    };
    let name = std::fs::read_to_string(format!("/proc/{}/comm", child.id())).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(name.trim(), "telework-relay", "keeps its name in ps");

    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    let expected = wanted_tunables(Start {
        cpuinfo: &cpuinfo,
        tunables: Some(operators),
        marked: false,
        secure: false,
    });
    match expected {
        Some(tuned) => {
            // glibc 2.36 cuts the variable short in place once it has parsed it, so
            // /proc/PID/environ shows only a prefix of what the relay set.
            let seen = var("GLIBC_TUNABLES").unwrap();
            assert!(
                seen.starts_with(operators) && tuned.starts_with(&seen),
                "{seen} / {tuned}"
            );
            assert_eq!(var(REEXEC_MARK).as_deref(), Some("1"));
            assert_eq!(
                var("TELEWORK_ORIGINAL_GLIBC_TUNABLES").as_deref(),
                Some(operators)
            );
        }
        None => {
            assert_eq!(var("GLIBC_TUNABLES").as_deref(), Some(operators));
            assert_eq!(var(REEXEC_MARK), None);
        }
    }
}

/// Whether `s` starts with a date like `2026-12-04 15:34:37 UTC`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machines_name_the_live_node_each_is_online_at() {
    use telework_relay::registry::{NodeRow, Presence, PresenceChange, Registry};

    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(&dir.path().join("relay.db")).unwrap();
    let now = telework_relay::cluster::now_ms();
    for (name, expires_ms) in [("relay-up", now + 600_000), ("relay-dead", now - 1)] {
        registry
            .heartbeat(&NodeRow {
                name: name.into(),
                public_addr: format!("{name}.example:443"),
                started: 1,
                expires_ms,
                draining: false,
                agents: 1,
                sessions: 0,
            })
            .await
            .unwrap();
    }
    let mut changes = Vec::new();
    for (id, node) in [("pc-a", "relay-up"), ("pc-b", "relay-dead"), ("pc-c", "")] {
        registry
            .register(&id.parse().unwrap(), &[1; 32])
            .await
            .unwrap();
        if !node.is_empty() {
            changes.push(PresenceChange::Online(Presence {
                id: id.parse().unwrap(),
                node: node.into(),
                since: 100,
                since_ms: 100_000,
                address: "192.0.2.1:5000".into(),
                transport: "QUIC".into(),
                away_from: None,
            }));
        }
    }
    registry.record_presence(changes).await.unwrap();
    assert!(registry
        .set_disabled(&"pc-c".parse().unwrap(), true)
        .await
        .unwrap());

    let out = relay()
        .args(["machines", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let listing = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{listing}");
    let line = |id: &str| {
        listing
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("{id} missing from {listing}"))
            .to_owned()
    };
    assert!(line("pc-a").ends_with("  online at relay-up"), "{listing}");
    // A killed node's presence rows outlive it; its expired heartbeat says they are stale.
    assert!(line("pc-b").ends_with("  offline"), "{listing}");
    assert!(line("pc-c").ends_with("  offline  disabled"), "{listing}");
    assert!(line("pc-a").contains("last seen 19"), "{listing}");
}

fn starts_with_utc_date(s: &str) -> bool {
    let shape = "dddd-dd-dd dd:dd:dd UTC";
    s.len() >= shape.len()
        && shape.chars().zip(s.chars()).all(|(want, got)| match want {
            'd' => got.is_ascii_digit(),
            _ => want == got,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machines_lists_dates_and_remove_disconnects_a_connected_agent() {
    use telework_agent::state::{AgentSettings, DataDir};
    use telework_agent::AgentError;
    use telework_protocol::ErrorCode;

    let dir = tempfile::tempdir().unwrap();
    let mut child = relay()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--node-name",
            "relay-cli",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let listening = lines.next().unwrap().unwrap();
    let relay_addr = listening
        .strip_prefix("telework-relay listening on ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_owned();
    let fp_line = lines.next().unwrap().unwrap();
    let fingerprint = fp_line.strip_prefix("certificate fingerprint: ").unwrap();
    let machines = |args: &[&str]| {
        let out = relay()
            .arg("machines")
            .args(args)
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };

    // Register an office PC and bring it online against the relay binary.
    let agent_dir = tempfile::tempdir().unwrap();
    let data = DataDir::open(agent_dir.path()).unwrap();
    let settings = AgentSettings {
        computer_id: "pc-gone".parse().unwrap(),
        relay: relay_addr,
        relay_fingerprint: Some(fingerprint.to_owned()),
        relay_ca: None,
        transport: Default::default(),
        proxy: None,
    };
    telework_agent::register::register(&data, &settings, None)
        .await
        .unwrap();
    let agent = telework_agent::Agent::load(data, "127.0.0.1:9".into()).unwrap();
    let running = telework_tests::run_until_online(agent.clone()).await;

    // The relay writes presence in batches, off the agent's hello: it shows within moments.
    let deadline = Instant::now() + Duration::from_secs(10);
    let listing = loop {
        let (code, listing) = machines(&[]);
        assert_eq!(code, Some(0), "{listing}");
        if listing.contains("online at relay-cli") || Instant::now() > deadline {
            break listing;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let line = listing.lines().find(|l| l.starts_with("pc-gone")).unwrap();
    assert!(line.ends_with("online at relay-cli"), "{line}");
    let registered = line.split("registered ").nth(1).unwrap();
    let seen = line.split("last seen ").nth(1).unwrap();
    assert!(
        starts_with_utc_date(registered) && starts_with_utc_date(seen),
        "{line}"
    );
    assert!(!listing.contains("unix"), "{listing}");

    let removed_at = Instant::now();
    let (code, said) = machines(&["remove", "pc-gone"]);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("removed pc-gone"), "{said}");
    // The agent is told its ID is unknown, goes offline and stops (no reconnect loop).
    let ended = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the agent was disconnected within 10 s of the removal")
        .unwrap();
    assert!(
        matches!(ended, Err(AgentError::Refused(ErrorCode::UnknownId))),
        "{ended:?}"
    );
    assert!(!*agent.online().borrow());
    assert!(removed_at.elapsed() < Duration::from_secs(10));

    let (code, said) = machines(&["remove", "pc-gone"]);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("no machine is registered as pc-gone"),
        "{said}"
    );
    let (code, listing) = machines(&["list"]);
    assert_eq!(code, Some(0), "{listing}");
    assert!(listing.contains("no machines are registered"), "{listing}");

    child.kill().unwrap();
    child.wait().unwrap();
}

/// Runs `command` to its end, killing it after `limit` (a relay that wrongly starts would
/// otherwise run forever).
fn output_within(command: &mut Command, limit: Duration) -> std::process::Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after {limit:?}: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[cfg(unix)]
#[test]
fn a_data_dir_that_others_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // A certificate file, so `fingerprint` gets as far as the data dir.
    std::fs::write(dir.path().join(telework_relay::identity::CERT_FILE), b"").unwrap();
    let path = dir.path().display().to_string();
    for (mode, who) in [(0o777, "every user"), (0o770, "its group")] {
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        for args in [
            &["serve", "--listen", "127.0.0.1:0", "--data-dir"][..],
            &["fingerprint", "--data-dir"],
            &["token", "create", "--data-dir"],
            &["machines", "--data-dir"],
        ] {
            let out = output_within(relay().args(args).arg(dir.path()), Duration::from_secs(20));
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
            assert!(
                err.contains(&format!("refusing to use {path}"))
                    && err.contains(who)
                    && err.contains(&format!("chmod 700 {path}")),
                "{args:?}: {err}"
            );
        }
    }
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    // Owned by another user (only root can arrange that). The temporary dir is ours, so its
    // owner is who we are.
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata(dir.path()).unwrap().uid() == 0 {
        std::os::unix::fs::chown(dir.path(), Some(4242), None).unwrap();
        let out = output_within(
            relay().args(["machines", "--data-dir"]).arg(dir.path()),
            Duration::from_secs(20),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("belongs to user id 4242"), "{err}");
        assert!(err.contains(&format!("chown -R 0 {path}")), "{err}");
    }
}

/// Nobody reads the relay's stdout any more (a supervisor closed the pipe): the relay keeps
/// serving instead of dying on its status lines, and still stops gracefully.
#[test]
fn a_closed_stdout_does_not_stop_the_relay() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = relay()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Closing our end before it prints anything: every status line meets a broken pipe.
    drop(child.stdout.take());
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the relay exited: {:?}",
        child.try_wait()
    );
    let status = common::stop_gracefully(&mut child);
    assert!(status.success(), "graceful stop exits 0, got {status}");
}
