//! Writing secrets to disk: files the owner alone can read, replaced atomically.

use std::io::{self, Write};
use std::path::Path;

/// Writes `contents` to `path` readable by the owner only (mode 0600 on Unix), through a
/// temporary file and a rename, so a crash never leaves half a key behind.
///
/// # Errors
/// Any IO error, with the path in its message.
pub fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut file = opts
        .open(&tmp)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot create {}: {e}", tmp.display())))?;
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display())))
}

/// Creates a directory (and parents) that the owner alone can enter (0700 on Unix).
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
    builder.create(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot create directory {}: {e}", path.display()),
        )
    })
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn files_are_owner_only() {
        let dir = std::env::temp_dir().join(format!("tw-private-{}", std::process::id()));
        create_private_dir(&dir).unwrap();
        let f = dir.join("secret");
        write_private(&f, b"k").unwrap();
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(std::fs::read(&f).unwrap(), b"k");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
