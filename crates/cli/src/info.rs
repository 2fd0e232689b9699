//! `mmt info`: what a store holds, read from its header alone.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use mmtensor_format::{FileLayout, Preamble, PREAMBLE_LEN};
use serde_json::json;

use crate::human;

/// Reads and validates the preamble and header of `path` without reading any tensor data.
pub fn read_layout(path: &Path) -> Result<FileLayout> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let file_len = file
        .metadata()
        .with_context(|| format!("cannot stat {}", path.display()))?
        .len();
    let mut prefix = vec![0u8; PREAMBLE_LEN.min(file_len) as usize];
    file.read_exact(&mut prefix)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let pre = Preamble::parse(&prefix).with_context(|| format!("{}", path.display()))?;
    // The header length is capped by Preamble::parse; never read past the end of the file.
    let want = (PREAMBLE_LEN + pre.header_len).min(file_len);
    prefix.resize(want as usize, 0);
    file.read_exact(&mut prefix[PREAMBLE_LEN as usize..])
        .with_context(|| format!("cannot read the header of {}", path.display()))?;
    FileLayout::parse(&prefix, file_len).with_context(|| format!("{}", path.display()))
}

/// Prints the table (or JSON) for `path`: a store, or a dataset folder or URL; with `ranks`, a
/// dataset's split into whole shards per rank too.
pub fn run(path: &Path, as_json: bool, ranks: Option<u64>) -> Result<()> {
    if let Some(url) = path.to_str().filter(|p| p.contains("://")) {
        return run_remote(url, as_json, ranks);
    }
    if path.is_dir() {
        return run_dataset(path, as_json, ranks);
    }
    if ranks.is_some() {
        anyhow::bail!(
            "{}: --ranks shows how a sharded dataset's shards are split over ranks; this is one \
             store (a dataset is a folder holding manifest.mmtm)",
            path.display()
        );
    }
    let layout = read_layout(path)?;
    let h = layout.header();
    if as_json {
        let tensors: Vec<_> = h
            .tensors
            .iter()
            .map(|t| {
                let r = layout.tensor_range(t);
                let mut j = json!({
                    "name": t.name,
                    "dtype": t.dtype.name(),
                    "shape": t.shape,
                    "bytes": t.length,
                    "offset": r.start,
                    "blocks": t.block_count(h.block_size),
                });
                if let Some(offsets) = &t.offsets {
                    j["offsets"] = json!(offsets);
                }
                j
            })
            .collect();
        let out = json!({
            "file": path.display().to_string(),
            "version": format!("{}.{}", layout.preamble().major, layout.preamble().minor),
            "file_bytes": layout.file_len(),
            "alignment": h.alignment,
            "block_size": h.block_size,
            "data_start": layout.data_start(),
            "header_bytes": layout.preamble().header_len,
            "metadata": h.metadata,
            "tensors": tensors,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let data: u64 = h.tensors.iter().map(|t| t.length).sum();
    println!(
        "{}: .mmt v{}.{}, {} tensor{}, {} of data in a {} file",
        path.display(),
        layout.preamble().major,
        layout.preamble().minor,
        h.tensors.len(),
        if h.tensors.len() == 1 { "" } else { "s" },
        human::bytes(data),
        human::bytes(layout.file_len()),
    );
    println!(
        "alignment {} B, checksum blocks of {}, header {} B, data from byte {}",
        h.alignment,
        human::bytes(h.block_size.get()),
        layout.preamble().header_len,
        layout.data_start()
    );
    if !h.tensors.is_empty() {
        // A ragged tensor's values say so, with its rows (its offsets, the next tensor, hold one
        // more entry than rows).
        let shapes: Vec<String> = h
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| match (&t.offsets, h.tensors.get(i + 1)) {
                (Some(_), Some(o)) => format!(
                    "{:?} ragged, {} rows",
                    t.shape,
                    o.shape.first().map_or(0, |n| n.saturating_sub(1))
                ),
                _ => format!("{:?}", t.shape),
            })
            .collect();
        let wn = h
            .tensors
            .iter()
            .map(|t| t.name.chars().count())
            .max()
            .unwrap_or(4)
            .max(4);
        let ws = shapes.iter().map(String::len).max().unwrap_or(5).max(5);
        println!();
        println!(
            "{:<wn$}  {:<7}  {:<ws$}  {:>10}  {:>14}",
            "name", "dtype", "shape", "size", "offset"
        );
        for (t, shape) in h.tensors.iter().zip(&shapes) {
            println!(
                "{:<wn$}  {:<7}  {:<ws$}  {:>10}  {:>14}",
                t.name,
                t.dtype,
                shape,
                human::bytes(t.length),
                layout.tensor_range(t).start
            );
        }
    }
    if !h.metadata.is_empty() {
        println!();
        println!("metadata:");
        for (k, v) in &h.metadata {
            println!("  {k} = {v}");
        }
    }
    Ok(())
}

/// Prints what the manifest of the dataset in `dir` says, read with plain reads (no shard is
/// opened: `mmt verify DIR` checks them).
fn run_dataset(dir: &Path, as_json: bool, ranks: Option<u64>) -> Result<()> {
    let m = mmtensor::Dataset::read_manifest(dir)?;
    print_manifest(&dir.display().to_string(), &m, as_json, ranks)
}

/// Prints what the manifest of the dataset under an object-storage URL says: one HEAD and one
/// GET, with the endpoint and credentials from the environment (AWS_ENDPOINT_URL, ...); no shard
/// is fetched.
fn run_remote(url: &str, as_json: bool, ranks: Option<u64>) -> Result<()> {
    // Reading a manifest fetches no shard, so the cache is only the client: in a temporary
    // folder, removed after, so that `mmt info` writes nothing of its own anywhere.
    let scratch = tempfile::tempdir()?;
    let cache = mmtensor_remote::Cache::new(scratch.path(), 0)?;
    let m = mmtensor_remote::read_manifest(&cache, url)?;
    print_manifest(url.trim_end_matches('/'), &m, as_json, ranks)
}

/// What each rank owns under whole shards per rank: (shard indices, rows, bytes of shard files).
fn rank_parts(
    origin: &str,
    m: &mmtensor_format::Manifest,
    world_size: u64,
) -> Result<Vec<(Vec<usize>, u64, u64)>> {
    let rows: Vec<u64> = m.shards().iter().map(|s| s.num_rows()).collect();
    let ranks = mmtensor::order::shard_ranks(&rows, world_size)
        .with_context(|| format!("{origin}: --ranks {world_size}"))?;
    // `shard_ranks` succeeded: every rank owns a shard, or no shard has rows (then all go to 0).
    let n = usize::try_from(world_size)?.min(m.shards().len().max(1));
    let mut parts = vec![(Vec::new(), 0u64, 0u64); n];
    for (i, (s, &r)) in m.shards().iter().zip(&ranks).enumerate() {
        let p = &mut parts[r as usize];
        p.0.push(i);
        p.1 += s.num_rows();
        p.2 += s.length();
    }
    Ok(parts)
}

/// The manifest `m` of the dataset `origin` (a folder or a URL), as a table or JSON.
fn print_manifest(
    origin: &str,
    m: &mmtensor_format::Manifest,
    as_json: bool,
    ranks: Option<u64>,
) -> Result<()> {
    let parts = ranks.map(|n| rank_parts(origin, m, n)).transpose()?;
    let file_bytes: u64 = m.shards().iter().map(|s| s.length()).sum();
    // A ragged column's items are counted in its shards, not in the manifest: the data size counts
    // the fixed columns only, and says so.
    let ragged = m.columns().iter().any(|c| c.is_ragged());
    let row_bytes: u64 = m
        .columns()
        .iter()
        .filter(|c| !c.is_ragged())
        .map(|c| c.row_bytes())
        .sum();
    let data = u128::from(row_bytes) * u128::from(m.num_rows());
    if as_json {
        let columns: Vec<_> = m
            .columns()
            .iter()
            .map(|c| {
                if c.is_ragged() {
                    return json!({
                        "name": c.name(),
                        "dtype": c.dtype().name(),
                        "ragged": true,
                        "rows": m.num_rows(),
                        "item_shape": c.row_shape(),
                        "item_bytes": c.row_bytes(),
                    });
                }
                json!({
                    "name": c.name(),
                    "dtype": c.dtype().name(),
                    "shape": c.shape(m.num_rows()),
                    "row_bytes": c.row_bytes(),
                })
            })
            .collect();
        let shards: Vec<_> = m
            .shards()
            .iter()
            .zip(m.starts())
            .map(|(s, start)| {
                json!({
                    "file": s.file(),
                    "rows": s.num_rows(),
                    "first_row": start,
                    "bytes": s.length(),
                    "header_xxh3": format!("{:016x}", s.header_checksum()),
                })
            })
            .collect();
        let mut out = json!({
            "dataset": origin,
            "version": format!("{}.{}", mmtensor_format::MANIFEST_VERSION_MAJOR, mmtensor_format::MANIFEST_VERSION_MINOR),
            "rows": m.num_rows(),
            "file_bytes": file_bytes,
            "columns": columns,
            "shards": shards,
        });
        if let Some(parts) = &parts {
            out["ranks"] = parts
                .iter()
                .enumerate()
                .map(|(r, (shards, rows, bytes))| {
                    json!({"rank": r, "shards": shards, "rows": rows, "bytes": bytes})
                })
                .collect();
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let data = human::bytes(u64::try_from(data).unwrap_or(u64::MAX));
    println!(
        "{}: dataset, {} column{}, {} rows in {} shard{}, {} in {} of shard files",
        origin,
        m.columns().len(),
        if m.columns().len() == 1 { "" } else { "s" },
        m.num_rows(),
        m.shards().len(),
        if m.shards().len() == 1 { "" } else { "s" },
        if ragged {
            format!("ragged items and {data} of fixed-shape rows")
        } else {
            format!("{data} of data")
        },
        human::bytes(file_bytes),
    );
    let shapes: Vec<String> = m
        .columns()
        .iter()
        .map(|c| {
            if c.is_ragged() {
                // Rows of any length: `[rows, *, item dims...]`.
                let mut s = format!("[{}, *", m.num_rows());
                for d in c.row_shape() {
                    s.push_str(&format!(", {d}"));
                }
                s + "]"
            } else {
                format!("{:?}", c.shape(m.num_rows()))
            }
        })
        .collect();
    let wn = m
        .columns()
        .iter()
        .map(|c| c.name().chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    let ws = shapes.iter().map(String::len).max().unwrap_or(5).max(5);
    println!();
    println!(
        "{:<wn$}  {:<7}  {:<ws$}  {:>10}",
        "name", "dtype", "shape", "row size"
    );
    for (c, shape) in m.columns().iter().zip(&shapes) {
        println!(
            "{:<wn$}  {:<7}  {:<ws$}  {:>10}",
            c.name(),
            c.dtype(),
            shape,
            if c.is_ragged() {
                format!("* x {}", human::bytes(c.row_bytes()))
            } else {
                human::bytes(c.row_bytes())
            }
        );
    }
    if !m.shards().is_empty() {
        let wf = m
            .shards()
            .iter()
            .map(|s| s.file().len())
            .max()
            .unwrap_or(4)
            .max(5);
        println!();
        println!(
            "{:<wf$}  {:>12}  {:>12}  {:>10}  header xxh3",
            "shard", "first row", "rows", "size"
        );
        for (s, start) in m.shards().iter().zip(m.starts()) {
            println!(
                "{:<wf$}  {:>12}  {:>12}  {:>10}  {:016x}",
                s.file(),
                start,
                s.num_rows(),
                human::bytes(s.length()),
                s.header_checksum()
            );
        }
    }
    if let Some(parts) = &parts {
        print_ranks(parts);
    }
    Ok(())
}

/// Shard indices, the first eight and a count of the rest: `0 4 8 12 16 20 24 28 ... (+5)`.
fn shard_list(shards: &[usize]) -> String {
    let mut text: Vec<String> = shards.iter().take(8).map(usize::to_string).collect();
    if shards.len() > 8 {
        text.push(format!("... (+{})", shards.len() - 8));
    }
    text.join(" ")
}

/// The split into whole shards per rank, and what evening it out costs.
fn print_ranks(parts: &[(Vec<usize>, u64, u64)]) {
    let most = parts.iter().map(|p| p.1).max().unwrap_or(0);
    let fewest = parts.iter().map(|p| p.1).min().unwrap_or(0);
    println!();
    println!(
        "whole shards per rank (split=\"shards\"), {} rank{}:",
        parts.len(),
        if parts.len() == 1 { "" } else { "s" }
    );
    println!(
        "{:>6}  {:>7}  {:>12}  {:>10}  which",
        "rank", "shards", "rows", "download"
    );
    for (r, (shards, rows, bytes)) in parts.iter().enumerate() {
        println!(
            "{:>6}  {:>7}  {:>12}  {:>10}  {}",
            r,
            shards.len(),
            rows,
            human::bytes(*bytes),
            shard_list(shards)
        );
    }
    let pct = |n: u64| {
        if most == 0 {
            0.0
        } else {
            100.0 * n as f64 / most as f64
        }
    };
    println!(
        "every rank reads {most} rows an epoch (ranks with fewer repeat up to {} of their own, \
         {:.1}%), or {fewest} with drop_last (up to {} dropped, {:.1}%)",
        most - fewest,
        pct(most - fewest),
        most - fewest,
        pct(most - fewest)
    );
}
