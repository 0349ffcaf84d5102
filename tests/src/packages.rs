//! The workspace's `.deb` packages for the package test (`tests/tests/packages.rs`): built
//! with `cargo deb` from the programs this test run built, and installed with `dpkg` on this
//! machine, purged again when dropped (also on failure).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The packages: the crate `cargo deb -p` builds from, and the package's name.
pub const PACKAGES: [(&str, &str); 3] = [
    ("telework-relay", "telework-relay"),
    ("telework-agent", "telework-agent"),
    ("telework-client", "telework"),
];

/// Fails the test, saying why, unless this runs as root (dpkg installs into the system).
///
/// # Panics
/// When not root.
pub fn require_root() {
    let uid = Command::new("id").arg("-u").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "the package test installs .deb packages with dpkg, so it needs root: run it as root \
         ('sudo -E cargo test -p telework-tests --test packages'); CI runs as root"
    );
}

/// Runs `command`, failing the test with its output unless it succeeds.
///
/// # Panics
/// When the command cannot start or fails.
pub fn run(command: &mut Command) -> Output {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Whether `program` is on the PATH.
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Makes sure `cargo deb`, `systemd-analyze` and what the packages need are there, installing
/// them as `.ci/run` does (`cargo install cargo-deb --locked`; Debian packages) when missing.
///
/// # Panics
/// When an install fails.
pub fn ensure_tools() {
    if !have("cargo-deb") {
        eprintln!("cargo-deb is missing: installing it with 'cargo install cargo-deb --locked'");
        run(Command::new(cargo()).args(["install", "cargo-deb", "--locked"]));
    }
    // The program the test runs, and the Debian package that has it (adduser: the
    // maintainer scripts' dependency, which dpkg -i does not fetch).
    for (program, package) in [
        ("systemd-analyze", "systemd"),
        ("adduser", "adduser"),
        ("setpriv", "util-linux"),
    ] {
        if have(program) {
            continue;
        }
        eprintln!("{program} is missing: installing Debian's {package} package");
        let install = || {
            Command::new("apt-get")
                .args(["install", "-y", package])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .is_ok_and(|s| s.success())
        };
        if !install() {
            run(Command::new("apt-get").arg("update"));
            assert!(install(), "apt-get install {package} failed");
        }
    }
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Builds the three packages into `out` from the programs of this test's build profile (built
/// first if needed), without building again: the packaging is what is tested, and CI's time
/// is spared a release build. `cargo deb -p NAME` alone makes the release packages.
///
/// # Panics
/// When a package cannot be built.
pub fn build(out: &Path) -> Vec<PathBuf> {
    // target/<profile dir>/telework-relay, built now if it was not.
    let relay = crate::netns::binary("telework-relay");
    let profile_dir = relay.parent().unwrap().file_name().unwrap().to_owned();
    let profile = match profile_dir.to_string_lossy().as_ref() {
        "debug" => "dev".to_owned(),
        other => other.to_owned(),
    };
    let mut debs = Vec::new();
    for (krate, name) in PACKAGES {
        let mut command = Command::new(cargo());
        // Not the variables cargo set for this test: they would describe the test crate.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            let keep = ["CARGO_HOME", "CARGO_TARGET_DIR", "CARGO_BUILD_"]
                .iter()
                .any(|k| key.starts_with(k));
            if key.starts_with("CARGO_") && !keep {
                command.env_remove(&*key);
            }
        }
        run(command
            .args(["deb", "--no-build", "--fast", "--no-strip", "--no-dbgsym"])
            .args(["-p", krate, "--profile", &profile, "--output"])
            .arg(out)
            .current_dir(env!("CARGO_MANIFEST_DIR")));
        let deb = std::fs::read_dir(out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|f| f.to_string_lossy().starts_with(&format!("{name}_")))
            })
            .unwrap_or_else(|| panic!("cargo deb made no {name}_*.deb in {}", out.display()));
        debs.push(deb);
    }
    debs
}

/// The packages, installed; purged when dropped.
pub struct Installed;

impl Installed {
    /// Installs `debs` with `dpkg -i` (after purging what a killed run may have left).
    ///
    /// # Panics
    /// When dpkg fails.
    pub fn install(debs: &[PathBuf]) -> Self {
        purge();
        run(Command::new("dpkg").arg("-i").args(debs));
        Self
    }

    /// Purges the packages now, failing the test if dpkg does.
    ///
    /// # Panics
    /// When dpkg fails.
    pub fn purge(self) {
        std::mem::forget(self);
        run(Command::new("dpkg")
            .arg("--purge")
            .args(PACKAGES.map(|(_, name)| name)));
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        purge();
    }
}

fn purge() {
    let _ = Command::new("dpkg")
        .arg("--purge")
        .args(PACKAGES.map(|(_, name)| name))
        .output();
}
