//! DLPack export: a tensor's bytes handed to another framework as a `PyCapsule`, without a copy.
//!
//! The structs are the C ABI of `dlpack.h` (v1.1); [`request`] reads what a consumer asked
//! `__dlpack__` for. The capsule's context owns the memory it lends, a [`Lent`] (`exported.rs`), so the bytes live until the consumer calls the deleter, whatever happens to
//! the Python objects; dropping it needs no interpreter, so a consumer may call the deleter from
//! any thread.
//!
//! What a capsule lends is never the store's own read-only mapping but a private copy-on-write
//! view of the tensor (`Lent::private`): reads share the page cache, and a consumer that writes
//! (PyTorch has no read-only tensors and ignores DLPack's read-only flag; an in-place op on the
//! store's mapping was a SIGSEGV) copies only the pages it touches, changing neither the file nor
//! any other view. A `dltensor_versioned` capsule (DLPack 1.0+) also sets
//! `DLPACK_FLAG_BITMASK_READ_ONLY`, so consumers that honour it (NumPy) hand out read-only
//! arrays; a legacy `dltensor` capsule (no flags) serves `Tensor.torch()` and older consumers.
//!
//! One import: [`host_bytes`] reads the `DLTensor` of a capsule PyTorch made of one of the
//! loader's own buffers, to learn where the buffer is from C fields rather than from Python
//! methods (which a `TorchFunctionMode` or a subclass may answer).

use std::ffi::{c_void, CStr};

use mmtensor::interop;
use pyo3::exceptions::PyBufferError;
use pyo3::prelude::*;
use pyo3::types::PyCapsule;
use pyo3::{ffi, PyErr};

use crate::exported::{Lent, TypedBytes};

/// `kDLCPU`.
const DEVICE_CPU: i32 = 1;
/// `kDLCUDAHost`: host memory pinned by CUDA.
const DEVICE_CUDA_HOST: i32 = 3;
/// `DLPACK_FLAG_BITMASK_READ_ONLY`.
const FLAG_READ_ONLY: u64 = 1;

const LEGACY: &CStr = c"dltensor";
const VERSIONED: &CStr = c"dltensor_versioned";

/// `DLDataType`, the C layout of [`interop::DlpackType`] (whose table says which type each dtype
/// is exported as).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DataType {
    code: u8,
    bits: u8,
    lanes: u16,
}

impl From<interop::DlpackType> for DataType {
    fn from(t: interop::DlpackType) -> DataType {
        DataType {
            code: t.code,
            bits: t.bits,
            lanes: t.lanes,
        }
    }
}

#[repr(C)]
struct Device {
    device_type: i32,
    device_id: i32,
}

#[repr(C)]
struct DlTensor {
    data: *mut c_void,
    device: Device,
    ndim: i32,
    dtype: DataType,
    shape: *mut i64,
    strides: *mut i64,
    byte_offset: u64,
}

#[repr(C)]
struct ManagedTensor {
    dl_tensor: DlTensor,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut ManagedTensor)>,
}

#[repr(C)]
struct PackVersion {
    major: u32,
    minor: u32,
}

#[repr(C)]
struct ManagedTensorVersioned {
    version: PackVersion,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut ManagedTensorVersioned)>,
    flags: u64,
    dl_tensor: DlTensor,
}

/// The address of the `len` bytes an unconsumed legacy `dltensor` capsule (from
/// `torch.utils.dlpack.to_dlpack`) describes, once its `DLTensor` says they are a 1-d, compact
/// uint8 array of exactly `len` elements in host memory, at a non-null address aligned to `align`;
/// otherwise what is wrong, for the caller's error.
///
/// The facts are the C fields the producer filled from the tensor itself, not the answers of
/// Python methods (`data_ptr()`, `shape`, `numel()`), which a `TorchFunctionMode` active in the
/// calling thread, or a tensor subclass, may give instead. The bytes stay allocated while the
/// capsule lives unconsumed: its destructor calls the producer's deleter, which lets go of the
/// tensor's storage. So the caller keeps the capsule for as long as it writes through the address.
pub(crate) fn host_bytes(
    capsule: &Bound<'_, PyAny>,
    len: usize,
    align: usize,
) -> Result<usize, String> {
    let capsule = capsule
        .cast::<PyCapsule>()
        .map_err(|_| "its DLPack export is not a capsule".to_owned())?;
    let pointer = capsule
        .pointer_checked(Some(LEGACY))
        .map_err(|_| "its DLPack export is not an unconsumed `dltensor` capsule".to_owned())?;
    // SAFETY: a capsule named `dltensor` holds a `DLManagedTensor *` (DLPack's Python
    // specification), valid until a consumer renames the capsule `used_dltensor` and calls the
    // deleter, or the capsule's destructor runs. `capsule` is borrowed for this call and nothing
    // here consumes it, and `ManagedTensor` is `DLManagedTensor`'s C layout (v1.1, unchanged since
    // 0.x for the legacy struct). Only plain fields are read, and the pointers among them only as
    // the checks below allow.
    let dl = unsafe { &pointer.cast::<ManagedTensor>().as_ref().dl_tensor };
    if dl.device.device_type != DEVICE_CPU && dl.device.device_type != DEVICE_CUDA_HOST {
        return Err(format!(
            "its DLPack device type is {}, not host memory",
            dl.device.device_type
        ));
    }
    let bytes = DataType {
        code: interop::dlpack_code::UINT,
        bits: 8,
        lanes: 1,
    };
    if dl.dtype != bytes {
        return Err(format!("its DLPack type is {:?}, not uint8", dl.dtype));
    }
    if dl.ndim != 1 || dl.shape.is_null() {
        return Err(format!(
            "its DLPack export has {} dimensions, not 1",
            dl.ndim
        ));
    }
    // SAFETY: `shape` is non-null and, per DLPack, points at `ndim` (here 1) int64 values that
    // live as long as the managed tensor.
    let n = unsafe { *dl.shape };
    if u64::try_from(n).ok() != Some(len as u64) {
        return Err(format!("its DLPack export holds {n} bytes, not {len}"));
    }
    if !dl.strides.is_null() && len > 1 {
        // SAFETY: as `shape`: a non-null `strides` points at `ndim` int64 values.
        let stride = unsafe { *dl.strides };
        if stride != 1 {
            return Err(format!(
                "its DLPack export has a stride of {stride} bytes, not 1"
            ));
        }
    }
    let address = (dl.data as usize)
        .checked_add(usize::try_from(dl.byte_offset).map_err(|_| "its DLPack offset overflows")?)
        .ok_or("its DLPack address overflows")?;
    if len > 0 && (address == 0 || address % align.max(1) != 0) {
        return Err(format!(
            "its data is at {address:#x}, not aligned to {align} bytes"
        ));
    }
    Ok(address)
}

/// What the capsule keeps alive: the memory lent (a private copy-on-write view of the tensor,
/// which holds the store), and the shape and strides arrays the `DLTensor` points into.
struct Context {
    _lent: Lent,
    shape: Vec<i64>,
    strides: Vec<i64>,
}

/// Which capsule to make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `dltensor`, no flags (only for PyTorch through `Tensor.torch()`).
    Legacy,
    /// `dltensor_versioned`, read-only flag set, reporting this DLPack version.
    Versioned { minor: u32 },
}

/// `__dlpack_device__`: `(kDLCPU, 0)`, the data is in host memory.
pub(crate) const fn device() -> (i32, i32) {
    (DEVICE_CPU, 0)
}

/// The capsule a `__dlpack__(stream=, max_version=, dl_device=)` call asks for: `stream` must be
/// None (or -1) and `dl_device` the CPU, since the data is in host memory. A consumer that speaks DLPack 1.0 or newer gets a versioned capsule of the newest minor
/// version both know (at most 1.1); one that passes no `max_version`, a legacy capsule, which names
/// the types of DLPack 1.0 (fp8 came in 1.1).
pub(crate) fn request(
    stream: Option<&Bound<'_, PyAny>>,
    max_version: Option<(u32, u32)>,
    dl_device: Option<(i32, i32)>,
) -> PyResult<Request> {
    if let Some(s) = stream {
        if !s.is_none() && s.extract::<i64>().ok() != Some(-1) {
            return Err(PyBufferError::new_err(
                "mmtensor data is on the CPU: `stream` must be None",
            ));
        }
    }
    if let Some(asked) = dl_device {
        if asked != device() {
            return Err(PyBufferError::new_err(format!(
                "mmtensor data is on the CPU (device (1, 0)), not on device {asked:?}"
            )));
        }
    }
    Ok(match max_version {
        Some((major, minor)) if major >= 1 => {
            let minor = if major > 1 { 1 } else { minor.min(1) };
            Request {
                version: (1, minor),
                kind: Kind::Versioned { minor },
                accepts: format!("at most 1.{minor}"),
            }
        }
        _ => Request {
            version: (1, 0),
            kind: Kind::Legacy,
            accepts: "only the unversioned protocol".to_owned(),
        },
    })
}

/// A consumer's request (see [`request`]): the capsule to make, and the DLPack version it names.
pub(crate) struct Request {
    version: (u32, u32),
    kind: Kind,
    /// What the consumer accepts, for an error.
    accepts: String,
}

impl Request {
    /// The capsule to make for data typed `exported` (of `dtype`, in tensor `name`), or a
    /// BufferError when the consumer's version has no name for the type.
    pub(crate) fn kind_for(
        &self,
        exported: &interop::Dlpack,
        name: &str,
        dtype: mmtensor::Dtype,
    ) -> PyResult<Kind> {
        if self.version < exported.min_version {
            let (major, needed) = exported.min_version;
            return Err(PyBufferError::new_err(format!(
                "tensor `{name}` is {dtype}, which DLPack names only from version {major}.{needed}, \
                 but the consumer accepts {}: use `.numpy()` (ml_dtypes) or `.torch()`",
                self.accepts,
            )));
        }
        Ok(self.kind)
    }
}

/// Makes a capsule for the checked bytes of a tensor, typed `dtype`.
///
/// The consumer gets a private copy-on-write view of the tensor (`Lent::private`), never the
/// store's own read-only mapping: PyTorch has no read-only tensors and ignores DLPack's read-only
/// flag, so an in-place op on a view of the store's mapping would kill the process. A write copies
/// only the pages it touches, and reaches neither the file, nor the store's other views, nor other
/// processes. (For a store opened with `copy=True` the view is a copy.)
pub(crate) fn capsule<'py>(
    py: Python<'py>,
    checked: TypedBytes<'_>,
    dtype: DataType,
    kind: Kind,
) -> PyResult<Bound<'py, PyAny>> {
    // The consumer reads `prod(shape) * itemsize` bytes from `data`: `Lent::private` checks that
    // this is exactly the view's length before the pointer leaves (`DLDataType` bits are per
    // lane, rounded up to bytes).
    let itemsize = u64::from(dtype.bits).div_ceil(8) * u64::from(dtype.lanes);
    let lent = Lent::private(py, checked, itemsize)?;
    // The address was taken when the memory was lent; the mapping behind it stays put when the
    // `Lent` moves into the context, and lives as long as the context does.
    let data = lent.writable_data().ok_or_else(|| {
        PyBufferError::new_err(
            "a DLPack capsule of read-only memory (an mmtensor bug: please report it)",
        )
    })?;
    let too_big =
        || PyBufferError::new_err("the tensor's shape does not fit DLPack's int64 fields");
    let shape: Vec<i64> = lent
        .shape()
        .iter()
        .map(|&d| i64::try_from(d).map_err(|_| too_big()))
        .collect::<PyResult<_>>()?;
    let ndim = i32::try_from(shape.len()).map_err(|_| too_big())?;
    // C-order strides in elements: the last axis is 1, each earlier one the product of those after.
    let mut strides = vec![1i64; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1]
            .checked_mul(shape[i + 1].max(1))
            .ok_or_else(too_big)?;
    }
    let mut ctx = Box::new(Context {
        _lent: lent,
        shape,
        strides,
    });
    let dl_tensor = DlTensor {
        // Private, writable memory: a consumer that writes (PyTorch ignores the read-only flag)
        // changes only its own copy of the pages it writes.
        data: data.as_ptr().cast::<c_void>(),
        device: Device {
            device_type: DEVICE_CPU,
            device_id: 0,
        },
        ndim,
        dtype,
        // The vectors live on the heap inside the boxed context: moving the box does not move
        // them, and the context lives until the deleter runs.
        shape: ctx.shape.as_mut_ptr(),
        strides: ctx.strides.as_mut_ptr(),
        byte_offset: 0,
    };
    let manager_ctx = Box::into_raw(ctx).cast::<c_void>();
    let (pointer, name, destructor): (*mut c_void, &CStr, ffi::PyCapsule_Destructor) = match kind {
        Kind::Legacy => (
            Box::into_raw(Box::new(ManagedTensor {
                dl_tensor,
                manager_ctx,
                deleter: Some(delete_legacy),
            }))
            .cast(),
            LEGACY,
            destroy_legacy as ffi::PyCapsule_Destructor,
        ),
        Kind::Versioned { minor } => (
            Box::into_raw(Box::new(ManagedTensorVersioned {
                version: PackVersion { major: 1, minor },
                manager_ctx,
                deleter: Some(delete_versioned),
                flags: FLAG_READ_ONLY,
                dl_tensor,
            }))
            .cast(),
            VERSIONED,
            destroy_versioned as ffi::PyCapsule_Destructor,
        ),
    };
    // SAFETY: `pointer` is a valid, uniquely owned managed tensor; `name` is a static C string, as
    // the capsule keeps the pointer to it; the destructor matches the name.
    let raw = unsafe { ffi::PyCapsule_New(pointer, name.as_ptr(), Some(destructor)) };
    if raw.is_null() {
        // The capsule does not exist, so nobody else owns the managed tensor: free it here.
        // SAFETY: `pointer` came from Box::into_raw of the type `kind` names, and was not shared.
        unsafe {
            match kind {
                Kind::Legacy => delete_legacy(pointer.cast()),
                Kind::Versioned { .. } => delete_versioned(pointer.cast()),
            }
        }
        return Err(PyErr::fetch(py));
    }
    // SAFETY: PyCapsule_New returned a new (owned) reference.
    Ok(unsafe { Bound::from_owned_ptr(py, raw) })
}

/// The deleter of a legacy managed tensor: frees it and drops its context (the lent memory).
unsafe extern "C" fn delete_legacy(managed: *mut ManagedTensor) {
    if managed.is_null() {
        return;
    }
    // SAFETY: `managed` and its context were made by `capsule` with Box::into_raw, and DLPack calls
    // the deleter exactly once.
    unsafe {
        let managed = Box::from_raw(managed);
        drop(Box::from_raw(managed.manager_ctx.cast::<Context>()));
    }
}

/// The deleter of a versioned managed tensor.
unsafe extern "C" fn delete_versioned(managed: *mut ManagedTensorVersioned) {
    if managed.is_null() {
        return;
    }
    // SAFETY: as for `delete_legacy`.
    unsafe {
        let managed = Box::from_raw(managed);
        drop(Box::from_raw(managed.manager_ctx.cast::<Context>()));
    }
}

/// The capsule's destructor: a consumer that took the tensor renamed the capsule (`used_...`) and
/// owns it now; a capsule still under its original name was never consumed, so free it here.
unsafe extern "C" fn destroy_legacy(capsule: *mut ffi::PyObject) {
    // SAFETY: called by the interpreter, with the GIL, on a live capsule. PyCapsule_IsValid sets no
    // exception, and the pointer behind a valid `dltensor` capsule is the one `capsule` stored.
    unsafe {
        if ffi::PyCapsule_IsValid(capsule, LEGACY.as_ptr()) == 1 {
            let managed =
                ffi::PyCapsule_GetPointer(capsule, LEGACY.as_ptr()).cast::<ManagedTensor>();
            delete_legacy(managed);
        }
    }
}

/// The versioned capsule's destructor (see `destroy_legacy`).
unsafe extern "C" fn destroy_versioned(capsule: *mut ffi::PyObject) {
    // SAFETY: as for `destroy_legacy`.
    unsafe {
        if ffi::PyCapsule_IsValid(capsule, VERSIONED.as_ptr()) == 1 {
            let managed = ffi::PyCapsule_GetPointer(capsule, VERSIONED.as_ptr())
                .cast::<ManagedTensorVersioned>();
            delete_versioned(managed);
        }
    }
}
