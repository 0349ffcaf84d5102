//! The real `telework-relay` binary as an operator runs it: `serve` on a free loopback port
//! with a data dir of its own, and its other commands on the same data dir. Stopped with
//! SIGTERM (then killed) when dropped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use telework_protocol::CertFingerprint;

/// How long the relay may take to print that it listens.
const START: Duration = Duration::from_secs(30);

/// A running `telework-relay serve`.
pub struct RelayProcess {
    /// Where it listens (TCP and UDP).
    pub addr: SocketAddr,
    /// Its self-signed certificate's fingerprint, as it printed it.
    pub fingerprint: CertFingerprint,
    /// Its data dir.
    pub dir: tempfile::TempDir,
    child: Child,
}

impl RelayProcess {
    /// Starts `telework-relay serve` with token registration (and `extra` flags).
    ///
    /// # Panics
    /// If it does not start and print its address and fingerprint within 30 s.
    pub fn start(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(crate::netns::binary("telework-relay"))
            .args(["serve", "--listen", "127.0.0.1:0", "--no-admin"])
            .args(["--registration", "token", "--data-dir"])
            .arg(dir.path())
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let next = || {
            lines
                .recv_timeout(START)
                .unwrap_or_else(|e| panic!("telework-relay printed nothing in {START:?}: {e}"))
        };
        let listening = next();
        let addr = listening
            .strip_prefix("telework-relay listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("not a listening line: {listening}"));
        let fp_line = next();
        let fingerprint = fp_line
            .strip_prefix("certificate fingerprint: ")
            .and_then(|f| f.trim().parse().ok())
            .unwrap_or_else(|| panic!("not a fingerprint line: {fp_line}"));
        Self {
            addr,
            fingerprint,
            dir,
            child,
        }
    }

    /// Runs `telework-relay ARGS --data-dir DIR` to its end.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(crate::netns::binary("telework-relay"))
            .args(args)
            .arg("--data-dir")
            .arg(self.dir.path())
            .output()
            .unwrap()
    }

    /// A new single-use enrolment token.
    pub fn token(&self) -> String {
        let out = self.run(&["token", "create", "--uses", "1"]);
        assert!(out.status.success(), "token create: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// What `telework-relay machines` prints.
    pub fn machines(&self) -> String {
        let out = self.run(&["machines"]);
        assert!(out.status.success(), "machines: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// Stops `child` with SIGTERM, waiting up to 15 s, then kills it.
pub fn stop(child: &mut Child) {
    // Never signal a pid that was already reaped: it may belong to another process by now.
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    for _ in 0..150 {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}
