//! The `.deb` packages as an administrator meets them: built with `cargo deb`, installed with
//! `dpkg -i` on this machine, checked (files, conffile, users, data dir, both units with
//! `systemd-analyze verify`, the installed relay started as its service starts it), and
//! purged (the system users stay, as is Debian's custom). Needs root; there is no systemd as
//! PID 1 here, so `systemctl start` cannot be tried: the relay is run under the unit's user
//! and command instead.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
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
    let mut relay = Command::new("setpriv")
        .args([
            "--reuid",
            &relay_uid.to_string(),
            "--regid",
            &relay_gid.to_string(),
        ])
        .args(["--init-groups", "--"])
        .args([
            "/usr/bin/telework-relay",
            "serve",
            "--config",
            "/etc/telework/relay.toml",
        ])
        .args(["--listen", "127.0.0.1:0", "--no-admin"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let stdout = relay.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let listening = lines.recv_timeout(Duration::from_secs(30));
    let fingerprint = lines.recv_timeout(Duration::from_secs(5));
    stop(&mut relay);
    let status = relay.wait().unwrap();
    let listening = listening.unwrap_or_else(|_| {
        let mut err = String::new();
        let _ = std::io::Read::read_to_string(&mut relay.stderr.take().unwrap(), &mut err);
        panic!("the installed relay did not start as telework-relay:\n{err}")
    });
    assert!(
        listening.starts_with("telework-relay listening on 127.0.0.1:"),
        "{listening}"
    );
    assert!(fingerprint
        .unwrap()
        .starts_with("certificate fingerprint: sha256:"));
    assert!(
        status.success(),
        "SIGTERM stops the relay cleanly: {status}"
    );
    let db = std::fs::metadata("/var/lib/telework-relay/relay.db").unwrap();
    assert_eq!(
        db.uid(),
        relay_uid,
        "the registry belongs to telework-relay"
    );

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
