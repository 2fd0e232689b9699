//! The owned tensor handle: a view that holds a clone of its store instead of a borrow, how a
//! store or a view hands one out, and the private writable copy of its bytes.

use std::fmt;
use std::ops::{Range, RangeBounds};

use mmtensor_format::Dtype;

use crate::hints::{Advice, Prefetch};
use crate::store::Store;
use crate::tensor::Tensor;
use crate::{Element, Result};

/// A view of one tensor of a [`Store`], or of a range of its rows, that owns a reference to the
/// store: `'static`, `Clone`, `Send` and `Sync`.
///
/// It is the same view as a [`Tensor`] (name, dtype, shape, byte range), made with
/// [`Store::tensor_owned`] or [`Tensor::owned`]. Where a `Tensor<'a>` borrows the store, an
/// `OwnedTensor` keeps the store's bytes alive by itself (the model is arrow's `Buffer`): it can be
/// stored in a struct, sent to another thread, or given to a foreign array object (a NumPy array,
/// a DLPack capsule) as the owner of the bytes it points at. The bytes never move and never change
/// while it lives, so a slice borrowed from it (`bytes`, `as_slice`) is valid for as long as the
/// borrow of the handle.
///
/// ```
/// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/golden/page-a4096.mmt");
/// # // SAFETY: nothing modifies the fixture.
/// let x: mmtensor::OwnedTensor = {
///     let store = unsafe { mmtensor::Store::open(path)? };
///     store.tensor_owned("x")?.rows(8..16)?
/// }; // the store handle is gone; the view still owns the mapping
/// std::thread::spawn(move || {
///     let values: &[f32] = x.as_slice().unwrap();
///     assert_eq!(values.len(), 8 * 8);
/// })
/// .join()
/// .unwrap();
/// # Ok::<(), mmtensor::Error>(())
/// ```
#[derive(Clone)]
pub struct OwnedTensor {
    pub(crate) store: Store,
    /// The tensor's position in the store's table.
    pub(crate) position: usize,
    /// The view's shape: the tensor's, with axis 0 shortened for a row range.
    pub(crate) shape: Box<[u64]>,
    /// The first row of the view within the tensor.
    pub(crate) first_row: u64,
    /// The view's bytes, relative to the tensor's first byte.
    pub(crate) range: Range<u64>,
}

/// A view's bytes in memory its holder may write: writes change neither the file nor any other
/// view of the store ([`OwnedTensor::private_bytes`]). Made for consumers that have no read-only
/// arrays (PyTorch: an in-place op on a tensor of a read-only mapping kills the process).
///
/// For a mapped store it is a private copy-on-write mapping of the view's range of the file: no
/// byte is copied until one is written, and then only the pages written (reads share the page
/// cache, as the store does). For a store read into a private copy ([`crate::Store::read`]) it is
/// a fresh copy of the view's bytes. It holds the store, so the store's mapping contract spans it.
pub struct PrivateBytes {
    map: memmap2::MmapMut,
    len: usize,
    _store: Store,
}

impl PrivateBytes {
    /// The bytes (little-endian, C order, as the view's).
    pub fn as_slice(&self) -> &[u8] {
        &self.map[..self.len]
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.map[..self.len]
    }

    /// The first byte's address: page-aligned plus the view's offset within its page, so as
    /// aligned as the view itself for any alignment up to a page.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// The number of bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl std::fmt::Debug for PrivateBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateBytes")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl OwnedTensor {
    /// The view's bytes in memory the caller may write, which nobody else sees (see
    /// [`PrivateBytes`]): copy-on-write for a mapped store, a copy for a store read into memory.
    ///
    /// # Errors
    ///
    /// [`Error::NeedsConvert`](crate::Error::NeedsConvert) as [`OwnedTensor::bytes`];
    /// [`Error::Io`](crate::Error::Io) when the mapping (or the memory) cannot be had.
    pub fn private_bytes(&self) -> Result<PrivateBytes> {
        let view = self.view();
        let bytes = view.bytes()?;
        let range = view.byte_range();
        // The view's bytes are inside the store's, so its range fits in usize.
        let range = usize::try_from(range.start).unwrap_or(usize::MAX)
            ..usize::try_from(range.end).unwrap_or(usize::MAX);
        let map = self.store.file().private(range)?;
        Ok(PrivateBytes {
            map,
            len: bytes.len(),
            _store: self.store.clone(),
        })
    }

    /// The borrowed view of the same bytes; every accessor goes through it, so the two types
    /// cannot disagree.
    pub fn view(&self) -> Tensor<'_> {
        Tensor::whole(&self.store, self.position).span(
            &self.shape,
            self.first_row,
            self.range.clone(),
        )
    }

    /// The store whose bytes this view holds.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The tensor's name.
    pub fn name(&self) -> &str {
        self.view().name()
    }

    /// The element type.
    pub fn dtype(&self) -> Dtype {
        self.view().dtype()
    }

    /// The shape, C order (for a row range, axis 0 is the number of rows in the range).
    pub fn shape(&self) -> &[u64] {
        &self.shape
    }

    /// The number of elements; see [`Tensor::numel`] (checked, saturating).
    pub fn numel(&self) -> u64 {
        self.view().numel()
    }

    /// The first row of this view within the whole tensor (0 for a whole tensor).
    pub fn first_row(&self) -> u64 {
        self.first_row
    }

    /// The view's absolute byte range in the file; see [`Tensor::byte_range`].
    pub fn byte_range(&self) -> Range<u64> {
        self.view().byte_range()
    }

    /// The view's raw bytes, borrowed from this handle; see [`Tensor::bytes`].
    ///
    /// # Errors
    ///
    /// As [`Tensor::bytes`].
    pub fn bytes(&self) -> Result<&[u8]> {
        self.view().bytes()
    }

    /// The elements as a slice borrowed from this handle, no copy; see [`Tensor::as_slice`].
    ///
    /// # Errors
    ///
    /// As [`Tensor::as_slice`].
    pub fn as_slice<T: Element>(&self) -> Result<&[T]> {
        self.view().as_slice()
    }

    /// The elements, copied into a new vector; see [`Tensor::to_vec`].
    ///
    /// # Errors
    ///
    /// As [`Tensor::to_vec`].
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        self.view().to_vec()
    }

    /// The owned view of rows `rows` along axis 0 (relative to this view), without copying; see
    /// [`Tensor::rows`].
    ///
    /// # Errors
    ///
    /// As [`Tensor::rows`].
    pub fn rows(&self, rows: impl RangeBounds<u64>) -> Result<OwnedTensor> {
        self.view().rows(rows).map(|t| t.owned())
    }

    /// The number of bytes of one row along axis 0; see [`Tensor::row_bytes`].
    ///
    /// # Errors
    ///
    /// As [`Tensor::row_bytes`].
    pub fn row_bytes(&self) -> Result<u64> {
        self.view().row_bytes()
    }

    /// Gathers the rows `indices` (relative to this view) into `out`, in parallel and in file
    /// order; see [`Tensor::take_into`].
    ///
    /// # Errors
    ///
    /// As [`Tensor::take_into`].
    pub fn take_into(&self, indices: &[u64], out: &mut [u8]) -> Result<()> {
        self.view().take_into(indices, out)
    }

    /// Gathers the rows `indices` into `out`, cast to `dtype`; see [`Tensor::take_into_as`].
    ///
    /// # Errors
    ///
    /// As [`Tensor::take_into_as`].
    pub fn take_into_as(&self, indices: &[u64], out: &mut [u8], dtype: Dtype) -> Result<()> {
        self.view().take_into_as(indices, out, dtype)
    }

    /// Gathers the rows `indices` into a new byte vector; see [`Tensor::take_bytes`].
    ///
    /// # Errors
    ///
    /// As [`Tensor::take_bytes`].
    pub fn take_bytes(&self, indices: &[u64]) -> Result<Vec<u8>> {
        self.view().take_bytes(indices)
    }

    /// Gathers the rows `indices` into a new vector of elements; see [`Tensor::take`].
    ///
    /// # Errors
    ///
    /// As [`Tensor::take`].
    pub fn take<T: Element>(&self, indices: &[u64]) -> Result<Vec<T>> {
        self.view().take(indices)
    }

    /// Gathers the rows `indices` into a new vector of `T`, cast from the tensor's dtype; see
    /// [`Tensor::take_as`].
    ///
    /// # Errors
    ///
    /// As [`Tensor::take_as`].
    pub fn take_as<T: Element>(&self, indices: &[u64]) -> Result<Vec<T>> {
        self.view().take_as(indices)
    }

    /// Tells the kernel how this view's bytes will be read; see [`Tensor::advise`].
    ///
    /// # Errors
    ///
    /// As [`Tensor::advise`].
    pub fn advise(&self, advice: Advice) -> Result<()> {
        self.view().advise(advice)
    }

    /// Starts reading this view's bytes into the page cache in the background; see
    /// [`Tensor::prefetch`].
    pub fn prefetch(&self) -> Prefetch {
        self.view().prefetch()
    }

    /// Checks the blocks that hold this view's bytes; see [`Tensor::verify`].
    ///
    /// # Errors
    ///
    /// As [`Tensor::verify`].
    pub fn verify(&self) -> Result<()> {
        self.view().verify()
    }
}

impl fmt::Debug for OwnedTensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.view(), f)
    }
}

impl Store {
    /// An owned handle to the tensor called `name`: the same view as [`Store::tensor`], holding a
    /// clone of the store instead of a borrow (see [`OwnedTensor`]).
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`](crate::Error::NotFound) when there is no such tensor.
    pub fn tensor_owned(&self, name: &str) -> Result<OwnedTensor> {
        self.tensor(name).map(|t| t.owned())
    }
}

impl Tensor<'_> {
    /// An owned handle to the same view: it holds a clone of the store instead of a borrow, so it
    /// is `'static` and can be kept in a struct, sent to a thread or lent to a foreign array.
    pub fn owned(&self) -> OwnedTensor {
        OwnedTensor {
            store: self.store.clone(),
            position: self.position,
            shape: self.shape.to_vec().into_boxed_slice(),
            first_row: self.first_row,
            range: self.range.clone(),
        }
    }
}

impl From<Tensor<'_>> for OwnedTensor {
    fn from(t: Tensor<'_>) -> OwnedTensor {
        t.owned()
    }
}
