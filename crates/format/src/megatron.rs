//! Megatron-LM / NeMo indexed datasets: the `PREFIX.idx` index beside a `PREFIX.bin` of tokens.
//!
//! The `.bin` is the tokens of every sequence, back to back, as raw little-endian elements of one
//! dtype. The `.idx` (little-endian throughout, no padding, so its arrays are not aligned to their
//! element size) is, as Megatron-LM's `_IndexWriter` writes it:
//!
//! | bytes | field |
//! |---|---|
//! | 0..9 | magic `MMIDIDX\x00\x00` |
//! | 9..17 | version, u64 = 1 |
//! | 17 | dtype code, u8 (Megatron's `DType`: 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64, 7 float32, 8 uint16) |
//! | 18..26 | sequence count `n`, u64 |
//! | 26..34 | document count `d`, u64: the length of `document_indices`, one more than the number of documents |
//! | 34.. | `sizes`: `n` × int32, tokens per sequence |
//! | then | `pointers`: `n` × int64, byte offset of each sequence in the `.bin` |
//! | then | `document_indices`: `d` × int64, the sequence at which each document starts, then `n` |
//!
//! A multimodal index appends `n` × int8 sequence modes; Megatron's reader is told out of band
//! whether to read them, and this module refuses them as trailing bytes.
//!
//! mmtensor stores one row per *sequence*. In most datasets every document is one sequence
//! ([`MegatronIndex::documents_are_sequences`]); where it is not (Megatron's `--split-sentences`
//! makes one sequence per sentence), [`MegatronIndex::sequence_documents`] labels each sequence with
//! its document and [`document_indices_from`] turns the labels back into `document_indices`.
//!
//! ```
//! use mmtensor_format::{megatron, Dtype};
//!
//! // Two documents of 3 and 2 u16 tokens.
//! let idx = megatron::encode(Dtype::U16, &[3, 2], &[0, 1, 2])?;
//! let index = megatron::MegatronIndex::parse(&idx, 10)?;
//! assert_eq!(index.dtype(), Dtype::U16);
//! assert_eq!(index.offsets().collect::<Vec<_>>(), [0, 3, 5]);
//! assert!(index.documents_are_sequences());
//! # Ok::<(), mmtensor_format::Error>(())
//! ```

use crate::{Dtype, Error, Result};

/// The nine magic bytes that open an `.idx` file.
pub const MEGATRON_MAGIC: [u8; 9] = *b"MMIDIDX\x00\x00";
/// The only `.idx` version.
pub const MEGATRON_VERSION: u64 = 1;
/// Length of the fixed header: magic, version, dtype code and the two counts.
pub const MEGATRON_HEADER_LEN: u64 = 34;

/// Megatron's `DType` codes, the one table between them and mmtensor's dtypes.
const CODES: [(u8, Dtype); 8] = [
    (1, Dtype::U8),
    (2, Dtype::I8),
    (3, Dtype::I16),
    (4, Dtype::I32),
    (5, Dtype::I64),
    (6, Dtype::F64),
    (7, Dtype::F32),
    (8, Dtype::U16),
];

/// The dtype of a Megatron `DType` code, or `None` for a code Megatron does not define.
pub fn dtype_from_code(code: u8) -> Option<Dtype> {
    CODES.iter().find(|&&(c, _)| c == code).map(|&(_, d)| d)
}

/// The Megatron `DType` code of a dtype.
///
/// # Errors
/// [`Error::MegatronDtype`] for `BOOL`, `U32`, `U64`, `F16`, `BF16`, the complex and the fp8 types,
/// which Megatron has no code for.
pub fn dtype_code(dtype: Dtype) -> Result<u8> {
    CODES
        .iter()
        .find(|&&(_, d)| d == dtype)
        .map(|&(c, _)| c)
        .ok_or(Error::MegatronDtype { dtype })
}

/// The fixed 34-byte header of an `.idx`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MegatronHeader {
    /// The token dtype.
    pub dtype: Dtype,
    /// Number of sequences: entries of `sizes` and of `pointers`.
    pub sequence_count: u64,
    /// Entries of `document_indices` (Megatron calls this field the document count; it is one more
    /// than the number of documents).
    pub document_indices_len: u64,
}

impl MegatronHeader {
    /// Parses the first [`MEGATRON_HEADER_LEN`] bytes of an `.idx`; `prefix` may be the whole file.
    ///
    /// # Errors
    /// [`Error::MegatronBadMagic`], [`Error::Truncated`] when `prefix` is shorter than the header,
    /// [`Error::MegatronVersion`], [`Error::MegatronDtypeCode`].
    pub fn parse(prefix: &[u8]) -> Result<Self> {
        let n = prefix.len().min(MEGATRON_MAGIC.len());
        if prefix[..n] != MEGATRON_MAGIC[..n] {
            let mut found = [0u8; 9];
            found[..n].copy_from_slice(&prefix[..n]);
            return Err(Error::MegatronBadMagic { found });
        }
        let Some(head) = prefix.get(..MEGATRON_HEADER_LEN as usize) else {
            return Err(Error::Truncated {
                what: "the Megatron .idx header".into(),
                start: 0,
                end: MEGATRON_HEADER_LEN,
                file_len: prefix.len() as u64,
            });
        };
        let version = u64_at(head, 9);
        if version != MEGATRON_VERSION {
            return Err(Error::MegatronVersion { version });
        }
        let code = head[17];
        let dtype = dtype_from_code(code).ok_or(Error::MegatronDtypeCode { code })?;
        Ok(Self {
            dtype,
            sequence_count: u64_at(head, 18),
            document_indices_len: u64_at(head, 26),
        })
    }

    /// The exact length in bytes of an `.idx` with this header: `34 + 12n + 8d`, or `None` when
    /// that overflows 64 bits.
    pub fn index_len(&self) -> Option<u64> {
        self.sequence_count
            .checked_mul(12)
            .and_then(|a| self.document_indices_len.checked_mul(8)?.checked_add(a))
            .and_then(|a| a.checked_add(MEGATRON_HEADER_LEN))
    }

    /// Encodes the header.
    ///
    /// # Errors
    /// [`Error::MegatronDtype`] for a dtype Megatron has no code for.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(MEGATRON_HEADER_LEN as usize);
        out.extend_from_slice(&MEGATRON_MAGIC);
        out.extend_from_slice(&MEGATRON_VERSION.to_le_bytes());
        out.push(dtype_code(self.dtype)?);
        out.extend_from_slice(&self.sequence_count.to_le_bytes());
        out.extend_from_slice(&self.document_indices_len.to_le_bytes());
        Ok(out)
    }
}

/// A validated `.idx`, borrowing its arrays from the bytes it was parsed from.
///
/// Everything a converter relies on was checked by [`MegatronIndex::parse`]: the sizes are
/// non-negative, the pointers lay the sequences out back to back from byte 0 to the end of the
/// `.bin`, and `document_indices` runs from 0 to the sequence count without decreasing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MegatronIndex<'a> {
    dtype: Dtype,
    sizes: &'a [u8],
    pointers: &'a [u8],
    document_indices: &'a [u8],
    token_count: u64,
}

impl<'a> MegatronIndex<'a> {
    /// Parses and validates a whole `.idx` file; `bin_len` is the length of the `.bin` beside it.
    ///
    /// Linear in the input; nothing is allocated.
    ///
    /// # Errors
    /// - As [`MegatronHeader::parse`].
    /// - [`Error::Truncated`] when the counts need more bytes than the file has.
    /// - [`Error::MegatronTrailingBytes`] when the file goes on after the document indices (as a
    ///   multimodal index does).
    /// - [`Error::MegatronValue`] naming the array and position of a negative size, a pointer that
    ///   does not start where the previous sequence ends, or a document index that does not start at
    ///   0, decreases, or does not end at the sequence count.
    /// - [`Error::MegatronBinLength`] when the sequences do not end where the `.bin` does.
    pub fn parse(bytes: &'a [u8], bin_len: u64) -> Result<Self> {
        let header = MegatronHeader::parse(bytes)?;
        let file_len = bytes.len() as u64;
        let n = header.sequence_count;
        let d = header.document_indices_len;
        let end = header.index_len().unwrap_or(u64::MAX);
        if end > file_len {
            return Err(Error::Truncated {
                what: format!(
                    "the Megatron .idx arrays for {n} sequences and {d} document indices"
                ),
                start: MEGATRON_HEADER_LEN,
                end,
                file_len,
            });
        }
        if end < file_len {
            return Err(Error::MegatronTrailingBytes { end, file_len });
        }
        // Every length below is at most `bytes.len()`, so it fits in usize.
        let head = MEGATRON_HEADER_LEN as usize;
        let sizes_end = head + 4 * n as usize;
        let pointers_end = sizes_end + 8 * n as usize;
        let index = Self {
            dtype: header.dtype,
            sizes: &bytes[head..sizes_end],
            pointers: &bytes[sizes_end..pointers_end],
            document_indices: &bytes[pointers_end..],
            token_count: 0,
        };
        let item = index.dtype.size() as u64;
        let mut tokens = 0u64;
        let mut byte_end = 0u64;
        for (i, (size, pointer)) in i32s(index.sizes).zip(i64s(index.pointers)).enumerate() {
            if u64::try_from(pointer) != Ok(byte_end) {
                let reason = if i == 0 {
                    format!("is {pointer}, but the first sequence starts at byte 0 of the .bin")
                } else {
                    format!(
                        "is {pointer}, but sequence {} ends at byte {byte_end} (pointers[{0}] + sizes[{0}] × {item}): the sequences are not contiguous",
                        i - 1
                    )
                };
                return Err(Error::MegatronValue {
                    part: "pointers",
                    index: i as u64,
                    reason,
                });
            }
            let size = u64::try_from(size).map_err(|_| Error::MegatronValue {
                part: "sizes",
                index: i as u64,
                reason: format!("is {size}: a sequence length cannot be negative"),
            })?;
            tokens = tokens.checked_add(size).ok_or_else(|| overflow(i))?;
            byte_end = tokens.checked_mul(item).ok_or_else(|| overflow(i))?;
        }
        if byte_end != bin_len {
            return Err(Error::MegatronBinLength {
                end: byte_end,
                bin_len,
            });
        }
        check_document_indices(
            i64s(index.document_indices).map(|v| u64::try_from(v).ok()),
            n,
        )?;
        Ok(Self {
            token_count: tokens,
            ..index
        })
    }

    /// The token dtype.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// Number of sequences (rows, for mmtensor).
    pub fn sequence_count(&self) -> u64 {
        (self.sizes.len() / 4) as u64
    }

    /// Number of documents: one less than the entries of `document_indices`.
    pub fn document_count(&self) -> u64 {
        (self.document_indices.len() / 8 - 1) as u64
    }

    /// Total tokens in the `.bin`.
    pub fn token_count(&self) -> u64 {
        self.token_count
    }

    /// The header this index was parsed from.
    pub fn header(&self) -> MegatronHeader {
        MegatronHeader {
            dtype: self.dtype,
            sequence_count: self.sequence_count(),
            document_indices_len: (self.document_indices.len() / 8) as u64,
        }
    }

    /// Tokens per sequence (`sizes`).
    pub fn sizes(&self) -> impl ExactSizeIterator<Item = u64> + 'a {
        // Validated non-negative by `parse`.
        i32s(self.sizes).map(|v| u64::from(v.unsigned_abs()))
    }

    /// Byte offset of each sequence in the `.bin` (`pointers`).
    pub fn pointers(&self) -> impl ExactSizeIterator<Item = u64> + 'a {
        // Validated non-negative by `parse`.
        i64s(self.pointers).map(|v| v.unsigned_abs())
    }

    /// `document_indices`: the sequence at which each document starts, then the sequence count.
    pub fn document_indices(&self) -> impl ExactSizeIterator<Item = u64> + 'a {
        // Validated non-negative by `parse`.
        i64s(self.document_indices).map(|v| v.unsigned_abs())
    }

    /// Row offsets in tokens, as mmtensor stores them: `sequence_count + 1` values, 0 first, then
    /// the running sum of the sizes, ending at [`MegatronIndex::token_count`].
    pub fn offsets(&self) -> impl ExactSizeIterator<Item = u64> + 'a {
        let item = self.dtype.size() as u64;
        let total = self.token_count;
        let pointers = self.pointers;
        // The pointers are the running sum of the sizes times the item size (checked by `parse`);
        // past the last pointer comes the end.
        (0..self.sizes.len() / 4 + 1).map(move |i| match pointers.get(i * 8..i * 8 + 8) {
            Some(c) => i64s(c).next().map_or(total, |p| p.unsigned_abs() / item),
            None => total,
        })
    }

    /// True when every document is exactly one sequence (`document_indices` is `0, 1, ..., n`), as
    /// in almost every dataset Megatron's `preprocess_data.py` writes without `--split-sentences`.
    pub fn documents_are_sequences(&self) -> bool {
        self.document_indices.len() / 8 == self.sizes.len() / 4 + 1
            && self
                .document_indices()
                .enumerate()
                .all(|(i, v)| v == i as u64)
    }

    /// The document of each sequence, for a converter to store as a column beside the tokens;
    /// [`document_indices_from`] is the inverse.
    ///
    /// # Errors
    /// [`Error::MegatronEmptyDocument`] for the first document that holds no sequence (a repeated
    /// value in `document_indices`): labels cannot say that it exists. Megatron's
    /// `preprocess_data.py` writes one for each input line whose text yields no token.
    pub fn sequence_documents(&self) -> Result<Vec<u64>> {
        let mut out = Vec::with_capacity(self.sizes.len() / 4);
        let mut starts = self.document_indices();
        let mut start = starts.next().unwrap_or(0);
        for (document, next) in starts.enumerate() {
            if next == start {
                return Err(Error::MegatronEmptyDocument {
                    document: document as u64,
                    sequence: start,
                });
            }
            out.extend(std::iter::repeat_n(
                document as u64,
                (next - start) as usize,
            ));
            start = next;
        }
        Ok(out)
    }
}

/// Rebuilds `document_indices` from the document of each sequence, as
/// [`MegatronIndex::sequence_documents`] gives them.
///
/// # Errors
/// [`Error::MegatronValue`] (part `sequence documents`) when the first label is not 0 or a label is
/// neither its predecessor nor one more: documents are numbered in order from 0 and none is empty.
pub fn document_indices_from(sequence_documents: &[u64]) -> Result<Vec<u64>> {
    let mut out = vec![0];
    let mut current = 0u64;
    for (i, &doc) in sequence_documents.iter().enumerate() {
        let ok = if i == 0 {
            doc == 0
        } else {
            doc == current || Some(doc) == current.checked_add(1)
        };
        if !ok {
            let reason = if i == 0 {
                format!("is {doc}, but the first sequence belongs to document 0")
            } else {
                format!("is {doc}, but sequence {} is in document {current}: documents are numbered in order, each holding at least one sequence", i - 1)
            };
            return Err(Error::MegatronValue {
                part: "sequence documents",
                index: i as u64,
                reason,
            });
        }
        if doc != current {
            out.push(i as u64);
            current = doc;
        }
    }
    if !sequence_documents.is_empty() {
        out.push(sequence_documents.len() as u64);
    }
    Ok(out)
}

/// Encodes the 34-byte header of an `.idx` for `sequence_count` sequences and
/// `document_indices_len` entries of `document_indices` (one more than the number of documents).
///
/// # Errors
/// [`Error::MegatronDtype`] for a dtype Megatron has no code for.
pub fn encode_header(
    dtype: Dtype,
    sequence_count: u64,
    document_indices_len: u64,
) -> Result<Vec<u8>> {
    MegatronHeader {
        dtype,
        sequence_count,
        document_indices_len,
    }
    .encode()
}

/// Appends `sizes` for a chunk of sequence lengths (in tokens) whose first is sequence `first`:
/// for an exporter that streams the index after [`encode_header`].
///
/// # Errors
/// [`Error::MegatronValue`] naming the sequence (counted from `first`) longer than `i32::MAX`
/// tokens, which Megatron's int32 sizes cannot hold.
pub fn append_sizes(out: &mut Vec<u8>, lengths: &[u64], first: u64) -> Result<()> {
    out.reserve(lengths.len().saturating_mul(4));
    for (i, &len) in lengths.iter().enumerate() {
        let size = i32::try_from(len).map_err(|_| Error::MegatronValue {
            part: "sizes",
            index: first.saturating_add(i as u64),
            reason: format!(
                "is {len} tokens, over the {} that Megatron's int32 sizes hold",
                i32::MAX
            ),
        })?;
        out.extend_from_slice(&size.to_le_bytes());
    }
    Ok(())
}

/// Appends `pointers` for a chunk of sequence lengths (in tokens) whose first is sequence `first`
/// and starts at byte `start` of the `.bin`; returns the byte at which the next chunk starts. Both
/// are 0 for the first chunk.
///
/// # Errors
/// [`Error::MegatronDtype`] for a dtype Megatron has no code for; [`Error::MegatronValue`] naming
/// the sequence that takes the `.bin` past `i64::MAX` bytes, the most Megatron's int64 pointers
/// address.
pub fn append_pointers(
    out: &mut Vec<u8>,
    dtype: Dtype,
    lengths: &[u64],
    first: u64,
    start: u64,
) -> Result<u64> {
    dtype_code(dtype)?;
    let item = dtype.size() as u64;
    let too_far = |i: usize| Error::MegatronValue {
        part: "sizes",
        index: first.saturating_add(i as u64),
        reason: format!(
            "takes the .bin past {} bytes, the most Megatron's int64 pointers address",
            i64::MAX
        ),
    };
    let mut pointer = i64::try_from(start).map_err(|_| too_far(0))?;
    out.reserve(lengths.len().saturating_mul(8));
    for (i, &len) in lengths.iter().enumerate() {
        out.extend_from_slice(&pointer.to_le_bytes());
        pointer = i64::try_from(len)
            .ok()
            .and_then(|len| len.checked_mul(item as i64))
            .and_then(|bytes| pointer.checked_add(bytes))
            .ok_or_else(|| too_far(i))?;
    }
    Ok(pointer.unsigned_abs())
}

/// Appends `document_indices` values. They are not checked against each other: [`encode`] does
/// that for a whole index.
///
/// # Errors
/// [`Error::MegatronValue`] for a value over `i64::MAX`.
pub fn append_document_indices(out: &mut Vec<u8>, document_indices: &[u64]) -> Result<()> {
    out.reserve(document_indices.len().saturating_mul(8));
    for (i, &v) in document_indices.iter().enumerate() {
        let v = i64::try_from(v).map_err(|_| Error::MegatronValue {
            part: "document_indices",
            index: i as u64,
            reason: format!("is {v}, over i64::MAX"),
        })?;
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(())
}

/// Encodes a whole `.idx` for sequences of `lengths` tokens of `dtype`, written back to back in the
/// `.bin`, and `document_indices` (for one document per sequence: `0, 1, ..., lengths.len()`).
/// Byte for byte what Megatron's `_IndexWriter` writes for a non-multimodal dataset.
///
/// # Errors
/// [`Error::MegatronDtype`]; [`Error::MegatronValue`] for a sequence over `i32::MAX` tokens, a
/// `.bin` past `i64::MAX` bytes, or `document_indices` that is empty, does not start at 0,
/// decreases, or does not end at `lengths.len()`.
pub fn encode(dtype: Dtype, lengths: &[u64], document_indices: &[u64]) -> Result<Vec<u8>> {
    let n = lengths.len() as u64;
    check_document_indices(document_indices.iter().map(|&v| Some(v)), n)?;
    let mut out = encode_header(dtype, n, document_indices.len() as u64)?;
    let total = lengths
        .len()
        .checked_mul(12)
        .and_then(|a| document_indices.len().checked_mul(8)?.checked_add(a))
        .unwrap_or(0);
    out.reserve_exact(total);
    append_sizes(&mut out, lengths, 0)?;
    append_pointers(&mut out, dtype, lengths, 0, 0)?;
    append_document_indices(&mut out, document_indices)?;
    Ok(out)
}

/// Checks `document_indices` (a `None` is a value that does not fit, e.g. a negative one): at least
/// one entry, 0 first, non-decreasing, `n` last.
fn check_document_indices(values: impl Iterator<Item = Option<u64>>, n: u64) -> Result<()> {
    let err = |index: usize, reason: String| Error::MegatronValue {
        part: "document_indices",
        index: index as u64,
        reason,
    };
    let show = |v: Option<u64>| v.map_or_else(|| "negative".to_owned(), |v| v.to_string());
    let mut last: Option<(usize, u64)> = None;
    for (i, v) in values.enumerate() {
        match (last, v) {
            (None, Some(0)) => {}
            (None, v) => {
                return Err(err(
                    i,
                    format!("is {}, but document indices start at 0", show(v)),
                ))
            }
            (Some((_, prev)), Some(v)) if v >= prev && v <= n => {}
            (Some((_, prev)), Some(v)) if v >= prev => {
                return Err(err(i, format!("is {v}, past the sequence count {n}")))
            }
            (Some((_, prev)), v) => {
                return Err(err(
                    i,
                    format!(
                    "is {}, below document_indices[{}] = {prev}: document indices never decrease",
                    show(v),
                    i - 1
                ),
                ))
            }
        }
        last = Some((i, v.unwrap_or(0)));
    }
    match last {
        None => Err(err(
            0,
            "is missing: document_indices holds at least its leading 0 (the header's document count is 0)".into(),
        )),
        Some((i, v)) if v != n => Err(err(
            i,
            format!("is {v}, but the last document index is the sequence count {n}"),
        )),
        Some(_) => Ok(()),
    }
}

fn overflow(i: usize) -> Error {
    Error::MegatronValue {
        part: "sizes",
        index: i as u64,
        reason: "takes the .bin past 2^64 - 1 bytes".into(),
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn i32s(b: &[u8]) -> impl ExactSizeIterator<Item = i32> + '_ {
    b.chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

fn i64s(b: &[u8]) -> impl ExactSizeIterator<Item = i64> + '_ {
    b.chunks_exact(8)
        .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `.idx` built field by field, with no validation, for tests to break.
    fn raw(code: u8, sizes: &[i32], pointers: &[i64], docs: &[i64]) -> Vec<u8> {
        let mut v = MEGATRON_MAGIC.to_vec();
        v.extend_from_slice(&1u64.to_le_bytes());
        v.push(code);
        v.extend_from_slice(&(sizes.len() as u64).to_le_bytes());
        v.extend_from_slice(&(docs.len() as u64).to_le_bytes());
        sizes
            .iter()
            .for_each(|s| v.extend_from_slice(&s.to_le_bytes()));
        pointers
            .iter()
            .for_each(|p| v.extend_from_slice(&p.to_le_bytes()));
        docs.iter()
            .for_each(|d| v.extend_from_slice(&d.to_le_bytes()));
        v
    }

    #[test]
    fn code_table_round_trips_and_names_the_missing() {
        for code in 0..=255u8 {
            match dtype_from_code(code) {
                Some(d) => assert_eq!(dtype_code(d).unwrap(), code),
                None => assert!(!(1..=8).contains(&code)),
            }
        }
        for d in Dtype::ALL {
            if let Err(e) = dtype_code(d) {
                assert_eq!(e, Error::MegatronDtype { dtype: d });
                assert!(e.to_string().contains(d.name()), "{e}");
            }
        }
        assert_eq!(
            CODES.iter().map(|&(_, d)| d.name()).collect::<Vec<_>>(),
            ["U8", "I8", "I16", "I32", "I64", "F64", "F32", "U16"]
        );
    }

    #[test]
    fn parses_an_index_split_into_sentences() {
        // Two documents: sequences 0..2 and 2..3, of int32 tokens.
        let idx = raw(4, &[2, 0, 3], &[0, 8, 8], &[0, 2, 3]);
        let index = MegatronIndex::parse(&idx, 20).unwrap();
        assert_eq!(index.dtype(), Dtype::I32);
        assert_eq!((index.sequence_count(), index.document_count()), (3, 2));
        assert_eq!(index.token_count(), 5);
        assert_eq!(index.sizes().collect::<Vec<_>>(), [2, 0, 3]);
        assert_eq!(index.pointers().collect::<Vec<_>>(), [0, 8, 8]);
        assert_eq!(index.document_indices().collect::<Vec<_>>(), [0, 2, 3]);
        let offsets = index.offsets();
        assert_eq!(offsets.len(), 4);
        assert_eq!(offsets.collect::<Vec<_>>(), [0, 2, 2, 5]);
        assert!(!index.documents_are_sequences());
        let docs = index.sequence_documents().unwrap();
        assert_eq!(docs, [0, 0, 1]);
        assert_eq!(document_indices_from(&docs).unwrap(), [0, 2, 3]);
        assert_eq!(index.header(), MegatronHeader::parse(&idx).unwrap(),);
        assert_eq!(encode(Dtype::I32, &[2, 0, 3], &[0, 2, 3]).unwrap(), idx);
    }

    #[test]
    fn an_empty_index_is_one_zero() {
        let idx = encode(Dtype::U8, &[], &[0]).unwrap();
        assert_eq!(idx.len(), 42);
        let index = MegatronIndex::parse(&idx, 0).unwrap();
        assert_eq!(index.offsets().collect::<Vec<_>>(), [0]);
        assert!(index.documents_are_sequences());
        assert_eq!(index.sequence_documents().unwrap(), Vec::<u64>::new());
        assert_eq!(document_indices_from(&[]).unwrap(), [0]);
    }

    #[test]
    fn an_empty_document_is_refused_only_when_labels_are_asked_for() {
        let idx = raw(8, &[1, 1], &[0, 2], &[0, 1, 1, 2]);
        let index = MegatronIndex::parse(&idx, 4).unwrap();
        let e = index.sequence_documents().unwrap_err();
        assert_eq!(
            e,
            Error::MegatronEmptyDocument {
                document: 1,
                sequence: 1
            }
        );
        assert!(
            e.to_string().contains("document 1 holds no sequence"),
            "{e}"
        );
    }

    #[test]
    fn document_labels_must_count_up_by_one() {
        for (labels, index) in [(&[1u64][..], 0u64), (&[0, 2], 1), (&[0, 1, 0], 2)] {
            match document_indices_from(labels).unwrap_err() {
                Error::MegatronValue { part, index: i, .. } => {
                    assert_eq!((part, i), ("sequence documents", index))
                }
                e => panic!("{e:?}"),
            }
        }
        assert_eq!(
            document_indices_from(&[0, 0, 1, 2, 2]).unwrap(),
            [0, 2, 3, 5]
        );
    }

    #[test]
    fn negative_pointer_and_document_index_are_named() {
        let e = MegatronIndex::parse(&raw(1, &[1], &[-1], &[0, 1]), 1).unwrap_err();
        assert!(e.to_string().contains("pointers[0]: is -1"), "{e}");
        let e = MegatronIndex::parse(&raw(1, &[1], &[0], &[0, -1]), 1).unwrap_err();
        assert!(
            e.to_string().contains("document_indices[1]: is negative"),
            "{e}"
        );
        let e = MegatronIndex::parse(&raw(1, &[1], &[0], &[0, 2]), 1).unwrap_err();
        assert!(e.to_string().contains("past the sequence count 1"), "{e}");
        let e = MegatronIndex::parse(&raw(1, &[], &[], &[]), 0).unwrap_err();
        assert!(
            e.to_string().contains("document_indices[0]: is missing"),
            "{e}"
        );
    }

    #[test]
    fn encode_refuses_what_megatron_cannot_hold() {
        let e = encode(Dtype::U16, &[1, 1 << 31], &[0, 2]).unwrap_err();
        assert!(
            e.to_string().contains("sizes[1]: is 2147483648 tokens"),
            "{e}"
        );
        let e = encode(Dtype::BF16, &[1], &[0, 1]).unwrap_err();
        assert_eq!(e, Error::MegatronDtype { dtype: Dtype::BF16 });
        let e = encode(Dtype::U16, &[1], &[0]).unwrap_err();
        assert!(
            e.to_string()
                .contains("document_indices[0]: is 0, but the last"),
            "{e}"
        );
        let mut out = Vec::new();
        let e = append_pointers(&mut out, Dtype::I64, &[1 << 60, 1], 7, 0).unwrap_err();
        assert!(
            e.to_string().contains("sizes[7]: takes the .bin past"),
            "{e}"
        );
        let next = append_pointers(&mut out, Dtype::U16, &[3, 4], 0, 10).unwrap();
        assert_eq!(next, 24);
    }

    #[test]
    fn streaming_helpers_make_what_encode_makes() {
        let lengths = [5u64, 0, 7, 1];
        let docs = [0u64, 1, 2, 3, 4];
        let mut out = encode_header(Dtype::U16, 4, 5).unwrap();
        append_sizes(&mut out, &lengths[..2], 0).unwrap();
        append_sizes(&mut out, &lengths[2..], 2).unwrap();
        let next = append_pointers(&mut out, Dtype::U16, &lengths[..3], 0, 0).unwrap();
        append_pointers(&mut out, Dtype::U16, &lengths[3..], 3, next).unwrap();
        append_document_indices(&mut out, &docs).unwrap();
        assert_eq!(out, encode(Dtype::U16, &lengths, &docs).unwrap());
    }
}
