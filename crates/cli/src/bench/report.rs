//! What `mmt bench` prints: each case's medians, as a table or as JSON, and the ratios between
//! cases measured in the same run.

use std::path::Path;

use serde_json::json;

use super::case::Case;
use super::shuffled::Shuffled;
use crate::human;

/// The medians of one case in one mode.
pub(super) struct Row {
    /// Whether the page cache was evicted before each run.
    pub(super) cold: bool,
    pub(super) case: Case,
    /// Median seconds.
    pub(super) secs: f64,
    /// Median growth of anonymous memory, in bytes.
    pub(super) heap: i64,
}

/// A finished run of `mmt bench`: what was measured, and the medians.
pub(super) struct Report<'a> {
    pub(super) path: &'a Path,
    pub(super) tensor: &'a str,
    /// The tensor's bytes, which each sequential case reads.
    pub(super) bytes: u64,
    pub(super) repeats: usize,
    pub(super) seed: u64,
    pub(super) batch_size: u64,
    /// The shuffled-batch pattern, when the tensor has rows to gather.
    pub(super) shuffled: Option<&'a Shuffled>,
    /// The read-ahead of the file's device, in bytes, when the kernel says: what a cold random
    /// read costs depends on it.
    pub(super) read_ahead: Option<u64>,
    /// Every case in the warm mode, then (with `--cold`) every case in the cold mode.
    pub(super) rows: Vec<Row>,
}

/// The comparisons of the sequential cases: what each says, and the two cases whose medians it
/// divides.
const SEQUENTIAL_RATIOS: [(&str, Case, Case); 5] = [
    ("open, copy / mmap", Case::CopyOpen, Case::MmapOpen),
    (
        "open + full pass, copy / mmap",
        Case::CopyPass,
        Case::MmapPass,
    ),
    (
        "open + full pass, copy / mmap with prefetch",
        Case::CopyPass,
        Case::MmapPrefetchPass,
    ),
    ("mmap pass speed / read() speed", Case::Read, Case::MmapPass),
    (
        "prefetch pass speed / read() speed",
        Case::Read,
        Case::MmapPrefetchPass,
    ),
];

/// The comparisons of the shuffled-batch cases, as [`SEQUENTIAL_RATIOS`].
const SHUFFLED_RATIOS: [(&str, Case, Case); 5] = [
    (
        "shuffled batches, copy / mmap",
        Case::TakeCopy,
        Case::TakeMmap,
    ),
    (
        "shuffled batches, mmap / mmap with Random advice",
        Case::TakeMmap,
        Case::TakeMmapRandom,
    ),
    (
        "shuffled batches, pread on 1 thread / mmap",
        Case::Pread,
        Case::TakeMmap,
    ),
    (
        "shuffled batches, pread on pool threads / mmap",
        Case::PreadParallel,
        Case::TakeMmap,
    ),
    (
        "shuffled batches, mmap / Loader",
        Case::TakeMmap,
        Case::Loader,
    ),
];

fn mode_name(cold: bool) -> &'static str {
    if cold {
        "cold"
    } else {
        "warm"
    }
}

impl Report<'_> {
    fn find(&self, cold: bool, case: Case) -> Option<&Row> {
        self.rows.iter().find(|r| r.cold == cold && r.case == case)
    }

    /// Each comparison as a ratio of two cases' medians in the same mode.
    fn ratios(&self) -> Vec<(String, f64)> {
        let shuffled: &[_] = if self.shuffled.is_some() {
            &SHUFFLED_RATIOS
        } else {
            &[]
        };
        [false, true]
            .into_iter()
            .filter(|&cold| self.rows.iter().any(|r| r.cold == cold))
            .flat_map(|cold| {
                let get = move |c| self.find(cold, c).map_or(f64::NAN, |r| r.secs);
                SEQUENTIAL_RATIOS
                    .iter()
                    .chain(shuffled)
                    .map(move |(what, a, b)| {
                        (format!("{}: {what}", mode_name(cold)), get(*a) / get(*b))
                    })
            })
            .collect()
    }

    /// Heap growth of a warm copy minus that of a warm mapping.
    fn heap_saved(&self) -> i64 {
        self.find(false, Case::CopyOpen).map_or(0, |r| r.heap)
            - self.find(false, Case::MmapOpen).map_or(0, |r| r.heap)
    }

    /// Prints the report as one JSON object on stdout.
    pub(super) fn print_json(&self) {
        let bytes = self.bytes;
        let rows: Vec<_> = self
            .rows
            .iter()
            .filter(|r| !r.case.shuffled())
            .map(|r| {
                json!({
                    "mode": mode_name(r.cold),
                    "case": r.case.label(),
                    "median_s": r.secs,
                    // Opening a mapping reads no bytes: no rate (the table's "-").
                    "gb_per_s": (r.case != Case::MmapOpen).then(|| bytes as f64 / r.secs / 1e9),
                    "rss_anon_growth_bytes": r.heap,
                })
            })
            .collect();
        let shuffled = self.shuffled.map(|sh| {
            let read = sh.bytes_read();
            let cases: Vec<_> = self
                .rows
                .iter()
                .filter(|r| r.case.shuffled())
                .map(|r| {
                    json!({
                        "mode": mode_name(r.cold),
                        "case": r.case.label(),
                        "median_s": r.secs,
                        "batches_per_s": sh.batches as f64 / r.secs,
                        "rows_per_s": sh.rows_read as f64 / r.secs,
                        "gb_per_s": read as f64 / r.secs / 1e9,
                        "rss_anon_growth_bytes": r.heap,
                    })
                })
                .collect();
            json!({
                "shuffle": "full",
                "seed": self.seed,
                "rows": sh.rows,
                "row_bytes": sh.row_bytes,
                "batch_size": self.batch_size,
                "batches": sh.batches,
                "batches_per_epoch": sh.order.len(),
                "rows_read": sh.rows_read,
                "bytes_read": read,
                "threads": sh.threads,
                "cases": cases,
            })
        });
        let out = json!({
            "file": self.path.display().to_string(),
            "tensor": self.tensor,
            "bytes": bytes,
            "repeats": self.repeats,
            "read_ahead_bytes": self.read_ahead,
            "cases": rows,
            "shuffled": shuffled,
            "ratios": self.ratios().iter().map(|(k, v)| json!({"what": k, "ratio": v})).collect::<Vec<_>>(),
            "heap_bytes_saved": self.heap_saved(),
        });
        println!("{}", serde_json::to_string_pretty(&out).expect("JSON"));
    }

    /// Prints the report as tables, one per mode, then the ratios.
    pub(super) fn print_table(&self) {
        let bytes = self.bytes;
        println!(
            "{}: tensor `{}`, {} ({} repeats, medians; heap = growth of RssAnon while held)",
            self.path.display(),
            self.tensor,
            human::bytes(bytes),
            self.repeats
        );
        if let Some(sh) = self.shuffled {
            println!(
                "shuffled batches: {} of {} per epoch (full shuffle, seed {}), batches of {} rows of {}, {} per case; pool: {} threads",
                sh.batches,
                sh.order.len(),
                self.seed,
                self.batch_size.min(sh.rows),
                human::bytes(sh.row_bytes as u64),
                human::bytes(sh.bytes_read()),
                sh.threads
            );
        }
        for cold in [false, true] {
            if !self.rows.iter().any(|r| r.cold == cold) {
                continue;
            }
            println!();
            println!(
                "[{}]",
                if cold {
                    format!(
                        "cold page cache (evicted before each case; the device's read-ahead: {})",
                        self.read_ahead
                            .map_or("unknown".to_owned(), |b| format!("{} KiB", b / 1024))
                    )
                } else {
                    "warm page cache".to_owned()
                }
            );
            println!(
                "{:<30} {:>10} {:>11} {:>12}",
                "case", "median", "speed", "heap"
            );
            for r in &self.rows {
                if r.cold == cold && !r.case.shuffled() {
                    let speed = if r.case == Case::MmapOpen {
                        "-".into()
                    } else {
                        human::rate(bytes, r.secs)
                    };
                    println!(
                        "{:<30} {:>10} {:>11} {:>12}",
                        r.case.label(),
                        human::duration(r.secs),
                        speed,
                        human::bytes(r.heap.max(0) as u64)
                    );
                }
            }
            if let Some(sh) = self.shuffled {
                println!();
                println!(
                    "{:<32} {:>10} {:>10} {:>11} {:>12}",
                    "shuffled batches", "median", "batches/s", "speed", "heap"
                );
                for r in &self.rows {
                    if r.cold == cold && r.case.shuffled() {
                        println!(
                            "{:<32} {:>10} {:>10.1} {:>11} {:>12}",
                            r.case.label(),
                            human::duration(r.secs),
                            sh.batches as f64 / r.secs,
                            human::rate(sh.bytes_read(), r.secs),
                            human::bytes(r.heap.max(0) as u64)
                        );
                    }
                }
            }
        }
        println!();
        for (k, v) in &self.ratios() {
            println!("{k}: {v:.2}x");
        }
        println!(
            "heap saved by mapping instead of copying: {}",
            human::bytes(self.heap_saved().max(0) as u64)
        );
    }
}
