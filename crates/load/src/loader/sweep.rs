//! The sweep ([`super::plan`]): a thread that reads a loader's columns into memory in file order
//! and maps each piece into the process as it arrives (`MADV_POPULATE_READ`, which waits for the
//! piece's reads), so the gathers find the pages it passed both in memory and in the page tables.
//!
//! How the reads are issued depends on the device's read-ahead, as measured on a virtio disk
//! (docs/BENCHMARKS.md, "The loader at the machine's limit"): a fault's read-around reads in large
//! folios, while `MADV_WILLNEED` reads in single pages. With a large read-ahead (at least
//! [`LARGE_READ_AHEAD`]) the populate's own faults read the file, each one a read-around window
//! (1 GiB in 0.39 s against 0.71 s with `MADV_WILLNEED` ahead). With a small one (the common 128
//! KiB) a fault would read 128 KiB at a time, one request in flight, so each piece is first asked
//! for with `MADV_WILLNEED` [`DEPTH_BYTES`] ahead of the piece being mapped, which keeps the disk's
//! queue full (0.62 s against 0.67 s). A piece is as large as one `MADV_WILLNEED` call reads: the
//! larger of the device's read-ahead and its largest request (the kernel cuts a longer call there).

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use crate::file::OpenFile;
use crate::hints::{self, Advice};

/// Bytes asked for ahead of the piece being mapped, on a device with a small read-ahead.
const DEPTH_BYTES: u64 = 32 << 20;
/// A read-ahead at least this large reads well enough through the populate's own faults.
const LARGE_READ_AHEAD: u64 = 1 << 20;
/// The smallest and largest piece.
const PIECE: Range<u64> = (1 << 20)..(16 << 20);
/// The piece when the device does not say.
const DEFAULT_PIECE: u64 = 4 << 20;

/// A running sweep: setting `stop` ends it after the piece it is mapping; `done` opens when it
/// ends, however it ends.
pub(super) struct Sweep {
    pub(super) stop: Arc<AtomicBool>,
    pub(super) done: Arc<Latch>,
}

/// Opens once, for good; threads wait for it.
#[derive(Default)]
pub(super) struct Latch {
    open: Mutex<bool>,
    opened: Condvar,
}

impl Latch {
    /// Waits until the latch is open (true), or until `stop` is set (false), looking at `stop`
    /// every `poll`.
    pub(super) fn wait_unless(&self, stop: &AtomicBool, poll: std::time::Duration) -> bool {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        while !*open {
            if stop.load(Ordering::Acquire) {
                return false;
            }
            open = self
                .opened
                .wait_timeout(open, poll)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// Whether the latch is open: the sweep has ended.
    pub(super) fn is_open(&self) -> bool {
        *self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn open(&self) {
        *self.open.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.opened.notify_all();
    }
}

/// Opens the latch when dropped: the sweep's thread ends, returning or unwinding.
struct OpenOnDrop(Arc<Latch>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

/// Starts sweeping `spans` (byte ranges of mapped files) in the order given.
///
/// # Errors
///
/// The thread could not be started.
pub(super) fn start(spans: Vec<(Arc<OpenFile>, Range<u64>)>) -> std::io::Result<Sweep> {
    let device = spans.first().and_then(|(f, _)| f.device());
    let piece = device.map_or(DEFAULT_PIECE, |d| {
        d.read_ahead
            .max(d.max_request)
            .clamp(PIECE.start, PIECE.end)
    });
    let depth = match device {
        Some(d) if d.read_ahead >= LARGE_READ_AHEAD => 0,
        _ => DEPTH_BYTES,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(Latch::default());
    let (flag, latch) = (Arc::clone(&stop), OpenOnDrop(Arc::clone(&done)));
    std::thread::Builder::new()
        .name("mmtensor-sweep".into())
        .spawn(move || {
            let _latch = latch;
            sweep(&pieces(&spans, piece), depth, &flag);
        })?;
    Ok(Sweep { stop, done })
}

/// `spans` cut into pieces of at most `piece` bytes, in order.
fn pieces<F: Clone>(spans: &[(F, Range<u64>)], piece: u64) -> Vec<(F, Range<u64>)> {
    let mut out = Vec::new();
    for (file, range) in spans {
        let mut at = range.start;
        while at < range.end {
            let end = range.end.min(at.saturating_add(piece.max(1)));
            out.push((file.clone(), at..end));
            at = end;
        }
    }
    out
}

/// Maps `pieces` in order, each asked for with `MADV_WILLNEED` up to `depth` bytes ahead (0: none).
fn sweep(pieces: &[(Arc<OpenFile>, Range<u64>)], depth: u64, stop: &AtomicBool) {
    let mut queued: VecDeque<usize> = VecDeque::new();
    let mut queued_bytes = 0u64;
    let mut next = 0;
    while next < pieces.len() || !queued.is_empty() {
        if stop.load(Ordering::Acquire) {
            return;
        }
        // Keep `depth` bytes asked for (and at least the piece to map next).
        while next < pieces.len() && (queued.is_empty() || queued_bytes < depth) {
            let (file, range) = &pieces[next];
            if depth > 0 {
                // Only a hint: a failure leaves the read to the populate below.
                let _ = hints::advise(file, range.clone(), Advice::WillNeed);
            }
            queued_bytes += range.end - range.start;
            queued.push_back(next);
            next += 1;
        }
        let Some(i) = queued.pop_front() else {
            return;
        };
        let (file, range) = &pieces[i];
        queued_bytes -= range.end - range.start;
        // A failure (a file that shrank under its mapping) is the gathers' to report: they read
        // the same bytes and name the tensor. The sweep stops.
        if file.check_len().is_err() || file.populate(range.clone(), "sweep").is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_cut_into_pieces_in_order() {
        let p = pieces(&[('a', 100..2600), ('b', 5000..5001), ('c', 7..7)], 1000);
        assert_eq!(
            p,
            [
                ('a', 100..1100),
                ('a', 1100..2100),
                ('a', 2100..2600),
                ('b', 5000..5001)
            ]
        );
    }
}
