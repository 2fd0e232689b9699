//! The one error type of this crate.

/// Why a `.mmt` preamble, header or layout (or a `.npy` header, a dataset manifest or a Megatron
/// `.idx`) was refused, or a cast could not be made.
///
/// Byte offsets in messages are absolute positions in the file. Every variant that concerns one tensor
/// names it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input is shorter than the 32-byte preamble.
    #[error("file is {len} bytes long, shorter than the {min}-byte .mmt preamble")]
    TooShort {
        /// Length of the input.
        len: u64,
        /// The minimum length.
        min: u64,
    },
    /// The first eight bytes are not the `.mmt` magic.
    #[error("not an .mmt file: bytes 0..8 are {found:02x?}, expected the magic {expected:02x?}")]
    BadMagic {
        /// The bytes found.
        found: [u8; 8],
        /// The magic.
        expected: [u8; 8],
    },
    /// The major version is not one this reader understands.
    #[error("unsupported .mmt version {major}.{minor} (bytes 8..12): this reader understands {supported}.x; upgrade mmtensor")]
    UnsupportedVersion {
        /// Major version found.
        major: u16,
        /// Minor version found.
        minor: u16,
        /// The major version this reader understands.
        supported: u16,
    },
    /// A required flag this reader does not know is set.
    #[error(
        "unknown required flags {flags:#010x} at bytes 12..16: the file needs a newer mmtensor"
    )]
    UnknownRequiredFlags {
        /// The unknown required bits.
        flags: u32,
    },
    /// The header length in the preamble is over [`crate::MAX_HEADER_LEN`].
    #[error("header length {len} (bytes 16..24) is over the {max}-byte cap")]
    HeaderTooLarge {
        /// Header length claimed.
        len: u64,
        /// The cap.
        max: u64,
    },
    /// The input ends before a region it claims to hold.
    #[error(
        "file is truncated: {what} needs bytes {start}..{end} but the file has {file_len} bytes"
    )]
    Truncated {
        /// What the missing bytes would have held.
        what: String,
        /// First byte of the region.
        start: u64,
        /// One past its last byte.
        end: u64,
        /// Length of the file.
        file_len: u64,
    },
    /// The header checksum does not match the preamble and header bytes.
    #[error("header checksum mismatch (bytes 24..32 hold {stored:016x}, bytes 0..24 and 32..{end} hash to {computed:016x}): the header is corrupted")]
    HeaderChecksum {
        /// Checksum stored in the preamble.
        stored: u64,
        /// Checksum computed.
        computed: u64,
        /// One past the header's last byte.
        end: u64,
    },
    /// The header is not the JSON this version expects.
    #[error("header is not valid .mmt JSON near byte {offset}: {message}")]
    HeaderJson {
        /// Absolute position near which the problem was found.
        offset: u64,
        /// What the JSON parser said.
        message: String,
    },
    /// A store-level header field is out of range.
    #[error("header field `{field}` is {value}: {reason}")]
    InvalidField {
        /// The field's name.
        field: &'static str,
        /// Its value, as text.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A dtype name is not one of the format's.
    #[error("{}unknown dtype `{name}`", tensor_prefix(.tensor))]
    UnknownDtype {
        /// The tensor, when the name came from one.
        tensor: Option<String>,
        /// The name found.
        name: String,
    },
    /// A tensor name is empty, too long or holds a NUL byte.
    #[error("tensor name {name:?} is invalid: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Two tensors share a name.
    #[error("tensor name `{name}` appears twice (entries {first} and {second})")]
    DuplicateName {
        /// The name.
        name: String,
        /// Index of its first entry.
        first: usize,
        /// Index of its second entry.
        second: usize,
    },
    /// A metadata key given to a writer starts with [`crate::RESERVED_KEY_PREFIX`] (`mmt.`).
    #[error(
        "metadata key `{key}` starts with `mmt.`, which the format reserves: choose another key"
    )]
    ReservedKey {
        /// The key (its first 256 characters).
        key: String,
    },
    /// A tensor has more dimensions than [`crate::MAX_RANK`].
    #[error("tensor `{tensor}` has rank {rank}, over the maximum of {max}")]
    RankTooLarge {
        /// The tensor.
        tensor: String,
        /// Its rank.
        rank: usize,
        /// The maximum.
        max: usize,
    },
    /// The element count or byte length of a shape does not fit in 64 bits.
    #[error("tensor `{tensor}`: shape {shape:?} of {dtype} overflows 64-bit byte arithmetic")]
    ShapeOverflow {
        /// The tensor.
        tensor: String,
        /// Its shape.
        shape: Vec<u64>,
        /// Its dtype.
        dtype: crate::Dtype,
    },
    /// A ragged tensor's link to its offsets breaks a rule (format 1.1).
    #[error("ragged tensor `{tensor}`: {reason}")]
    Ragged {
        /// The ragged tensor (its values' name).
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// A ragged tensor's row offsets are not a valid partition of its values.
    #[error("ragged tensor `{tensor}`: offset {index} {reason}")]
    RaggedOffsets {
        /// The ragged tensor (its values' name).
        tensor: String,
        /// Position of the offending entry in the offsets.
        index: u64,
        /// Its value and which rule it breaks.
        reason: String,
    },
    /// A tensor's byte length is not its element count times its dtype size.
    #[error("tensor `{tensor}`: byte length {length} disagrees with its shape and dtype, which need {expected} bytes")]
    LengthMismatch {
        /// The tensor.
        tensor: String,
        /// Length stored.
        length: u64,
        /// Length its shape and dtype need.
        expected: u64,
    },
    /// A tensor does not start at a multiple of the alignment.
    #[error(
        "tensor `{tensor}` starts at byte {offset}, not a multiple of the alignment {alignment}"
    )]
    Misaligned {
        /// The tensor.
        tensor: String,
        /// Its absolute start.
        offset: u64,
        /// The store's alignment.
        alignment: u64,
    },
    /// A tensor starts before the previous one ends (tensors are listed in file order).
    #[error("tensor `{tensor}` starts at byte {offset}, inside `{previous}` which ends at byte {previous_end}")]
    Overlap {
        /// The tensor.
        tensor: String,
        /// Its absolute start.
        offset: u64,
        /// The tensor listed before it.
        previous: String,
        /// The absolute end of that tensor.
        previous_end: u64,
    },
    /// A tensor or the checksum table reaches past the end of the file.
    #[error("{what} spans bytes {start}..{end}, past the end of the {file_len}-byte file")]
    OutOfBounds {
        /// The region (a tensor or the checksum table).
        what: String,
        /// Absolute start.
        start: u64,
        /// Absolute end (saturated on overflow).
        end: u64,
        /// Length of the file.
        file_len: u64,
    },
    /// The checksum table does not hold one checksum per block.
    #[error("checksum table: {reason}")]
    ChecksumTable {
        /// What is wrong with it.
        reason: String,
    },
    /// A row range is outside a tensor.
    #[error("tensor `{tensor}`: rows {start}..{end} are out of range for {rows} rows")]
    RowRange {
        /// The tensor.
        tensor: String,
        /// First row asked for.
        start: u64,
        /// One past the last row asked for.
        end: u64,
        /// Rows the tensor has.
        rows: u64,
    },
    /// A row range was asked of a 0-dimensional tensor.
    #[error("tensor `{tensor}` is a 0-dimensional scalar and has no rows")]
    Scalar {
        /// The tensor.
        tensor: String,
    },
    /// The first bytes are not the `.npy` magic.
    #[error("not a .npy file: bytes 0..6 are {found:02x?}, expected \\x93NUMPY")]
    NpyBadMagic {
        /// The bytes found.
        found: [u8; 6],
    },
    /// A `.npy` header is malformed.
    #[error(".npy header is invalid near byte {offset}: {reason}")]
    Npy {
        /// Absolute position near which the problem was found.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A `.npy` dtype that mmtensor does not convert.
    #[error("unsupported .npy dtype {descr:?}: {reason}")]
    NpyDtype {
        /// The `descr` found.
        descr: String,
        /// Why, and what to do.
        reason: &'static str,
    },
    /// The first bytes are not the dataset manifest magic.
    #[error("not an mmtensor dataset manifest: bytes 0..8 are {found:02x?}, expected \\x89MMD\\r\\n\\x1a\\n")]
    ManifestBadMagic {
        /// The bytes found (zero-filled past a short input).
        found: [u8; 8],
    },
    /// The manifest's major version is not one this reader understands.
    #[error("unsupported dataset manifest version {major}.{minor} (bytes 8..12): this reader understands {supported}.x; upgrade mmtensor")]
    UnsupportedManifestVersion {
        /// Major version found.
        major: u16,
        /// Minor version found.
        minor: u16,
        /// The major version this reader understands.
        supported: u16,
    },
    /// The manifest is not exactly `32 + body length` bytes long.
    #[error("dataset manifest is {len} bytes long but its preamble needs exactly {expected}: it is truncated or has trailing bytes")]
    ManifestLength {
        /// Length of the input.
        len: u64,
        /// The length the preamble implies (32 when even the preamble is missing).
        expected: u64,
    },
    /// The manifest checksum does not match its preamble and body.
    #[error("dataset manifest checksum mismatch (bytes 24..32 hold {stored:016x}, the manifest hashes to {computed:016x}): the manifest is corrupted")]
    ManifestChecksum {
        /// Checksum stored in the preamble.
        stored: u64,
        /// Checksum computed.
        computed: u64,
    },
    /// The manifest body is not the JSON this version expects.
    #[error("dataset manifest is not valid JSON near byte {offset}: {message}")]
    ManifestJson {
        /// Absolute position near which the problem was found.
        offset: u64,
        /// What the JSON parser said.
        message: String,
    },
    /// A manifest lists no column.
    #[error("dataset manifest lists no column: a dataset has at least one")]
    NoColumns,
    /// Two columns of a manifest share a name.
    #[error(
        "column `{name}` appears twice in the dataset manifest (columns {first} and {second})"
    )]
    DuplicateColumn {
        /// The name.
        name: String,
        /// Index of its first entry.
        first: usize,
        /// Index of its second entry.
        second: usize,
    },
    /// A shard file name breaks the manifest's rules.
    #[error("shard file name {name:?} is invalid: {reason}")]
    InvalidShardName {
        /// The name (its first 64 characters).
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Two shards of a manifest share a file name (ignoring ASCII case).
    #[error("shard file `{name}` appears twice in the dataset manifest (shards {first} and {second}; names are compared ignoring ASCII case)")]
    DuplicateShard {
        /// The second name.
        name: String,
        /// Index of the first shard.
        first: usize,
        /// Index of the second shard.
        second: usize,
    },
    /// The shards' rows add up past 2^64 − 1.
    #[error("the dataset's rows add up past 2^64 - 1 at shard `{shard}`")]
    RowCountOverflow {
        /// The shard at which the sum overflows.
        shard: String,
    },
    /// A [`crate::Cast`] was given bytes that are not a whole number of source elements, or an
    /// output that does not hold exactly as many target elements.
    #[error(
        "casting {from} to {to}: {src} bytes of {from} do not make the {dst} bytes of {to} given for them"
    )]
    CastLength {
        /// The source dtype.
        from: crate::Dtype,
        /// The target dtype.
        to: crate::Dtype,
        /// Bytes of input.
        src: u64,
        /// Bytes of output.
        dst: u64,
    },
    /// A checked [`crate::Cast`] (integer narrowing) met a value the target cannot represent.
    #[error("casting {from} to {to}: element {index} is {value}, which does not fit in {to}")]
    CastOutOfRange {
        /// The source dtype.
        from: crate::Dtype,
        /// The target dtype.
        to: crate::Dtype,
        /// The element's index in the bytes given to [`crate::Cast::run`].
        index: u64,
        /// The value, as text.
        value: String,
    },
    /// The first bytes are not the Megatron-LM `.idx` magic.
    #[error("not a Megatron .idx file: bytes 0..9 are {found:02x?}, expected MMIDIDX\\x00\\x00")]
    MegatronBadMagic {
        /// The bytes found (zero-filled past a short input).
        found: [u8; 9],
    },
    /// The `.idx` version is not 1, the only one Megatron-LM writes.
    #[error("unsupported Megatron .idx version {version} (bytes 9..17): only version 1 exists")]
    MegatronVersion {
        /// The version found.
        version: u64,
    },
    /// The `.idx` dtype code is not one of Megatron-LM's `DType` codes.
    #[error("unknown Megatron .idx dtype code {code} at byte 17: the known codes are 1 to 8 (uint8, int8, int16, int32, int64, float64, float32, uint16)")]
    MegatronDtypeCode {
        /// The code found.
        code: u8,
    },
    /// A dtype that Megatron-LM's `DType` has no code for was asked to be written.
    #[error("Megatron indexed datasets have no dtype code for {dtype}: cast the tokens to U8, U16, I8, I16, I32, I64, F32 or F64")]
    MegatronDtype {
        /// The dtype.
        dtype: crate::Dtype,
    },
    /// The `.idx` holds bytes after its document indices.
    #[error("Megatron .idx has {} bytes after its document indices, which end at byte {end} of {file_len}: a multimodal index (one int8 mode per sequence after the document indices) is not supported, and a plain index ends there", .file_len.saturating_sub(*.end))]
    MegatronTrailingBytes {
        /// Where the document indices end, and a plain index with it.
        end: u64,
        /// Length of the `.idx`.
        file_len: u64,
    },
    /// A value in one of the `.idx` arrays (or in the arrays given to encode one) is out of range.
    #[error("Megatron .idx {part}[{index}]: {reason}")]
    MegatronValue {
        /// The array: `sizes`, `pointers`, `document_indices` or `sequence documents`.
        part: &'static str,
        /// The position in that array.
        index: u64,
        /// What is wrong with the value, naming it.
        reason: String,
    },
    /// The sequences of an `.idx` do not end where its `.bin` does.
    #[error("Megatron .idx says its sequences end at byte {end} of the .bin, but the .bin is {bin_len} bytes long")]
    MegatronBinLength {
        /// One past the last byte of the last sequence, from the index.
        end: u64,
        /// Length of the `.bin`.
        bin_len: u64,
    },
    /// A document of an `.idx` holds no sequence, so sequences cannot be labelled with their
    /// document.
    #[error("Megatron document {document} holds no sequence (document_indices[{document}] and [{}] are both {sequence}): an empty document cannot be stored as a per-sequence document number", .document + 1)]
    MegatronEmptyDocument {
        /// The document.
        document: u64,
        /// The sequence index at which it starts and ends.
        sequence: u64,
    },
}

fn tensor_prefix(tensor: &Option<String>) -> String {
    match tensor {
        Some(t) => format!("tensor `{t}`: "),
        None => String::new(),
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

// Here rather than in dtype.rs: this error names a `Dtype` in its variants, so the parse that fails
// with this error lives beside it and the dtype module depends on nothing.
impl std::str::FromStr for crate::Dtype {
    type Err = Error;

    /// Parses loosely, as [`Dtype::parse_loose`](crate::Dtype::parse_loose) does.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        crate::Dtype::parse_loose(s).ok_or_else(|| Error::UnknownDtype {
            tensor: None,
            name: s.to_owned(),
        })
    }
}
