//! `mmt bench`: mmap against copy, on the user's own store or a generated sample.
//!
//! Every case runs in this process, alternating with the others over several rounds; the report
//! gives medians. Memory is the growth of anonymous RSS (`RssAnon` in /proc/self/status) while the
//! result is held, which is what a copy costs and a mapping does not (page-cache pages are shared
//! and reclaimable, and are not counted); the heap freed by earlier cases is handed back to the
//! kernel before each case (glibc's `malloc_trim`), so a repeat's copy shows its growth too. With `--cold`, the file is evicted from the page cache
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

mod case;
mod measure;
mod report;
mod shuffled;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use mmtensor_convert::StoreWriter;
use mmtensor_format::{Dtype, LayoutBuilder};

use crate::human;
use crate::open::open_mapped;
use case::{run_case, Case, Sample};
use measure::{evict, median};
use report::{Report, Row};
use shuffled::{Batches, Shuffled};

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
    let store = open_mapped(&path)?;
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
    let mut shuffled = match Shuffled::new(&tensor, args.batch_size, args.batches, args.seed)? {
        Ok(s) => Some(s),
        Err(why) => {
            eprintln!("note: no shuffled batches: {why}");
            None
        }
    };
    let read_ahead = store.read_ahead();
    drop(store);
    let cases: Vec<Case> = Case::ALL
        .into_iter()
        .filter(|c| !c.shuffled() || shuffled.is_some())
        .collect();

    let modes: &[bool] = if args.cold { &[false, true] } else { &[false] };
    let mut rows = Vec::new();
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
            rows.push(Row {
                cold,
                case: *case,
                secs,
                heap,
            });
        }
    }
    let report = Report {
        path: &path,
        tensor: &name,
        bytes,
        repeats: args.repeats,
        seed: args.seed,
        batch_size: args.batch_size,
        shuffled: shuffled.as_ref(),
        read_ahead,
        rows,
    };
    if args.json {
        report.print_json();
    } else {
        report.print_table();
    }
    Ok(())
}
