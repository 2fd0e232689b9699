//! `.mmt` stores and sharded dataset folders as inputs: merge a dataset's shards into one store,
//! cut a dataset again with another shard size, cast or select its columns.
//!
//! A store is read as safetensors is, with positioned reads of its header and checksum table
//! (never mapped), its tensors as plain byte ranges of the file. Unlike the other inputs it
//! carries checksums, and they are checked as the bytes stream through: a corrupt input block is
//! [`Error::InputChecksum`] before anything becomes visible, never carried into the output under
//! fresh checksums. A dataset folder is its manifest's columns, each the concatenation of its
//! shards' tensors in manifest order; every shard is checked against the manifest first.

use std::path::Path;
use std::sync::Arc;

use mmtensor_format::{
    block_checksum, decode_checksum_table, ColumnSpec, FileLayout, Manifest, Shard, MANIFEST_FILE,
    MANIFEST_PREAMBLE_LEN, MAX_MANIFEST_BODY_LEN, PREAMBLE_LEN,
};

use crate::plan::{child_name, planned, PlannedTensor};
use crate::source::{open_input, pread_exact, read_dtype, BlockCheck, Location, Part};
use crate::{DtypeRules, Error, Result};

/// Whether `dir` is a dataset folder (it holds a manifest).
pub(crate) fn is_dataset(dir: &Path) -> bool {
    dir.join(MANIFEST_FILE).is_file()
}

/// One store's header and its tensors as parts, by name, after checking its header and checksum
/// table.
pub(crate) fn read_store(
    path: &Path,
    input_dtype: &DtypeRules,
) -> Result<(FileLayout, Vec<(String, Part)>)> {
    let (file, file_len) = open_input(path)?;
    let format = |source| Error::Format {
        path: path.to_path_buf(),
        source,
    };
    let read = |len: u64, at: u64| -> Result<Vec<u8>> {
        // Every length here is capped by the format (the header) or by the file's length.
        let len = usize::try_from(len.min(file_len.saturating_sub(at))).unwrap_or(0);
        let mut buf = vec![0; len];
        pread_exact(&file, &mut buf, at).map_err(Error::io("cannot read", path))?;
        Ok(buf)
    };
    let preamble = read(PREAMBLE_LEN, 0)?;
    let p = mmtensor_format::Preamble::parse(&preamble).map_err(format)?;
    // `Preamble::parse` refused a header past the format's cap, so this read is bounded.
    let head = read(PREAMBLE_LEN.saturating_add(p.header_len), 0)?;
    let layout = FileLayout::parse(&head, file_len).map_err(format)?;
    let range = layout.checksum_table_range();
    let table_bytes = read(range.end - range.start, range.start)?;
    let computed = block_checksum(&table_bytes);
    if computed != layout.header().checksums.checksum {
        return Err(Error::InputChecksum {
            path: path.to_path_buf(),
            tensor: None,
            block: 0,
            offset: range.start,
            end: range.end,
        });
    }
    // Padding must be zeros: a nonzero byte is corruption, as `verify` counts it, even though no
    // tensor holds it. Read in bounded pieces (a hostile alignment makes gaps of up to 1 GiB).
    let mut zeros = Vec::new();
    for gap in layout.padding_ranges() {
        let mut at = gap.start;
        while at < gap.end {
            let n = (gap.end - at).min(1 << 20);
            zeros.resize(n as usize, 0);
            pread_exact(&file, &mut zeros, at).map_err(Error::io("cannot read", path))?;
            if let Some(i) = zeros.iter().position(|&b| b != 0) {
                return Err(Error::InputPadding {
                    path: path.to_path_buf(),
                    offset: at + i as u64,
                    value: zeros[i],
                });
            }
            at += n;
        }
    }
    let table: Vec<u64> = decode_checksum_table(&table_bytes).collect();
    let block_size = layout.header().block_size;
    let mut out = Vec::with_capacity(layout.header().tensors.len());
    for t in &layout.header().tensors {
        let blocks = t.block_count(block_size);
        let first = usize::try_from(t.first_block).unwrap_or(usize::MAX);
        let sums = first
            .checked_add(usize::try_from(blocks).unwrap_or(usize::MAX))
            .and_then(|end| table.get(first..end))
            .ok_or_else(|| Error::InputChecksum {
                path: path.to_path_buf(),
                tensor: Some(t.name.clone()),
                block: 0,
                offset: range.start,
                end: range.end,
            })?;
        let stored = t.dtype;
        let tensor = layout.tensor_range(t);
        let location = Location::File {
            path: path.to_path_buf(),
            offset: tensor.start,
        };
        let rule = input_dtype.get(&t.name);
        let dtype = read_dtype(
            &location,
            &t.name,
            stored.name(),
            Some(stored),
            stored.size(),
            rule,
        )?;
        out.push((
            t.name.clone(),
            Part {
                location,
                reinterpreted: dtype != stored,
                dtype,
                descr: stored.name().to_owned(),
                big_endian: false,
                fortran: false,
                shape: t.shape.clone(),
                len: t.length,
                verify: Some(Arc::new(BlockCheck {
                    block_size: block_size.get(),
                    sums: sums.to_vec(),
                    offset: tensor.start,
                })),
            },
        ));
    }
    Ok((layout, out))
}

/// The tensors of the `.mmt` store at `path`, named as a safetensors file's are (`prefix`: the
/// input's `NAME=`).
pub(crate) fn plan_mmt(
    path: &Path,
    prefix: Option<&str>,
    input_dtype: &DtypeRules,
) -> Result<Vec<PlannedTensor>> {
    let (layout, tensors) = read_store(path, input_dtype)?;
    if let Some(t) = layout.header().tensors.iter().find(|t| t.offsets.is_some()) {
        return Err(ragged_input(path, &t.name));
    }
    let only = tensors.len() == 1;
    tensors
        .into_iter()
        .map(|(key, part)| {
            let name = child_name(prefix, &key, only);
            let source = format!("{}:{key}", path.display());
            planned(name, vec![part], source)
        })
        .collect()
}

/// The columns of the dataset in `dir`, each one tensor made of its shards' tensors in manifest
/// order (shards without rows add nothing).
pub(crate) fn plan_dataset(
    dir: &Path,
    prefix: Option<&str>,
    input_dtype: &DtypeRules,
) -> Result<Vec<PlannedTensor>> {
    let manifest_path = dir.join(MANIFEST_FILE);
    // The format caps a manifest; a larger file is refused before it is read into memory.
    let cap = MANIFEST_PREAMBLE_LEN + MAX_MANIFEST_BODY_LEN;
    let len = std::fs::metadata(&manifest_path)
        .map_err(Error::io("cannot stat", &manifest_path))?
        .len();
    if len > cap {
        return Err(Error::UnsupportedInput {
            path: manifest_path,
            member: None,
            reason: format!(
                "the manifest is {len} bytes long, more than a manifest may be ({cap})"
            ),
        });
    }
    let bytes = std::fs::read(&manifest_path).map_err(Error::io("cannot read", &manifest_path))?;
    let manifest = Manifest::parse(&bytes).map_err(|source| Error::Format {
        path: manifest_path.clone(),
        source,
    })?;
    let columns = manifest.columns();
    if let Some(c) = columns.iter().find(|c| c.is_ragged()) {
        return Err(ragged_input(dir, c.name()));
    }
    let mut parts: Vec<Vec<Part>> = vec![Vec::new(); columns.len()];
    for shard in manifest.shards() {
        let listed = listed_shard(dir, shard, columns, input_dtype)?;
        if shard.num_rows() > 0 {
            for (column, part) in parts.iter_mut().zip(listed.parts) {
                column.push(part);
            }
        }
    }
    let only = columns.len() == 1;
    columns
        .iter()
        .zip(parts)
        .map(|(c, mut parts)| {
            let name = child_name(prefix, c.name(), only);
            let source = format!("{}:{}", dir.display(), c.name());
            if parts.is_empty() {
                // No rows at all: one empty part keeps the column's dtype and row shape.
                parts.push(Part {
                    location: Location::File {
                        path: dir.join(MANIFEST_FILE),
                        offset: 0,
                    },
                    reinterpreted: false,
                    dtype: input_dtype.get(c.name()).unwrap_or(c.dtype()),
                    descr: c.dtype().name().to_owned(),
                    big_endian: false,
                    fortran: false,
                    shape: c.shape(0),
                    len: 0,
                    verify: None,
                });
            }
            planned(name, parts, source)
        })
        .collect()
}

/// A shard of a dataset, checked against its manifest entry: its header, and its tensors as
/// parts in column order.
pub(crate) struct ListedShard {
    pub(crate) layout: FileLayout,
    pub(crate) parts: Vec<Part>,
}

/// Reads the shard `shard` of the dataset in `dir` as an input: its header and checksum table are
/// checked, then that it is the file the manifest lists (its length and header checksum) and holds
/// exactly `columns`, in order, with `shard.num_rows()` rows. Its blocks are checked against their
/// checksums as they stream.
///
/// # Errors
/// As [`read_store`]; [`Error::UnsupportedInput`] naming the shard when it differs from the
/// manifest.
pub(crate) fn listed_shard(
    dir: &Path,
    shard: &Shard,
    columns: &[ColumnSpec],
    input_dtype: &DtypeRules,
) -> Result<ListedShard> {
    let path = dir.join(shard.file());
    let (layout, tensors) = read_store(&path, input_dtype)?;
    if let Some(reason) = shard.mismatch(columns, &layout) {
        return Err(Error::UnsupportedInput {
            path,
            member: None,
            reason: format!("this shard does not match the dataset's manifest: {reason}"),
        });
    }
    // The layout's tensors are the columns, in order (checked above): so are the parts.
    let parts = tensors.into_iter().map(|(_, part)| part).collect();
    Ok(ListedShard { layout, parts })
}

/// The refusal of a ragged tensor or column as a conversion's input: planned tensors are
/// fixed-shape, and taking its values and offsets for two of them would lose its rows.
fn ragged_input(path: &Path, name: &str) -> Error {
    Error::UnsupportedInput {
        path: path.to_path_buf(),
        member: None,
        reason: format!(
            "`{name}` is ragged (rows of different lengths), and a conversion copies fixed-shape \
             tensors only: its rows would be lost. Write ragged rows with a DatasetWriter, or \
             `mmt export --to megatron` a token column and convert the .idx"
        ),
    }
}
