//! Installing and starting the agent as a service: the platform's part of `setup`, kept small
//! and behind `cfg` so that each system gets only what it can run.

use std::path::Path;

pub use platform::{install_and_start, DEFAULT_DATA_DIR};

/// What to tell IT staff when no service was started: how to run the agent by hand.
fn run_by_hand(data_dir: &Path) -> String {
    format!("telework-agent run --data-dir {}", data_dir.display())
}

#[cfg(target_os = "linux")]
mod platform {
    use std::path::Path;
    use std::process::Command;

    use anyhow::{bail, Context};

    /// The data dir of the packaged `telework-agent.service` (its `StateDirectory`).
    pub const DEFAULT_DATA_DIR: Option<&str> = Some("/var/lib/telework-agent");

    /// The unit the package installs.
    const UNIT: &str = "telework-agent.service";

    /// Enables and starts the packaged unit when systemd runs this computer and the set-up
    /// used the unit's data dir; otherwise says plainly what to run instead.
    pub fn install_and_start(data_dir: &Path) -> anyhow::Result<()> {
        let by_hand = super::run_by_hand(data_dir);
        // sd_booted(3): systemd is PID 1 exactly when this directory exists.
        if !Path::new("/run/systemd/system").is_dir() {
            println!(
                "systemd is not running on this computer, so no service was installed. Start \
                 the agent from your init system, or by hand:\n  {by_hand}"
            );
            return Ok(());
        }
        let service_dir = Path::new("/var/lib/telework-agent");
        let same = match (data_dir.canonicalize(), service_dir.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        if !same {
            println!(
                "The {UNIT} reads {}, but this set-up used {}, so the service was not \
                 started. Run the set-up again with --data-dir {0}, or start the agent \
                 with:\n  {by_hand}",
                service_dir.display(),
                data_dir.display()
            );
            return Ok(());
        }
        let out = Command::new("systemctl")
            .args(["enable", "--now", UNIT])
            .output()
            .context("running systemctl")?;
        if !out.status.success() {
            bail!(
                "'systemctl enable --now {UNIT}' failed: {}; the unit comes with the \
                 telework-agent package (or start the agent with: {by_hand})",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        println!(
            "The {UNIT} is enabled and started: it runs at every boot as the user \
             telework-agent (see 'systemctl status {UNIT}'). Later commands on its data dir \
             run as that user, for example:\n  sudo -u telework-agent telework-agent policy \
             show --data-dir {}",
            service_dir.display()
        );
        Ok(())
    }
}

#[cfg(not(target_os = "linux"))]
mod platform {
    use std::path::Path;

    /// No packaged service here, so no default data dir.
    pub const DEFAULT_DATA_DIR: Option<&str> = None;

    /// Says that no service can be installed on this system yet, and what to run instead.
    pub fn install_and_start(data_dir: &Path) -> anyhow::Result<()> {
        println!(
            "Installing a service is not supported on this system yet. Start the agent \
             with:\n  {}",
            super::run_by_hand(data_dir)
        );
        Ok(())
    }
}
