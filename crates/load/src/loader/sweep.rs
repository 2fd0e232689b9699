//! The sweep ([`super::plan`]): a thread that reads a loader's columns into memory, rows in order
//! (a stretch of rows at a time, every column's bytes for the stretch), and maps each piece into
//! the process as it arrives (`MADV_POPULATE_READ`), so the gathers find the pages it passed both
//! in memory and in the page tables. Its [`Progress`] says how many rows it has passed; a batch
//! is gathered once the sweep has passed every row it reads.
//!
//! How it reads depends on the device's read-ahead, as measured on this VM's virtio disk (1 GiB,
//! evicted, 5 alternated rounds, medians; `read()` in 1 MiB pieces for reference):
//!
//! | read-ahead | faults (populate alone) | `pread` 1 MiB + populate | `WILLNEED` ahead + populate | `read()` |
//! |-----------:|-----:|-----:|-----:|-----:|
//! | 8 MiB      | 0.41 s | 0.46 s | 0.72 s | 0.66 s |
//! | 128 KiB    | 0.79 s | 0.46 s | 0.84 s | 0.50 s |
//!
//! With a large read-ahead (at least [`LARGE_READ_AHEAD`]) a fault's read-around reads a whole
//! window, in large folios, so the populate's own faults read the file and no byte is copied.
//! With a small one a fault reads 128 KiB at a time, one request in flight, so the sweep reads
//! each piece with `pread` into a scratch buffer first (the read path sends the device requests
//! as large as the read, and its readahead runs ahead of it): one copy into a 1 MiB buffer that
//! stays in the cache, for the disk's sequential speed. `MADV_WILLNEED` reads in single pages and
//! lost on both.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::column::Shared;
use super::waits::{lock, wait_until};
use crate::file::OpenFile;
use crate::Error;

/// A read-ahead at least this large reads well enough through the populate's own faults.
const LARGE_READ_AHEAD: u64 = 1 << 20;
/// Bytes of a stretch of rows (all columns) mapped at a time when the faults read: one
/// read-around window or more.
const FAULT_PIECE: u64 = 8 << 20;
/// Bytes read with one `pread` (and a stretch of rows, all columns, when the sweep reads).
const READ_PIECE: usize = 1 << 20;

/// A running sweep: setting `stop` ends it after the stretch it is mapping; `progress` says how
/// far it got.
pub(super) struct Sweep {
    pub(super) stop: Arc<AtomicBool>,
    pub(super) progress: Arc<Progress>,
}

/// How far a sweep got: the rows `0..n` of every column are mapped. Gathers wait on it.
#[derive(Default)]
pub(super) struct Progress {
    state: Mutex<Swept>,
    moved: Condvar,
}

#[derive(Default)]
struct Swept {
    /// Rows swept; `u64::MAX` once the sweep has ended, however it ended.
    rows: u64,
    /// The file the sweep found shorter than its mapping (its path, length, mapped length): the
    /// gathers waiting for the sweep report it rather than touch its vanished pages (`SIGBUS`).
    shrank: Option<(PathBuf, u64, u64)>,
}

impl Progress {
    /// Waits until the rows below `rows` are swept or the sweep has ended (`Ok(true)`), or until
    /// `stop` is set (`Ok(false)`), looking at `stop` every `poll`.
    ///
    /// # Errors
    ///
    /// [`Error::Shrank`] when the sweep ended on a file shorter than its mapping.
    pub(super) fn wait_for(
        &self,
        rows: u64,
        stop: &AtomicBool,
        poll: Duration,
    ) -> Result<bool, Error> {
        while !self.passed_within(rows, poll) {
            if stop.load(Ordering::Acquire) {
                return Ok(false);
            }
        }
        match &lock(&self.state).shrank {
            Some((path, len, mapped)) => Err(Error::Shrank {
                path: path.clone(),
                len: *len,
                mapped: *mapped,
            }),
            None => Ok(true),
        }
    }

    /// Whether the rows below `rows` are swept (or the sweep has ended) within `timeout` (any
    /// length: one past what an `Instant` can hold waits as long as it takes).
    pub(super) fn passed_within(&self, rows: u64, timeout: Duration) -> bool {
        wait_until(&self.moved, lock(&self.state), timeout, |s| s.rows >= rows).1
    }

    /// Whether the sweep has ended.
    pub(super) fn ended(&self) -> bool {
        lock(&self.state).rows == u64::MAX
    }

    fn set(&self, rows: u64) {
        lock(&self.state).rows = rows;
        self.moved.notify_all();
    }

    /// Records that the sweep found a file shorter than its mapping (it then ends).
    fn shrank(&self, e: Error) {
        if let Error::Shrank { path, len, mapped } = e {
            lock(&self.state).shrank = Some((path, len, mapped));
        }
    }
}

/// Marks the sweep ended when dropped: its thread returns or unwinds.
struct EndOnDrop(Arc<Progress>);

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        self.0.set(u64::MAX);
    }
}

/// Starts sweeping the `rows` rows of `shared`'s columns, on a device whose read-ahead is
/// `read_ahead` (when known), in stretches of rows in order, every column's bytes for a stretch
/// before the next stretch, so that an epoch in order can gather each batch as soon as the sweep
/// has passed it.
///
/// # Errors
///
/// The thread could not be started.
pub(super) fn start(
    shared: Arc<Shared>,
    rows: u64,
    read_ahead: Option<u64>,
) -> std::io::Result<Sweep> {
    // Unknown (tmpfs, another platform): the reads cost little or nothing there; faults do.
    let reads = read_ahead.is_some_and(|ra| ra < LARGE_READ_AHEAD);
    let stretch_bytes = if reads {
        READ_PIECE as u64
    } else {
        FAULT_PIECE
    };
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(Progress::default());
    let (flag, end) = (Arc::clone(&stop), EndOnDrop(Arc::clone(&progress)));
    std::thread::Builder::new()
        .name("mmtensor-sweep".into())
        .spawn(move || {
            let end = end;
            sweep(&shared, rows, stretch_bytes, reads, &flag, &end.0);
        })?;
    Ok(Sweep { stop, progress })
}

/// Maps rows `0..rows` of the columns, and reports to `progress` the rows every column has been
/// swept past. Each column is swept `stretch_bytes` of its own at a time (a narrow column, labels
/// say, many rows at once), so that every read is a large one: interleaving the wide column's
/// reads with small ones elsewhere in the file would break the kernel's sequential readahead.
/// With `reads`, each piece is read with `pread` before it is mapped.
fn sweep(
    shared: &Shared,
    rows: u64,
    stretch_bytes: u64,
    reads: bool,
    stop: &AtomicBool,
    progress: &Progress,
) {
    let mut scratch = if reads {
        vec![0u8; READ_PIECE]
    } else {
        Vec::new()
    };
    let columns = &shared.columns;
    let widest = columns
        .iter()
        .map(|c| c.row_bytes as u64)
        .max()
        .unwrap_or(1);
    let step = (stretch_bytes / widest.max(1)).max(1);
    // The rows each column has been swept past.
    let mut swept = vec![0u64; columns.len()];
    let mut done = 0;
    while done < rows {
        let target = rows.min(done.saturating_add(step));
        for (col, at) in columns.iter().zip(swept.iter_mut()) {
            if *at >= target {
                continue;
            }
            let own = (stretch_bytes / (col.row_bytes as u64).max(1)).max(1);
            let end = rows.min(target.max(at.saturating_add(own)));
            let mut pieces = Vec::new();
            col.source
                .pieces(*at..end, col.row_bytes as u64, |tensor, bytes| {
                    let file = tensor.store().file();
                    let base = tensor.byte_range().start;
                    if file.is_mapped() && !bytes.is_empty() {
                        pieces.push((Arc::clone(file), base + bytes.start..base + bytes.end));
                    }
                });
            for (file, range) in pieces {
                if stop.load(Ordering::Acquire) {
                    return;
                }
                if reads {
                    read(&file, range.clone(), &mut scratch);
                }
                // A file that shrank under its mapping: the gathers waiting for the sweep report
                // it (a gather touching a vanished page would end the process with SIGBUS).
                // Any other failure ends the sweep and leaves the rows to the gathers' own reads.
                if let Err(e) = file
                    .check_len()
                    .and_then(|()| file.populate(range, "sweep"))
                {
                    progress.shrank(e);
                    return;
                }
            }
            *at = end;
        }
        done = swept.iter().copied().min().unwrap_or(rows);
        progress.set(done);
    }
}

/// Reads `range` of `file` with `pread`s into `scratch` (the bytes are dropped: the point is
/// the page cache). A short or failed read leaves the rest to the populate's faults.
fn read(file: &OpenFile, range: Range<u64>, scratch: &mut [u8]) {
    let mut at = range.start;
    while at < range.end {
        let len = ((range.end - at) as usize).min(scratch.len());
        match file.read_at(&mut scratch[..len], at) {
            Ok(n) if n > 0 => at += n as u64,
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_ends_when_the_rows_are_swept_when_the_sweep_ends_or_when_stopped() {
        let progress = Arc::new(Progress::default());
        let stop = AtomicBool::new(false);
        let poll = Duration::from_millis(1);
        progress.set(10);
        assert!(progress.wait_for(10, &stop, poll).unwrap());
        assert!(progress.passed_within(10, Duration::ZERO));
        assert!(!progress.passed_within(11, poll), "not that far");
        stop.store(true, Ordering::Release);
        assert!(
            !progress.wait_for(11, &stop, poll).unwrap(),
            "stopped first"
        );
        let stop = AtomicBool::new(false);
        let p = Arc::clone(&progress);
        let ender = std::thread::spawn(move || drop(EndOnDrop(p)));
        assert!(
            progress.wait_for(u64::MAX - 1, &stop, poll).unwrap(),
            "the sweep ended"
        );
        ender.join().unwrap();
        assert!(progress.ended());
        assert!(progress.passed_within(u64::MAX, Duration::ZERO));
        assert!(
            progress.passed_within(u64::MAX, Duration::MAX),
            "no deadline, no overflow"
        );
    }

    #[test]
    fn a_sweep_that_found_its_file_shrunk_fails_the_waits() {
        let progress = Progress::default();
        progress.set(4);
        progress.shrank(Error::Shrank {
            path: "x.mmt".into(),
            len: 10,
            mapped: 20,
        });
        progress.set(u64::MAX);
        let e = progress
            .wait_for(8, &AtomicBool::new(false), Duration::from_millis(1))
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::Shrank {
                    len: 10,
                    mapped: 20,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("x.mmt"), "{e}");
    }
}
