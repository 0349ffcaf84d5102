//! The `telework` binary's local port: only its own OS user may use it, it listens on loopback
//! unless told otherwise, the session ends with the RDP client it started, and `.rdp` files
//! stay private. Run against a relay and agent in process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

mod common;

use common::{interrupt, round_trip, start, stderr, telework, PW};
use telework_tests::TestRelay;
use tokio::io::AsyncWriteExt;

/// The second OS user the refusal test connects as.
const OTHER_USER: &str = "telework-other";

/// The uid and gid of the second OS user, created if missing (needs root, as in CI).
fn other_user() -> (u32, u32) {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root: it creates the OS user {OTHER_USER} and connects as it \
         (CI runs as root; run it with sudo)"
    );
    let id = |flag: &str| {
        std::process::Command::new("id")
            .args([flag, OTHER_USER])
            .output()
            .unwrap()
    };
    if !id("-u").status.success() {
        let made = std::process::Command::new("useradd")
            .args(["--system", "--no-create-home", OTHER_USER])
            .status()
            .unwrap();
        // Another test run may have made it at the same moment.
        assert!(
            made.success() || id("-u").status.success(),
            "useradd {OTHER_USER}"
        );
    }
    let num = |flag| {
        String::from_utf8(id(flag).stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    (num("-u"), num("-g"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_user_of_this_computer_is_refused() {
    let (uid, gid) = other_user();
    let relay = TestRelay::start().await;
    let (desktop, _agent) = relay.office_pc("pc-port", PW).await;
    let (mut child, addr, _stdout, _) =
        start(telework(&relay, "pc-port", &["--launch", "none"], None)).await;
    let (host, port) = addr.rsplit_once(':').unwrap();

    // The other user connects, sends, and reads until the connection is closed.
    let script = format!(
        "exec 3<>/dev/tcp/{host}/{port} || exit 3; echo connected; \
         printf 'from another user' >&3 2>/dev/null; timeout 5 cat <&3; echo closed"
    );
    let other = tokio::process::Command::new("setpriv")
        .args([
            format!("--reuid={uid}"),
            format!("--regid={gid}"),
            "--clear-groups".into(),
            "bash".into(),
            "-c".into(),
            script,
        ])
        .kill_on_drop(true)
        .output();
    let other = tokio::time::timeout(Duration::from_secs(20), other)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&other.stdout),
        "connected\nclosed\n",
        "the other user got desktop bytes or no connection; stderr: {}",
        String::from_utf8_lossy(&other.stderr)
    );
    assert_eq!(desktop.connections(), 0, "no tunnel was opened for it");

    // Our own user is still served.
    assert_eq!(
        round_trip(&addr, b"from the employee").await,
        b"from the employee"
    );
    assert_eq!(desktop.connections(), 1);

    interrupt(&mut child).await;
    let err = stderr(&mut child).await;
    assert!(
        err.contains(&format!(
            "telework: refused a local connection from another user (uid {uid}) of this computer"
        )),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listen_address_off_loopback_needs_allow_remote() {
    let relay = TestRelay::start().await;
    let (_desktop, _agent) = relay.office_pc("pc-port", PW).await;
    // 192.0.2.1 (TEST-NET-1) is on no interface here: with --allow-remote the bind itself
    // fails, so nothing is ever exposed.
    for listen in ["0.0.0.0:0", "[::]:3389", "192.0.2.1:0"] {
        let child = telework(
            &relay,
            "pc-port",
            &["--launch", "none", "--listen", listen],
            None,
        )
        .spawn()
        .unwrap();
        let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!("telework: will not listen on {listen}")),
            "{err}"
        );
        assert!(err.contains("--allow-remote"), "{err}");
        assert!(
            !err.contains("connecting to"),
            "refused before the login: {err}"
        );
    }

    let mut child = telework(
        &relay,
        "pc-port",
        &[
            "--launch",
            "none",
            "--listen",
            "192.0.2.1:0",
            "--allow-remote",
        ],
        None,
    )
    .spawn()
    .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{PW}\n").as_bytes())
        .await
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "telework: WARNING: listening on 192.0.2.1:0 (--allow-remote): anyone who can reach \
             this address gets your office desktop without a password"
        ),
        "{err}"
    );
    assert!(err.contains("cannot listen on 192.0.2.1:0"), "{err}");
}

/// A stand-in for xfreerdp (under both of its names): connects to its `/v:` address, sends a
/// line, writes what came back to `$FAKE_RDP_OUT`, and exits.
fn fake_freerdp(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let script = r#"#!/bin/bash
addr=${1#/v:}
exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}" || exit 3
printf 'hello from the rdp client' >&3
IFS= read -r -t 10 -N 25 reply <&3
printf '%s' "$reply" > "$FAKE_RDP_OUT.tmp" && mv "$FAKE_RDP_OUT.tmp" "$FAKE_RDP_OUT"
"#;
    for name in ["xfreerdp3", "xfreerdp"] {
        let path = dir.join(name);
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// Waits (bounded) for `path` to appear and returns its contents.
async fn wait_for_file(path: &Path) -> String {
    for _ in 0..200 {
        if let Ok(text) = std::fs::read_to_string(path) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{} did not appear", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_ends_when_the_launched_rdp_client_exits() {
    let relay = TestRelay::start().await;
    let (desktop, _agent) = relay.office_pc("pc-port", PW).await;
    let bin = tempfile::tempdir().unwrap();
    fake_freerdp(bin.path());
    let out = bin.path().join("out");
    let mut cmd = telework(
        &relay,
        "pc-port",
        &["--launch", "xfreerdp"],
        Some(bin.path()),
    );
    cmd.env("FAKE_RDP_OUT", &out);
    let (mut child, _addr, mut stdout, _) = start(cmd).await;

    assert_eq!(wait_for_file(&out).await, "hello from the rdp client");
    assert_eq!(desktop.connections(), 1);
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("telework ended the session when the RDP client exited")
        .unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(
        stdout.next_line().await.unwrap().as_deref(),
        Some("session closed")
    );
    let err = stderr(&mut child).await;
    assert!(err.contains("xfreerdp"), "{err}");
    assert!(
        err.contains("exited (exit status: 0): ending the session"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_open_keeps_the_session_after_the_rdp_client_exits() {
    let relay = TestRelay::start().await;
    let (desktop, _agent) = relay.office_pc("pc-port", PW).await;
    let bin = tempfile::tempdir().unwrap();
    fake_freerdp(bin.path());
    let out = bin.path().join("out");
    let mut cmd = telework(
        &relay,
        "pc-port",
        &["--launch", "xfreerdp", "--keep-open"],
        Some(bin.path()),
    );
    cmd.env("FAKE_RDP_OUT", &out);
    let (mut child, addr, _stdout, _) = start(cmd).await;

    assert_eq!(wait_for_file(&out).await, "hello from the rdp client");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "telework is still running"
    );
    // And still serves: the employee starts the RDP client again.
    assert_eq!(round_trip(&addr, b"second window").await, b"second window");
    assert_eq!(desktop.connections(), 2);
    interrupt(&mut child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rdp_file_is_written_in_a_private_directory() {
    use std::os::unix::fs::PermissionsExt;
    let relay = TestRelay::start().await;
    let (_desktop, _agent) = relay.office_pc("pc-port", PW).await;
    // A stand-in for xdg-open: reports the file it was given, and returns at once as the
    // real one does.
    let bin = tempfile::tempdir().unwrap();
    let opener = bin.path().join("xdg-open");
    std::fs::write(
        &opener,
        "#!/bin/sh\nprintf '%s' \"$1\" > \"$FAKE_RDP_OUT.tmp\" && mv \"$FAKE_RDP_OUT.tmp\" \"$FAKE_RDP_OUT\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&opener, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = bin.path().join("out");
    let mut cmd = telework(
        &relay,
        "pc-port",
        &["--launch", "rdp-file"],
        Some(bin.path()),
    );
    cmd.env("FAKE_RDP_OUT", &out);
    let (mut child, addr, _stdout, _) = start(cmd).await;

    let file = PathBuf::from(wait_for_file(&out).await);
    let dir = file.parent().unwrap().to_owned();
    assert_ne!(
        dir,
        std::env::temp_dir(),
        "not straight in the shared temp dir"
    );
    assert_eq!(dir.parent(), Some(std::env::temp_dir().as_path()));
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("telework-") && name.len() > "telework-".len() + 4,
        "{name}"
    );
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&file), 0o600);
    let contents = std::fs::read_to_string(&file).unwrap();
    assert!(
        contents.starts_with(&format!("full address:s:{addr}\r\n")),
        "{contents}"
    );

    // The opener returned at once; the session stays until Ctrl-C, then the file goes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "telework is still running"
    );
    interrupt(&mut child).await;
    assert!(
        !dir.exists(),
        "the private directory is removed with the session"
    );
}
