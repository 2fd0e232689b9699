//! The cases `mmt bench` compares, and how each one reads the tensor: mapped, copied, by
//! `read()`, and, for shuffled batches, by `take_into`, by `pread`s and by the `Loader`.

use std::fs::File;
use std::hint::black_box;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use mmtensor::order;
use mmtensor::Advice;
use rayon::prelude::*;

use super::measure::{full_pass, release_freed_heap, rss_anon};
use super::shuffled::{sum_rows, Shuffled};
use crate::open::open_mapped;

/// One way of reading the tensor, timed as a whole.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Case {
    MmapOpen,
    CopyOpen,
    MmapPass,
    MmapPrefetchPass,
    CopyPass,
    Read,
    /// Shuffled batches: `take_into` on a mapping.
    TakeMmap,
    /// Shuffled batches: `take_into` on a mapping advised `Random` (no readahead around a fault).
    TakeMmapRandom,
    /// Shuffled batches: the whole file copied with `Store::read`, then `take_into`.
    TakeCopy,
    /// Shuffled batches: one `pread` per row, in file order, on the calling thread.
    Pread,
    /// Shuffled batches: one `pread` per row, spread over the loader's pool like `take_into`.
    PreadParallel,
    /// Shuffled batches: `mmtensor::Loader` on a mapping (its gather threads gather ahead into its
    /// own buffers; cold, it reads the file as its plan chooses: docs/LOADER.md, "How an epoch is
    /// read").
    Loader,
}

impl Case {
    /// Every case, in the order they are reported.
    pub(super) const ALL: [Case; 12] = [
        Case::MmapOpen,
        Case::CopyOpen,
        Case::MmapPass,
        Case::MmapPrefetchPass,
        Case::CopyPass,
        Case::Read,
        Case::TakeMmap,
        Case::TakeMmapRandom,
        Case::TakeCopy,
        Case::Pread,
        Case::PreadParallel,
        Case::Loader,
    ];

    /// The case's name in the report.
    pub(super) fn label(self) -> &'static str {
        match self {
            Case::MmapOpen => "mmap: open + view",
            Case::CopyOpen => "copy: read into heap",
            Case::MmapPass => "mmap: open + full pass",
            Case::MmapPrefetchPass => "mmap: open + prefetch + pass",
            Case::CopyPass => "copy: read + full pass",
            Case::Read => "read() 8 MiB buffer",
            Case::TakeMmap => "mmap: open + take_into",
            Case::TakeMmapRandom => "mmap: open + Random + take_into",
            Case::TakeCopy => "copy: read + take_into",
            Case::Pread => "pread: per row, 1 thread",
            Case::PreadParallel => "pread: per row, pool threads",
            Case::Loader => "mmap: Loader, prefetch 2",
        }
    }

    /// Whether the case gathers shuffled batches (rather than passing over the whole tensor).
    pub(super) fn shuffled(self) -> bool {
        matches!(
            self,
            Case::TakeMmap
                | Case::TakeMmapRandom
                | Case::TakeCopy
                | Case::Pread
                | Case::PreadParallel
                | Case::Loader
        )
    }
}

/// One run of one case.
pub(super) struct Sample {
    /// Seconds, from before the open to the last byte read.
    pub(super) secs: f64,
    /// Growth of anonymous memory while the result is held.
    pub(super) heap: i64,
    /// A checksum of the gathered batches, when asked for (the untimed first round).
    pub(super) sum: Option<u64>,
}

/// Runs `case` once on `tensor` (at bytes `range` of the file at `path`), checksumming the gathered
/// batches when `check`.
pub(super) fn run_case(
    case: Case,
    path: &Path,
    tensor: &str,
    range: (u64, u64),
    shuffled: Option<&mut Shuffled>,
    check: bool,
) -> Result<Sample> {
    release_freed_heap();
    let before = rss_anon()?;
    let t0 = Instant::now();
    let heap;
    let mut sum = None;
    match case {
        Case::MmapOpen | Case::MmapPass | Case::MmapPrefetchPass => {
            let store = open_mapped(path)?;
            let t = store.tensor(tensor)?;
            if case == Case::MmapPrefetchPass {
                // Run the readahead ahead of the pass; it finishes on its own.
                let _prefetch = t.prefetch();
                black_box(full_pass(t.bytes()?));
            } else {
                let bytes = t.bytes()?;
                if case == Case::MmapPass {
                    black_box(full_pass(bytes));
                } else {
                    black_box(bytes.as_ptr());
                }
            }
            heap = rss_anon()? - before;
            black_box(&store);
        }
        Case::CopyOpen | Case::CopyPass => {
            let mut file = File::open(path)?;
            file.seek(SeekFrom::Start(range.0))?;
            let mut buf = vec![0u8; (range.1 - range.0) as usize];
            file.read_exact(&mut buf)?;
            if case == Case::CopyPass {
                black_box(full_pass(&buf));
            }
            heap = rss_anon()? - before;
            black_box(&buf);
        }
        Case::Read => {
            let mut file = File::open(path)?;
            file.seek(SeekFrom::Start(range.0))?;
            let mut buf = vec![0u8; 8 << 20];
            let mut left = range.1 - range.0;
            while left > 0 {
                let n = (left as usize).min(buf.len());
                file.read_exact(&mut buf[..n])?;
                left -= n as u64;
            }
            heap = rss_anon()? - before;
        }
        Case::TakeMmap | Case::TakeMmapRandom | Case::TakeCopy => {
            let sh = shuffled.context("the shuffled pattern was not set up")?;
            let store = if case == Case::TakeCopy {
                mmtensor::Store::read(path)?
            } else {
                open_mapped(path)?
            };
            if case == Case::TakeMmapRandom {
                store.advise(Advice::Random)?;
            }
            let t = store.tensor(tensor)?;
            sum = sh.gather_all(check, |batch, out, _| Ok(t.take_into(batch, out)?))?;
            heap = rss_anon()? - before;
            black_box(&store);
        }
        Case::Loader => {
            let sh = shuffled.context("the shuffled pattern was not set up")?;
            let store = open_mapped(path)?;
            let spec = sh.order.spec().clone();
            let mut loader = mmtensor::Loader::new(
                &store,
                mmtensor::LoaderOptions {
                    columns: Some(vec![tensor.to_owned()]),
                    shuffle: spec.shuffle,
                    seed: spec.seed,
                    prefetch: 2,
                    ..mmtensor::LoaderOptions::new(spec.batch_size)
                },
            )?;
            let row = sh.row_bytes;
            let mut total = 0u64;
            for batch in loader.iter()?.take(sh.batches) {
                let batch = batch?;
                let bytes = batch.column(tensor)?.bytes();
                if check {
                    // As `gather_all` sums: row by row, in batch order.
                    total = sum_rows(total, bytes, row);
                }
                black_box(bytes);
            }
            sum = check.then_some(total);
            heap = rss_anon()? - before;
            black_box(&store);
        }
        Case::Pread | Case::PreadParallel => {
            let sh = shuffled.context("the shuffled pattern was not set up")?;
            let file =
                File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
            let row = sh.row_bytes;
            let parallel = case == Case::PreadParallel;
            sum = sh.gather_all(check, |batch, out, plan| {
                pread_batch(
                    &file, path, tensor, range.0, row, batch, out, plan, parallel,
                )
            })?;
            heap = rss_anon()? - before;
        }
    }
    Ok(Sample {
        secs: t0.elapsed().as_secs_f64(),
        heap,
        sum,
    })
}

/// Reads `batch`'s rows of the tensor starting at byte `start` of `file` into `out`, one `pread` per
/// row in file order; on the loader's pool when `parallel`.
#[allow(clippy::too_many_arguments)]
fn pread_batch(
    file: &File,
    path: &Path,
    tensor: &str,
    start: u64,
    row: usize,
    batch: &[u64],
    out: &mut [u8],
    plan: &mut Vec<(u64, usize)>,
    parallel: bool,
) -> Result<()> {
    order::file_order(batch, plan);
    let read = |r: u64, slot: &mut [u8]| -> Result<()> {
        let offset = r
            .checked_mul(row as u64)
            .and_then(|o| o.checked_add(start))
            .with_context(|| format!("row {r} of tensor `{tensor}` lies past any file offset"))?;
        file.read_exact_at(slot, offset).with_context(|| {
            format!(
                "cannot read row {r} of tensor `{tensor}` at offset {offset} of {}",
                path.display()
            )
        })
    };
    if !parallel {
        for &(r, pos) in plan.iter() {
            let slot = pos
                .checked_mul(row)
                .and_then(|s| out.get_mut(s..s.checked_add(row)?))
                .context("a batch position lies outside the batch buffer")?;
            read(r, slot)?;
        }
        return Ok(());
    }
    // Each output slot is borrowed once, in file order, so the pool's threads write disjoint rows.
    let mut slots: Vec<Option<&mut [u8]>> = out.chunks_exact_mut(row).map(Some).collect();
    let mut reads = Vec::with_capacity(plan.len());
    for &(r, pos) in plan.iter() {
        let slot = slots
            .get_mut(pos)
            .and_then(Option::take)
            .context("a batch position lies outside the batch buffer")?;
        reads.push((r, slot));
    }
    // About 64 KiB per task, as `take_into` splits its copies, so that small rows make tasks worth
    // stealing and each task reads forwards.
    let per_task = ((64usize << 10) / row).max(1);
    #[allow(clippy::disallowed_methods)] // Inside `pool::install`.
    let done = mmtensor::pool::install(|| {
        reads
            .par_iter_mut()
            .with_min_len(per_task)
            .try_for_each(|(r, slot)| read(*r, slot))
    });
    done
}
