//! Starting the employee's own RDP client at the local address: choosing a launcher and
//! building its command line or `.rdp` file. All platform-neutral, so it is tested on Linux;
//! only the final spawn touches the OS.
//!
//! `.rdp` files go in a private directory ([`private_dir`]: owner-only, random name), never at
//! a predictable name in the shared temp dir where another user could plant or read one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// What the employee asked for with `--launch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LaunchChoice {
    /// The usual client of this OS: mstsc on Windows, an .rdp file on macOS, xfreerdp on Linux.
    Auto,
    /// Launch nothing; print the address.
    None,
    /// FreeRDP's X11 client.
    Xfreerdp,
    /// Windows Remote Desktop Connection.
    Mstsc,
    /// Write an .rdp file and open it with the system's handler.
    RdpFile,
}

/// The operating systems we choose launchers for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Os {
    /// Windows.
    Windows,
    /// macOS.
    MacOs,
    /// Linux and other Unix desktops.
    Linux,
}

impl Os {
    /// The OS this binary runs on.
    pub fn current() -> Self {
        if cfg!(windows) {
            Self::Windows
        } else if cfg!(target_os = "macos") {
            Self::MacOs
        } else {
            Self::Linux
        }
    }
}

/// A program to start, and the `.rdp` file to write first if it needs one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchPlan {
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// An `.rdp` file to write before starting it: path and contents.
    pub rdp_file: Option<(PathBuf, String)>,
    /// The program is the RDP client itself and runs while the desktop is open (xfreerdp,
    /// mstsc), rather than an opener that hands an `.rdp` file over and exits at once (open,
    /// xdg-open, start).
    pub is_rdp_client: bool,
}

impl LaunchPlan {
    /// Whether the session should end when the started program exits: when it is the RDP
    /// client itself (the employee closed the desktop), unless `--keep-open` was given.
    pub fn ends_session_on_exit(&self, keep_open: bool) -> bool {
        self.is_rdp_client && !keep_open
    }
}

/// Why no launcher could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LaunchError {
    /// The requested program is not installed.
    #[error("{0} is not installed (or not on PATH); install it or use --launch none and connect your RDP client yourself")]
    NotFound(&'static str),
    /// The requested launcher does not exist on this OS.
    #[error("{0} is not available on this operating system")]
    WrongOs(&'static str),
}

/// FreeRDP client binaries to look for, newest first.
const FREERDP_BINARIES: [&str; 2] = ["xfreerdp3", "xfreerdp"];

/// Picks what to start. `find` looks a program up on PATH; `rdp_dir` is where `.rdp` files
/// go. Returns `Ok(None)` when nothing should be started.
///
/// # Errors
/// [`LaunchError`] when an explicitly requested launcher cannot be used.
pub fn plan(
    choice: LaunchChoice,
    os: Os,
    addr: SocketAddr,
    computer: &str,
    rdp_dir: &Path,
    find: impl Fn(&str) -> Option<PathBuf>,
) -> Result<Option<LaunchPlan>, LaunchError> {
    let freerdp = || FREERDP_BINARIES.iter().find_map(|b| find(b));
    let rdp_plan = |opener: &str, extra: Vec<String>, is_rdp_client: bool| {
        let path = rdp_dir.join(format!("telework-{computer}.rdp"));
        let mut args = extra;
        args.push(path.display().to_string());
        LaunchPlan {
            program: opener.into(),
            args,
            rdp_file: Some((path, rdp_file(addr, computer))),
            is_rdp_client,
        }
    };
    match (choice, os) {
        (LaunchChoice::None, _) => Ok(None),
        (LaunchChoice::Auto, Os::Windows) | (LaunchChoice::Mstsc, Os::Windows) => {
            Ok(Some(rdp_plan("mstsc", vec![], true)))
        }
        (LaunchChoice::Mstsc, _) => Err(LaunchError::WrongOs("mstsc")),
        (LaunchChoice::Auto, Os::MacOs) | (LaunchChoice::RdpFile, Os::MacOs) => {
            Ok(Some(rdp_plan("open", vec![], false)))
        }
        (LaunchChoice::RdpFile, Os::Windows) => Ok(Some(rdp_plan(
            "cmd",
            vec!["/C".into(), "start".into(), String::new()],
            false,
        ))),
        (LaunchChoice::RdpFile, Os::Linux) => Ok(Some(rdp_plan("xdg-open", vec![], false))),
        (LaunchChoice::Auto, Os::Linux) => Ok(freerdp().map(|p| xfreerdp_plan(p, addr, computer))),
        (LaunchChoice::Xfreerdp, _) => freerdp()
            .map(|p| Some(xfreerdp_plan(p, addr, computer)))
            .ok_or(LaunchError::NotFound("xfreerdp")),
    }
}

fn xfreerdp_plan(program: PathBuf, addr: SocketAddr, computer: &str) -> LaunchPlan {
    LaunchPlan {
        program,
        args: vec![
            format!("/v:{addr}"),
            format!("/title:{computer} (telework)"),
            "/dynamic-resolution".into(),
        ],
        rdp_file: None,
        is_rdp_client: true,
    }
}

/// The contents of an `.rdp` file pointing at the local listener. mstsc and Microsoft's
/// macOS client both read this `name:type:value` format.
pub fn rdp_file(addr: SocketAddr, computer: &str) -> String {
    [
        format!("full address:s:{addr}"),
        "prompt for credentials:i:1".into(),
        "administrative session:i:0".into(),
        "screen mode id:i:2".into(),
        "use multimon:i:0".into(),
        "redirectclipboard:i:1".into(),
        "autoreconnection enabled:i:1".into(),
        // The office PC's certificate is checked end to end by telework's own handshake;
        // the RDP client still shows its usual prompt for the desktop's certificate.
        "authentication level:i:2".into(),
        "alternate shell:s:".into(),
        format!("remoteapplicationname:s:{computer}"),
        String::new(),
    ]
    .join("\r\n")
}

/// Looks a program up on `PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Makes a new directory for `.rdp` files: a random name under the temp dir, readable and
/// writable by its owner only (0700 on Unix; on Windows the temp dir is already the user's
/// own). It and its files are removed when the returned value is dropped, at the end of the
/// session.
///
/// # Errors
/// IO errors from creating it.
pub fn private_dir() -> std::io::Result<tempfile::TempDir> {
    let mut builder = tempfile::Builder::new();
    builder.prefix("telework-");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o700));
    }
    builder.tempdir()
}

/// Writes the plan's `.rdp` file, if any (a new file, owner-only on Unix), and starts the
/// program without waiting for it. Call it inside a tokio runtime; the returned child may be
/// awaited, and dropping it leaves the program running.
///
/// # Errors
/// IO errors from writing the file (also when it already exists) or spawning the program.
pub fn launch(plan: &LaunchPlan) -> std::io::Result<tokio::process::Child> {
    if let Some((path, contents)) = &plan.rdp_file {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        options.open(path)?.write_all(contents.as_bytes())?;
    }
    let mut command = std::process::Command::new(&plan.program);
    command.args(&plan.args).stdin(std::process::Stdio::null());
    // The RDP client gets the environment we were started with, not our memcpy tuning.
    for (name, value) in telework_net::glibc_tuning::child_env() {
        match value {
            Some(value) => command.env(name, value),
            None => command.env_remove(name),
        };
    }
    tokio::process::Command::from(command).spawn()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:53389".parse().unwrap()
    }

    #[test]
    fn auto_picks_the_usual_client_per_os() {
        let dir = Path::new("/tmp");
        let found = |n: &str| (n == "xfreerdp").then(|| PathBuf::from("/usr/bin/xfreerdp"));
        let linux = plan(LaunchChoice::Auto, Os::Linux, addr(), "pc-1", dir, found)
            .unwrap()
            .unwrap();
        assert_eq!(linux.program, PathBuf::from("/usr/bin/xfreerdp"));
        assert!(linux.args.contains(&"/v:127.0.0.1:53389".to_string()));
        let win = plan(LaunchChoice::Auto, Os::Windows, addr(), "pc-1", dir, |_| {
            None
        })
        .unwrap()
        .unwrap();
        assert_eq!(win.program, PathBuf::from("mstsc"));
        assert!(win
            .rdp_file
            .unwrap()
            .1
            .contains("full address:s:127.0.0.1:53389"));
        let mac = plan(LaunchChoice::Auto, Os::MacOs, addr(), "pc-1", dir, |_| None)
            .unwrap()
            .unwrap();
        assert_eq!(mac.program, PathBuf::from("open"));
        assert_eq!(mac.args, vec!["/tmp/telework-pc-1.rdp".to_string()]);
    }

    #[test]
    fn missing_or_foreign_launchers_are_clear_errors() {
        let dir = Path::new("/tmp");
        assert_eq!(
            plan(LaunchChoice::Auto, Os::Linux, addr(), "pc", dir, |_| None),
            Ok(None)
        );
        assert_eq!(
            plan(LaunchChoice::Xfreerdp, Os::Linux, addr(), "pc", dir, |_| {
                None
            }),
            Err(LaunchError::NotFound("xfreerdp"))
        );
        assert_eq!(
            plan(LaunchChoice::Mstsc, Os::Linux, addr(), "pc", dir, |_| None),
            Err(LaunchError::WrongOs("mstsc"))
        );
        assert_eq!(
            plan(LaunchChoice::None, Os::Windows, addr(), "pc", dir, |_| None),
            Ok(None)
        );
        let freerdp3 = |n: &str| (n == "xfreerdp3").then(|| PathBuf::from("/usr/bin/xfreerdp3"));
        let p = plan(
            LaunchChoice::Xfreerdp,
            Os::Linux,
            addr(),
            "pc",
            dir,
            freerdp3,
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.program, PathBuf::from("/usr/bin/xfreerdp3"));
    }

    #[test]
    fn only_the_rdp_client_itself_ends_the_session_when_it_exits() {
        let dir = Path::new("/tmp");
        let found = |n: &str| (n == "xfreerdp").then(|| PathBuf::from("/usr/bin/xfreerdp"));
        let xfreerdp = plan(LaunchChoice::Xfreerdp, Os::Linux, addr(), "pc", dir, found)
            .unwrap()
            .unwrap();
        assert!(xfreerdp.ends_session_on_exit(false));
        assert!(!xfreerdp.ends_session_on_exit(true), "--keep-open");
        let mstsc = plan(LaunchChoice::Mstsc, Os::Windows, addr(), "pc", dir, |_| {
            None
        })
        .unwrap()
        .unwrap();
        assert!(mstsc.ends_session_on_exit(false));
        // Openers return as soon as they have handed the file over.
        for os in [Os::Linux, Os::MacOs, Os::Windows] {
            let opener = plan(LaunchChoice::RdpFile, os, addr(), "pc", dir, |_| None)
                .unwrap()
                .unwrap();
            assert!(!opener.ends_session_on_exit(false), "{os:?}");
        }
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn rdp_files_go_in_a_new_owner_only_directory() {
        use std::os::unix::fs::PermissionsExt;
        let first = private_dir().unwrap();
        let second = private_dir().unwrap();
        assert_ne!(first.path(), second.path(), "a random name each time");
        assert_eq!(first.path().parent(), Some(std::env::temp_dir().as_path()));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(first.path()), 0o700);

        let mut p = plan(
            LaunchChoice::RdpFile,
            Os::Linux,
            addr(),
            "pc",
            first.path(),
            |_| None,
        )
        .unwrap()
        .unwrap();
        p.program = "true".into();
        let (file, contents) = p.rdp_file.clone().unwrap();
        assert_eq!(file.parent(), Some(first.path()));
        launch(&p).unwrap().wait().await.unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), contents);
        assert_eq!(mode(&file), 0o600);
        // A file already there (planted) is not written through.
        assert!(launch(&p).is_err());
        let dir = first.path().to_owned();
        drop(first);
        assert!(!dir.exists(), "removed with the session");
    }

    #[test]
    fn rdp_file_uses_crlf_and_the_local_address() {
        let f = rdp_file("[::1]:4000".parse().unwrap(), "pc");
        assert!(f.starts_with("full address:s:[::1]:4000\r\n"));
        assert!(
            f.lines()
                .all(|l| l.is_empty() || l.splitn(3, ':').count() == 3),
            "{f}"
        );
    }
}
