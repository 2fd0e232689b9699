//! Borrowed views of one tensor, or of a range of its rows, and how a store hands them out.

use std::borrow::Cow;
use std::fmt;
use std::ops::{Bound, Range, RangeBounds};

use mmtensor_format::{Dtype, TensorInfo};

use crate::element::{rust_type, Element, ViewError};
use crate::hints::{self, Advice, Prefetch};
use crate::store::Store;
use crate::{verify, Error, Result};

/// A view of one tensor of a [`Store`], or of a range of its rows along axis 0.
///
/// Making a view reads nothing: it is the tensor's dtype, shape and byte range. The accessors then
/// borrow the store's bytes ([`Tensor::bytes`], [`Tensor::as_slice`], [`Tensor::rows`]) or copy them
/// ([`Tensor::to_vec`]). A view borrows the store, so it cannot outlive it; code that cannot hold a
/// borrow keeps a clone of the [`Store`] and makes views on demand (both are cheap).
///
/// ```
/// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/golden/page-a4096.mmt");
/// # // SAFETY: nothing modifies the fixture.
/// # let store = unsafe { mmtensor::Store::open(path)? };
/// let x = store.tensor("x")?; // F32 [256, 8]
/// let batch = x.rows(16..32)?;
/// assert_eq!(batch.shape(), [16, 8]);
/// let values: &[f32] = batch.as_slice()?;
/// assert_eq!(values.len(), 16 * 8);
/// assert_eq!(values, &x.as_slice::<f32>()?[16 * 8..32 * 8]);
/// # Ok::<(), mmtensor::Error>(())
/// ```
#[derive(Clone)]
pub struct Tensor<'a> {
    pub(crate) store: &'a Store,
    /// The tensor's position in the store's table (what an [`OwnedTensor`](crate::OwnedTensor)
    /// keeps instead of `info`).
    pub(crate) position: usize,
    pub(crate) info: &'a TensorInfo,
    /// The view's shape: the tensor's, with axis 0 shortened for a row range.
    pub(crate) shape: Cow<'a, [u64]>,
    /// The first row of the view within the tensor (0 for a whole tensor).
    pub(crate) first_row: u64,
    /// The view's bytes, relative to the tensor's first byte.
    pub(crate) range: Range<u64>,
}

impl Store {
    /// The view of the tensor called `name`.
    ///
    /// A `.npy` file holds one tensor, named after the file's stem (`x` for `x.npy`).
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when there is no such tensor.
    pub fn tensor(&self, name: &str) -> Result<Tensor<'_>> {
        let i = self.index().position(name).ok_or_else(|| Error::NotFound {
            path: self.path().to_owned(),
            tensor: name.to_owned(),
            known: self.names().map(str::to_owned).collect(),
        })?;
        Ok(Tensor::whole(self, i))
    }

    /// Views of every tensor, in file order.
    pub fn tensors(&self) -> impl ExactSizeIterator<Item = Tensor<'_>> + '_ {
        (0..self.index().tensors().len()).map(move |i| Tensor::whole(self, i))
    }

    /// The names of the ragged tensors (format 1.1), in file order: those
    /// [`Store::ragged`](crate::Store::ragged) reads.
    pub fn ragged_names(&self) -> impl Iterator<Item = &str> + '_ {
        self.index()
            .tensors()
            .iter()
            .filter(|t| t.offsets.is_some())
            .map(|t| t.name.as_str())
    }
}

impl<'a> Tensor<'a> {
    pub(crate) fn whole(store: &'a Store, position: usize) -> Tensor<'a> {
        let info = &store.index().tensors()[position];
        Tensor {
            store,
            position,
            info,
            shape: Cow::Borrowed(&info.shape),
            first_row: 0,
            range: 0..info.length,
        }
    }

    /// This view with another span of the same tensor (for
    /// [`OwnedTensor::view`](crate::OwnedTensor::view), whose fields came from a view of this
    /// tensor).
    pub(crate) fn span(self, shape: &'a [u64], first_row: u64, range: Range<u64>) -> Tensor<'a> {
        Tensor {
            shape: Cow::Borrowed(shape),
            first_row,
            range,
            ..self
        }
    }

    /// The store this view borrows.
    pub fn store(&self) -> &'a Store {
        self.store
    }

    /// The first row of this view within the whole tensor (0 for a whole tensor).
    pub fn first_row(&self) -> u64 {
        self.first_row
    }

    /// Whether this is the values of a ragged tensor (format 1.1): its rows are then not the
    /// tensor's rows but ranges of its offsets ([`Store::ragged`](crate::Store::ragged)).
    pub fn is_ragged(&self) -> bool {
        self.info.offsets.is_some()
    }

    /// The tensor's name.
    pub fn name(&self) -> &'a str {
        &self.info.name
    }

    /// The element type.
    pub fn dtype(&self) -> Dtype {
        self.info.dtype
    }

    /// The shape, C order (for a row range, axis 0 is the number of rows in the range).
    pub fn shape(&self) -> &[u64] {
        &self.shape
    }

    /// The number of elements.
    ///
    /// Never overflows for a view of an opened store: every tensor's shape passed the format
    /// crate's `checked_byte_len` at open (`.mmt`, safetensors and `.npy` alike), which proves the
    /// product of its non-zero dims times the dtype size fits in a u64, and a row range only
    /// shortens axis 0. Like `TensorInfo::numel`, it saturates at `u64::MAX` rather than wrap or
    /// panic, so the arithmetic is checked even where the proof is not local.
    pub fn numel(&self) -> u64 {
        self.shape
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d))
            .unwrap_or(u64::MAX)
    }

    /// The view's absolute byte range in the file (for `O_DIRECT` reads, GPU direct storage and the
    /// like); its length is the number of bytes of the view.
    pub fn byte_range(&self) -> Range<u64> {
        let start = self.store.index().data_start() + self.info.offset;
        start + self.range.start..start + self.range.end
    }

    /// The view's raw bytes: little-endian, C order, borrowed from the store.
    ///
    /// # Errors
    ///
    /// [`Error::NeedsConvert`] for a `.npy` array stored big-endian or in Fortran order, whose bytes
    /// are not a little-endian C-order tensor.
    pub fn bytes(&self) -> Result<&'a [u8]> {
        if let Some(reason) = self.store.index().needs_convert() {
            return Err(Error::NeedsConvert {
                path: self.store.path().to_owned(),
                tensor: self.info.name.clone(),
                reason,
            });
        }
        self.store.file().slice(self.byte_range())
    }

    /// The elements as a slice borrowed from the store: no copy.
    ///
    /// `T` must be the type of the tensor's dtype (see the table at [`Element`]). The slice exists
    /// when the view's first byte is aligned for `T`, which every `.mmt` tensor is. Views of `BOOL`
    /// tensors read every byte once to check that it is 0 or 1.
    ///
    /// # Errors
    ///
    /// [`Error::DtypeMismatch`] naming both types; [`Error::Unaligned`] when the bytes are not
    /// aligned for `T` (possible in safetensors files; [`Tensor::to_vec`] copies instead);
    /// [`Error::InvalidBool`]; [`Error::NeedsConvert`] as for [`Tensor::bytes`].
    pub fn as_slice<T: Element>(&self) -> Result<&'a [T]> {
        self.check_type::<T>()?;
        let bytes = self.bytes()?;
        T::view(bytes).map_err(|e| self.view_error::<T>(e))
    }

    /// The elements, copied into a new vector; works at any alignment.
    ///
    /// # Errors
    ///
    /// As [`Tensor::as_slice`], except [`Error::Unaligned`].
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        self.check_type::<T>()?;
        let bytes = self.bytes()?;
        T::copy(bytes).map_err(|e| self.view_error::<T>(e))
    }

    /// The view of rows `rows` along axis 0 (relative to this view), without copying.
    ///
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/golden/page-a4096.mmt");
    /// # // SAFETY: nothing modifies the fixture.
    /// # let store = unsafe { mmtensor::Store::open(path)? };
    /// let labels = store.tensor("labels")?; // I64 [256]
    /// assert_eq!(labels.rows(250..)?.shape(), [6]);
    /// assert!(labels.rows(250..300).is_err());
    /// # Ok::<(), mmtensor::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Format`] holding [`mmtensor_format::Error::RowRange`] when the range is reversed or
    /// past the end, or [`mmtensor_format::Error::Scalar`] for a 0-dimensional tensor.
    pub fn rows(&self, rows: impl RangeBounds<u64>) -> Result<Tensor<'a>> {
        let fmt = |source| Error::Format {
            path: self.store.path().to_owned(),
            source,
        };
        let Some(&n) = self.shape.first() else {
            return Err(fmt(mmtensor_format::Error::Scalar {
                tensor: self.info.name.clone(),
            }));
        };
        let (start, end) = row_bounds(&rows, n);
        let out_of_range = || {
            fmt(mmtensor_format::Error::RowRange {
                tensor: self.info.name.clone(),
                start: start.unwrap_or(u64::MAX),
                end: end.unwrap_or(u64::MAX),
                rows: n,
            })
        };
        let (Some(start), Some(end)) = (start, end) else {
            return Err(out_of_range());
        };
        if start > end || end > n {
            return Err(out_of_range());
        }
        // Within the view's bounds, so within the tensor's: the format crate computes the bytes.
        let absolute = self.first_row + start..self.first_row + end;
        let range = self.info.row_byte_range(absolute).map_err(fmt)?;
        let mut shape = self.shape.to_vec();
        shape[0] = end - start;
        Ok(Tensor {
            store: self.store,
            position: self.position,
            info: self.info,
            shape: Cow::Owned(shape),
            first_row: self.first_row + start,
            range,
        })
    }

    /// The elements as an `ndarray` view of the view's shape, borrowed from the store.
    ///
    /// # Errors
    ///
    /// As [`Tensor::as_slice`]; [`Error::NdArray`] when the shape does not fit in `usize`.
    #[cfg(feature = "ndarray")]
    pub fn to_ndarray<T: Element>(&self) -> Result<ndarray::ArrayViewD<'a, T>> {
        let data = self.as_slice::<T>()?;
        let nd = |source| Error::NdArray {
            path: self.store.path().to_owned(),
            tensor: self.info.name.clone(),
            source,
        };
        let shape = self
            .shape
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<Result<Vec<usize>, _>>()
            .map_err(|_| nd(ndarray::ShapeError::from_kind(ndarray::ErrorKind::Overflow)))?;
        ndarray::ArrayViewD::from_shape(shape, data).map_err(nd)
    }

    /// Tells the kernel how this view's bytes will be read (`madvise` on the pages that hold them).
    /// A no-op for a store read into memory.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when `madvise` fails.
    pub fn advise(&self, advice: Advice) -> Result<()> {
        hints::advise(self.store.file(), self.byte_range(), advice)
    }

    /// Starts reading this view's bytes into the page cache in the background, and returns at once.
    ///
    /// Worker threads fault the bytes in, in windows of a few MiB from first to last, a few windows
    /// in flight at a time, so the disk sees deep sequential reads while the caller works on the data
    /// it already has. Reading the view afterwards (or meanwhile, behind the workers) then mostly
    /// finds its pages resident. Prefetch what will be used soon and fits in memory: for a pass over
    /// a tensor larger than memory, prefetch the next batch of rows while working on the current one.
    ///
    /// The returned handle can [wait](Prefetch::wait) for the reads or [cancel](Prefetch::cancel)
    /// them; dropping it lets them run to the end (the workers hold the store's file). A no-op
    /// for a store read into memory.
    ///
    /// At most 16 prefetch workers live in the process at once, so prefetching every tensor of a
    /// large store in a loop starts at most 16 threads, not four per call: a prefetch started at the
    /// cap asks the kernel for readahead (`MADV_WILLNEED`) instead, and its `wait` reads the range
    /// in on the calling thread (see [`Prefetch`]).
    ///
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/golden/page-a4096.mmt");
    /// # // SAFETY: nothing modifies the fixture.
    /// # let store = unsafe { mmtensor::Store::open(path)? };
    /// let x = store.tensor("x")?;
    /// x.rows(0..128)?.prefetch().wait()?; // warm the first half and wait for it
    /// let _next = x.rows(128..)?.prefetch(); // warm the second half while using the first
    /// let first: &[f32] = x.rows(0..128)?.as_slice()?;
    /// # assert_eq!(first.len(), 128 * 8);
    /// # Ok::<(), mmtensor::Error>(())
    /// ```
    pub fn prefetch(&self) -> Prefetch {
        Prefetch::start(self.store.file(), self.byte_range())
    }

    /// Checks the blocks that hold this view's bytes against the store's checksum table, in
    /// parallel, after checking the table against the hash in the header. For a row range only the
    /// blocks that cover the range are read.
    ///
    /// # Errors
    ///
    /// [`Error::ChecksumMismatch`] for the first bad block (naming the tensor, the block and its byte
    /// range), [`Error::ChecksumTable`], or [`Error::NoChecksums`] for safetensors and `.npy` files.
    pub fn verify(&self) -> Result<()> {
        let layout = self.store.checksummed()?;
        verify::range(self.store.file(), layout, self.info, self.range.clone())
    }

    pub(crate) fn check_type<T: Element>(&self) -> Result<()> {
        if T::DTYPE == self.info.dtype {
            return Ok(());
        }
        Err(Error::DtypeMismatch {
            path: self.store.path().to_owned(),
            tensor: self.info.name.clone(),
            dtype: self.info.dtype,
            requested: T::NAME,
            expected: rust_type(self.info.dtype),
        })
    }

    pub(crate) fn view_error<T: Element>(&self, e: ViewError) -> Error {
        let path = self.store.path().to_owned();
        let tensor = self.info.name.clone();
        let start = self.byte_range().start;
        match e {
            ViewError::Unaligned => Error::Unaligned {
                path,
                tensor,
                offset: start,
                align: std::mem::align_of::<T>(),
                requested: T::NAME,
            },
            ViewError::NotBool { index, value } => Error::InvalidBool {
                path,
                tensor,
                offset: start + index as u64,
                value,
            },
        }
    }
}

impl fmt::Debug for Tensor<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tensor")
            .field("name", &self.info.name)
            .field("dtype", &self.info.dtype)
            .field("shape", &self.shape)
            .field("byte_range", &self.byte_range())
            .finish()
    }
}

/// The first and end rows a range names over `n` rows (unbounded ends are `0` and `n`), each
/// `None` where it overflows `u64`; whether they are in range is the caller's check.
pub(crate) fn row_bounds(rows: &impl RangeBounds<u64>, n: u64) -> (Option<u64>, Option<u64>) {
    let start = match rows.start_bound() {
        Bound::Included(&s) => Some(s),
        Bound::Excluded(&s) => s.checked_add(1),
        Bound::Unbounded => Some(0),
    };
    let end = match rows.end_bound() {
        Bound::Included(&e) => e.checked_add(1),
        Bound::Excluded(&e) => Some(e),
        Bound::Unbounded => Some(n),
    };
    (start, end)
}

#[cfg(test)]
mod tests {
    use crate::Store;

    /// A shape whose leading dims overflow before its zero dim is reached: the element count
    /// saturates instead of panicking (debug) or wrapping (release). Such a shape never passes
    /// validation, so the view is built by hand.
    #[test]
    fn numel_of_an_overflowing_shape_saturates() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fixtures/golden/page-a4096.mmt"
        );
        // SAFETY: nothing modifies the fixture.
        let store = unsafe { Store::open(path) }.unwrap();
        let t = store.tensor("x").unwrap();
        let shape = [1u64 << 40, 1 << 40, 3];
        let view = t.clone().span(&shape, 0, 0..0);
        assert_eq!(view.numel(), u64::MAX);
        assert_eq!(view.owned().numel(), u64::MAX);
        assert_eq!(t.numel(), t.shape().iter().product::<u64>());
    }
}
