//! On-disk spool of pending deliveries: one JSON file per delivery, written
//! atomically before the first attempt and removed once the delivery is
//! settled, so neither a receiver outage nor a restart loses one.
//!
//! When the disk fills, deliveries and the incident state are the last
//! writes to fail: the spool keeps [`RESERVE_BYTES`] allocated in
//! [`RESERVE_FILE`] and gives them up to a write that found the disk full
//! ([`write_reserved`]); the reserve is allocated again once there is room.
//! Evidence, which can be rebuilt from nothing, is not written into the
//! last free space at all (see the evidence store).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::alerting::evidence::{write_atomic, EvidenceError};
use crate::alerting::owned_dir::{self, OwnedDirError};

/// Suffix of spool files.
const SUFFIX: &str = ".json";
/// Suffix a damaged spool file is renamed with.
const BAD: &str = ".bad";

/// The file holding the spool's reserve of disk space.
pub const RESERVE_FILE: &str = "space.reserve";
/// The reserve: room for hundreds of deliveries and the incident state;
/// evidence leaves twice as much free.
pub const RESERVE_BYTES: u64 = crate::alerting::evidence::KEEP_FREE_BYTES / 2;

/// Whether an error is a full disk (or quota).
fn disk_full(e: &EvidenceError) -> bool {
    matches!(e, EvidenceError::Io { source, .. }
        if matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)))
}

/// Writes `bytes` to `path`, a file of the spool directory, atomically;
/// on a full disk the directory's reserve is given up and the write tried
/// again. After a write that succeeds, a missing reserve is allocated
/// again if the room is there.
pub fn write_reserved(path: &Path, bytes: &[u8]) -> Result<(), EvidenceError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let written = match write_atomic(path, bytes) {
        Err(e) if disk_full(&e) && fs::remove_file(dir.join(RESERVE_FILE)).is_ok() => {
            tracing::warn!(
                dir = %dir.display(),
                "disk full: the spool's reserve is given up for deliveries and incident state"
            );
            write_atomic(path, bytes)
        }
        r => r,
    };
    if written.is_ok() {
        refill(dir);
    }
    written
}

/// Allocates the reserve in `dir` if it is missing and the room is there
/// (really allocated: a sparse file would reserve nothing).
fn refill(dir: &Path) {
    use std::os::fd::AsRawFd;
    let path = dir.join(RESERVE_FILE);
    if path.exists() {
        return;
    }
    let tmp = dir.join(owned_dir::temporary_name(RESERVE_FILE));
    let allocated = owned_dir::create_private(&tmp).is_ok_and(|f| {
        // SAFETY: a valid descriptor of a file we just created.
        unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, RESERVE_BYTES as libc::off_t) == 0 }
    });
    if !allocated || fs::rename(&tmp, &path).is_err() {
        let _ = fs::remove_file(&tmp);
    }
}

/// Whether `name` is a spool file: `<created ns, 20 digits>-<pid, 10
/// digits>-<sequence, 8 digits>.json`, as [`Spool::put`] names them.
/// Loading, renaming and removal touch nothing else.
pub fn is_spool_name(name: &str) -> bool {
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    let Some(stem) = name.strip_suffix(SUFFIX) else {
        return false;
    };
    let parts: Vec<&str> = stem.split('-').collect();
    matches!(parts.as_slice(), [t, pid, seq] if digits(t, 20) && digits(pid, 10) && digits(seq, 8))
}

/// Errors of the spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// File system error.
    #[error("spool {path}: {source}")]
    Io {
        /// File or directory.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The spool holds `spool_max_files` deliveries already.
    #[error("spool {0} is full")]
    Full(String),
    /// A delivery could not be encoded.
    #[error("spool encoding: {0}")]
    Encode(#[from] serde_json::Error),
    /// The directory is not the daemon's to use.
    #[error(transparent)]
    Dir(#[from] OwnedDirError),
}

impl From<EvidenceError> for SpoolError {
    fn from(e: EvidenceError) -> Self {
        match e {
            EvidenceError::Io { path, source } => SpoolError::Io { path, source },
            other => SpoolError::Io {
                path: String::new(),
                source: std::io::Error::other(other.to_string()),
            },
        }
    }
}

/// A delivery as spooled: who gets which exact body. Secrets are not
/// stored: signatures are computed when sending.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Receiver name (see `alerting::delivery::Receiver::name`).
    pub receiver: String,
    /// When the delivery was created (ns since the epoch); bounds retries.
    pub created_ns: u64,
    /// The exact request body.
    pub body: String,
}

/// A spooled delivery and its file name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spooled {
    /// File name inside the spool directory (orders deliveries).
    pub name: String,
    /// The delivery.
    pub delivery: Delivery,
}

/// The spool directory.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_files: usize,
    seq: AtomicU64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl Spool {
    /// Opens the spool directory, claiming it ([`owned_dir::claim`]:
    /// created, adopted when empty, refused when it holds other files).
    /// `also` names the other files the daemon keeps there.
    pub fn open(dir: &Path, max_files: usize, also: &[&str]) -> Result<Self, SpoolError> {
        let ours = |n: &str| is_spool_name(n) || n == RESERVE_FILE || also.contains(&n);
        owned_dir::claim(dir, "incidents.spool_dir", |n| {
            ours(n)
                || n.strip_suffix(BAD).is_some_and(is_spool_name)
                || owned_dir::is_our_temporary(n, ours)
        })?;
        refill(dir);
        Ok(Self {
            dir: dir.to_path_buf(),
            max_files,
            seq: AtomicU64::new(0),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes a delivery; returns its file name. Names sort in creation order.
    pub fn put(&self, d: &Delivery) -> Result<String, SpoolError> {
        if self.names()?.len() >= self.max_files {
            return Err(SpoolError::Full(self.dir.display().to_string()));
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "{:020}-{:010}-{:08}{SUFFIX}",
            d.created_ns,
            std::process::id(),
            seq
        );
        let body = serde_json::to_vec(d)?;
        write_reserved(&self.dir.join(&name), &body)?;
        Ok(name)
    }

    /// Removes a settled delivery (already gone is fine).
    pub fn remove(&self, name: &str) -> Result<(), SpoolError> {
        let p = self.dir.join(name);
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&p)(e)),
        }
    }

    /// Every pending delivery, oldest first. Temporary files of interrupted
    /// writes are deleted; unreadable files are renamed `*.bad` (kept for
    /// inspection, never replayed) and reported in the second list.
    pub fn load(&self) -> Result<(Vec<Spooled>, Vec<String>), SpoolError> {
        let mut out = Vec::new();
        let mut bad = Vec::new();
        for e in fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let e = e.map_err(io(&self.dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if owned_dir::is_our_temporary(&name, is_spool_name) {
                let _ = fs::remove_file(e.path());
            }
        }
        for name in self.names()? {
            let p = self.dir.join(&name);
            let parsed = fs::read(&p)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Delivery>(&b).map_err(|e| e.to_string()));
            match parsed {
                Ok(delivery) => out.push(Spooled { name, delivery }),
                Err(why) => {
                    tracing::warn!(file = %p.display(), %why, "unreadable spool file set aside");
                    let _ = fs::rename(&p, self.dir.join(format!("{name}{BAD}")));
                    bad.push(name);
                }
            }
        }
        Ok((out, bad))
    }

    /// Names of the spooled deliveries, sorted.
    fn names(&self) -> Result<Vec<String>, SpoolError> {
        let mut v = Vec::new();
        for e in fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let e = e.map_err(io(&self.dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if is_spool_name(&name) {
                v.push(name);
            }
        }
        v.sort();
        Ok(v)
    }

    /// Deliveries pending on disk.
    pub fn len(&self) -> Result<usize, SpoolError> {
        Ok(self.names()?.len())
    }

    /// Whether nothing is pending on disk.
    pub fn is_empty(&self) -> Result<bool, SpoolError> {
        Ok(self.len()? == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(receiver: &str, t: u64) -> Delivery {
        Delivery {
            receiver: receiver.into(),
            created_ns: t,
            body: format!("{{\"t\":{t}}}"),
        }
    }

    #[test]
    fn write_replay_remove() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let s = Spool::open(tmp.path(), 100, &[]).expect("open");
        let a = s.put(&d("am", 2)).expect("put");
        let b = s.put(&d("hook", 1)).expect("put");
        let c = s.put(&d("hook", 3)).expect("put");
        // An interrupted write and a damaged file.
        let damaged = "00000000000000000005-0000000001-00000000.json";
        let interrupted = format!(".tmp-1-{damaged}");
        fs::write(tmp.path().join(&interrupted), b"{").expect("write");
        fs::write(tmp.path().join(damaged), b"{not json").expect("write");

        // A fresh handle (as after a restart) sees the same deliveries, oldest first.
        let s2 = Spool::open(tmp.path(), 100, &[]).expect("reopen");
        let (loaded, bad) = s2.load().expect("load");
        let names: Vec<&str> = loaded.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(names, vec![b.as_str(), a.as_str(), c.as_str()]);
        assert_eq!(loaded[1].delivery, d("am", 2), "content round-trips");
        assert_eq!(bad.len(), 1, "damaged file reported");
        assert!(!tmp.path().join(&interrupted).exists(), "temp file cleaned");
        assert!(tmp.path().join(format!("{damaged}.bad")).exists());

        s2.remove(&a).expect("remove");
        s2.remove(&a).expect("removing twice is fine");
        assert_eq!(s2.len().expect("len"), 2);
    }

    #[test]
    fn other_programs_files_are_refused_never_touched() {
        let tmp = tempfile::tempdir().expect("tempdir");
        for f in ["report.json", ".tmp-7-draft"] {
            fs::write(tmp.path().join(f), b"theirs").expect("write");
        }
        let e = Spool::open(tmp.path(), 10, &[]).expect_err("a shared folder");
        assert!(e.to_string().contains("incidents.spool_dir"), "{e}");
        for f in ["report.json", ".tmp-7-draft"] {
            assert!(tmp.path().join(f).exists(), "{f} untouched");
        }
        // Once claimed, a file dropped there later is still left alone.
        let own = tempfile::tempdir().expect("tempdir");
        let s = Spool::open(own.path(), 10, &["open-incidents.state"]).expect("open");
        fs::write(own.path().join("report.json"), b"theirs").expect("write");
        fs::write(own.path().join("open-incidents.state"), b"[]").expect("write");
        let (loaded, bad) = s.load().expect("load");
        assert!(loaded.is_empty() && bad.is_empty());
        assert!(own.path().join("report.json").exists());
        Spool::open(own.path(), 10, &["open-incidents.state"]).expect("its own again");
    }

    #[test]
    fn bounded() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let s = Spool::open(tmp.path(), 2, &[]).expect("open");
        s.put(&d("x", 1)).expect("1");
        s.put(&d("x", 2)).expect("2");
        assert!(matches!(s.put(&d("x", 3)), Err(SpoolError::Full(_))));
    }
}
