//! `mmt bench`: mmap against copy, on the user's own store or a generated sample.
//!
//! Every case runs in this process, alternating with the others over several rounds; the report
//! gives medians. Memory is the growth of anonymous RSS (`RssAnon` in /proc/self/status) while the
//! result is held, which is what a copy costs and a mapping does not (page-cache pages are shared
//! and reclaimable, and are not counted). With `--cold`, the file is evicted from the page cache
//! with `posix_fadvise(POSIX_FADV_DONTNEED)` before every case, and plain sequential `read()` of the
//! same bytes gives the disk's own speed.
//!
//! The shuffled-batch pattern is a training loader's: the first `--batches` batches of a full-shuffle
//! epoch order (`mmtensor::order`) of the tensor's rows along axis 0, each gathered into one reused
//! buffer. Each case opens the file itself (timed) and then gathers: with the parallel `take_into`
//! on a mapping (default advice, and `Advice::Random`, which turns off the read-around of a fault),
//! with `take_into` on a `Store::read` copy (the whole file's read is timed: that is what copying
//! costs a loader that touches a fraction of the rows), and with one `pread` per row, in file order
//! within the batch, on one thread and spread over the loader's pool as `take_into` spreads its
//! copies. An untimed first round checks that every case gathers the same bytes.

use std::fs::File;
use std::hint::black_box;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use mmtensor::order::{self, EpochOrder, OrderSpec, Shuffle};
use mmtensor::Advice;
use mmtensor_convert::StoreWriter;
use mmtensor_format::{Dtype, LayoutBuilder};
use rayon::prelude::*;
use serde_json::json;

use crate::human;

/// Options of `mmt bench`.
#[derive(clap::Args)]
pub struct Args {
    /// The .mmt store to measure; without it a sample store of --size is generated
    file: Option<PathBuf>,
    /// Tensor to measure (default: the largest)
    #[arg(long)]
    tensor: Option<String>,
    /// Size of the generated sample
    #[arg(long, default_value = "2GiB", value_parser = human::parse_bytes)]
    size: u64,
    /// Where to generate the sample (default: the system temp folder); it is deleted afterwards
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Also measure each case after evicting the file from the page cache
    #[arg(long)]
    cold: bool,
    /// Rounds of every case (medians are reported)
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Rows per shuffled batch
    #[arg(long, default_value_t = 1024, value_name = "ROWS", value_parser = parse_positive)]
    batch_size: u64,
    /// Shuffled batches each case gathers, or `all` for a whole epoch (a cold case reads about
    /// batches x batch-size rows at random offsets, so keep it bounded on a slow disk)
    #[arg(long, default_value = "64", value_name = "N|all", value_parser = parse_batches)]
    batches: Batches,
    /// Seed of the shuffled epoch order
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
}

/// How many shuffled batches a case gathers.
#[derive(Clone, Copy, Debug)]
enum Batches {
    /// At most this many (at least 1).
    First(u64),
    /// The whole epoch.
    All,
}

/// `--batch-size`: a whole number of at least 1.
fn parse_positive(text: &str) -> Result<u64, String> {
    match text.trim().parse::<u64>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{text}` is not a whole number")),
    }
}

/// `--batches`: a whole number of at least 1, or `all`.
fn parse_batches(text: &str) -> Result<Batches, String> {
    if text.trim().eq_ignore_ascii_case("all") {
        return Ok(Batches::All);
    }
    match text.trim().parse::<u64>() {
        Ok(0) => Err("must be at least 1 (or `all` for a whole epoch)".into()),
        Ok(n) => Ok(Batches::First(n)),
        Err(_) => Err(format!("`{text}` is neither a whole number nor `all`")),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Case {
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
    /// Shuffled batches: `mmtensor::Loader` on a mapping (its worker gathers ahead into its own
    /// buffers and asks the kernel for the next batch's pages).
    Loader,
}

impl Case {
    const ALL: [Case; 12] = [
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

    fn label(self) -> &'static str {
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
    fn shuffled(self) -> bool {
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

struct Sample {
    secs: f64,
    heap: i64,
    /// A checksum of the gathered batches, when asked for (the untimed first round).
    sum: Option<u64>,
}

/// The shuffled-batch pattern of one tensor, and the buffers every case reuses.
struct Shuffled {
    order: EpochOrder,
    /// Batches each case gathers: the first ones of `order`.
    batches: usize,
    rows: u64,
    row_bytes: usize,
    /// Rows each case gathers (the sum of the first `batches` batch lengths).
    rows_read: u64,
    /// The output buffer, as long as the longest batch; written once before any case, so that no
    /// case's heap growth counts it.
    out: Vec<u8>,
    /// One batch's rows in file order (the pread cases), reused.
    plan: Vec<(u64, usize)>,
    /// Threads of the loader's pool, which `take_into` and the parallel pread use.
    threads: usize,
}

impl Shuffled {
    /// The pattern over `tensor`'s rows; the inner error says why there is none (a tensor without
    /// rows to gather, which is measured without the pattern rather than refused).
    fn new(
        tensor: &mmtensor::Tensor<'_>,
        args: &Args,
    ) -> Result<std::result::Result<Shuffled, String>> {
        let Some(&rows) = tensor.shape().first() else {
            return Ok(Err(format!(
                "tensor `{}` is a scalar: it has no rows to shuffle",
                tensor.name()
            )));
        };
        let row_bytes = tensor.row_bytes()?;
        if rows == 0 || row_bytes == 0 {
            return Ok(Err(format!(
                "tensor `{}` (shape {:?}) holds no bytes to gather",
                tensor.name(),
                tensor.shape()
            )));
        }
        let spec = OrderSpec {
            shuffle: Shuffle::Full,
            seed: args.seed,
            ..OrderSpec::new(rows, args.batch_size)
        };
        let order = spec.epoch(0).with_context(|| {
            format!(
                "cannot shuffle the {rows} rows of tensor `{}`",
                tensor.name()
            )
        })?;
        let batches = match args.batches {
            Batches::All => order.len(),
            Batches::First(n) => usize::try_from(n).unwrap_or(usize::MAX).min(order.len()),
        };
        let rows_read: u64 = order.iter().take(batches).map(|b| b.len() as u64).sum();
        let longest = order
            .iter()
            .take(batches)
            .map(<[u64]>::len)
            .max()
            .unwrap_or(0);
        let row_bytes = usize::try_from(row_bytes)
            .with_context(|| format!("rows of tensor `{}` do not fit in memory", tensor.name()))?;
        let len = longest.checked_mul(row_bytes).with_context(|| {
            format!(
                "a batch of {longest} rows of {row_bytes} bytes does not fit in memory (try a smaller --batch-size)"
            )
        })?;
        let mut out = Vec::new();
        out.try_reserve_exact(len).map_err(|_| {
            anyhow::anyhow!(
                "cannot allocate a batch buffer of {} (try a smaller --batch-size)",
                human::bytes(len as u64)
            )
        })?;
        // Written, not only allocated: untouched pages would be faulted in by the first case.
        out.resize(len, 1);
        #[allow(clippy::disallowed_methods)] // Inside `pool::install`: the pool's own count.
        let threads = mmtensor::pool::install(rayon::current_num_threads);
        Ok(Ok(Shuffled {
            order,
            batches,
            rows,
            row_bytes,
            rows_read,
            out,
            plan: Vec::new(),
            threads,
        }))
    }

    fn bytes_read(&self) -> u64 {
        self.rows_read * self.row_bytes as u64
    }

    /// Gathers the batches with `gather(batch, out, plan)`, and checksums them when `check`.
    fn gather_all(
        &mut self,
        check: bool,
        mut gather: impl FnMut(&[u64], &mut [u8], &mut Vec<(u64, usize)>) -> Result<()>,
    ) -> Result<Option<u64>> {
        let row = self.row_bytes;
        let mut sum = 0u64;
        for batch in self.order.iter().take(self.batches) {
            let out = batch
                .len()
                .checked_mul(row)
                .and_then(|n| self.out.get_mut(..n))
                .context("a batch is longer than the batch buffer")?;
            gather(batch, out, &mut self.plan)?;
            if check {
                // Row by row, so that rows in the wrong slots change the sum.
                for slot in out.chunks_exact(row) {
                    sum = sum.wrapping_mul(31).wrapping_add(full_pass(slot));
                }
            }
            black_box(&*out);
        }
        Ok(check.then_some(sum))
    }
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

/// Anonymous resident memory of this process, in bytes.
///
/// An error, not 0, when /proc gives nothing: a heap column of zeros would read as "no copy".
/// (mmtensor-testsupport has the same reader, but this is the shipped binary, which cannot depend
/// on an unpublished crate.)
fn rss_anon() -> Result<i64> {
    let status = std::fs::read_to_string("/proc/self/status")
        .context("cannot read /proc/self/status to measure anonymous memory")?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        .context("no `RssAnon: N kB` line in /proc/self/status")?;
    Ok(kb * 1024)
}

/// Drops the file's pages from the page cache (they must be clean: stores are fsynced).
fn evict(path: &Path) -> Result<()> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: posix_fadvise only reads its integer arguments; the descriptor is open for the
        // duration of the call.
        let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if rc != 0 {
            bail!(
                "posix_fadvise(DONTNEED) on {} failed with error {rc}",
                path.display()
            );
        }
    }
    drop(file);
    Ok(())
}

/// Sums the bytes as little-endian u64 words: touches every byte, vectorizes well.
fn full_pass(bytes: &[u8]) -> u64 {
    let mut chunks = bytes.chunks_exact(8);
    let mut acc = 0u64;
    for c in &mut chunks {
        acc = acc.wrapping_add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
    }
    for &b in chunks.remainder() {
        acc = acc.wrapping_add(u64::from(b));
    }
    acc
}

fn run_case(
    case: Case,
    path: &Path,
    tensor: &str,
    range: (u64, u64),
    shuffled: Option<&mut Shuffled>,
    check: bool,
) -> Result<Sample> {
    let before = rss_anon()?;
    let t0 = Instant::now();
    let heap;
    let mut sum = None;
    match case {
        Case::MmapOpen | Case::MmapPass | Case::MmapPrefetchPass => {
            let store = crate::open_mapped(path)?;
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
                crate::open_mapped(path)?
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
            let store = crate::open_mapped(path)?;
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
                    for slot in bytes.chunks_exact(row) {
                        total = total.wrapping_mul(31).wrapping_add(full_pass(slot));
                    }
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Writes a one-tensor F32 sample store of about `size` bytes, streaming 8 MiB chunks.
fn write_sample(path: &Path, size: u64) -> Result<()> {
    let cols = 1024u64;
    let rows = (size / (cols * 4)).max(1);
    let mut plan = LayoutBuilder::new();
    plan.tensor("x", Dtype::F32, &[rows, cols])?;
    let mut w = StoreWriter::create(path, plan.build()?)?;
    let chunk: Vec<u8> = (0..(2u32 << 20))
        .flat_map(|i| ((i % 9973) as f32 * 0.001).to_le_bytes())
        .collect();
    w.begin_tensor("x")?;
    let mut left = rows * cols * 4;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        w.write_chunk(&chunk[..n])?;
        left -= n as u64;
    }
    w.end_tensor()?;
    w.finish()?;
    Ok(())
}

/// Runs `mmt bench`.
pub fn run(args: &Args) -> Result<()> {
    if args.repeats == 0 {
        bail!("--repeats must be at least 1");
    }
    let _sample_dir;
    let path = match &args.file {
        Some(p) => p.clone(),
        None => {
            let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
            let dir = tempfile::Builder::new()
                .prefix("mmt-bench.")
                .tempdir_in(&parent)
                .with_context(|| format!("cannot create a folder in {}", parent.display()))?;
            let p = dir.path().join("sample.mmt");
            if !args.json {
                eprintln!(
                    "writing a {} sample store to {} ...",
                    human::bytes(args.size),
                    p.display()
                );
            }
            write_sample(&p, args.size)?;
            _sample_dir = dir;
            p
        }
    };
    crate::info::read_layout(&path)?;
    let store = crate::open_mapped(&path)?;
    let tensor = match &args.tensor {
        Some(t) => store.tensor(t)?,
        None => store
            .tensors()
            .max_by_key(|t| t.byte_range().end - t.byte_range().start)
            .with_context(|| format!("{} holds no tensors", path.display()))?,
    };
    let name = tensor.name().to_owned();
    let r = tensor.byte_range();
    let range = (r.start, r.end);
    let bytes = range.1 - range.0;
    let mut shuffled = match Shuffled::new(&tensor, args)? {
        Ok(s) => Some(s),
        Err(why) => {
            eprintln!("note: no shuffled batches: {why}");
            None
        }
    };
    drop(store);
    let cases: Vec<Case> = Case::ALL
        .into_iter()
        .filter(|c| !c.shuffled() || shuffled.is_some())
        .collect();

    let modes: &[bool] = if args.cold { &[false, true] } else { &[false] };
    let mut report = Vec::new();
    for &cold in modes {
        if !cold {
            // One untimed round warms the page cache, and checks that every shuffled case
            // gathers the same bytes (the timed rounds do not checksum).
            let mut sums = Vec::new();
            for &case in &cases {
                let s = run_case(case, &path, &name, range, shuffled.as_mut(), true)?;
                if let Some(sum) = s.sum {
                    sums.push((case, sum));
                }
            }
            if let Some(&(first, want)) = sums.first() {
                if let Some(&(case, _)) = sums.iter().find(|s| s.1 != want) {
                    bail!(
                        "`{}` and `{}` gathered different bytes from tensor `{name}` of {}",
                        first.label(),
                        case.label(),
                        path.display()
                    );
                }
            }
        }
        let mut samples: Vec<Vec<Sample>> = cases.iter().map(|_| Vec::new()).collect();
        for round in 0..args.repeats {
            for k in 0..cases.len() {
                // Rotate the order every round, so no case always runs first or last.
                let i = (k + round) % cases.len();
                if cold {
                    evict(&path)?;
                }
                samples[i].push(run_case(
                    cases[i],
                    &path,
                    &name,
                    range,
                    shuffled.as_mut(),
                    false,
                )?);
            }
        }
        for (case, s) in cases.iter().zip(samples) {
            let secs = median(s.iter().map(|x| x.secs).collect());
            let heap = median(s.iter().map(|x| x.heap as f64).collect()) as i64;
            report.push((cold, *case, secs, heap));
        }
    }
    print_report(args, &path, &name, bytes, shuffled.as_ref(), &report);
    Ok(())
}

fn find(report: &[(bool, Case, f64, i64)], cold: bool, case: Case) -> Option<(f64, i64)> {
    report
        .iter()
        .find(|r| r.0 == cold && r.1 == case)
        .map(|r| (r.2, r.3))
}

fn print_report(
    args: &Args,
    path: &Path,
    name: &str,
    bytes: u64,
    shuffled: Option<&Shuffled>,
    report: &[(bool, Case, f64, i64)],
) {
    let ratios: Vec<(String, f64)> = [false, true]
        .iter()
        .filter(|&&cold| report.iter().any(|r| r.0 == cold))
        .flat_map(|&cold| {
            let mode = if cold { "cold" } else { "warm" };
            let get = |c| find(report, cold, c).map_or(f64::NAN, |v| v.0);
            let mut v = vec![
                (
                    format!("{mode}: open, copy / mmap"),
                    get(Case::CopyOpen) / get(Case::MmapOpen),
                ),
                (
                    format!("{mode}: open + full pass, copy / mmap"),
                    get(Case::CopyPass) / get(Case::MmapPass),
                ),
                (
                    format!("{mode}: open + full pass, copy / mmap with prefetch"),
                    get(Case::CopyPass) / get(Case::MmapPrefetchPass),
                ),
                (
                    format!("{mode}: mmap pass speed / read() speed"),
                    get(Case::Read) / get(Case::MmapPass),
                ),
                (
                    format!("{mode}: prefetch pass speed / read() speed"),
                    get(Case::Read) / get(Case::MmapPrefetchPass),
                ),
            ];
            if shuffled.is_some() {
                v.extend([
                    (
                        format!("{mode}: shuffled batches, copy / mmap"),
                        get(Case::TakeCopy) / get(Case::TakeMmap),
                    ),
                    (
                        format!("{mode}: shuffled batches, mmap / mmap with Random advice"),
                        get(Case::TakeMmap) / get(Case::TakeMmapRandom),
                    ),
                    (
                        format!("{mode}: shuffled batches, pread on 1 thread / mmap"),
                        get(Case::Pread) / get(Case::TakeMmap),
                    ),
                    (
                        format!("{mode}: shuffled batches, pread on pool threads / mmap"),
                        get(Case::PreadParallel) / get(Case::TakeMmap),
                    ),
                    (
                        format!("{mode}: shuffled batches, mmap / Loader"),
                        get(Case::TakeMmap) / get(Case::Loader),
                    ),
                ]);
            }
            v
        })
        .collect();
    let saved = find(report, false, Case::CopyOpen).map_or(0, |v| v.1)
        - find(report, false, Case::MmapOpen).map_or(0, |v| v.1);
    let mode_name = |cold: bool| if cold { "cold" } else { "warm" };
    if args.json {
        let rows: Vec<_> = report
            .iter()
            .filter(|r| !r.1.shuffled())
            .map(|(cold, case, secs, heap)| {
                json!({
                    "mode": mode_name(*cold),
                    "case": case.label(),
                    "median_s": secs,
                    "gb_per_s": bytes as f64 / secs / 1e9,
                    "rss_anon_growth_bytes": heap,
                })
            })
            .collect();
        let shuffled = shuffled.map(|sh| {
            let read = sh.bytes_read();
            let cases: Vec<_> = report
                .iter()
                .filter(|r| r.1.shuffled())
                .map(|(cold, case, secs, heap)| {
                    json!({
                        "mode": mode_name(*cold),
                        "case": case.label(),
                        "median_s": secs,
                        "batches_per_s": sh.batches as f64 / secs,
                        "rows_per_s": sh.rows_read as f64 / secs,
                        "gb_per_s": read as f64 / secs / 1e9,
                        "rss_anon_growth_bytes": heap,
                    })
                })
                .collect();
            json!({
                "shuffle": "full",
                "seed": args.seed,
                "rows": sh.rows,
                "row_bytes": sh.row_bytes,
                "batch_size": args.batch_size,
                "batches": sh.batches,
                "batches_per_epoch": sh.order.len(),
                "rows_read": sh.rows_read,
                "bytes_read": read,
                "threads": sh.threads,
                "cases": cases,
            })
        });
        let out = json!({
            "file": path.display().to_string(),
            "tensor": name,
            "bytes": bytes,
            "repeats": args.repeats,
            "cases": rows,
            "shuffled": shuffled,
            "ratios": ratios.iter().map(|(k, v)| json!({"what": k, "ratio": v})).collect::<Vec<_>>(),
            "heap_bytes_saved": saved,
        });
        println!("{}", serde_json::to_string_pretty(&out).expect("JSON"));
        return;
    }
    println!(
        "{}: tensor `{name}`, {} ({} repeats, medians; heap = growth of RssAnon while held)",
        path.display(),
        human::bytes(bytes),
        args.repeats
    );
    if let Some(sh) = shuffled {
        println!(
            "shuffled batches: {} of {} per epoch (full shuffle, seed {}), batches of {} rows of {}, {} per case; pool: {} threads",
            sh.batches,
            sh.order.len(),
            args.seed,
            args.batch_size.min(sh.rows),
            human::bytes(sh.row_bytes as u64),
            human::bytes(sh.bytes_read()),
            sh.threads
        );
    }
    for cold in [false, true] {
        if !report.iter().any(|r| r.0 == cold) {
            continue;
        }
        println!();
        println!(
            "[{}]",
            if cold {
                "cold page cache (evicted before each case)"
            } else {
                "warm page cache"
            }
        );
        println!(
            "{:<30} {:>10} {:>11} {:>12}",
            "case", "median", "speed", "heap"
        );
        for (c, case, secs, heap) in report {
            if *c == cold && !case.shuffled() {
                let speed = if *case == Case::MmapOpen {
                    "-".into()
                } else {
                    human::rate(bytes, *secs)
                };
                println!(
                    "{:<30} {:>10} {:>11} {:>12}",
                    case.label(),
                    human::duration(*secs),
                    speed,
                    human::bytes((*heap).max(0) as u64)
                );
            }
        }
        if let Some(sh) = shuffled {
            println!();
            println!(
                "{:<32} {:>10} {:>10} {:>11} {:>12}",
                "shuffled batches", "median", "batches/s", "speed", "heap"
            );
            for (c, case, secs, heap) in report {
                if *c == cold && case.shuffled() {
                    println!(
                        "{:<32} {:>10} {:>10.1} {:>11} {:>12}",
                        case.label(),
                        human::duration(*secs),
                        sh.batches as f64 / secs,
                        human::rate(sh.bytes_read(), *secs),
                        human::bytes((*heap).max(0) as u64)
                    );
                }
            }
        }
    }
    println!();
    for (k, v) in &ratios {
        println!("{k}: {v:.2}x");
    }
    println!(
        "heap saved by mapping instead of copying: {}",
        human::bytes(saved.max(0) as u64)
    );
}
