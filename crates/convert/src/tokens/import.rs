//! Token files into a dataset with a ragged `tokens` column ([`import_tokens`]).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use mmtensor_format::megatron::MegatronIndex;
use mmtensor_format::npy::{parse_header, required_prefix_len, ByteOrder};
use mmtensor_format::{ColumnSpec, Dtype};

use super::{BATCH_BYTES, DOCUMENT_COLUMN, TOKENS_COLUMN};
use crate::dataset::{schema_difference, ColumnBatch, DatasetSummary, DatasetWriter};
use crate::source::open_input;
use crate::Fill;
use crate::{ConvertOptions, Error, Progress, Result};

/// Tokens a row holds at most when a flat stream is not split into documents.
pub const DEFAULT_ROW_TOKENS: u64 = 1 << 20;

/// Where tokens come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSource {
    /// A Megatron-LM / NeMo indexed dataset: `idx` is `PREFIX.idx`, the tokens are in
    /// `PREFIX.bin`. A row per sequence; when the index groups sequences into documents
    /// otherwise than one each, a `document` column (`I64`) records each sequence's document.
    Megatron {
        /// The `.idx` file.
        idx: PathBuf,
    },
    /// A flat stream of tokens: a raw little-endian file of `dtype` (nanoGPT's `train.bin`), or a
    /// 1-D `.npy` when `dtype` is `None`.
    Flat {
        /// The file.
        path: PathBuf,
        /// The raw file's token dtype; `None`: the file is a `.npy`.
        dtype: Option<Dtype>,
        /// Split into documents after each token of this id (the end-of-text token ends its
        /// document); `None`: rows of `row_tokens` tokens, the stream cut without meaning.
        eot: Option<u64>,
        /// Tokens a row holds at most when not split at `eot`.
        row_tokens: u64,
    },
}

/// Imports `source` into a new dataset at `out`: a ragged `tokens` column, a row per document
/// (or per `row_tokens` tokens of an unsplit stream), shards of at most `shard_size` bytes of
/// tokens. The tokens are copied as they are (no cast); the index is checked whole before the
/// first byte is written.
///
/// # Errors
/// [`Error::Io`] naming the file; [`Error::UnsupportedInput`] for an index or `.npy` that does not
/// describe the file (naming the field and the byte), a raw file whose length is not whole tokens,
/// an end-of-text id the dtype cannot hold; [`Error::Cancelled`]; the writer's errors. Nothing is
/// visible at `out` unless the whole import succeeded.
pub fn import_tokens(
    source: &TokenSource,
    out: &Path,
    shard_size: u64,
    options: &ConvertOptions,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<DatasetSummary> {
    let target = Target::Create { shard_size };
    import(source, out, &target, options, progress, cancel)
}

/// Appends `source`'s documents to the dataset at `dir` as new rows of its ragged `tokens`
/// column (and `document` column, if it has one): new shards only (the last one is not filled),
/// cut at `shard_size` bytes of tokens or the dataset's own; then the manifest, atomically.
///
/// # Errors
/// As [`import_tokens`]; [`Error::SchemaMismatch`] when the dataset's columns are not the ones
/// the source gives (another token dtype, a `document` column on one side only), before any
/// byte is written.
pub fn append_tokens(
    source: &TokenSource,
    dir: &Path,
    shard_size: Option<u64>,
    options: &ConvertOptions,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<DatasetSummary> {
    let target = Target::Append { shard_size };
    import(source, dir, &target, options, progress, cancel)
}

/// Where an import's rows go.
enum Target {
    /// A new dataset.
    Create { shard_size: u64 },
    /// New rows of an existing one.
    Append { shard_size: Option<u64> },
}

impl Target {
    /// The writer of `columns` into `out`.
    fn writer(
        &self,
        out: &Path,
        columns: Vec<ColumnSpec>,
        options: &ConvertOptions,
        source: &Path,
    ) -> Result<DatasetWriter> {
        match self {
            Target::Create { shard_size } => {
                DatasetWriter::create(out, columns, *shard_size, options)
            }
            Target::Append { shard_size } => {
                let w = DatasetWriter::append(out, *shard_size, Fill::Never, options)?;
                let there = format!("in {}", source.display());
                match schema_difference(w.columns(), &columns, &there, true) {
                    Some(reason) => Err(Error::SchemaMismatch {
                        path: out.to_path_buf(),
                        reason,
                    }),
                    None => Ok(w),
                }
            }
        }
    }
}

fn import(
    source: &TokenSource,
    out: &Path,
    target: &Target,
    options: &ConvertOptions,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<DatasetSummary> {
    match source {
        TokenSource::Megatron { idx } => {
            import_megatron(idx, out, target, options, progress, cancel)
        }
        TokenSource::Flat {
            path,
            dtype,
            eot,
            row_tokens,
        } => {
            let stream = FlatStream::open(path, *dtype)?;
            import_flat(
                &stream,
                *eot,
                *row_tokens,
                out,
                target,
                options,
                progress,
                cancel,
            )
        }
    }
}

fn unsupported(path: &Path, reason: String) -> Error {
    Error::UnsupportedInput {
        path: path.to_path_buf(),
        member: None,
        reason,
    }
}

/// Reads `buf.len()` bytes at `at` (sequential reads: the kernel's readahead keeps ahead of them).
fn read_at(file: &File, path: &Path, buf: &mut [u8], at: u64) -> Result<()> {
    file.read_exact_at(buf, at)
        .map_err(Error::io("cannot read", path))
}

/// Reads `ranges` (byte offset, length) of `file`, in order, on a second thread that stays at
/// most two ranges ahead, and calls `f` with each range's index and bytes, in order: the disk and
/// the copy into the buffer work while the caller writes the previous batch. Three buffers are
/// reused. An error of either side stops both; the thread is joined before this returns.
fn read_ahead(
    file: &File,
    path: &Path,
    ranges: &[(u64, usize)],
    mut f: impl FnMut(usize, &[u8]) -> Result<()>,
) -> Result<()> {
    use std::sync::mpsc;
    std::thread::scope(|scope| {
        let (full_tx, full_rx) = mpsc::sync_channel::<Result<Vec<u8>>>(2);
        let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
        for _ in 0..3 {
            // The receiver is alive: it is moved into the reader below.
            let _ = free_tx.send(Vec::new());
        }
        scope.spawn(move || {
            for &(at, len) in ranges {
                let Ok(mut buf) = free_rx.recv() else {
                    return;
                };
                buf.resize(len, 0);
                let read = read_at(file, path, &mut buf, at).map(|()| buf);
                let failed = read.is_err();
                if full_tx.send(read).is_err() || failed {
                    return;
                }
            }
        });
        for i in 0..ranges.len() {
            let buf = full_rx.recv().map_err(|_| {
                Error::io("cannot read", path)(std::io::Error::other("the reader thread stopped"))
            })??;
            f(i, &buf)?;
            let _ = free_tx.send(buf);
        }
        Ok(())
    })
}

fn check_cancel(cancel: &AtomicBool, out: &Path) -> Result<()> {
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Cancelled {
            path: out.to_path_buf(),
        });
    }
    Ok(())
}

fn import_megatron(
    idx_path: &Path,
    out: &Path,
    target: &Target,
    options: &ConvertOptions,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<DatasetSummary> {
    let bin_path = idx_path.with_extension("bin");
    let idx_bytes = std::fs::read(idx_path).map_err(Error::io("cannot read", idx_path))?;
    let (bin, bin_len) = open_input(&bin_path)?;
    let index = MegatronIndex::parse(&idx_bytes, bin_len).map_err(|source| Error::Format {
        path: idx_path.to_path_buf(),
        source,
    })?;
    let dtype = index.dtype();
    let lengths: Vec<u64> = index.sizes().collect();
    let documents = if index.documents_are_sequences() {
        None
    } else {
        let docs = index.sequence_documents().map_err(|source| Error::Format {
            path: idx_path.to_path_buf(),
            source,
        })?;
        Some(
            docs.into_iter()
                .map(|d| d as i64)
                .flat_map(i64::to_le_bytes)
                .collect::<Vec<u8>>(),
        )
    };
    let mut columns = vec![
        ColumnSpec::ragged(TOKENS_COLUMN, dtype, vec![]).map_err(|source| Error::Format {
            path: idx_path.to_path_buf(),
            source,
        })?,
    ];
    if documents.is_some() {
        columns.push(
            ColumnSpec::new(DOCUMENT_COLUMN, Dtype::I64, vec![]).map_err(|source| {
                Error::Format {
                    path: idx_path.to_path_buf(),
                    source,
                }
            })?,
        );
    }
    let mut writer = target.writer(out, columns, options, idx_path)?;
    let item = dtype.size() as u64;
    // Batches of whole rows of about BATCH_BYTES (at least one row each): (first row, end row,
    // byte offset in the .bin, bytes).
    let mut batches = Vec::new();
    let (mut row, mut at) = (0usize, 0u64);
    while row < lengths.len() {
        let mut end = row;
        let mut bytes = 0u64;
        while end < lengths.len()
            && (end == row || bytes + lengths[end] * item <= BATCH_BYTES as u64)
        {
            bytes += lengths[end] * item;
            end += 1;
        }
        let len = usize::try_from(bytes).map_err(|_| {
            unsupported(
                &bin_path,
                format!("sequence {row} is too large to read into memory ({bytes} bytes)"),
            )
        })?;
        batches.push((row, end, at, len));
        at += bytes;
        row = end;
    }
    let ranges: Vec<(u64, usize)> = batches.iter().map(|b| (b.2, b.3)).collect();
    read_ahead(&bin, &bin_path, &ranges, |i, buf| {
        check_cancel(cancel, out)?;
        let (row, end, _, bytes) = batches[i];
        let mut batch = vec![ColumnBatch::Ragged {
            values: buf,
            lengths: &lengths[row..end],
        }];
        if let Some(docs) = &documents {
            batch.push(ColumnBatch::Fixed(&docs[row * 8..end * 8]));
        }
        writer.write_batch((end - row) as u64, &batch)?;
        progress.advance(bytes as u64);
        Ok(())
    })?;
    check_cancel(cancel, out)?;
    let mut summary = writer.finish()?;
    summary.input_bytes = at + idx_bytes.len() as u64;
    Ok(summary)
}

/// A flat token file: where its tokens start and how many there are.
struct FlatStream {
    path: PathBuf,
    file: File,
    dtype: Dtype,
    start: u64,
    tokens: u64,
}

impl FlatStream {
    fn open(path: &Path, raw: Option<Dtype>) -> Result<FlatStream> {
        let (file, len) = open_input(path)?;
        let (dtype, start, tokens) = match raw {
            Some(dtype) => {
                let item = dtype.size() as u64;
                if len % item != 0 {
                    return Err(unsupported(
                        path,
                        format!(
                            "the file is {len} bytes long, not a whole number of {dtype} tokens ({item} bytes each): is --raw-dtype right?"
                        ),
                    ));
                }
                (dtype, 0, len / item)
            }
            None => {
                let mut prefix = vec![0u8; 16.min(len as usize)];
                read_at(&file, path, &mut prefix, 0)?;
                let npy = |source| Error::Npy {
                    path: path.to_path_buf(),
                    member: None,
                    source,
                };
                let need = required_prefix_len(&prefix).map_err(npy)?;
                if need as u64 > len {
                    return Err(unsupported(
                        path,
                        format!("the .npy header needs {need} bytes but the file has {len}"),
                    ));
                }
                let mut head = vec![0u8; need];
                read_at(&file, path, &mut head, 0)?;
                let h = parse_header(&head).map_err(npy)?;
                let Some(dtype) = h.dtype else {
                    return Err(unsupported(
                        path,
                        format!("its dtype `{}` is not a token id type", h.descr),
                    ));
                };
                if h.shape.len() != 1 {
                    return Err(unsupported(
                        path,
                        format!(
                            "a token stream is a 1-D array, but this one has shape {:?}",
                            h.shape
                        ),
                    ));
                }
                if h.byte_order == ByteOrder::Big {
                    return Err(unsupported(
                        path,
                        "its tokens are big-endian; save them little-endian (`arr.astype(arr.dtype.newbyteorder('<'))`)".into(),
                    ));
                }
                h.check_file_len(len).map_err(npy)?;
                (dtype, h.data_offset, h.shape[0])
            }
        };
        if !matches!(
            dtype,
            Dtype::U8
                | Dtype::U16
                | Dtype::U32
                | Dtype::U64
                | Dtype::I8
                | Dtype::I16
                | Dtype::I32
                | Dtype::I64
        ) {
            return Err(unsupported(
                path,
                format!("tokens are integer ids, but the dtype is {dtype}"),
            ));
        }
        Ok(FlatStream {
            path: path.to_path_buf(),
            file,
            dtype,
            start,
            tokens,
        })
    }

    /// The token of `bytes` at `i`, as a u64 (bit pattern for signed dtypes).
    fn token(&self, bytes: &[u8], i: usize) -> u64 {
        let s = self.dtype.size();
        let mut le = [0u8; 8];
        le[..s].copy_from_slice(&bytes[i * s..(i + 1) * s]);
        u64::from_le_bytes(le)
    }
}

/// The bit pattern `eot` has as a token of `dtype`, or an error when the dtype cannot hold it.
fn eot_bits(path: &Path, dtype: Dtype, eot: u64) -> Result<u64> {
    let bits = dtype.size() as u32 * 8;
    let fits = bits == 64 || eot < (1u64 << bits);
    if !fits {
        return Err(unsupported(
            path,
            format!("the end-of-text id {eot} does not fit in a {dtype} token"),
        ));
    }
    Ok(eot)
}

#[allow(clippy::too_many_arguments)]
fn import_flat(
    stream: &FlatStream,
    eot: Option<u64>,
    row_tokens: u64,
    out: &Path,
    target: &Target,
    options: &ConvertOptions,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<DatasetSummary> {
    let path = &stream.path;
    if row_tokens == 0 {
        return Err(unsupported(path, "rows of 0 tokens were asked for".into()));
    }
    let eot = eot.map(|e| eot_bits(path, stream.dtype, e)).transpose()?;
    let column = ColumnSpec::ragged(TOKENS_COLUMN, stream.dtype, vec![]).map_err(|source| {
        Error::Format {
            path: path.clone(),
            source,
        }
    })?;
    let mut writer = target.writer(out, vec![column], options, path)?;
    let item = stream.dtype.size() as u64;
    let chunk = (BATCH_BYTES as u64 / item).max(1);
    // Tokens read but not yet written: the start of a document that continues in the next chunk.
    let mut pending: Vec<u8> = Vec::new();
    let mut lengths = Vec::new();
    let ranges: Vec<(u64, usize)> = (0..stream.tokens.div_ceil(chunk))
        .map(|k| {
            let n = chunk.min(stream.tokens - k * chunk);
            (stream.start + k * chunk * item, (n * item) as usize)
        })
        .collect();
    let mut at = 0u64;
    read_ahead(&stream.file, path, &ranges, |_, buf| {
        check_cancel(cancel, out)?;
        let n = buf.len() as u64 / item;
        at += n;
        progress.advance(n * item);
        pending.extend_from_slice(buf);
        lengths.clear();
        let total = pending.len() / item as usize;
        let mut start = 0usize;
        match eot {
            Some(eot) => {
                for i in 0..total {
                    if stream.token(&pending, i) == eot {
                        lengths.push((i + 1 - start) as u64);
                        start = i + 1;
                    }
                }
            }
            None => {
                while total - start >= row_tokens as usize {
                    lengths.push(row_tokens);
                    start += row_tokens as usize;
                }
            }
        }
        if at == stream.tokens && start < total {
            // The stream's tail: a last document without an end-of-text token, or a short row.
            lengths.push((total - start) as u64);
            start = total;
        }
        if !lengths.is_empty() {
            let bytes = start * item as usize;
            writer.write_batch(
                lengths.len() as u64,
                &[ColumnBatch::Ragged {
                    values: &pending[..bytes],
                    lengths: &lengths,
                }],
            )?;
            pending.drain(..bytes);
        }
        Ok(())
    })?;
    check_cancel(cancel, out)?;
    let mut summary = writer.finish()?;
    summary.input_bytes = stream.tokens * item;
    Ok(summary)
}
