//! The one error type of this crate.

use std::path::PathBuf;

use mmtensor_format::Dtype;

/// Why a conversion or a write failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O operation on a file failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done ("cannot create", "cannot write to", ...).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The planned store breaks a rule of the format.
    #[error("{}: {source}", path.display())]
    Format {
        /// The file the problem concerns.
        path: PathBuf,
        /// What the format crate said.
        #[source]
        source: mmtensor_format::Error,
    },
    /// A tensor was fed more bytes than its shape and dtype hold.
    #[error(
        "tensor `{tensor}`: given {given} bytes, more than the {expected} its shape and dtype hold"
    )]
    TooManyBytes {
        /// The tensor.
        tensor: String,
        /// Bytes it holds.
        expected: u64,
        /// Bytes given so far, including the chunk refused.
        given: u64,
    },
    /// A tensor was closed (or the store finished) before all its bytes were given.
    #[error("tensor `{tensor}`: given {given} bytes, fewer than the {expected} its shape and dtype hold")]
    TooFewBytes {
        /// The tensor.
        tensor: String,
        /// Bytes it holds.
        expected: u64,
        /// Bytes given.
        given: u64,
    },
    /// The store was finished while a tensor that had been given all its bytes was still open.
    #[error("tensor `{tensor}`: all its {length} bytes were given, but it was not ended: call end_tensor before finish")]
    NotEnded {
        /// The tensor.
        tensor: String,
        /// Its bytes, all given.
        length: u64,
    },
    /// Tensors must be written in the order they were planned.
    #[error("writer expected {}, not tensor `{got}`", expected_text(.expected))]
    OutOfOrder {
        /// The tensor the writer expects next, if any.
        expected: Option<String>,
        /// The tensor asked for.
        got: String,
    },
    /// An earlier call on this [`crate::StoreWriter`] failed (an I/O error, too many bytes, a call
    /// out of order), so what it has written can no longer be trusted to match its plan: every later
    /// call refuses. Drop the writer (its temporary file is removed) and write the store again.
    #[error("cannot go on writing {}: an earlier call on this writer failed, so the store would be incomplete or shifted; drop the writer and write the store again", path.display())]
    Poisoned {
        /// The target the writer was writing.
        path: PathBuf,
    },
    /// Bytes were given while no tensor was open.
    #[error("no tensor is open for writing: call begin_tensor first")]
    NoOpenTensor,
    /// An input argument could not be understood (an empty path, a bad `NAME=` prefix, a bad
    /// dtype rule).
    #[error("input `{input}`: {reason}")]
    InvalidInput {
        /// The argument as given.
        input: String,
        /// What is wrong with it and what to do.
        reason: String,
    },
    /// A dtype rule (`--dtype`, `--input-dtype`; Python's `dtype=`, `input_dtype=`) could not be
    /// understood or cannot apply: an unknown dtype, an empty name, a non-float dtype for all
    /// tensors.
    #[error("dtype rule `{rule}`: {reason}")]
    DtypeRule {
        /// The rule as given (`bf16`, `emb=f16`).
        rule: String,
        /// What is wrong with it and what to do.
        reason: String,
    },
    /// An `.mmt` input (a store, or a shard of a dataset folder) whose bytes do not match its
    /// checksums: a block of a tensor (`tensor` set), or the checksum table itself. Found as the
    /// bytes stream, before the output is placed; nothing is written under the output name.
    #[error(
        "{}: {} (bytes {offset}..{end}) does not match its checksum: the input is corrupt (`mmt verify {}` lists every bad block)",
        path.display(),
        match .tensor { Some(t) => format!("tensor `{t}` block {block}"), None => "the checksum table".to_owned() },
        path.display()
    )]
    InputChecksum {
        /// The store.
        path: PathBuf,
        /// The tensor, or `None` for the checksum table.
        tensor: Option<String>,
        /// The block's index within the tensor.
        block: u64,
        /// Absolute offset of the block (or the table) in the file.
        offset: u64,
        /// Absolute offset just past it.
        end: u64,
    },
    /// A padding byte of an `.mmt` input (between its header, tensors and checksum table) is not
    /// zero: the file is corrupt. Nothing is written under the output name.
    #[error("{}: padding byte {offset} is {value:#04x}, not zero: the input is corrupt", path.display())]
    InputPadding {
        /// The store.
        path: PathBuf,
        /// Absolute offset of the byte.
        offset: u64,
        /// Its value.
        value: u8,
    },
    /// A metadata key the format does not allow (empty, or reserved).
    #[error("metadata key `{key}`: {reason}")]
    MetadataKey {
        /// The key as given.
        key: String,
        /// The format's rule it breaks.
        reason: String,
    },
    /// A file is not of a kind this crate reads, or is malformed in a way that has no more specific
    /// variant.
    #[error("{}{}: {reason}", path.display(), member_text(.member))]
    UnsupportedInput {
        /// The file.
        path: PathBuf,
        /// The npz member, if the problem is inside one.
        member: Option<String>,
        /// What is wrong and what to do.
        reason: String,
    },
    /// A `.npy` header (a file or an npz member) was refused by the parser.
    #[error("{}{}: {source}", path.display(), member_text(.member))]
    Npy {
        /// The file.
        path: PathBuf,
        /// The npz member, if any.
        member: Option<String>,
        /// What the header parser said.
        #[source]
        source: mmtensor_format::Error,
    },
    /// An `.npy` holds a raw void dtype (`<V2`, `|V1`: how `ml_dtypes` saves bfloat16 and fp8)
    /// and no input dtype was named for it.
    #[error("{}{}: tensor `{tensor}` has the raw NumPy dtype `{descr}` ({size}-byte void, as ml_dtypes saves bfloat16 and fp8 arrays): name its real dtype with an input-dtype rule (`--input-dtype {tensor}=bf16` in the CLI, `input_dtype=\"bf16\"` in Python)", path.display(), member_text(.member))]
    NeedsInputDtype {
        /// The file.
        path: PathBuf,
        /// The npz member, if any.
        member: Option<String>,
        /// The tensor.
        tensor: String,
        /// The descr string.
        descr: String,
        /// Bytes per element.
        size: usize,
    },
    /// The dtype named for a void-dtype input has a different element size.
    #[error("{}{}: tensor `{tensor}`: input dtype {dtype} has {} bytes per element but the file's `{descr}` has {size}", path.display(), member_text(.member), .dtype.size())]
    InputDtypeSize {
        /// The file.
        path: PathBuf,
        /// The npz member, if any.
        member: Option<String>,
        /// The tensor.
        tensor: String,
        /// The descr string in the file.
        descr: String,
        /// Bytes per element in the file.
        size: usize,
        /// The dtype named.
        dtype: Dtype,
    },
    /// A zip archive (`.npz`) is damaged: a bad central directory, a member whose CRC does not
    /// match, a member larger than its declared size.
    #[error("{}{}: {message}", path.display(), member_text(.member))]
    Zip {
        /// The archive.
        path: PathBuf,
        /// The member, if any.
        member: Option<String>,
        /// What went wrong and what to do.
        message: String,
    },
    /// A `.safetensors` header was refused.
    #[error("{}: not a valid safetensors file: {message}", path.display())]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What the safetensors crate said.
        message: String,
    },
    /// A Parquet or Arrow IPC input that cannot be converted: not such a file, damaged (the
    /// message is arrow-rs's, with the row group or record batch), or a column `.mmt` has no
    /// tensor for: a type other than numbers, bools and fixed-size lists of them, or nulls (with
    /// the row group or record batch, and the first null row when the data says it). Found before
    /// anything becomes visible under the output name.
    #[error("{}{}: {reason}", path.display(), column_text(.column))]
    Arrow {
        /// The file.
        path: PathBuf,
        /// The column, when the problem is one column's.
        column: Option<String>,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The data of a tensor is shorter or longer than its header says.
    #[error("{}{}: tensor `{tensor}`: the header describes {expected} data bytes starting at byte {offset}, but the {} holds {}: the file is truncated or its header lies about the data size", path.display(), member_text(.member), if .member.is_some() { "member" } else { "file" }, found_text(.found, *.expected))]
    DataSize {
        /// The file.
        path: PathBuf,
        /// The npz member, if any.
        member: Option<String>,
        /// The tensor.
        tensor: String,
        /// Where the data starts (in the file, or in the inflated member).
        offset: u64,
        /// Data bytes the header describes.
        expected: u64,
        /// Data bytes found; `None` when more than expected were found.
        found: Option<u64>,
    },
    /// Shards of one tensor cannot be concatenated along axis 0.
    #[error("tensor `{tensor}`: shard {} {what}, but the first shard {} {first}: every shard needs the same dtype and trailing shape", path.display(), first_path.display())]
    ShardMismatch {
        /// The tensor.
        tensor: String,
        /// The first shard.
        first_path: PathBuf,
        /// What the first shard has.
        first: String,
        /// The shard that disagrees.
        path: PathBuf,
        /// What it has.
        what: String,
    },
    /// Two inputs give tensors the same name.
    #[error("two tensors are named `{name}` (from {first} and from {second}): rename one with NAME=PATH, e.g. `{name}_2={second}`")]
    NameCollision {
        /// The name.
        name: String,
        /// Where the first came from.
        first: String,
        /// Where the second came from.
        second: String,
    },
    /// A `NAME=DT` rule names no tensor of the inputs.
    #[error("{what} rule `{name}={dtype}` names no tensor; tensors are: {known}")]
    UnknownTensor {
        /// Which rule ("dtype", "input dtype").
        what: &'static str,
        /// The name in the rule.
        name: String,
        /// The dtype in the rule.
        dtype: Dtype,
        /// The known tensor names, comma-separated (shortened).
        known: String,
    },
    /// A column selected ([`crate::ConvertOptions::columns`], `--columns`) that no input gives.
    #[error("--columns `{name}` names no tensor of the inputs; tensors are: {known}")]
    UnknownColumn {
        /// The name selected.
        name: String,
        /// The tensor names the inputs give, comma-separated (shortened).
        known: String,
    },
    /// A cast this crate does not perform.
    #[error("tensor `{tensor}`: cannot cast {from} to {to}: supported casts are between F64, F32, F16 and BF16, C128 to C64, and between integer types")]
    UnsupportedCast {
        /// The tensor.
        tensor: String,
        /// Its dtype.
        from: Dtype,
        /// The dtype asked for.
        to: Dtype,
    },
    /// A narrowing integer cast met a value that does not fit.
    #[error("tensor `{tensor}`: element {index} (C order) is {value}, which does not fit in {to}: choose a wider dtype or leave the tensor as {from}")]
    ValueOutOfRange {
        /// The tensor.
        tensor: String,
        /// Flat C-order index of the first offending element.
        index: u64,
        /// The value.
        value: String,
        /// The source dtype.
        from: Dtype,
        /// The target dtype.
        to: Dtype,
    },
    /// A BOOL tensor holds a byte other than 0 and 1. NumPy and torch would hand it on as a bool
    /// their kernels assume is 0 or 1 (undefined behaviour in torch), so it is refused unless
    /// [`crate::ConvertOptions::normalize_bools`] asks for every nonzero byte to become 1.
    #[error("{}{}: tensor `{tensor}`: element {index} (C order){} is the byte {value}, but a bool must be 0 or 1: fix the data, or convert with --normalize-bools (normalize_bools=True in Python) to store every nonzero byte as 1", path.display(), member_text(.member), offset_text(.offset, .member.is_some()))]
    InvalidBool {
        /// The file.
        path: PathBuf,
        /// The npz member, if any.
        member: Option<String>,
        /// The tensor.
        tensor: String,
        /// Flat C-order index of the first offending element in the tensor.
        index: u64,
        /// Byte offset of that element in the file (or in the inflated member); `None` for a
        /// Fortran-order array, whose C-order index is the useful coordinate.
        offset: Option<u64>,
        /// The byte found.
        value: u8,
    },
    /// The file was written and renamed over its target, but the folder's fsync failed: the
    /// target *is* the new file, only its survival of a power cut is unconfirmed. Report it as a
    /// warning, not as a failed write.
    #[error("wrote {}, but cannot fsync the folder {}: {source} (the new file is in place; it may not survive a power cut)", path.display(), dir.display())]
    NotDurable {
        /// The target, now holding the new file.
        path: PathBuf,
        /// The folder whose fsync failed.
        dir: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A store's tensor could not be viewed while exporting (the loader's error, which names the
    /// store, the tensor and the offsets).
    #[error(transparent)]
    Load(mmtensor::Error),
    /// Safetensors has no dtype for a tensor being exported.
    #[error("{}: tensor `{tensor}` has dtype {dtype}, which safetensors cannot hold: export it as .npy files instead (`mmt export --to npy`)", path.display())]
    ExportDtype {
        /// The safetensors file being written.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Its dtype.
        dtype: Dtype,
    },
    /// A tensor's `.npy` file name (its name percent-encoded by
    /// [`crate::export::npy_file_name`], plus `.npy`) is longer than file systems allow. Checked
    /// for every tensor before anything is written.
    #[error("{}: tensor `{tensor}` would be exported as a {len}-byte file name, longer than the {max} bytes a file name may have: rename the tensor, or export to one .safetensors file instead", path.display())]
    ExportName {
        /// The folder being exported to.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Bytes in its file name.
        len: usize,
        /// The most a file name may have (`NAME_MAX`, 255 on Linux, macOS and Windows).
        max: usize,
    },
    /// A planned tensor cannot be a column of a dataset.
    #[error("tensor `{tensor}` cannot be a dataset column: {reason}")]
    NotAColumn {
        /// The tensor.
        tensor: String,
        /// Why.
        reason: String,
    },
    /// The shard size is smaller than one row of all columns together.
    #[error("--shard-size {size} bytes is smaller than one row of all columns together ({row_bytes} bytes): a shard holds at least one row, so give at least {row_bytes}")]
    ShardSize {
        /// The shard size asked for.
        size: u64,
        /// Bytes of one row of every column.
        row_bytes: u64,
    },
    /// The output folder already holds a dataset.
    #[error("{} already holds a dataset (manifest.mmtm): add rows with `mmt append`, or remove the folder first", path.display())]
    DatasetExists {
        /// The folder.
        path: PathBuf,
    },
    /// Another process is writing the dataset (it holds the folder's lock: a convert, append,
    /// compaction or prune); nothing was written or deleted.
    #[error("{}: another writer (a convert, append, compact or prune) is writing this dataset now; wait for it to finish, then try again (nothing was written or deleted)", path.display())]
    DatasetBusy {
        /// The dataset folder.
        path: PathBuf,
    },
    /// An append's inputs do not have the dataset's columns; nothing was written.
    #[error("{}: the inputs do not match the dataset's columns: {reason}; nothing was written", path.display())]
    SchemaMismatch {
        /// The dataset folder.
        path: PathBuf,
        /// What differs.
        reason: String,
    },
    /// The conversion was cancelled through its flag; nothing was written under the output name.
    #[error("cancelled: nothing was written to {}", path.display())]
    Cancelled {
        /// The output that was not written.
        path: PathBuf,
    },
    /// A batch given to a [`DatasetWriter`](crate::DatasetWriter) does not fit its columns;
    /// nothing of it was written.
    #[error("column `{column}`: {reason}; nothing of this batch was written")]
    Batch {
        /// The column (empty when the batch has too few).
        column: String,
        /// What is wrong: expected and given.
        reason: String,
    },
    /// A write by many writers cannot go on: a part is missing, unfinished or taken, or a part
    /// writer has no columns (see [`commit`](crate::commit)).
    #[error("{}: {reason}", path.display())]
    Part {
        /// The dataset folder.
        path: PathBuf,
        /// What is wrong, naming the parts.
        reason: String,
    },
}

fn expected_text(expected: &Option<String>) -> String {
    match expected {
        Some(name) => format!("tensor `{name}` next"),
        None => "no more tensors (all planned tensors are written)".to_owned(),
    }
}

fn member_text(member: &Option<String>) -> String {
    match member {
        Some(m) => format!(" (member `{m}`)"),
        None => String::new(),
    }
}

fn column_text(column: &Option<String>) -> String {
    match column {
        Some(c) => format!(" (column `{c}`)"),
        None => String::new(),
    }
}

fn offset_text(offset: &Option<u64>, member: bool) -> String {
    match offset {
        Some(o) if member => format!(" at byte {o} of the member"),
        Some(o) => format!(" at byte {o}"),
        None => String::new(),
    }
}

fn found_text(found: &Option<u64>, expected: u64) -> String {
    match found {
        Some(n) => format!("only {n}"),
        None => format!("more than {expected}"),
    }
}

impl Error {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
