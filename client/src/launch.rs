//! Starting the employee's own RDP client at the local address: choosing a launcher and
//! building its command line or `.rdp` file. All platform-neutral, so it is tested on Linux;
//! only the final spawn touches the OS.

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
    let rdp_plan = |opener: &str, extra: Vec<String>| {
        let path = rdp_dir.join(format!("telework-{computer}.rdp"));
        let mut args = extra;
        args.push(path.display().to_string());
        LaunchPlan {
            program: opener.into(),
            args,
            rdp_file: Some((path, rdp_file(addr, computer))),
        }
    };
    match (choice, os) {
        (LaunchChoice::None, _) => Ok(None),
        (LaunchChoice::Auto, Os::Windows) | (LaunchChoice::Mstsc, Os::Windows) => {
            Ok(Some(rdp_plan("mstsc", vec![])))
        }
        (LaunchChoice::Mstsc, _) => Err(LaunchError::WrongOs("mstsc")),
        (LaunchChoice::Auto, Os::MacOs) | (LaunchChoice::RdpFile, Os::MacOs) => {
            Ok(Some(rdp_plan("open", vec![])))
        }
        (LaunchChoice::RdpFile, Os::Windows) => Ok(Some(rdp_plan(
            "cmd",
            vec!["/C".into(), "start".into(), String::new()],
        ))),
        (LaunchChoice::RdpFile, Os::Linux) => Ok(Some(rdp_plan("xdg-open", vec![]))),
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

/// Writes the plan's `.rdp` file, if any, and starts the program without waiting for it.
///
/// # Errors
/// IO errors from writing the file or spawning the program.
pub fn launch(plan: &LaunchPlan) -> std::io::Result<std::process::Child> {
    if let Some((path, contents)) = &plan.rdp_file {
        std::fs::write(path, contents)?;
    }
    let mut command = std::process::Command::new(&plan.program);
    command.args(&plan.args).stdin(std::process::Stdio::null());
    // The RDP client gets the environment we were started with, not our memcpy tuning.
    for (name, value) in telework_protocol::net::memcpy_tuning::child_env() {
        match value {
            Some(value) => command.env(name, value),
            None => command.env_remove(name),
        };
    }
    command.spawn()
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
