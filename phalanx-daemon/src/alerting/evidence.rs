//! Incident evidence: the recent records of a flow as a headers-only,
//! zstd-compressed pcapng (`<id>.pcapng.zst`), with the directory kept under
//! a total size and a file count by deleting the oldest files.

use std::borrow::Cow;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use phalanx_common::PacketMeta;

use super::owned_dir::{self, OwnedDirError};

use crate::anonymize::Anonymizer;
use crate::capture::frame::{PayloadMode, PcapngWriter, WriteError};

/// Suffix of evidence files.
pub const SUFFIX: &str = ".pcapng.zst";
/// zstd level: evidence is small, so a mid level costs nothing noticeable.
const ZSTD_LEVEL: i32 = 9;

/// Errors writing or reading evidence.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    /// File system error.
    #[error("evidence {path}: {source}")]
    Io {
        /// File or directory.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// pcapng encoding failed.
    #[error("evidence pcapng: {0}")]
    Pcapng(#[from] WriteError),
    /// The name is not one of ours (path traversal, other suffix).
    #[error("not an evidence file name: {0:?}")]
    BadName(String),
    /// The directory is not the daemon's to use.
    #[error(transparent)]
    Dir(#[from] OwnedDirError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EvidenceError + '_ {
    move |source| EvidenceError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Limits of the evidence directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Total bytes of evidence files kept.
    pub max_bytes: u64,
    /// Evidence files kept.
    pub max_files: usize,
}

/// A written evidence file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// File name inside the evidence directory.
    pub name: String,
    /// Compressed size.
    pub bytes: u64,
    /// Packets in the file.
    pub packets: usize,
}

/// The evidence directory.
#[derive(Clone, Debug)]
pub struct EvidenceStore {
    dir: PathBuf,
    retention: Retention,
    /// Anonymises what is written (`incidents.anonymize_key`); shared by
    /// the writes, which run on blocking threads.
    anon: Option<Arc<Mutex<Anonymizer>>>,
}

impl EvidenceStore {
    /// Opens the evidence directory, claiming it ([`owned_dir::claim`]:
    /// created, adopted when empty, refused when it holds other files).
    pub fn open(dir: &Path, retention: Retention) -> Result<Self, EvidenceError> {
        owned_dir::claim(dir, "incidents.evidence_dir", |n| {
            is_evidence_name(n) || owned_dir::is_our_temporary(n, is_evidence_name)
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            retention,
            anon: None,
        })
    }

    /// Anonymises the addresses of every file written from now on: the
    /// records', and those in the comment.
    pub fn with_anonymizer(mut self, anon: Anonymizer) -> Self {
        self.anon = Some(Arc::new(Mutex::new(anon)));
        self
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `records` (oldest first) for incident `id`, atomically, then
    /// enforces the retention limits (the new file is never the one deleted).
    /// With an anonymiser, the records and the addresses in `comment` are
    /// written anonymised.
    pub fn write(
        &self,
        id: &str,
        comment: &str,
        records: &[PacketMeta],
    ) -> Result<Written, EvidenceError> {
        let name = format!("{id}{SUFFIX}");
        check_name(&name)?;
        let (records, comment) = match &self.anon {
            None => (Cow::Borrowed(records), Cow::Borrowed(comment)),
            Some(anon) => {
                // A panic elsewhere cannot leave the mapping wrong, only
                // its cache short.
                let mut a = anon.lock().unwrap_or_else(PoisonError::into_inner);
                let mut rs = records.to_vec();
                rs.iter_mut().for_each(|r| a.packet(r));
                (Cow::Owned(rs), Cow::Owned(a.text(comment)))
            }
        };
        let (records, comment) = (records.as_ref(), comment.as_ref());
        let mut pcapng = PcapngWriter::new(Vec::new())?;
        let iface = pcapng.add_interface("phalanx")?;
        for (i, r) in records.iter().enumerate() {
            // The first packet carries the incident's summary: visible in
            // Wireshark's packet comments without any other file.
            let c = (i == 0).then_some(comment);
            pcapng.write_record(iface, r, PayloadMode::HeadersOnly, c)?;
        }
        let plain = pcapng.into_inner();
        let compressed = zstd::bulk::compress(&plain, ZSTD_LEVEL).map_err(io(&self.dir))?;
        let path = self.dir.join(&name);
        self.leave_room(compressed.len() as u64)?;
        write_atomic(&path, &compressed)?;
        self.rotate(&name)?;
        Ok(Written {
            name,
            bytes: compressed.len() as u64,
            packets: records.len(),
        })
    }

    /// Refuses a write that would leave less than [`KEEP_FREE_BYTES`] on
    /// the file system: evidence gives way to deliveries and the incident
    /// state, which a restart must find.
    fn leave_room(&self, bytes: u64) -> Result<(), EvidenceError> {
        let Some(free) = free_bytes(&self.dir) else {
            return Ok(());
        };
        if free < bytes.saturating_add(KEEP_FREE_BYTES) {
            return Err(io(&self.dir)(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                format!(
                    "{free} bytes free: the last {KEEP_FREE_BYTES} are kept for deliveries and incident state"
                ),
            )));
        }
        Ok(())
    }

    /// Path of an evidence file named by an incident annotation.
    pub fn path_of(&self, name: &str) -> Result<PathBuf, EvidenceError> {
        check_name(name)?;
        Ok(self.dir.join(name))
    }

    /// An evidence file as stored (zstd-compressed pcapng).
    pub fn read_compressed(&self, name: &str) -> Result<Vec<u8>, EvidenceError> {
        let path = self.path_of(name)?;
        fs::read(&path).map_err(io(&path))
    }

    /// The decompressed pcapng of an evidence file.
    pub fn read_pcapng(&self, name: &str) -> Result<Vec<u8>, EvidenceError> {
        let path = self.path_of(name)?;
        let f = fs::File::open(&path).map_err(io(&path))?;
        zstd::stream::decode_all(f).map_err(io(&path))
    }

    /// Deletes the oldest evidence files (by modification time, then name)
    /// until both limits hold, sparing `keep`.
    fn rotate(&self, keep: &str) -> Result<(), EvidenceError> {
        let mut files = Vec::new();
        for e in fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let e = e.map_err(io(&self.dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if !is_evidence_name(&name) {
                continue;
            }
            let Ok(meta) = e.metadata() else { continue };
            let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            files.push((mtime, name, meta.len()));
        }
        files.sort();
        let mut total: u64 = files.iter().map(|f| f.2).sum();
        let mut count = files.len();
        for (_, name, len) in files {
            if count <= self.retention.max_files && total <= self.retention.max_bytes {
                break;
            }
            if name == keep {
                continue;
            }
            let p = self.dir.join(&name);
            match fs::remove_file(&p) {
                Ok(()) => {
                    tracing::debug!(file = %name, "evidence rotated out");
                    total -= len;
                    count -= 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&p)(e)),
            }
        }
        Ok(())
    }
}

/// Whether `name` is an evidence file the daemon writes: an incident id
/// (16 hex digits of fingerprint, `-`, the start time in hex) and
/// [`SUFFIX`]. Rotation deletes nothing else.
pub fn is_evidence_name(name: &str) -> bool {
    let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    name.strip_suffix(SUFFIX)
        .and_then(|id| id.split_once('-'))
        .is_some_and(|(fp, start)| fp.len() == 16 && hex(fp) && hex(start) && start.len() <= 16)
}

fn check_name(name: &str) -> Result<(), EvidenceError> {
    if is_evidence_name(name) {
        Ok(())
    } else {
        Err(EvidenceError::BadName(name.to_string()))
    }
}

/// Free space evidence never writes into: twice the spool's reserve
/// ([`super::spool::RESERVE_BYTES`]), for deliveries and incident state.
pub const KEEP_FREE_BYTES: u64 = 8 << 20;

/// Bytes available to the daemon on the file system of `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is plain data; zero is a valid start.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid path and out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Writes `bytes` to `path` so that a reader sees either nothing or the
/// whole file: temporary file in the same directory, fsync, rename, fsync
/// of the directory (so the rename itself survives a crash).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), EvidenceError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(owned_dir::temporary_name(&name));
    let result = (|| {
        let mut f = owned_dir::create_private(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        fs::rename(&tmp, path).map_err(io(path))?;
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use phalanx_common::{ipproto, RecordKind};

    fn records(n: usize) -> Vec<PacketMeta> {
        (0..n)
            .map(|i| {
                let mut r = PacketMeta {
                    ts_ns: 1_700_000_000_000_000_000 + i as u64 * 1_000_000,
                    kind: RecordKind::Tcp as u8,
                    ip_version: 4,
                    l4_proto: ipproto::TCP,
                    ttl: 64,
                    sport: 40000,
                    dport: 80,
                    seq: 1000 + i as u32 * 1448,
                    payload_len: 1448,
                    ip_len: 1500,
                    tcp_flags: phalanx_common::tcp_flags::ACK,
                    ..PacketMeta::zeroed()
                };
                r.src_addr[..4].copy_from_slice(&[10, 0, 0, 1]);
                r.dst_addr[..4].copy_from_slice(&[10, 0, 0, 2]);
                r
            })
            .collect()
    }

    fn store(dir: &Path, max_bytes: u64, max_files: usize) -> EvidenceStore {
        EvidenceStore::open(
            dir,
            Retention {
                max_bytes,
                max_files,
            },
        )
        .expect("open")
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn writes_a_readable_pcapng() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let s = store(tmp.path(), 1 << 20, 10);
        let w = s
            .write("0123456789abcdef-1", "summary", &records(20))
            .expect("write");
        assert_eq!(w.name, "0123456789abcdef-1.pcapng.zst");
        assert_eq!(w.packets, 20);
        let plain = s.read_pcapng(&w.name).expect("read back");
        // Section header block magic, then the records come back parsed.
        assert_eq!(&plain[..4], &[0x0a, 0x0d, 0x0d, 0x0a]);
        let back: Vec<PacketMeta> = crate::capture::file::open(&tmp.path().join(&w.name))
            .expect("our own reader opens the zstd file")
            .collect::<Result<_, _>>()
            .expect("records");
        assert_eq!(back.len(), 20);
        assert!(back.iter().all(|r| r.dport == 80 && r.seq >= 1000));
        assert_eq!(
            listing(tmp.path()),
            vec![".phalanx", "0123456789abcdef-1.pcapng.zst"],
            "no temp file left"
        );
    }

    #[test]
    fn anonymised_evidence_holds_no_original_address() {
        let key = [7u8; 32];
        let comment =
            "syn_unanswered: 10.0.0.1:40000 sent 3 SYNs to 10.0.0.2:80 and got no answer in 3.0 s.";
        let has = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        let (plain_dir, anon_dir) = (
            tempfile::tempdir().expect("tempdir"),
            tempfile::tempdir().expect("tempdir"),
        );
        let plain = store(plain_dir.path(), 1 << 20, 10);
        let anon = store(anon_dir.path(), 1 << 20, 10).with_anonymizer(Anonymizer::new(&key));
        let id = "0123456789abcdef-1";
        let p = plain.write(id, comment, &records(20)).expect("write");
        let a = anon.write(id, comment, &records(20)).expect("write");
        let (p, a) = (
            plain.read_pcapng(&p.name).expect("read back"),
            anon.read_pcapng(&a.name).expect("read back"),
        );
        // The check sees the addresses where they are, in binary and text.
        let originals: [&[u8]; 4] = [&[10, 0, 0, 1], &[10, 0, 0, 2], b"10.0.0.1", b"10.0.0.2"];
        assert!(
            originals.iter().all(|o| has(&p, o)),
            "the plain file has them"
        );
        for o in originals {
            assert!(
                !has(&a, o),
                "{:?} left in the anonymised file",
                String::from_utf8_lossy(o)
            );
        }
        // The records carry the mapping of the key; the comment the same addresses.
        let mut m = Anonymizer::new(&key);
        let (src, dst) = (
            m.ipv4(std::net::Ipv4Addr::new(10, 0, 0, 1)),
            m.ipv4(std::net::Ipv4Addr::new(10, 0, 0, 2)),
        );
        let back: Vec<PacketMeta> =
            crate::capture::file::open(&anon_dir.path().join(format!("{id}{SUFFIX}")))
                .expect("our own reader opens it")
                .collect::<Result<_, _>>()
                .expect("records");
        assert_eq!(back.len(), 20);
        for r in &back {
            assert_eq!(
                (&r.src_addr[..4], &r.dst_addr[..4]),
                (&src.octets()[..], &dst.octets()[..])
            );
            assert_eq!((r.sport, r.dport), (40000, 80), "only addresses change");
        }
        assert_eq!(
            src.octets()[..3],
            dst.octets()[..3],
            "one /24 stays one /24"
        );
        let want = format!(
            "syn_unanswered: {src}:40000 sent 3 SYNs to {dst}:80 and got no answer in 3.0 s."
        );
        assert!(has(&a, want.as_bytes()), "comment {want:?}");
    }

    #[test]
    fn rotation_by_count() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let s = store(tmp.path(), 1 << 30, 3);
        for i in 0..5 {
            s.write(&format!("0123456789abcdef-{i}"), "x", &records(5))
                .expect("write");
            // Distinct mtimes on coarse file systems.
            std::thread::sleep(std::time::Duration::from_millis(15));
        }
        assert_eq!(
            listing(tmp.path()),
            vec![
                ".phalanx",
                "0123456789abcdef-2.pcapng.zst",
                "0123456789abcdef-3.pcapng.zst",
                "0123456789abcdef-4.pcapng.zst"
            ],
            "the 3 newest are kept"
        );
    }

    #[test]
    fn rotation_by_size() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let probe = store(tmp.path(), 1 << 30, 100)
            .write("0123456789abcdef-ff", "x", &records(50))
            .expect("write");
        fs::remove_file(tmp.path().join(&probe.name)).expect("rm");
        // Room for two files of this size, not three.
        let s = store(tmp.path(), probe.bytes * 2 + probe.bytes / 2, 100);
        for i in 0..4 {
            s.write(&format!("0123456789abcdef-{i}"), "x", &records(50))
                .expect("write");
            std::thread::sleep(std::time::Duration::from_millis(15));
        }
        let left = listing(tmp.path());
        assert_eq!(
            left,
            vec![
                ".phalanx",
                "0123456789abcdef-2.pcapng.zst",
                "0123456789abcdef-3.pcapng.zst"
            ]
        );
        let total: u64 = left[1..]
            .iter()
            .map(|n| fs::metadata(tmp.path().join(n)).expect("meta").len())
            .sum();
        assert!(
            total <= probe.bytes * 2 + probe.bytes / 2,
            "total {total} within the limit"
        );
        // A single file over the limit is still kept: it is the newest evidence.
        let tiny = store(tmp.path(), 1, 100);
        tiny.write("0123456789abcdef-b19", "x", &records(50))
            .expect("write");
        assert_eq!(
            listing(tmp.path()),
            vec![".phalanx", "0123456789abcdef-b19.pcapng.zst"]
        );
    }

    #[test]
    fn names_are_confined_to_the_directory() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let s = store(tmp.path(), 1 << 20, 10);
        for bad in [
            "../x.pcapng.zst",
            "a/b.pcapng.zst",
            ".tmp-x.pcapng.zst",
            "x.txt",
            "holiday.pcapng.zst",
        ] {
            assert!(
                matches!(s.path_of(bad), Err(EvidenceError::BadName(_))),
                "{bad:?} must be refused"
            );
        }
    }
}
