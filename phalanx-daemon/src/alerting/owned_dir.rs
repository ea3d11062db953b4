//! The directories the daemon writes (evidence, spool and incident state)
//! hold its own files only, and it touches nothing else.
//!
//! A directory is the daemon's when it carries the marker file [`MARKER`].
//! One that does not exist is created (mode 0700) with the marker; an
//! empty one (or one systemd's `StateDirectory=` just made) is adopted; one
//! holding only files of the daemon's own naming (an install from before
//! the marker) is migrated; anything else is refused, naming a foreign
//! file, so pointing `spool_dir` at a shared folder (or `/`) is a config
//! error rather than the daemon renaming or deleting other programs'
//! files. Files it writes are mode 0600.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

/// Name of the marker file.
pub const MARKER: &str = ".phalanx";

/// A directory the daemon may not use.
#[derive(Debug, thiserror::Error)]
pub enum OwnedDirError {
    /// It holds another program's files.
    #[error(
        "{key} {dir}: holds files that are not Phalanx's (e.g. {example:?}); use an empty or \
         dedicated directory"
    )]
    Foreign {
        /// The setting (`incidents.spool_dir`).
        key: &'static str,
        /// The directory.
        dir: String,
        /// One foreign entry.
        example: String,
    },
    /// A file system error.
    #[error("{key} {dir}: {source}")]
    Io {
        /// The setting.
        key: &'static str,
        /// The directory.
        dir: String,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// Makes `dir` the daemon's (see the module documentation); `ours` says
/// whether a file name is one the daemon writes there.
pub fn claim(
    dir: &Path,
    key: &'static str,
    ours: impl Fn(&str) -> bool,
) -> Result<(), OwnedDirError> {
    let io = |source| OwnedDirError::Io {
        key,
        dir: dir.display().to_string(),
        source,
    };
    if dir.join(MARKER).is_file() {
        return Ok(());
    }
    if dir.exists() {
        for e in fs::read_dir(dir).map_err(io)? {
            let name = e.map_err(io)?.file_name().to_string_lossy().into_owned();
            if !ours(&name) {
                return Err(OwnedDirError::Foreign {
                    key,
                    dir: dir.display().to_string(),
                    example: name,
                });
            }
        }
    } else {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io)?;
    let mut f = create_private(&dir.join(MARKER)).map_err(io)?;
    f.write_all(b"Phalanx writes here; it creates, rotates and deletes only its own files.\n")
        .map_err(io)
}

/// Creates (or truncates) a file readable by the daemon's user only.
pub fn create_private(path: &Path) -> std::io::Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

/// The temporary name [`super::evidence::write_atomic`] writes `name`
/// under before renaming it: `.tmp-<pid>-<name>`.
pub fn temporary_name(name: &str) -> String {
    format!(".tmp-{}-{name}", std::process::id())
}

/// Whether `name` is a [`temporary_name`] of a file `ours` accepts.
pub fn is_our_temporary(name: &str, ours: impl Fn(&str) -> bool) -> bool {
    name.strip_prefix(".tmp-")
        .and_then(|rest| rest.split_once('-'))
        .is_some_and(|(pid, rest)| {
            !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) && ours(rest)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours(name: &str) -> bool {
        name.ends_with(".mine")
    }

    #[test]
    fn new_empty_and_own_directories_are_claimed_foreign_ones_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let fresh = tmp.path().join("a/b");
        claim(&fresh, "k", ours).expect("created");
        assert!(fresh.join(MARKER).is_file());
        let mode = fs::metadata(&fresh).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        claim(&fresh, "k", ours).expect("marked: ours");

        let empty = tmp.path().join("empty");
        fs::create_dir(&empty).expect("mkdir");
        claim(&empty, "k", ours).expect("adopted");

        let old = tmp.path().join("old");
        fs::create_dir(&old).expect("mkdir");
        fs::write(old.join("1.mine"), b"x").expect("write");
        claim(&old, "k", ours).expect("migrated");

        let shared = tmp.path().join("shared");
        fs::create_dir(&shared).expect("mkdir");
        fs::write(shared.join("1.mine"), b"x").expect("write");
        fs::write(shared.join("report.json"), b"x").expect("write");
        let e = claim(&shared, "incidents.spool_dir", ours).expect_err("foreign");
        assert!(
            e.to_string().contains("holds files that are not Phalanx's")
                && e.to_string().contains("report.json"),
            "{e}"
        );
        assert!(!shared.join(MARKER).exists(), "nothing written there");
        assert!(claim(Path::new("/"), "incidents.evidence_dir", ours).is_err());
    }

    #[test]
    fn temporaries_are_ours_only_for_our_names() {
        assert!(is_our_temporary(".tmp-123-1.mine", ours));
        assert!(!is_our_temporary(".tmp-123-notes.txt", ours));
        assert!(!is_our_temporary(".tmp-abc-1.mine", ours));
        assert!(!is_our_temporary(".tmp-1.mine", ours));
    }
}
