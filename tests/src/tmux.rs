//! A terminal that a test types into and reads, as a person would: a detached tmux session on
//! a tmux server of its own, whose socket is in a temporary directory (so nobody else's
//! sessions are touched), read back with `capture-pane`. The server is killed and its socket
//! removed when the value is dropped, also on failure.

use std::process::Command;
use std::time::{Duration, Instant};

/// How often the screen is read while waiting for text.
const POLL: Duration = Duration::from_millis(100);

/// A command running in a detached tmux session.
pub struct Tmux {
    /// Holds the server's socket, so that nothing is left behind once it is dropped.
    dir: tempfile::TempDir,
}

/// Quotes `word` for `sh`.
pub fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

impl Tmux {
    /// Runs `command` (words, quoted here) in a new 200x60 terminal. When it ends, the line
    /// `[exited with N]` is printed and the terminal stays open for reading.
    ///
    /// # Panics
    /// If tmux cannot start (it is at /usr/bin/tmux; `.ci/run` installs it).
    pub fn start(command: &[String]) -> Self {
        let line: Vec<String> = command.iter().map(|w| shell_quote(w)).collect();
        let script = format!("{}; echo \"[exited with $?]\"; sleep 600", line.join(" "));
        let tmux = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        let out = tmux
            .command()
            .args([
                "new-session",
                "-d",
                "-s",
                "main",
                "-x",
                "200",
                "-y",
                "60",
                &script,
            ])
            .output()
            .expect("tmux runs (apt-get install tmux)");
        assert!(
            out.status.success(),
            "tmux new-session failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tmux
    }

    fn command(&self) -> Command {
        let mut command = Command::new("tmux");
        command.arg("-S").arg(self.dir.path().join("socket"));
        command
    }

    /// Types `text` literally, then Enter.
    pub fn type_line(&self, text: &str) {
        for keys in [&["-l", text][..], &["Enter"][..]] {
            let status = self
                .command()
                .args(["send-keys", "-t", "main"])
                .args(keys)
                .status()
                .expect("tmux send-keys");
            assert!(status.success(), "tmux send-keys failed");
        }
    }

    /// Everything the terminal has shown, scrolled-off lines included, wrapped lines joined.
    pub fn screen(&self) -> String {
        let out = self
            .command()
            .args(["capture-pane", "-p", "-J", "-S", "-", "-t", "main"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until `text` has appeared `times` times in all, reading every 100 ms for at
    /// most `limit`; returns the screen.
    ///
    /// # Panics
    /// With the screen, if it did not appear in time.
    pub fn wait_for(&self, text: &str, times: usize, limit: Duration) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if screen.matches(text).count() >= times {
                return screen;
            }
            assert!(
                start.elapsed() < limit,
                "waited {limit:?} for {text:?} (x{times}); the terminal shows:\n{screen}"
            );
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.command().arg("kill-server").output();
    }
}
