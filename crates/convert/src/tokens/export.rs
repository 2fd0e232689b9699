//! A ragged column out as a Megatron-LM indexed dataset ([`export_megatron`]).

use std::io::Write;
use std::path::{Path, PathBuf};

use mmtensor_format::{check_offsets, megatron, Dtype, FileLayout, MANIFEST_FILE};

use super::DOCUMENT_COLUMN;
use crate::dataset::read_manifest;
use crate::options::COPY_CHUNK_SIZE;
use crate::readers::mmt::{listed_shard, read_store};
use crate::source::Part;
use crate::{AtomicFile, DtypeRules, Error, Result};

/// What [`export_megatron`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MegatronExport {
    /// `PREFIX.bin`.
    pub bin: PathBuf,
    /// `PREFIX.idx`.
    pub idx: PathBuf,
    /// Sequences (rows) written.
    pub sequences: u64,
    /// Tokens written.
    pub tokens: u64,
}

/// One store's tensors of interest: the ragged column's values and offsets, and the `document`
/// column, as parts.
struct Pieces {
    path: PathBuf,
    values: Part,
    offsets: Part,
    documents: Option<Part>,
}

fn pieces(path: &Path, layout: &FileLayout, parts: Vec<Part>, column: &str) -> Result<Pieces> {
    let not_ragged = || Error::UnsupportedInput {
        path: path.to_path_buf(),
        member: None,
        reason: format!(
            "`{column}` is not a ragged tensor of this store, so it is not a token stream"
        ),
    };
    let i = layout.position(column).ok_or_else(not_ragged)?;
    if layout.header().tensors[i].offsets.is_none() {
        return Err(not_ragged());
    }
    let mut parts: Vec<Option<Part>> = parts.into_iter().map(Some).collect();
    let mut take = |j: usize| {
        parts
            .get_mut(j)
            .and_then(Option::take)
            .ok_or_else(not_ragged)
    };
    let values = take(i)?;
    let offsets = take(i + 1)?;
    let documents = match layout.position(DOCUMENT_COLUMN) {
        Some(d) => Some(take(d)?),
        None => None,
    };
    Ok(Pieces {
        path: path.to_path_buf(),
        values,
        offsets,
        documents,
    })
}

/// Writes ragged column `column` of the dataset folder or `.mmt` store at `source` as the
/// Megatron-LM indexed dataset `PREFIX.bin` + `PREFIX.idx`: each row a sequence, its tokens as
/// stored; documents from a `document` column (`I64`, each row's document number, as an import
/// writes it) when there is one, else a document per sequence. An import followed by this export
/// gives back both files byte for byte. Every block read is checked against its checksum; both
/// files are written atomically (temporary files, fsync, rename: `.bin` first).
///
/// # Errors
/// [`Error::UnsupportedInput`] for a column that is not ragged or a dtype Megatron has no code
/// for; [`Error::Format`] for a row longer than `i32::MAX` tokens (Megatron's sizes are int32);
/// the readers' errors for a damaged store; [`Error::Io`].
pub fn export_megatron(source: &Path, column: &str, prefix: &Path) -> Result<MegatronExport> {
    let rules = DtypeRules::default();
    let stores: Vec<Pieces> = if source.join(MANIFEST_FILE).is_file() {
        let manifest = read_manifest(source)?;
        match manifest.column(column) {
            Some(c) if c.is_ragged() => {}
            found => {
                let names: Vec<&str> = manifest.columns().iter().map(|c| c.name()).collect();
                return Err(Error::UnsupportedInput {
                    path: source.to_path_buf(),
                    member: None,
                    reason: match found {
                        Some(_) => format!("column `{column}` is not ragged, so it is not a token stream"),
                        None => format!(
                            "the dataset has no column `{column}` (its columns: {}); name the token column (`mmt export --column`)",
                            names.join(", ")
                        ),
                    },
                });
            }
        }
        manifest
            .shards()
            .iter()
            .map(|s| {
                let listed = listed_shard(source, s, manifest.columns(), &rules)?;
                pieces(&source.join(s.file()), &listed.layout, listed.parts, column)
            })
            .collect::<Result<_>>()?
    } else {
        let (layout, tensors) = read_store(source, &rules)?;
        let parts = tensors.into_iter().map(|(_, p)| p).collect();
        vec![pieces(source, &layout, parts, column)?]
    };
    let dtype = stores.first().map_or(Dtype::U16, |p| p.values.dtype);
    megatron::dtype_code(dtype).map_err(|e| Error::Format {
        path: source.to_path_buf(),
        source: e,
    })?;
    let bin_path = prefix.with_extension("bin");
    let idx_path = prefix.with_extension("idx");
    // `out/text` writes `out/text.bin`: the folder is made as `mmt convert -o` makes its own.
    if let Some(dir) = bin_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(Error::io("cannot create", dir))?;
    }
    let spill = crate::atomic::parent_dir(&bin_path);
    let bin = AtomicFile::create(&bin_path)?;
    let mut out = std::io::BufWriter::with_capacity(COPY_CHUNK_SIZE, bin.file());
    let (mut lengths, mut documents) = (Vec::new(), Vec::new());
    let mut buf = Vec::new();
    let mut tokens = 0u64;
    for p in &stores {
        let mut offsets = Vec::new();
        p.offsets.stream(
            &format!("{column}.offsets"),
            COPY_CHUNK_SIZE,
            &mut buf,
            &spill,
            &mut |b| {
                offsets.extend_from_slice(b);
                Ok(())
            },
        )?;
        let values_len = p.values.shape.first().copied().unwrap_or(0);
        check_offsets(column, &offsets, values_len).map_err(|source| Error::Format {
            path: p.path.clone(),
            source,
        })?;
        let offs: Vec<u64> = offsets
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        lengths.extend(offs.windows(2).map(|w| w[1] - w[0]));
        tokens += values_len;
        p.values
            .stream(column, COPY_CHUNK_SIZE, &mut buf, &spill, &mut |b| {
                out.write_all(b)
                    .map_err(Error::io("cannot write to", bin.temp_path()))
            })?;
        if let Some(d) = &p.documents {
            d.stream(
                DOCUMENT_COLUMN,
                COPY_CHUNK_SIZE,
                &mut buf,
                &spill,
                &mut |b| {
                    documents.extend(
                        b.chunks_exact(8)
                            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as u64),
                    );
                    Ok(())
                },
            )?;
        }
    }
    out.flush()
        .map_err(Error::io("cannot write to", bin.temp_path()))?;
    drop(out);
    let document_indices = if documents.len() == lengths.len() && !documents.is_empty() {
        megatron::document_indices_from(&documents).map_err(|e| Error::Format {
            path: source.to_path_buf(),
            source: e,
        })?
    } else {
        (0..=lengths.len() as u64).collect()
    };
    let index =
        megatron::encode(dtype, &lengths, &document_indices).map_err(|e| Error::Format {
            path: source.to_path_buf(),
            source: e,
        })?;
    let idx = AtomicFile::create(&idx_path)?;
    idx.file()
        .write_all(&index)
        .map_err(Error::io("cannot write to", idx.temp_path()))?;
    bin.commit()?;
    idx.commit()?;
    Ok(MegatronExport {
        bin: bin_path,
        idx: idx_path,
        sequences: lengths.len() as u64,
        tokens,
    })
}
