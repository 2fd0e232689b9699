//! `mmt bench`: mmap against copy, on the user's own store or a generated sample.
//!
//! Every case runs in this process, alternating with the others over several rounds; the report
//! gives medians. Memory is the growth of anonymous RSS (`RssAnon` in /proc/self/status) while the
//! result is held, which is what a copy costs and a mapping does not (page-cache pages are shared
//! and reclaimable, and are not counted). With `--cold`, the file is evicted from the page cache
//! with `posix_fadvise(POSIX_FADV_DONTNEED)` before every case, and plain sequential `read()` of the
//! same bytes gives the disk's own speed.

use std::fs::File;
use std::hint::black_box;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use mmtensor_convert::StoreWriter;
use mmtensor_format::{Dtype, LayoutBuilder};
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
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Case {
    MmapOpen,
    CopyOpen,
    MmapPass,
    MmapPrefetchPass,
    CopyPass,
    Read,
}

impl Case {
    const ALL: [Case; 6] = [
        Case::MmapOpen,
        Case::CopyOpen,
        Case::MmapPass,
        Case::MmapPrefetchPass,
        Case::CopyPass,
        Case::Read,
    ];

    fn label(self) -> &'static str {
        match self {
            Case::MmapOpen => "mmap: open + view",
            Case::CopyOpen => "copy: read into heap",
            Case::MmapPass => "mmap: open + full pass",
            Case::MmapPrefetchPass => "mmap: open + prefetch + pass",
            Case::CopyPass => "copy: read + full pass",
            Case::Read => "read() 8 MiB buffer",
        }
    }
}

struct Sample {
    secs: f64,
    heap: i64,
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

fn run_case(case: Case, path: &Path, tensor: &str, range: (u64, u64)) -> Result<Sample> {
    let before = rss_anon()?;
    let t0 = Instant::now();
    let heap;
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
    }
    Ok(Sample {
        secs: t0.elapsed().as_secs_f64(),
        heap,
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
    drop(store);

    let modes: &[bool] = if args.cold { &[false, true] } else { &[false] };
    let mut report = Vec::new();
    for &cold in modes {
        if !cold {
            // One untimed round warms the page cache.
            for case in Case::ALL {
                run_case(case, &path, &name, range)?;
            }
        }
        let mut samples: Vec<Vec<Sample>> = Case::ALL.iter().map(|_| Vec::new()).collect();
        for round in 0..args.repeats {
            for k in 0..Case::ALL.len() {
                // Rotate the order every round, so no case always runs first or last.
                let i = (k + round) % Case::ALL.len();
                if cold {
                    evict(&path)?;
                }
                samples[i].push(run_case(Case::ALL[i], &path, &name, range)?);
            }
        }
        for (case, s) in Case::ALL.iter().zip(samples) {
            let secs = median(s.iter().map(|x| x.secs).collect());
            let heap = median(s.iter().map(|x| x.heap as f64).collect()) as i64;
            report.push((cold, *case, secs, heap));
        }
    }
    print_report(args, &path, &name, bytes, &report);
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
    report: &[(bool, Case, f64, i64)],
) {
    let ratios: Vec<(String, f64)> = [false, true]
        .iter()
        .filter(|&&cold| report.iter().any(|r| r.0 == cold))
        .flat_map(|&cold| {
            let mode = if cold { "cold" } else { "warm" };
            let get = |c| find(report, cold, c).map_or(f64::NAN, |v| v.0);
            vec![
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
            ]
        })
        .collect();
    let saved = find(report, false, Case::CopyOpen).map_or(0, |v| v.1)
        - find(report, false, Case::MmapOpen).map_or(0, |v| v.1);
    if args.json {
        let rows: Vec<_> = report
            .iter()
            .map(|(cold, case, secs, heap)| {
                json!({
                    "mode": if *cold { "cold" } else { "warm" },
                    "case": case.label(),
                    "median_s": secs,
                    "gb_per_s": bytes as f64 / secs / 1e9,
                    "rss_anon_growth_bytes": heap,
                })
            })
            .collect();
        let out = json!({
            "file": path.display().to_string(),
            "tensor": name,
            "bytes": bytes,
            "repeats": args.repeats,
            "cases": rows,
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
            if *c == cold {
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
