//! On-disk spool of pending deliveries: one JSON file per delivery, written
//! atomically before the first attempt and removed once the delivery is
//! settled, so neither a receiver outage nor a restart loses one.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::alerting::evidence::{write_atomic, EvidenceError};

/// Suffix of spool files.
const SUFFIX: &str = ".json";

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
    /// Opens (creating it if needed) the spool directory.
    pub fn open(dir: &Path, max_files: usize) -> Result<Self, SpoolError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
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
        write_atomic(&self.dir.join(&name), &body)?;
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
            if name.starts_with(".tmp-") {
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
                    let _ = fs::rename(&p, self.dir.join(format!("{name}.bad")));
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
            if name.ends_with(SUFFIX) && !name.starts_with('.') {
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
        let s = Spool::open(tmp.path(), 100).expect("open");
        let a = s.put(&d("am", 2)).expect("put");
        let b = s.put(&d("hook", 1)).expect("put");
        let c = s.put(&d("hook", 3)).expect("put");
        // An interrupted write and a damaged file.
        fs::write(tmp.path().join(".tmp-1-x.json"), b"{").expect("write");
        fs::write(tmp.path().join("00000000000000000005-x.json"), b"{not json").expect("write");

        // A fresh handle (as after a restart) sees the same deliveries, oldest first.
        let s2 = Spool::open(tmp.path(), 100).expect("reopen");
        let (loaded, bad) = s2.load().expect("load");
        let names: Vec<&str> = loaded.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(names, vec![b.as_str(), a.as_str(), c.as_str()]);
        assert_eq!(loaded[1].delivery, d("am", 2), "content round-trips");
        assert_eq!(bad.len(), 1, "damaged file reported");
        assert!(
            !tmp.path().join(".tmp-1-x.json").exists(),
            "temp file cleaned"
        );
        assert!(tmp.path().join("00000000000000000005-x.json.bad").exists());

        s2.remove(&a).expect("remove");
        s2.remove(&a).expect("removing twice is fine");
        assert_eq!(s2.len().expect("len"), 2);
    }

    #[test]
    fn bounded() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let s = Spool::open(tmp.path(), 2).expect("open");
        s.put(&d("x", 1)).expect("1");
        s.put(&d("x", 2)).expect("2");
        assert!(matches!(s.put(&d("x", 3)), Err(SpoolError::Full(_))));
    }
}
