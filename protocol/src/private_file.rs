//! Writing secrets to disk: files the owner alone can read, replaced atomically, in
//! directories the owner alone can write.
//!
//! [`write_private`] writes through a temporary file with an unpredictable name, created
//! exclusively (`O_CREAT | O_EXCL`) without following symbolic links (`O_NOFOLLOW`), so nobody
//! can plant a link or a file for it to write through. [`check_private_dir`] refuses a data
//! directory that another user could write to, since whoever can write there can swap the keys.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// How many random temporary names [`write_private`] tries before giving up. A name is taken
/// only if someone else created it (the names carry 64 random bits), so more than one try is
/// already unusual.
const TEMP_NAME_TRIES: usize = 8;

/// Writes `contents` to `path` readable by the owner only (mode 0600 on Unix), so that a crash
/// never leaves half a key behind and nothing already on disk is written through.
///
/// The bytes go to a new file with a random name in the same directory, created with
/// `O_CREAT | O_EXCL | O_NOFOLLOW`, then synced and renamed over `path`; then the directory
/// is synced so the rename survives a power cut. On any error the temporary file is removed.
///
/// # Errors
/// Any IO error, with the path in its message.
pub fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    let Some(name) = path.file_name() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cannot write {}: not a file name", path.display()),
        ));
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let (mut file, temp) = create_temp(dir, name)?;
    let written = file
        .write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| with_path(e, "cannot write", &temp.path));
    drop(file);
    written?;
    std::fs::rename(&temp.path, path).map_err(|e| with_path(e, "cannot replace", path))?;
    temp.disarm();
    sync_dir(dir)
}

/// Creates a directory (and parents) that the owner alone can enter (0700 on Unix).
///
/// An existing directory is left as it is: call [`check_private_dir`] to refuse one that others
/// can write to.
///
/// # Errors
/// Any IO error, with the path in its message.
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(path)
        .map_err(|e| with_path(e, "cannot create directory", path))
}

/// Refuses a directory that users other than the current one can write to: one whose mode
/// lets its group or everyone write, or that belongs to another user. Whoever can write in a
/// data directory can replace the keys, the password record or the lockout state in it.
///
/// On platforms other than Unix this only checks that `path` is a directory.
///
/// # Errors
/// [`io::ErrorKind::PermissionDenied`] with a message that says how to fix the directory, or
/// the IO error from reading its metadata.
pub fn check_private_dir(path: &Path) -> io::Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| with_path(e, "cannot read", path))?;
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a directory", path.display()),
        ));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let me = rustix::process::geteuid().as_raw();
        if let Some(problem) = dir_problem(meta.mode(), meta.uid(), me) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                problem.message(path, me),
            ));
        }
    }
    Ok(())
}

/// What makes a directory unsafe to keep secrets in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DirProblem {
    /// It belongs to another user (by uid).
    Owner(u32),
    /// Its group or everyone may write to it (the permission bits).
    Writable(u32),
}

impl DirProblem {
    fn message(self, path: &Path, me: u32) -> String {
        let dir = path.display();
        match self {
            Self::Owner(owner) => format!(
                "refusing to use {dir}: it belongs to user id {owner}, not to the user running \
                 this program (user id {me}), and its owner could replace the keys in it; \
                 fix: run this program as user id {owner}, or make the directory yours with \
                 `chown -R {me} {dir}` and `chmod 700 {dir}`"
            ),
            Self::Writable(mode) => format!(
                "refusing to use {dir}: its mode {mode:04o} lets {who} write to it, and anyone \
                 who can write there could replace the keys in it; fix: `chmod 700 {dir}`",
                who = if mode & 0o002 != 0 {
                    "every user"
                } else {
                    "its group"
                },
            ),
        }
    }
}

/// The pure decision behind [`check_private_dir`]: `mode` and `owner` of the directory, `me`
/// the effective user id.
fn dir_problem(mode: u32, owner: u32, me: u32) -> Option<DirProblem> {
    if owner != me {
        return Some(DirProblem::Owner(owner));
    }
    if mode & 0o022 != 0 {
        return Some(DirProblem::Writable(mode & 0o7777));
    }
    None
}

/// A temporary file removed when dropped, unless [`TempPath::disarm`] says it was renamed.
struct TempPath {
    path: PathBuf,
    armed: bool,
}

impl TempPath {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Creates a new file with a random name next to `name` in `dir`, owner-only, refusing any
/// name that exists already (a planted file or symbolic link).
fn create_temp(dir: &Path, name: &std::ffi::OsStr) -> io::Result<(File, TempPath)> {
    let mut last = None;
    for _ in 0..TEMP_NAME_TRIES {
        let mut temp_name = OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".{:016x}.tmp", rand::random::<u64>()));
        let path = dir.join(temp_name);
        match exclusive_options().open(&path) {
            Ok(file) => {
                let temp = TempPath { path, armed: true };
                set_owner_only(&file).map_err(|e| with_path(e, "cannot restrict", &temp.path))?;
                return Ok((file, temp));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(with_path(e, "cannot create", &path)),
        }
    }
    let e = last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AlreadyExists));
    Err(with_path(
        e,
        "cannot create a temporary file (every random name was taken) in",
        dir,
    ))
}

fn exclusive_options() -> OpenOptions {
    let mut opts = OpenOptions::new();
    // `create_new` is O_CREAT | O_EXCL: it fails on any existing name, a symbolic link too.
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
        // O_EXCL already refuses a link at the final name; O_NOFOLLOW says so twice, in case
        // the flags are ever changed.
        opts.custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32);
    }
    opts
}

/// Sets mode 0600 whatever the umask (which can only take bits away from the mode asked for
/// at creation, but let us be exact).
fn set_owner_only(file: &File) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    let _ = file;
    Ok(())
}

/// Syncs a directory so a rename in it is durable. Only Unix can open a directory for this.
fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| with_path(e, "cannot sync directory", dir))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

fn with_path(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

#[cfg(all(test, unix))]
// The helpers below are test code too: a failed unwrap is a failed test.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A fresh private directory under the system temp dir, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "tw-private-{tag}-{}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            ));
            create_private_dir(&dir).unwrap();
            Self(dir)
        }

        fn names(&self) -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(&self.0)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn files_are_owner_only() {
        let dir = Scratch::new("mode");
        let f = dir.0.join("secret");
        write_private(&f, b"k").unwrap();
        assert_eq!(mode(&f), 0o600);
        assert_eq!(std::fs::read(&f).unwrap(), b"k");
        // Replacing keeps it owner-only, even over a file that was not.
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&f, b"k2").unwrap();
        assert_eq!(mode(&f), 0o600);
        assert_eq!(std::fs::read(&f).unwrap(), b"k2");
        assert_eq!(dir.names(), ["secret"], "no temporary file is left");
    }

    #[test]
    fn a_planted_symlink_is_not_written_through() {
        let dir = Scratch::new("link");
        let victim = dir.0.join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let f = dir.0.join("secret");
        // The name the old code wrote through, and the final name, both point at the victim.
        std::os::unix::fs::symlink(&victim, dir.0.join("secret.tmp")).unwrap();
        std::os::unix::fs::symlink(&victim, &f).unwrap();
        write_private(&f, b"key").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        // The link at the final name was replaced by a regular file, not followed.
        let meta = std::fs::symlink_metadata(&f).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(std::fs::read(&f).unwrap(), b"key");
        assert_eq!(mode(&f), 0o600);
    }

    #[test]
    fn temporary_files_are_created_exclusively_without_following_links() {
        let dir = Scratch::new("excl");
        let victim = dir.0.join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let planted = dir.0.join("planted");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let err = exclusive_options().open(&planted).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        let names: Vec<_> = (0..4)
            .map(|_| create_temp(&dir.0, "k".as_ref()).unwrap().1)
            .collect();
        let mut paths: Vec<_> = names.iter().map(|t| t.path.clone()).collect();
        paths.sort();
        paths.dedup();
        assert_eq!(paths.len(), 4, "temporary names are random");
        for t in &paths {
            assert_eq!(mode(t), 0o600);
        }
        drop(names);
        assert_eq!(dir.names(), ["planted", "victim"], "dropped temporaries go");
    }

    #[test]
    fn a_failed_write_leaves_no_temporary_file() {
        let dir = Scratch::new("fail");
        // The final name is a directory: the rename fails after the temporary was written.
        let f = dir.0.join("secret");
        std::fs::create_dir(&f).unwrap();
        let err = write_private(&f, b"key").unwrap_err();
        assert!(err.to_string().contains("secret"), "{err}");
        assert_eq!(dir.names(), ["secret"]);
        // A missing directory: nothing is created anywhere.
        let err = write_private(&dir.0.join("gone/secret"), b"key").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert_eq!(dir.names(), ["secret"]);
    }

    #[test]
    fn private_dir_decision() {
        assert_eq!(dir_problem(0o40700, 1000, 1000), None);
        assert_eq!(dir_problem(0o40755, 1000, 1000), None);
        assert_eq!(dir_problem(0o40500, 0, 0), None);
        assert_eq!(
            dir_problem(0o40770, 1000, 1000),
            Some(DirProblem::Writable(0o770))
        );
        assert_eq!(
            dir_problem(0o40702, 1000, 1000),
            Some(DirProblem::Writable(0o702))
        );
        assert_eq!(
            dir_problem(0o41777, 1000, 1000),
            Some(DirProblem::Writable(0o1777)),
            "the sticky bit does not stop others planting files"
        );
        assert_eq!(dir_problem(0o40700, 0, 1000), Some(DirProblem::Owner(0)));
        assert_eq!(
            dir_problem(0o40700, 1000, 0),
            Some(DirProblem::Owner(1000)),
            "not even root uses another user's directory"
        );
        let msg = DirProblem::Writable(0o777).message(Path::new("/d"), 5);
        assert!(
            msg.contains("chmod 700 /d") && msg.contains("every user"),
            "{msg}"
        );
        let msg = DirProblem::Writable(0o770).message(Path::new("/d"), 5);
        assert!(msg.contains("its group"), "{msg}");
        let msg = DirProblem::Owner(7).message(Path::new("/d"), 5);
        assert!(
            msg.contains("run this program as user id 7") && msg.contains("chown -R 5 /d"),
            "{msg}"
        );
    }

    #[test]
    fn check_private_dir_refuses_writable_dirs() {
        let dir = Scratch::new("check");
        check_private_dir(&dir.0).unwrap();
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = check_private_dir(&dir.0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("chmod 700"), "{err}");
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o700)).unwrap();
        let file = dir.0.join("f");
        std::fs::write(&file, b"").unwrap();
        assert!(check_private_dir(&file).is_err());
        assert!(check_private_dir(&dir.0.join("missing")).is_err());
    }
}
