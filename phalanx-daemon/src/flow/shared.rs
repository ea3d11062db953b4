//! The live flow table, shared by its one writer (the capture's flow
//! stage) and its readers (the API, the rules, the metrics).
//!
//! Capture must never lose a record to a reader, so readers never hold the
//! lock across their work: [`SharedTable::scan`] copies the summaries of
//! [`SCAN_CHUNK`] flows under the lock and hands them to the reader without
//! it, and before each chunk it lets a waiting writer go first. The longest
//! a writer waits is one chunk's copy, whatever the table's size and
//! whatever the reader does with the flows (sort, evaluate, serialise).

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError, TryLockResult};
use std::time::{Duration, Instant};

use super::{FlowSummary, FlowTable};

/// Flows copied per lock in a scan: some 0.3 ms of work under the lock.
pub const SCAN_CHUNK: usize = 256;
/// How long a scan stands back for a waiting writer before each chunk.
const WRITER_FIRST_MAX: Duration = Duration::from_millis(20);

/// A lock of the flow state was poisoned by a panic elsewhere.
#[derive(Debug, thiserror::Error)]
#[error("flow state poisoned")]
pub struct Poisoned;

/// The flow table behind its lock, with the writer's claim to go first.
pub struct SharedTable {
    table: Mutex<FlowTable>,
    writer_waiting: AtomicBool,
}

impl SharedTable {
    /// Shares `table`.
    pub fn new(table: FlowTable) -> Self {
        Self {
            table: Mutex::new(table),
            writer_waiting: AtomicBool::new(false),
        }
    }

    /// A short look at the table (its size, its counters).
    pub fn read<R>(&self, f: impl FnOnce(&FlowTable) -> R) -> Result<R, Poisoned> {
        self.table.lock().map(|t| f(&t)).map_err(|_| Poisoned)
    }

    /// A change to the table, waiting for the lock.
    pub fn write<R>(&self, f: impl FnOnce(&mut FlowTable) -> R) -> Result<R, Poisoned> {
        self.table
            .lock()
            .map(|mut t| f(&mut t))
            .map_err(|_| Poisoned)
    }

    /// The table for the writer if it is free; if not, scans stand back
    /// before their next chunk until the writer has had it.
    pub fn try_write(&self) -> TryLockResult<MutexGuard<'_, FlowTable>> {
        let got = self.table.try_lock();
        self.writer_waiting.store(got.is_err(), Ordering::Release);
        got
    }

    /// Visits the live flows from slot `from` on, in slot order, a chunk
    /// copied per lock. `visit` returns `Break` to stop at a flow; the
    /// result is that flow's slot (where a next scan starts to visit it
    /// again), or `None` when every flow was visited. Flows that start or
    /// leave during the scan may or may not be visited; none twice.
    pub fn scan(
        &self,
        from: u32,
        mut visit: impl FnMut(u32, &FlowSummary) -> ControlFlow<()>,
    ) -> Result<Option<u32>, Poisoned> {
        let mut chunk = Vec::with_capacity(SCAN_CHUNK);
        let mut next = Some(from);
        while let Some(at) = next {
            chunk.clear();
            next = self.politely()?.summaries_from(at, SCAN_CHUNK, &mut chunk);
            for (slot, f) in &chunk {
                if visit(*slot, f).is_break() {
                    return Ok(Some(*slot));
                }
            }
        }
        Ok(None)
    }

    /// The lock for a scan's chunk, taken only while the writer is not
    /// waiting for it (up to [`WRITER_FIRST_MAX`]): a scanner never queues
    /// in the lock, where it would take the lock before the writer, which
    /// only tries it.
    fn politely(&self) -> Result<MutexGuard<'_, FlowTable>, Poisoned> {
        let deadline = Instant::now() + WRITER_FIRST_MAX;
        loop {
            let writer_first =
                self.writer_waiting.load(Ordering::Acquire) && Instant::now() < deadline;
            if !writer_first {
                match self.table.try_lock() {
                    Ok(t) => return Ok(t),
                    Err(TryLockError::Poisoned(_)) => return Err(Poisoned),
                    Err(TryLockError::WouldBlock) => {}
                }
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::FlowConfig;

    fn table_of(n: u16) -> SharedTable {
        let mut t = FlowTable::new(FlowConfig::default());
        for port in 0..n {
            t.ingest(&crate::flow::udp_record(
                1024 + port,
                1_000 + u64::from(port),
            ));
        }
        SharedTable::new(t)
    }

    #[test]
    fn a_scan_visits_every_flow_once_across_chunks() {
        let n = (SCAN_CHUNK * 2 + 7) as u16;
        let t = table_of(n);
        let mut ports = Vec::new();
        let end = t
            .scan(0, |_, f| {
                ports.push(f.sport);
                ControlFlow::Continue(())
            })
            .expect("scan");
        assert_eq!(end, None);
        ports.sort_unstable();
        assert_eq!(ports, (1024..1024 + n).collect::<Vec<_>>());
    }

    #[test]
    fn a_stopped_scan_resumes_at_the_flow_it_stopped_at() {
        let t = table_of(600);
        let mut first = Vec::new();
        let at = t
            .scan(0, |_, f| {
                if first.len() == 300 {
                    return ControlFlow::Break(());
                }
                first.push(f.sport);
                ControlFlow::Continue(())
            })
            .expect("scan")
            .expect("stopped");
        let mut rest = Vec::new();
        t.scan(at, |_, f| {
            rest.push(f.sport);
            ControlFlow::Continue(())
        })
        .expect("scan");
        assert_eq!(first.len() + rest.len(), 600);
        first.extend(rest);
        first.sort_unstable();
        first.dedup();
        assert_eq!(first.len(), 600);
    }

    #[test]
    fn a_scan_visits_without_the_lock() {
        let t = table_of(3 * SCAN_CHUNK as u16);
        let mut written = 0;
        t.scan(0, |_, _| {
            // What a reader does with a flow (rank, evaluate, serialise)
            // leaves the writer free.
            if let Ok(mut w) = t.try_write() {
                w.advance(2_000);
                written += 1;
            }
            ControlFlow::Continue(())
        })
        .expect("scan");
        assert_eq!(written, 3 * SCAN_CHUNK);
    }

    #[test]
    fn a_busy_writer_is_let_in_before_the_next_chunk() {
        let t = table_of(10);
        let guard = t.table.lock().expect("lock");
        assert!(t.try_write().is_err());
        assert!(t.writer_waiting.load(Ordering::Acquire));
        drop(guard);
        assert!(t.try_write().is_ok());
        assert!(!t.writer_waiting.load(Ordering::Acquire));
    }
}
