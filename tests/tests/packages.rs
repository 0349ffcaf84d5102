//! The `.deb` packages as an administrator meets them: built with `cargo deb`, installed with
//! `dpkg -i` on this machine, checked (files, conffile, users, data dir, both units with
//! `systemd-analyze verify`, the installed relay started as its service starts it), and
//! purged (the system users stay, as is Debian's custom). Needs root; there is no systemd as
//! PID 1 here, so `systemctl start` cannot be tried: the relay is run under the unit's user
//! and command instead.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use telework_tests::packages::{build, ensure_tools, require_root, run, Installed};
use telework_tests::relay_process::stop;

const UNITS: [&str; 2] = [
    "/lib/systemd/system/telework-relay.service",
    "/lib/systemd/system/telework-agent.service",
];

/// A process stopped (SIGTERM, then SIGKILL) when dropped, also when the test fails.
struct Stopped(std::process::Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        stop(&mut self.0);
    }
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The user and group ids of the system user `name`, if it exists.
fn user(name: &str) -> Option<(u32, u32, String)> {
    let out = Command::new("getent")
        .args(["passwd", name])
        .output()
        .ok()?;
    let line = String::from_utf8(out.stdout).ok()?;
    let fields: Vec<&str> = line.trim().split(':').collect();
    (fields.len() == 7).then(|| {
        (
            fields[2].parse().unwrap(),
            fields[3].parse().unwrap(),
            fields[6].to_owned(),
        )
    })
}

#[test]
fn packages_install_check_and_purge() {
    require_root();
    ensure_tools();
    let start = Instant::now();
    let out = tempfile::tempdir().unwrap();
    let debs = build(out.path());
    eprintln!("built {} packages in {:?}", debs.len(), start.elapsed());

    let installed = Installed::install(&debs);
    for path in [
        "/usr/bin/telework-relay",
        "/usr/bin/telework-agent",
        "/usr/bin/telework",
        "/etc/telework/relay.toml",
        UNITS[0],
        UNITS[1],
        "/usr/share/doc/telework-relay/packages.md",
    ] {
        assert!(Path::new(path).exists(), "{path} is not installed");
    }
    let conffiles =
        run(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "telework-relay"]));
    assert!(
        text(&conffiles).contains("/etc/telework/relay.toml"),
        "relay.toml is a conffile: {}",
        text(&conffiles)
    );
    for program in ["telework-relay", "telework-agent", "telework"] {
        let out = run(Command::new(format!("/usr/bin/{program}")).arg("--version"));
        assert!(
            text(&out).contains("0."),
            "{program} --version: {}",
            text(&out)
        );
    }

    // The system users, with no login shell, and the relay's data dir owner-only.
    for name in ["telework-relay", "telework-agent"] {
        let (uid, _, shell) = user(name).unwrap_or_else(|| panic!("no system user {name}"));
        assert!(uid < 1000, "{name} is a system user (uid {uid})");
        assert!(
            shell.ends_with("nologin") || shell.ends_with("false"),
            "{name}: {shell}"
        );
    }
    let (relay_uid, relay_gid, _) = user("telework-relay").unwrap();
    let data = std::fs::metadata("/var/lib/telework-relay").unwrap();
    assert_eq!((data.uid(), data.mode() & 0o777), (relay_uid, 0o700));

    // systemd's own check of both installed units (no systemd needs to run for it).
    for unit in UNITS {
        let out = run(Command::new("systemd-analyze").args(["verify", "--man=no", unit]));
        assert!(
            text(&out).trim().is_empty(),
            "systemd-analyze verify {unit}:\n{}",
            text(&out)
        );
    }

    // The installed relay as its unit runs it: as telework-relay, with the shipped
    // relay.toml (its data dir is the service's), on a free port instead of 443.
    let as_relay_user = |program: &str| {
        let mut command = Command::new("setpriv");
        command
            .args(["--reuid", &relay_uid.to_string()])
            .args(["--regid", &relay_gid.to_string()])
            .args(["--init-groups", "--", program]);
        command
    };
    let mut relay = Stopped(
        as_relay_user("/usr/bin/telework-relay")
            .args(["serve", "--config", "/etc/telework/relay.toml"])
            .args(["--listen", "127.0.0.1:0", "--no-admin"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (tx, lines) = mpsc::channel();
    let stdout = relay.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let listening = lines
        .recv_timeout(Duration::from_secs(30))
        .expect("the installed relay started as telework-relay and said where it listens");
    let addr = listening
        .strip_prefix("telework-relay listening on ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("{listening}"))
        .to_owned();
    assert!(addr.starts_with("127.0.0.1:"), "{listening}");
    let fingerprint = lines.recv_timeout(Duration::from_secs(5)).unwrap();
    let fingerprint = fingerprint
        .strip_prefix("certificate fingerprint: ")
        .unwrap_or_else(|| panic!("{fingerprint}"))
        .to_owned();
    let db = std::fs::metadata("/var/lib/telework-relay/relay.db").unwrap();
    assert_eq!(
        db.uid(),
        relay_uid,
        "the registry belongs to telework-relay"
    );

    // The operator's commands run as the service's user on its data dir; IT staff set up an
    // office PC with the installed agent and its default (the service's) data dir. Without
    // systemd as PID 1 the set-up says what to run instead of starting the service.
    let token = run(as_relay_user("/usr/bin/telework-relay").args([
        "token",
        "create",
        "--uses",
        "1",
        "--data-dir",
        "/var/lib/telework-relay",
    ]));
    let token = String::from_utf8(token.stdout).unwrap().trim().to_owned();
    let mut setup = Command::new("/usr/bin/telework-agent")
        .args([
            "setup",
            "--yes",
            "--relay",
            &addr,
            "--relay-fingerprint",
            &fingerprint,
        ])
        .args(["--token", &token, "--id", "pc-packaged", "--password-stdin"])
        .args(["--no-totp", "--service"])
        .env_remove("TELEWORK_AGENT_DATA_DIR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    setup
        .stdin
        .take()
        .unwrap()
        .write_all(b"packaged-password\n")
        .unwrap();
    let out = setup.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("systemd is not running")
            || text(&out).contains("telework-agent.service is enabled and started"),
        "{}",
        text(&out)
    );
    assert!(Path::new("/var/lib/telework-agent/agent.toml").exists());
    let machines = run(as_relay_user("/usr/bin/telework-relay").args([
        "machines",
        "--data-dir",
        "/var/lib/telework-relay",
    ]));
    assert!(
        text(&machines).contains("pc-packaged"),
        "{}",
        text(&machines)
    );

    stop(&mut relay.0);
    let status = relay.0.wait().unwrap();
    assert!(
        status.success(),
        "SIGTERM stops the relay cleanly: {status}"
    );
    drop(relay);

    // Purge: programs, units, the conffile and the data dir go; the users stay.
    installed.purge();
    for path in [
        "/usr/bin/telework-relay",
        "/usr/bin/telework-agent",
        "/usr/bin/telework",
        "/etc/telework/relay.toml",
        UNITS[0],
        UNITS[1],
        "/var/lib/telework-relay",
    ] {
        assert!(
            !Path::new(path).exists(),
            "{path} is still there after dpkg --purge"
        );
    }
    assert!(user("telework-relay").is_some() && user("telework-agent").is_some());
    eprintln!("the package test took {:?}", start.elapsed());
}
