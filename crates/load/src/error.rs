//! The one error type of this crate.

use std::path::{Path, PathBuf};

use mmtensor_format::Dtype;

use crate::fingerprint::Fingerprint;
use crate::format::Format;

/// Why a store could not be opened, a view could not be made, or a check failed.
///
/// Every variant names the file; those about one tensor name it too. Byte offsets are absolute
/// positions in the file. `Display` reads as a sentence fragment, so callers can prefix context.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system call failed: open, stat, read, mmap or madvise.
    #[error("cannot {action} {}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done, as a verb phrase ("open", "map", "read").
        action: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than this process can address.
    #[error("{}: the file is {len} bytes, more than this platform can map", .path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
    },
    /// The path names a directory (or another non-file) rather than a tensor file. A dataset
    /// folder says how to open it.
    #[error(
        "{}: is a directory, not a tensor file{}",
        .path.display(),
        if *.dataset {
            ": it holds a sharded dataset (manifest.mmtm): open it with mmtensor.open_dataset \
             (Rust: mmtensor::Dataset::open), or pass it to Loader"
        } else {
            ""
        }
    )]
    IsADirectory {
        /// The path.
        path: PathBuf,
        /// Whether the directory holds a dataset manifest.
        dataset: bool,
    },
    /// The path names a FIFO, a socket or a device rather than a regular file: such a file has no
    /// fixed length to map (and opening a FIFO would wait for a writer).
    #[error("{}: not a regular file (a FIFO, socket or device): give the path of a tensor file", .path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// The mapped file became shorter than it was at open: something truncated or rewrote it in
    /// place while the store was open (which the contract of `Store::open` rules out). Reading
    /// the vanished pages would kill the process with `SIGBUS`, so nothing more is read.
    #[error(
        "{}: the file shrank from {mapped} to {len} bytes while open: it was truncated or rewritten \
         in place (replace files by writing a new one and renaming it over the old)",
        .path.display()
    )]
    Shrank {
        /// The file.
        path: PathBuf,
        /// Its length now.
        len: u64,
        /// Its length when it was mapped.
        mapped: u64,
    },
    /// The file's length or modification time moved while [`crate::Store::read`] copied it: a
    /// writer was at work, and the copy may hold parts of two versions. Nothing was kept.
    #[error(
        "{}: the file changed while it was being read (its length or modification time moved): \
         read it again once nothing writes it",
        .path.display()
    )]
    ChangedWhileRead {
        /// The file.
        path: PathBuf,
    },
    /// The first bytes are not those of an `.mmt`, `.safetensors` or `.npy` file.
    #[error(
        "{}: not an .mmt, .safetensors or .npy file{} (it starts with {found:02x?})",
        .path.display(),
        mmtensor_format::looks_like(found).map(|k| format!(": it looks like {k}")).unwrap_or_default()
    )]
    UnknownFormat {
        /// The file.
        path: PathBuf,
        /// Up to its first 8 bytes.
        found: Vec<u8>,
    },
    /// The `.mmt` (or `.npy`) header is invalid, or a row range is out of bounds; the format crate's
    /// error says which field, tensor and byte offset.
    #[error("{}: {source}", .path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What the format crate found.
        #[source]
        source: mmtensor_format::Error,
    },
    /// The safetensors header is invalid or does not cover the file.
    #[error("{}: invalid safetensors file: {source}", .path.display())]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What the safetensors crate found.
        #[source]
        source: safetensors::SafeTensorError,
    },
    /// A safetensors tensor has a dtype that `.mmt` has no name for (F4, F6, F8_E8M0, ...).
    #[error("{}: tensor `{tensor}` has dtype {dtype}, which mmtensor does not support", .path.display())]
    UnsupportedDtype {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The dtype as the file names it.
        dtype: String,
    },
    /// A `.npy` file holds a raw void dtype (how NumPy saves `ml_dtypes` bfloat16 and fp8 arrays),
    /// which does not say which type it is.
    #[error(
        "{}: the array has the raw void dtype {descr:?}, which does not say whether it is bfloat16 or fp8: run `mmt convert --input-dtype DT` to make an .mmt store",
        .path.display()
    )]
    NpyVoid {
        /// The file.
        path: PathBuf,
        /// The `descr` found.
        descr: String,
    },
    /// No tensor (or column) has this name. The message lists the names there are.
    #[error("{}: no tensor named `{tensor}`{}", .path.display(), known_names(.known))]
    NotFound {
        /// The file (or dataset folder).
        path: PathBuf,
        /// The name asked for.
        tensor: String,
        /// The names the file or dataset has, in order.
        known: Vec<String>,
    },
    /// A typed view was asked for in a type that does not match the tensor's dtype.
    #[error(
        "{}: tensor `{tensor}` holds {dtype}, which cannot be viewed as `{requested}` (view it as `{expected}`)",
        .path.display()
    )]
    DtypeMismatch {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The tensor's dtype.
        dtype: Dtype,
        /// The Rust type asked for.
        requested: &'static str,
        /// A Rust type that does view this dtype.
        expected: &'static str,
    },
    /// The bytes are not aligned for the requested type, so no zero-copy typed view exists.
    #[error(
        "{}: tensor `{tensor}` starts at byte {offset}, which is not aligned to {align} bytes for `{requested}`, so it has no zero-copy view: copy it with `to_vec`, or run `mmt convert` to make an aligned .mmt store",
        .path.display()
    )]
    Unaligned {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Absolute offset of the view's first byte.
        offset: u64,
        /// The alignment the type needs.
        align: usize,
        /// The Rust type asked for.
        requested: &'static str,
    },
    /// A `BOOL` tensor holds a byte other than 0 or 1.
    #[error("{}: tensor `{tensor}` is BOOL but byte {offset} is {value}, not 0 or 1", .path.display())]
    InvalidBool {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Absolute offset of the first bad byte.
        offset: u64,
        /// Its value.
        value: u8,
    },
    /// A row index given to a gather ([`crate::Tensor::take_into`]) is not below the view's
    /// number of rows.
    #[error(
        "{}: tensor `{tensor}` has {rows} rows, so row index {index} is out of range",
        .path.display()
    )]
    RowIndex {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The first index out of range, in the order given.
        index: u64,
        /// The view's number of rows (indices are relative to the view).
        rows: u64,
    },
    /// A ragged column (rows of different lengths) was asked for as a fixed-shape one.
    #[error(
        "{}: column `{column}` is ragged (its rows have different lengths): read it with `ragged(\"{column}\")` (`row(i)`, `take`, `take_padded`) , or a loader with `seq_len` (windows of the stream) or a `pad` (padded rows)",
        .path.display()
    )]
    RaggedColumn {
        /// The file or dataset folder.
        path: PathBuf,
        /// The column.
        column: String,
    },
    /// A fixed-shape tensor or column was asked for as a ragged one.
    #[error("{}: `{column}` is not a ragged tensor (it has no row offsets)", .path.display())]
    NotRagged {
        /// The file or dataset folder.
        path: PathBuf,
        /// The tensor or column.
        column: String,
    },
    /// Sequence windows cannot be cut from a ragged column as asked.
    #[error("{}: {}{reason}", .path.display(), column_prefix(.column))]
    Windows {
        /// The file or dataset folder.
        path: PathBuf,
        /// The column.
        column: String,
        /// Why: a `seq_len` longer than the stream, of 0, an item shape that is not `[]`.
        reason: String,
    },
    /// A row is longer than the fixed length it was to be padded to.
    #[error("{}: column `{column}`: row {row} has {length} items, more than pad_to = {pad_to} (pass truncate to cut it)", .path.display())]
    RowTooLong {
        /// The file or dataset folder.
        path: PathBuf,
        /// The column.
        column: String,
        /// The row, as asked for.
        row: u64,
        /// Its length.
        length: u64,
        /// The length asked for.
        pad_to: u64,
    },
    /// The output buffer of a gather ([`crate::Tensor::take_into`]) does not hold exactly one row
    /// for each index.
    #[error(
        "{}: gathering {rows} rows of tensor `{tensor}` needs an output of {} bytes ({row_bytes} per row), but it has {actual}",
        .path.display(), *.rows as u128 * u128::from(*.row_bytes)
    )]
    TakeOutput {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The number of indices.
        rows: usize,
        /// The bytes of one row.
        row_bytes: u64,
        /// The output's length in bytes.
        actual: usize,
    },
    /// A gather ([`crate::Tensor::take_into_as`], [`crate::Column::take_into_as`]) or a loader
    /// column ([`crate::LoaderOptions::dtypes`]) was asked to cast rows to a dtype it does not
    /// cast them to as it reads them. Reading makes only the casts of
    /// [`mmtensor_format::Cast::new`]'s table that cannot fail on any value (widening, integers
    /// into a float that holds them, float narrowing); integer narrowing and changes of sign are
    /// refused here, before anything is read, rather than failing on a value mid-epoch.
    #[error(
        "{}: tensor `{tensor}` holds {from}, which is not cast to {to} as it is read: {}",
        .path.display(),
        cast_hint(*.from, *.to, .tensor)
    )]
    UnsupportedCast {
        /// The file (or dataset folder).
        path: PathBuf,
        /// The tensor (or column).
        tensor: String,
        /// Its dtype.
        from: Dtype,
        /// The dtype asked for.
        to: Dtype,
    },
    /// A [`crate::Loader`] was given an output dtype ([`crate::LoaderOptions::dtypes`]) for a
    /// column it does not read.
    #[error(
        "{}: an output dtype is given for `{column}`, which is not one of the loader's columns ({})",
        .path.display(),
        .columns.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")
    )]
    CastColumn {
        /// The store's file (or dataset folder).
        path: PathBuf,
        /// The name the dtype was given for.
        column: String,
        /// The loader's columns.
        columns: Vec<String>,
    },
    /// A [`crate::Loader`]'s options were refused by its order: batch size 0, world size 0, a
    /// rank not below the world size, a block shuffle with a zero size, an epoch too large to
    /// hold, or a resume past the end of an epoch.
    #[error("{}: {source}", .path.display())]
    Order {
        /// The store's file.
        path: PathBuf,
        /// What the order refused.
        #[source]
        source: crate::order::OrderError,
    },
    /// A [`crate::Loader`]'s `prefetch` is above [`crate::loader::MAX_PREFETCH`].
    #[error("{}: prefetch {prefetch} is more than the {max} batches a loader gathers ahead at most", .path.display())]
    Prefetch {
        /// The store's file.
        path: PathBuf,
        /// The prefetch asked for.
        prefetch: usize,
        /// The most allowed.
        max: usize,
    },
    /// A [`crate::Loader`] was given no columns, or its store has no tensors.
    #[error("{}: the loader has no columns to read (the store has no tensors, or the column list is empty)", .path.display())]
    NoColumns {
        /// The file.
        path: PathBuf,
    },
    /// A [`crate::Loader`] was given the same column twice.
    #[error("{}: column `{column}` is named twice; name each column once", .path.display())]
    DuplicateColumn {
        /// The file.
        path: PathBuf,
        /// The column.
        column: String,
    },
    /// A [`crate::Loader`]'s column does not have as many rows as its first column: a batch holds
    /// the same rows of every column, so every column needs the same first dimension.
    #[error(
        "{}: column `{column}` has {rows} rows but column `{first}` has {first_rows}; a loader's columns must share their first dimension",
        .path.display()
    )]
    ColumnRows {
        /// The file.
        path: PathBuf,
        /// The column that differs.
        column: String,
        /// Its first dimension.
        rows: u64,
        /// The first column.
        first: String,
        /// The first column's first dimension.
        first_rows: u64,
    },
    /// A weighted mixture's order refused its sources or options: a bad weight, every weight 0,
    /// a source with weight but no rows, an epoch shorter than one global batch, or a resume state
    /// of another mixture ([`crate::mix::MixError`] says which, naming the source).
    #[error("{}: {source}", .path.display())]
    Mix {
        /// The mixture, as [`crate::Loader::path`] names it (`mix[web, code]`).
        path: PathBuf,
        /// What the mixture order refused.
        #[source]
        source: crate::mix::MixError,
    },
    /// A weighted mixture's sources cannot be read as one: a column missing from a source or
    /// different there (dtype, row shape), an option a mixture does not take (sequence windows,
    /// whole shards per rank), a dataset opened without some of its shards.
    #[error("{}: {reason}", .path.display())]
    Mixture {
        /// The mixture, as [`crate::Loader::path`] names it (`mix[web, code]`).
        path: PathBuf,
        /// The column concerned, if one is.
        column: Option<String>,
        /// What is wrong, naming the source.
        reason: String,
    },
    /// The buffers for a batch could not be had: the allocation failed, or a caller's
    /// [`crate::loader::Allocate`] reported an error.
    #[error("{}: no buffers for a batch: {source}", .path.display())]
    Buffers {
        /// The store's file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A loader's gate ([`crate::loader::Gate`]: a dataset streamed from object storage) could
    /// not make a batch's rows readable: the download failed, or the cache cannot hold the batch.
    #[error("{}", gate_message(path, *batch, source.as_ref()))]
    Gate {
        /// The dataset.
        path: PathBuf,
        /// The batch whose rows were not made readable.
        batch: usize,
        /// Why (for a remote dataset, an `mmtensor_remote::Error` naming the URL).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A loader's worker thread ended without handing over a batch (it panicked).
    #[error("{}: the loader's worker thread stopped before batch {batch}", .path.display())]
    LoaderStopped {
        /// The store's file.
        path: PathBuf,
        /// The batch that was not delivered.
        batch: usize,
    },
    /// A `.npy` array is big-endian or in Fortran order, so its bytes are not a little-endian C-order
    /// tensor and no view of them is given.
    #[error(
        "{}: tensor `{tensor}` is stored {reason}, so it has no little-endian C-order view: run `mmt convert` to make an .mmt store",
        .path.display()
    )]
    NeedsConvert {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// What is different ("in Fortran order", "big-endian").
        reason: &'static str,
    },
    /// `verify` was called on a format without checksums.
    #[error(
        "{}: {format} files carry no checksums to verify: run `mmt convert` to make an .mmt store",
        .path.display()
    )]
    NoChecksums {
        /// The file.
        path: PathBuf,
        /// Its format.
        format: Format,
    },
    /// The checksum table does not hash to the value the (checksummed) header records.
    #[error(
        "{}: the checksum table (bytes {start}..{end}) hashes to {computed:016x}, but the header records {stored:016x}: the table is corrupted",
        .path.display()
    )]
    ChecksumTable {
        /// The file.
        path: PathBuf,
        /// Absolute start of the table.
        start: u64,
        /// Absolute end of the table.
        end: u64,
        /// The hash the header records.
        stored: u64,
        /// The hash of the table's bytes.
        computed: u64,
    },
    /// A block of a tensor does not match its checksum.
    #[error(
        "{}: tensor `{tensor}`, block {block} (bytes {start}..{end}) is corrupted: checksum {computed:016x}, expected {stored:016x}",
        .path.display()
    )]
    ChecksumMismatch {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Index of the block within the tensor (0 is the block holding the tensor's first byte).
        block: u64,
        /// Absolute offset of the block's first byte.
        start: u64,
        /// Absolute offset one past the block's last byte.
        end: u64,
        /// The checksum in the table.
        stored: u64,
        /// The checksum of the bytes.
        computed: u64,
    },
    /// A padding byte, which the format requires to be zero, is not.
    #[error("{}: padding byte {offset} is {value:#04x}, not zero: the file is corrupted", .path.display())]
    NonZeroPadding {
        /// The file.
        path: PathBuf,
        /// Absolute offset of the first nonzero padding byte.
        offset: u64,
        /// Its value.
        value: u8,
    },
    /// The file at a path is not the one a [`Fingerprint`] was taken of, in the version it was
    /// taken of: it was replaced, rewritten or truncated since (see [`crate::Store::open_expecting`],
    /// and [`Fingerprint`] for what is detected and what cannot be). The store opened from it, if
    /// any, was dropped.
    #[error(
        "{}: the file changed since the store was first opened, so it is not reopened as that store (open it afresh): it was {expected}, {}",
        .path.display(),
        found_text(.expected, *.len, .found, .source.is_none())
    )]
    Changed {
        /// The file.
        path: PathBuf,
        /// The fingerprint the file was expected to have.
        expected: Fingerprint,
        /// The file's length now (0 when it could not be measured).
        len: u64,
        /// The file's fingerprint now; `None` when it was refused for its length alone or no
        /// longer opens (then `source` says why). Boxed, so that every `Result` of this crate
        /// (and of those that wrap its error) stays small.
        found: Option<Box<Fingerprint>>,
        /// Why the file no longer opens, when it does not.
        #[source]
        source: Option<Box<Error>>,
    },
    /// A shard of a dataset is not the file its manifest describes (another length, another
    /// header checksum, other tensors): it was replaced, truncated or rewritten, or the manifest
    /// belongs to other files.
    #[error("{}: this shard does not match the dataset manifest: {reason}", .path.display())]
    ShardMismatch {
        /// The shard file.
        path: PathBuf,
        /// What differs.
        reason: String,
    },
    /// A row of a shard the dataset was opened without: a [`crate::Dataset`] opened for one
    /// rank ([`crate::Dataset::open_rank`], or fetched from object storage for one rank) maps
    /// only that rank's shards.
    #[error(
        "{}: row {row} lies in shard {shard} (`{file}`), which this dataset was opened without{}",
        .path.display(),
        not_open_hint(*.rank)
    )]
    ShardNotOpen {
        /// The dataset (folder or URL).
        path: PathBuf,
        /// The shard's index in the manifest.
        shard: usize,
        /// The shard's file name.
        file: String,
        /// The dataset row asked for (the shard's first row when a whole shard is needed).
        row: u64,
        /// `(rank, world_size)` the dataset was opened for, when it was opened for a rank.
        rank: Option<(u64, u64)>,
    },
    /// `ndarray` refused the shape (it does not fit in `usize`/`isize`).
    #[cfg(feature = "ndarray")]
    #[error("{}: tensor `{tensor}` has no ndarray view: {source}", .path.display())]
    NdArray {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// What ndarray said.
        #[source]
        source: ndarray::ShapeError,
    },
}

impl Error {
    /// True when the error says the file's bytes are corrupt, which is what `verify` exists to
    /// find: a block checksum that does not match, a checksum table that does not match its hash,
    /// a non-zero padding byte, a BOOL byte other than 0 and 1, or ragged row offsets that break
    /// their rules (found when the store opens). This is the one place that
    /// decides it: `mmt verify` exits with code 3 exactly for these, and Python raises them as
    /// `CorruptedFileError` (or its subclass `ChecksumMismatchError`).
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            Error::ChecksumMismatch { .. }
                | Error::ChecksumTable { .. }
                | Error::NonZeroPadding { .. }
                | Error::InvalidBool { .. }
                | Error::Format {
                    source: mmtensor_format::Error::RaggedOffsets { .. },
                    ..
                }
        )
    }

    /// [`Error::Io`]: `action` on the file at `path` failed with the OS error given.
    pub(crate) fn io<'a>(
        path: &'a Path,
        action: &'static str,
    ) -> impl FnOnce(std::io::Error) -> Error + 'a {
        move |source| Error::Io {
            path: path.to_owned(),
            action,
            source,
        }
    }
}

/// `column `NAME`: ` before a reason about one column; nothing when no column is named.
fn column_prefix(column: &str) -> String {
    if column.is_empty() {
        String::new()
    } else {
        format!("column `{column}`: ")
    }
}

/// What [`Error::Changed`] says of the file found at the path.
fn found_text(
    expected: &Fingerprint,
    len: u64,
    found: &Option<Box<Fingerprint>>,
    opens: bool,
) -> String {
    // What the fingerprint says of the bytes alone: format, length, header hash.
    let without_stamp = |fp: &Fingerprint| (fp.format(), fp.len(), fp.header_xxh3());
    match found {
        // Only the stamp differs: say so, since the rest of the two texts reads the same.
        Some(fp) if without_stamp(fp) == without_stamp(expected) => format!(
            "it is now {fp}: the same header and length, but another file at the path or the same \
             file written since"
        ),
        Some(fp) => format!("it is now {fp}"),
        None if opens => format!("it is now {len} bytes long"),
        None => format!("it is now {len} bytes long and is not a valid tensor file"),
    }
}

/// "; it has `x`, `y`" (at most 16 names, then how many more), for [`Error::NotFound`].
fn known_names(known: &[String]) -> String {
    const SHOWN: usize = 16;
    if known.is_empty() {
        return "; it has no tensors".into();
    }
    let mut text = String::from("; it has ");
    for (i, name) in known.iter().take(SHOWN).enumerate() {
        if i > 0 {
            text.push_str(", ");
        }
        text.push('`');
        text.push_str(name);
        text.push('`');
    }
    if known.len() > SHOWN {
        text.push_str(&format!(" and {} more", known.len() - SHOWN));
    }
    text
}

/// Why [`Error::UnsupportedCast`] refused `from` to `to`, and what to do instead.
fn cast_hint(from: Dtype, to: Dtype, tensor: &str) -> String {
    match mmtensor_format::Cast::new(from, to) {
        Some(_) => format!(
            "the cast could lose values (integers that do not fit in {to}): cast the data once \
             with `mmt convert --dtype {tensor}={to}`, which checks every value"
        ),
        None => {
            let read: Vec<&str> = Dtype::ALL
                .into_iter()
                .filter(|&d| mmtensor_format::Cast::new(from, d).is_some_and(|c| c.never_fails()))
                .map(Dtype::name)
                .collect();
            format!(
                "there is no such cast ({from} is read as {})",
                read.join(", ")
            )
        }
    }
}

/// What [`Error::ShardNotOpen`] advises: how to read a dataset opened for one rank.
fn not_open_hint(rank: Option<(u64, u64)>) -> String {
    match rank {
        Some((r, w)) => format!(
            ": it was opened for rank {r} of {w} and holds only that rank's shards; read it as \
             that rank with whole shards per rank (Python: Loader(ds, ..., split=\"shards\", \
             rank={r}, world_size={w}); Rust: RankSplit::Shards, rank {r}, world_size {w}), or \
             open every shard"
        ),
        None => " (it holds only some shards: read it with whole shards per rank for the rank \
                 they belong to, or open every shard)"
            .to_owned(),
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The message of [`Error::Gate`]: the dataset and the batch, then why, unless why already
/// starts with both.
fn gate_message(
    path: &Path,
    batch: usize,
    source: &(dyn std::error::Error + Send + Sync),
) -> String {
    let prefix = format!("{}: batch {batch}", path.display());
    let why = source.to_string();
    if why.starts_with(&prefix) {
        why
    } else {
        format!("{prefix}: {why}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FileStamp;

    #[test]
    fn a_changed_file_with_only_another_stamp_is_said_to_be_so() {
        let old = Fingerprint::new(Format::Npy, 256, 0xcd, FileStamp::new(5, 10, 0));
        let new = Fingerprint::new(Format::Npy, 256, 0xcd, FileStamp::new(6, 10, 0));
        assert!(found_text(&old, 256, &Some(Box::new(new)), true).ends_with(
            "the same header and length, but another file at the path or the same file written since"
        ));
        let other = Fingerprint::new(Format::Npy, 256, 0xce, FileStamp::new(6, 10, 0));
        assert_eq!(
            found_text(&old, 256, &Some(Box::new(other)), true),
            format!("it is now {other}")
        );
    }
}
