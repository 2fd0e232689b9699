//! Ragged columns: rows of different lengths (a document's tokens, an utterance's frames), stored
//! as values and row offsets (format 1.1), read as zero-copy rows, gathered batches (values +
//! offsets, or padded with lengths) and the concatenated stream that sequence windows are cut
//! from.
//!
//! One type serves a store's ragged tensor and a sharded dataset's ragged column: a
//! [`RaggedColumn`] is a list of parts (one per shard; one for a store), each a values tensor and
//! its offsets, with where each part's rows and values start. Offsets were checked at open
//! (`mmtensor_format::check_offsets`), so every row's range below is within its values.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use mmtensor_format::{offsets_name, Cast, Dtype};

use crate::owned::OwnedTensor;
use crate::store::Store;
use crate::take::{cast_row, read_cast};
use crate::{Error, Result};

/// One part of a ragged column: a store's values tensor and its row offsets.
#[derive(Clone)]
pub(crate) struct RaggedPart {
    values: OwnedTensor,
    offsets: OwnedTensor,
}

impl RaggedPart {
    /// The ragged tensor `name` of `store`.
    pub(crate) fn of(store: &Store, name: &str) -> Result<RaggedPart> {
        let values = store.tensor(name)?;
        if values.info.offsets.is_none() {
            return Err(Error::NotRagged {
                path: store.path().to_owned(),
                column: name.to_owned(),
            });
        }
        let offsets = store.tensor_owned(&offsets_name(name))?;
        // Both are viewable (an `.mmt` store's tensors always are); checked once here.
        values.bytes()?;
        offsets.as_slice::<u64>()?;
        Ok(RaggedPart {
            values: values.owned(),
            offsets,
        })
    }

    fn offsets(&self) -> &[u64] {
        // Checked viewable in `of`; a store's bytes do not change.
        self.offsets.as_slice::<u64>().unwrap_or(&[0])
    }

    fn rows(&self) -> u64 {
        self.offsets().len() as u64 - 1
    }

    fn bytes(&self) -> &[u8] {
        self.values.bytes().unwrap_or(&[])
    }
}

/// A ragged tensor of a [`Store`] ([`Store::ragged`]) or a ragged column of a
/// [`Dataset`](crate::Dataset) ([`Dataset::ragged`](crate::Dataset::ragged)): rows of different
/// lengths along their first axis, each of shape `[length] + item_shape`.
///
/// `'static`, `Send + Sync`, cheap to clone: it holds the stores.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// # let path = dir.path().join("docs.mmt");
/// # let tokens: Vec<u8> = [1u16, 2, 3, 4, 5].iter().flat_map(|t| t.to_le_bytes()).collect();
/// # mmtensor_testsupport::TestStore::new()
/// #     .ragged("tokens", mmtensor::Dtype::U16, &[], tokens, &[3, 0, 2])
/// #     .write(&path)?;
/// // SAFETY: nothing modifies the file while it is open.
/// let store = unsafe { mmtensor::Store::open(&path)? };
/// let tokens = store.ragged("tokens")?; // three documents of 3, 0 and 2 tokens
/// assert_eq!(tokens.num_rows(), 3);
/// assert_eq!(tokens.row(2)?.as_slice::<u16>()?, [4, 5]); // borrowed from the mapping
/// let batch = tokens.take(&[2, 0])?;
/// assert_eq!(batch.offsets, [0, 2, 5]);
/// let padded = tokens.take_padded(&[0, 1], &mmtensor::Pad::new(0u16.to_le_bytes().to_vec()))?;
/// assert_eq!(padded.shape, [2, 3]);
/// assert_eq!(padded.lengths, [3, 0]);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RaggedColumn {
    path: Arc<Path>,
    name: Arc<str>,
    dtype: Dtype,
    item_shape: Arc<[u64]>,
    item_bytes: u64,
    /// One per shard (one for a store); `None` for a shard the dataset was opened without.
    parts: Arc<[Option<RaggedPart>]>,
    /// Where each part's rows start, then the total.
    row_starts: Arc<[u64]>,
    /// Where each part's values start in the concatenated stream, then the total; an unopened
    /// part counts as empty (see [`RaggedColumn::is_complete`]).
    value_starts: Arc<[u64]>,
}

/// What [`RaggedColumn::take`] gathers: the rows' values back to back and their offsets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaggedBatch {
    /// The rows' values, little-endian, in the order asked for.
    pub values: Vec<u8>,
    /// `rows + 1` offsets into `values`, in items: row `k` is items `offsets[k]..offsets[k + 1]`.
    pub offsets: Vec<u64>,
    /// The values' dtype.
    pub dtype: Dtype,
}

/// How [`RaggedColumn::take_padded`] pads rows to one length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pad {
    /// One element of the output dtype, little-endian: the padding (a pad token id, 0, -1).
    pub value: Vec<u8>,
    /// Pad every row to this length; `None`: to the longest row of the batch.
    pub to: Option<u64>,
    /// Round the padded length up to a multiple of this (8 suits tensor cores); at least 1.
    pub multiple_of: u64,
    /// Cut rows longer than `to` (else such a row is an error).
    pub truncate: bool,
    /// The dtype the batch holds (the column's when `None`), cast as rows are copied.
    pub dtype: Option<Dtype>,
}

impl Pad {
    /// Pad with `value` (one element of the column's dtype) to the longest row of the batch.
    pub fn new(value: Vec<u8>) -> Pad {
        Pad {
            value,
            to: None,
            multiple_of: 1,
            truncate: false,
            dtype: None,
        }
    }
}

/// What [`RaggedColumn::take_padded`] gathers: a `[rows, length] + item_shape` batch and each
/// row's length before padding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaddedBatch {
    /// The batch, little-endian, C order.
    pub data: Vec<u8>,
    /// `[rows, length] + item_shape`.
    pub shape: Vec<u64>,
    /// Each row's length before padding (after truncation).
    pub lengths: Vec<u64>,
    /// The batch's dtype.
    pub dtype: Dtype,
}

impl Store {
    /// The ragged tensor `name` (format 1.1): its values and row offsets as rows.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`]; [`Error::NotRagged`] for a tensor without offsets.
    pub fn ragged(&self, name: &str) -> Result<RaggedColumn> {
        let part = RaggedPart::of(self, name)?;
        let (dtype, shape) = (part.values.dtype(), part.values.shape()[1..].to_vec());
        RaggedColumn::new(self.path(), name, dtype, &shape, vec![Some(part)], None)
    }
}

impl RaggedColumn {
    /// The column `name` over `parts`; each part's rows start where the previous part's end, or
    /// where `manifest_starts` says (a dataset's, which also counts the parts not opened).
    pub(crate) fn new(
        path: &Path,
        name: &str,
        dtype: Dtype,
        item_shape: &[u64],
        parts: Vec<Option<RaggedPart>>,
        manifest_starts: Option<&[u64]>,
    ) -> Result<RaggedColumn> {
        let item_shape: Arc<[u64]> = item_shape.into();
        let item_bytes = item_shape
            .iter()
            .try_fold(dtype.size() as u64, |n, &d| n.checked_mul(d))
            .ok_or_else(|| Error::TooLarge {
                path: path.to_owned(),
                len: u64::MAX,
            })?;
        let mut row_starts = Vec::with_capacity(parts.len() + 1);
        let mut value_starts = Vec::with_capacity(parts.len() + 1);
        let (mut rows, mut values) = (0u64, 0u64);
        for (i, p) in parts.iter().enumerate() {
            row_starts.push(rows);
            value_starts.push(values);
            rows = match (manifest_starts, p) {
                (Some(starts), _) => starts[i + 1],
                (None, Some(p)) => rows + p.rows(),
                (None, None) => rows,
            };
            if let Some(p) = p {
                values += p.values.shape()[0];
            }
        }
        row_starts.push(rows);
        value_starts.push(values);
        Ok(RaggedColumn {
            path: path.into(),
            name: name.into(),
            dtype,
            item_shape,
            item_bytes,
            parts: parts.into(),
            row_starts: row_starts.into(),
            value_starts: value_starts.into(),
        })
    }

    /// The column's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The values' dtype.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// The shape of one item of a row: a row is `[length] + item_shape` (`[]` for token ids).
    pub fn item_shape(&self) -> &[u64] {
        &self.item_shape
    }

    /// Bytes of one item.
    pub fn item_bytes(&self) -> u64 {
        self.item_bytes
    }

    /// The number of rows.
    pub fn num_rows(&self) -> u64 {
        *self.row_starts.last().unwrap_or(&0)
    }

    /// The number of items of all (open) rows together: the length of the concatenated stream.
    pub fn num_values(&self) -> u64 {
        *self.value_starts.last().unwrap_or(&0)
    }

    /// Whether every part is open (a dataset opened for one rank has only that rank's shards).
    pub fn is_complete(&self) -> bool {
        self.parts.iter().all(Option::is_some)
    }

    /// The part holding row `row`, the part, and the row's index in it.
    fn locate(&self, row: u64) -> Result<(usize, &RaggedPart, u64)> {
        if row >= self.num_rows() {
            return Err(Error::RowIndex {
                path: self.path.to_path_buf(),
                tensor: self.name.to_string(),
                index: row,
                rows: self.num_rows(),
            });
        }
        let i = self.row_starts.partition_point(|&s| s <= row) - 1;
        Ok((i, self.part(i, row)?, row - self.row_starts[i]))
    }

    /// Part `p`, or [`Error::ShardNotOpen`] for dataset row `row` of it.
    fn part(&self, p: usize, row: u64) -> Result<&RaggedPart> {
        self.parts[p].as_ref().ok_or_else(|| Error::ShardNotOpen {
            path: self.path.to_path_buf(),
            shard: p,
            file: format!("shard {p}"),
            row,
            rank: None,
        })
    }

    /// The bytes of items `items` of `part`'s values (a range its offsets gave: in bounds).
    fn items<'p>(&self, part: &'p RaggedPart, items: Range<u64>) -> &'p [u8] {
        &part.bytes()
            [(items.start * self.item_bytes) as usize..(items.end * self.item_bytes) as usize]
    }

    /// Row `row`'s items: a range of its part's values.
    fn span(&self, row: u64) -> Result<(&RaggedPart, Range<u64>)> {
        let (_, part, r) = self.locate(row)?;
        let o = part.offsets();
        Ok((part, o[r as usize]..o[r as usize + 1]))
    }

    /// The length (in items) of row `row`.
    ///
    /// # Errors
    ///
    /// [`Error::RowIndex`] past the end; [`Error::ShardNotOpen`].
    pub fn row_len(&self, row: u64) -> Result<u64> {
        self.span(row).map(|(_, r)| r.end - r.start)
    }

    /// Row `row`, a zero-copy view of its items: shape `[length] + item_shape`.
    ///
    /// # Errors
    ///
    /// As [`RaggedColumn::row_len`].
    pub fn row(&self, row: u64) -> Result<OwnedTensor> {
        let (part, items) = self.span(row)?;
        part.values.rows(items)
    }

    /// The row offsets of part `part` (a shard; 0 for a store), borrowed from the mapping.
    pub fn part_offsets(&self, part: usize) -> Option<&[u64]> {
        Some(self.parts.get(part)?.as_ref()?.offsets())
    }

    /// Where each part's rows start, then the total.
    pub fn row_starts(&self) -> &[u64] {
        &self.row_starts
    }

    /// Where each part's values start in the concatenated stream, then the total.
    pub fn value_starts(&self) -> &[u64] {
        &self.value_starts
    }

    /// Every open part's values tensor, in order (for advice and prefetch).
    pub fn values_tensors(&self) -> impl Iterator<Item = &OwnedTensor> {
        self.parts.iter().flatten().map(|p| &p.values)
    }

    pub(crate) fn cast(&self, dtype: Option<Dtype>) -> Result<Cast> {
        read_cast(
            &self.path,
            &self.name,
            self.dtype,
            dtype.unwrap_or(self.dtype),
        )
    }

    /// Copies items `items` of one part (bytes `bytes` of its values) into `out`, cast; `BOOL`
    /// values are checked to be 0 or 1.
    fn copy(&self, src: &[u8], out: &mut [u8], cast: Cast) -> Result<()> {
        if self.dtype == Dtype::Bool {
            if let Some(at) = src.iter().position(|&b| b > 1) {
                return Err(Error::Windows {
                    path: self.path.to_path_buf(),
                    column: self.name.to_string(),
                    reason: format!(
                        "a BOOL value is {} (byte {at} of a row), not 0 or 1",
                        src[at]
                    ),
                });
            }
        }
        cast.run(src, out).map_err(|source| Error::Format {
            path: self.path.to_path_buf(),
            source,
        })
    }

    /// Gathers rows `indices` (any order, repeats allowed): their values back to back, and
    /// offsets.
    ///
    /// # Errors
    ///
    /// [`Error::RowIndex`] for the first index past the end; [`Error::ShardNotOpen`].
    pub fn take(&self, indices: &[u64]) -> Result<RaggedBatch> {
        let mut spans = Vec::with_capacity(indices.len());
        let mut offsets = Vec::with_capacity(indices.len() + 1);
        offsets.push(0u64);
        for &i in indices {
            let (part, items) = self.span(i)?;
            offsets.push(offsets.last().unwrap_or(&0) + (items.end - items.start));
            spans.push((part, items));
        }
        let total = self.bytes_of(*offsets.last().unwrap_or(&0))?;
        let mut values = vec![0u8; total];
        let mut at = 0usize;
        let cast = self.cast(None)?;
        for (part, items) in spans {
            let src = self.items(part, items);
            self.copy(src, &mut values[at..at + src.len()], cast)?;
            at += src.len();
        }
        Ok(RaggedBatch {
            values,
            offsets,
            dtype: self.dtype,
        })
    }

    fn bytes_of(&self, items: u64) -> Result<usize> {
        items
            .checked_mul(self.item_bytes)
            .and_then(|b| usize::try_from(b).ok())
            .ok_or_else(|| Error::TooLarge {
                path: self.path.to_path_buf(),
                len: u64::MAX,
            })
    }

    /// Gathers rows `indices` into one `[rows, length] + item_shape` batch: each row's items,
    /// then `pad.value` up to `length` (the longest row, or `pad.to`, rounded up to a multiple of
    /// `pad.multiple_of`), cast to `pad.dtype` as copied; with each row's length.
    ///
    /// # Errors
    ///
    /// As [`RaggedColumn::take`]; [`Error::RowTooLong`] for a row longer than `pad.to` without
    /// `pad.truncate`; [`Error::UnsupportedCast`]; [`Error::Windows`] for a `pad.value` that is not
    /// one element of the output dtype or a `multiple_of` of 0.
    pub fn take_padded(&self, indices: &[u64], pad: &Pad) -> Result<PaddedBatch> {
        let cast = self.cast(pad.dtype)?;
        let out_dtype = cast.to();
        self.check_pad(pad, out_dtype)?;
        let length = self.padded_length(indices, pad)?;
        let out_item = cast_row(&self.path, self.item_bytes, cast)?;
        let total = length
            .checked_mul(out_item)
            .and_then(|r| r.checked_mul(indices.len() as u64))
            .and_then(|b| usize::try_from(b).ok())
            .ok_or_else(|| self.bad("the padded batch is too large to address".into()))?;
        let mut data = vec![0u8; total];
        let mut lengths = vec![0u64; indices.len()];
        self.take_padded_into(indices, pad, length, cast, &mut data, &mut lengths)?;
        let mut shape = vec![indices.len() as u64, length];
        shape.extend_from_slice(&self.item_shape);
        Ok(PaddedBatch {
            data,
            shape,
            lengths,
            dtype: out_dtype,
        })
    }

    fn bad(&self, reason: String) -> Error {
        Error::Windows {
            path: self.path.to_path_buf(),
            column: self.name.to_string(),
            reason,
        }
    }

    /// Checks `pad` for a batch of `out_dtype`.
    pub(crate) fn check_pad(&self, pad: &Pad, out_dtype: Dtype) -> Result<()> {
        if pad.value.len() != out_dtype.size() {
            return Err(self.bad(format!(
                "the pad value is {} bytes; one {out_dtype} element is {}",
                pad.value.len(),
                out_dtype.size()
            )));
        }
        if pad.multiple_of == 0 {
            return Err(self.bad("pad multiple_of is 0; it must be at least 1".into()));
        }
        Ok(())
    }

    /// The length rows `indices` are padded to: the longest (cut at `pad.to`), or `pad.to`,
    /// rounded up to a multiple of `pad.multiple_of`.
    ///
    /// # Errors
    /// As [`RaggedColumn::row_len`]; [`Error::RowTooLong`] for a row longer than `pad.to`
    /// without `pad.truncate`.
    pub(crate) fn padded_length(&self, indices: &[u64], pad: &Pad) -> Result<u64> {
        let mut longest = 0u64;
        for &i in indices {
            let len = self.row_len(i)?;
            if let Some(to) = pad.to {
                if len > to && !pad.truncate {
                    return Err(Error::RowTooLong {
                        path: self.path.to_path_buf(),
                        column: self.name.to_string(),
                        row: i,
                        length: len,
                        pad_to: to,
                    });
                }
            }
            longest = longest.max(pad.to.map_or(len, |to| len.min(to)));
        }
        let length = pad.to.unwrap_or(longest);
        Ok(length
            .div_ceil(pad.multiple_of.max(1))
            .saturating_mul(pad.multiple_of.max(1)))
    }

    /// Gathers rows `indices`, each padded with `pad.value` to `length` items (rows longer were
    /// refused or are cut: see [`RaggedColumn::padded_length`]), cast by `cast`, into `out`
    /// (`indices.len() × length` output items); each row's length (after cutting) into `lengths`.
    pub(crate) fn take_padded_into(
        &self,
        indices: &[u64],
        pad: &Pad,
        length: u64,
        cast: Cast,
        out: &mut [u8],
        lengths: &mut [u64],
    ) -> Result<()> {
        let out_item = cast_row(&self.path, self.item_bytes, cast)? as usize;
        let row_out = length as usize * out_item;
        if out.len() != row_out * indices.len() || lengths.len() != indices.len() {
            return Err(Error::TakeOutput {
                path: self.path.to_path_buf(),
                tensor: self.name.to_string(),
                rows: indices.len(),
                row_bytes: row_out as u64,
                actual: out.len(),
            });
        }
        let el = pad.value.len().max(1);
        for (k, &i) in indices.iter().enumerate() {
            let (part, items) = self.span(i)?;
            // Cut at `pad.to` (a longer row was refused unless `pad.truncate`), then at `length`.
            let n = (items.end - items.start)
                .min(pad.to.unwrap_or(u64::MAX))
                .min(length);
            let src = self.items(part, items.start..items.start + n);
            let row = &mut out[k * row_out..(k + 1) * row_out];
            let (data, rest) = row.split_at_mut(n as usize * out_item);
            self.copy(src, data, cast)?;
            for e in rest.chunks_exact_mut(el) {
                e.copy_from_slice(&pad.value);
            }
            lengths[k] = n;
        }
        Ok(())
    }

    /// The longest row, in items (0 for no rows): one pass over the offsets.
    pub fn longest_row(&self) -> u64 {
        self.parts
            .iter()
            .flatten()
            .flat_map(|p| p.offsets().windows(2).map(|w| w[1] - w[0]))
            .max()
            .unwrap_or(0)
    }

    /// Copies items `start..start + n` of the concatenated stream (every part's values, in order)
    /// into `out`, cast by `cast`; a range may cross parts. The caller checks the range is within
    /// [`RaggedColumn::num_values`] and that `out` holds `n` items of the cast's output.
    pub(crate) fn stream_into(&self, start: u64, n: u64, out: &mut [u8], cast: Cast) -> Result<()> {
        let out_item = cast.output_len(self.item_bytes).unwrap_or(self.item_bytes) as usize;
        let mut at = start;
        let end = start + n;
        let mut written = 0usize;
        let mut p = self
            .value_starts
            .partition_point(|&s| s <= at)
            .saturating_sub(1);
        while at < end {
            let (lo, hi) = (self.value_starts[p], self.value_starts[p + 1]);
            if at >= hi {
                p += 1;
                continue;
            }
            let part = self.part(p, self.row_starts[p])?;
            let take = end.min(hi) - at;
            let src = self.items(part, at - lo..at - lo + take);
            let dst = &mut out[written..written + take as usize * out_item];
            self.copy(src, dst, cast)?;
            written += take as usize * out_item;
            at += take;
            p += 1;
        }
        Ok(())
    }

    /// Calls `f` with each open values tensor holding part of stream items `items`, and that part
    /// as a byte range of the tensor (for read-ahead advice).
    pub(crate) fn stream_pieces(
        &self,
        items: Range<u64>,
        mut f: impl FnMut(&OwnedTensor, Range<u64>),
    ) {
        for (i, part) in self.parts.iter().enumerate() {
            let (lo, hi) = (self.value_starts[i], self.value_starts[i + 1]);
            let (a, b) = (items.start.max(lo), items.end.min(hi));
            if let (Some(part), true) = (part, a < b) {
                f(
                    &part.values,
                    (a - lo) * self.item_bytes..(b - lo) * self.item_bytes,
                );
            }
        }
    }

    /// Row `row`'s items in the concatenated stream (every part's values, in order).
    pub(crate) fn row_items(&self, row: u64) -> Option<Range<u64>> {
        let (i, part, r) = self.locate(row).ok()?;
        let o = part.offsets();
        let base = self.value_starts[i];
        Some(base + o[r as usize]..base + o[r as usize + 1])
    }

    /// The values tensor holding stream item `item`, and the item's byte offset in it.
    pub(crate) fn locate_item(&self, item: u64) -> Option<(&OwnedTensor, u64)> {
        if item >= self.num_values() {
            return None;
        }
        let p = self.value_starts.partition_point(|&s| s <= item) - 1;
        let part = self.parts.get(p)?.as_ref()?;
        Some((
            &part.values,
            (item - self.value_starts[p]) * self.item_bytes,
        ))
    }

    /// The path errors name.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}
