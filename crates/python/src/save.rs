//! `save` and `load`: a dict of arrays written as one `.mmt` store, and a store read back as a dict
//! of zero-copy views, for parity with safetensors' `save_file` and `load_file`.
//!
//! `save` borrows every array's memory (`arrays.rs`: a copy only for an array that is not C-order
//! little-endian already) and writes it through `mmtensor_convert::save` with the GIL released;
//! `load` hands out the views `Tensor.numpy()` and `Tensor.torch()` give.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mmtensor_convert::SaveTensor;
use mmtensor_format::offsets_name;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyMapping, PyString};

use crate::arrays::{is_torch_tensor, ArrayBytes};
use crate::errors::{convert_error, load_error, raise};
use crate::open::open_handle;
use crate::ragged::{Named, RaggedInput, RaggedTensor};
use crate::store::ragged_names;
use crate::tensor::Tensor;

/// Writes `tensors`, a dict of names to arrays, and `metadata` as the `.mmt` store `path`.
///
/// Each value may be a NumPy array of any dtype a store holds, in any byte order and memory order
/// (big-endian, Fortran-order and strided arrays are stored as C-order little-endian, as
/// `convert` stores them); an ml_dtypes bfloat16 or fp8 array; a torch tensor in host memory
/// (bfloat16 and the fp8 types included; a CUDA tensor raises TypeError: call `.cpu()` first); or
/// any object with `__array__` or `__dlpack__`. 0-d and empty arrays are stored with their shape.
/// Tensors are stored in the dict's order. `metadata`: a dict of str to str (keys starting `mmt.`
/// are reserved), read back by `mmtensor.open(path).metadata`.
///
/// A value that is a list of arrays (one per row, each of shape `(length,) + item_shape`, of one
/// dtype), a `(values, lengths)` pair (the rows' items back to back and each row's length) or a
/// RaggedTensor is a ragged tensor (format 1.1): stored as its values `name` and its row offsets
/// `name.offsets`, read back by `Store.ragged(name)` and `load` (as a RaggedTensor). A list's rows
/// are copied into one buffer first; rows of different dtypes raise DtypeMismatchError, of
/// different item shapes ConvertError, and so do lengths that do not add up to the values'.
///
/// An array that is already C-contiguous and little-endian is written from its own memory, with
/// the GIL released and without a copy; any other is copied into one first (those copies are in
/// memory together until the store is written). Don't write to the arrays from other threads while
/// `save` runs.
///
/// Torch tensors that share memory (a `state_dict()` with tied weights, views of one tensor) are
/// refused by default with a ConvertError (a ValueError) naming each group of names whose bytes
/// overlap, as safetensors' `save_file` refuses them: a store holds each tensor as its own bytes,
/// so they would load as separate, untied tensors. `shared="copy"` stores each one as its own copy
/// (tie the weights again after loading); or save one name of each group.
///
/// The store appears only when complete (temp file, fsync, rename), so an existing file at `path`
/// is replaced atomically, even while it is open or mapped (open stores keep reading the old
/// bytes); on any error it is left as it was and no temporary file remains.
///
/// Raises TypeError (a name that is not a str, a value that is not an array, an object array, a
/// torch tensor not in host memory), UnsupportedDtypeError (a dtype a store cannot hold),
/// ConvertError (shared tensors, a bool byte other than 0 and 1, an empty name, a reserved
/// metadata key), StoreNotFoundError (the folder does not exist), MmtOSError.
#[pyfunction]
#[pyo3(signature = (path, tensors, metadata=None, *, shared="refuse"))]
pub(crate) fn save<'py>(
    py: Python<'py>,
    path: PathBuf,
    tensors: &Bound<'py, PyAny>,
    metadata: Option<&Bound<'py, PyAny>>,
    shared: &str,
) -> PyResult<()> {
    let refuse_shared = match shared {
        "refuse" => true,
        "copy" => false,
        other => {
            return Err(PyValueError::new_err(format!(
                "save: shared must be \"refuse\" or \"copy\", not {other:?}"
            )))
        }
    };
    let items = named_values(tensors)?;
    let metadata = metadata_of(metadata)?;
    if refuse_shared {
        refuse_shared_memory(py, &path, &items)?;
    }
    let arrays: Vec<Input<'py>> = items
        .iter()
        .map(|(name, value)| {
            let what = format!("save: tensor `{name}`");
            let named = Named {
                what: &what,
                name,
                tail: "; nothing was written",
            };
            Ok(match RaggedInput::of(named, value, None)? {
                Some(r) => Input::Ragged(r),
                None => Input::Fixed(ArrayBytes::of(&what, value)?),
            })
        })
        .collect::<PyResult<_>>()?;
    let inputs: Vec<SaveTensor<'_>> = items
        .iter()
        .zip(&arrays)
        .map(|((name, _), a)| match a {
            Input::Fixed(a) => SaveTensor::new(name, a.dtype(), a.shape(), a.bytes()),
            Input::Ragged(r) => {
                SaveTensor::ragged(name, r.dtype(), r.shape(), r.bytes(), r.lengths())
            }
        })
        .collect();
    // `arrays` holds every array (and so its memory) until the write is over: the slices in
    // `inputs` borrow from it.
    let written = py.detach(|| mmtensor_convert::save(&path, &inputs, &metadata));
    drop(inputs);
    drop(arrays);
    written.map(drop).map_err(|e| save_error(py, &path, e))
}

/// One value of `save`'s dict, read: an array, or ragged rows.
enum Input<'py> {
    Fixed(ArrayBytes<'py>),
    Ragged(RaggedInput<'py>),
}

/// `tensors` as (name, value) pairs, in the mapping's order: names must be str.
fn named_values<'py>(tensors: &Bound<'py, PyAny>) -> PyResult<Vec<(String, Bound<'py, PyAny>)>> {
    let map = tensors.cast::<PyMapping>().map_err(|_| {
        PyTypeError::new_err(format!(
            "save: tensors must be a dict of names to arrays, not {}",
            type_name(tensors)
        ))
    })?;
    map.items()?
        .iter()
        .map(|item| {
            let (name, value): (Bound<'py, PyAny>, Bound<'py, PyAny>) = item.extract()?;
            let name = name.cast::<PyString>().map_err(|_| {
                PyTypeError::new_err(format!(
                    "save: tensor names must be str, not {} ({})",
                    type_name(&name),
                    name.repr().map(|r| r.to_string()).unwrap_or_default()
                ))
            })?;
            Ok((name.to_cow()?.into_owned(), value))
        })
        .collect()
}

/// `metadata` (None, or a mapping of str to str) as the store's metadata.
fn metadata_of(metadata: Option<&Bound<'_, PyAny>>) -> PyResult<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let Some(metadata) = metadata.filter(|m| !m.is_none()) else {
        return Ok(out);
    };
    let map = metadata.cast::<PyMapping>().map_err(|_| {
        PyTypeError::new_err(format!(
            "save: metadata must be a dict of str to str, not {}",
            type_name(metadata)
        ))
    })?;
    for item in map.items()?.iter() {
        let (key, value): (Bound<'_, PyAny>, Bound<'_, PyAny>) = item.extract()?;
        let key = key.cast::<PyString>().map_err(|_| {
            PyTypeError::new_err(format!(
                "save: metadata keys must be str, not {} ({})",
                type_name(&key),
                key.repr().map(|r| r.to_string()).unwrap_or_default()
            ))
        })?;
        let key = key.to_cow()?.into_owned();
        let value = value.cast::<PyString>().map_err(|_| {
            PyTypeError::new_err(format!(
                "save: metadata[{key:?}] must be a str, not {}",
                type_name(&value)
            ))
        })?;
        out.insert(key, value.to_cow()?.into_owned());
    }
    Ok(out)
}

fn type_name(value: &Bound<'_, PyAny>) -> String {
    value
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_default()
}

/// Where a torch tensor's elements lie: its device and storage, and the byte range from its first
/// element to past its last.
struct Span {
    device: String,
    storage: usize,
    start: usize,
    end: usize,
    /// Its position in the dict.
    index: usize,
}

/// Refuses torch tensors whose bytes overlap (same device and storage, overlapping byte ranges),
/// naming each group, as safetensors' `_find_shared_tensors` finds them. Tensors of the same
/// storage whose ranges do not overlap (slices of one flat buffer) are not shared. Non-torch
/// values, empty tensors and tensors without storage (meta) are not looked at.
fn refuse_shared_memory(
    py: Python<'_>,
    path: &Path,
    items: &[(String, Bound<'_, PyAny>)],
) -> PyResult<()> {
    let mut spans = Vec::new();
    for (index, (_, value)) in items.iter().enumerate() {
        if !is_torch_tensor(value)? {
            continue;
        }
        if let Some(span) = torch_span(value, index)? {
            spans.push(span);
        }
    }
    spans.sort_by(|a, b| {
        (&a.device, a.storage, a.start, a.end).cmp(&(&b.device, b.storage, b.start, b.end))
    });
    // A sweep over each storage's ranges, in order of their start: a range that starts before the
    // furthest end so far overlaps the group that end belongs to.
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut current: Option<(&str, usize, usize)> = None;
    for span in &spans {
        match current {
            Some((device, storage, end))
                if device == span.device && storage == span.storage && span.start < end =>
            {
                if let Some(group) = groups.last_mut() {
                    group.push(span.index);
                }
                current = Some((device, storage, end.max(span.end)));
            }
            _ => {
                groups.push(vec![span.index]);
                current = Some((&span.device, span.storage, span.end));
            }
        }
    }
    let mut shared: Vec<Vec<usize>> = groups.into_iter().filter(|g| g.len() > 1).collect();
    if shared.is_empty() {
        return Ok(());
    }
    for group in &mut shared {
        group.sort_unstable();
    }
    shared.sort_unstable();
    let named: Vec<Vec<&str>> = shared
        .iter()
        .map(|g| g.iter().map(|&i| items[i].0.as_str()).collect())
        .collect();
    Err(raise(
        py,
        "ConvertError",
        format!(
            "save: some tensors share memory: {named:?} (tied weights, or views of one tensor): a \
             store holds each tensor as its own bytes, so they would load as separate tensors. \
             Pass shared=\"copy\" to store each one as its own copy (and tie the weights again \
             after loading), or keep one name of each group"
        ),
        Some(path),
        None,
        None,
    ))
}

/// The span of a dense torch tensor's elements, or `None` when it has none (empty, or no storage:
/// a meta tensor) or is not dense (refused later, by `ArrayBytes::of`).
fn torch_span(t: &Bound<'_, PyAny>, index: usize) -> PyResult<Option<Span>> {
    if t.getattr("layout")?.str()?.to_cow()? != "torch.strided" {
        return Ok(None);
    }
    let numel: u64 = t.call_method0("numel")?.extract()?;
    let storage: usize = t
        .call_method0("untyped_storage")?
        .call_method0("data_ptr")?
        .extract()?;
    if numel == 0 || storage == 0 {
        return Ok(None);
    }
    let start: usize = t.call_method0("data_ptr")?.extract()?;
    let itemsize: usize = t.call_method0("element_size")?.extract()?;
    let shape: Vec<usize> = t.getattr("shape")?.extract()?;
    let strides: Vec<isize> = t.call_method0("stride")?.extract()?;
    // The last element's offset, in elements: every axis at its last index. Saturating: a span
    // that does not fit in the address space reaches its end anyway.
    let last = shape.iter().zip(&strides).fold(0usize, |acc, (&n, &s)| {
        acc.saturating_add(n.saturating_sub(1).saturating_mul(s.unsigned_abs()))
    });
    let end = start.saturating_add(last.saturating_add(1).saturating_mul(itemsize));
    Ok(Some(Span {
        device: t.getattr("device")?.str()?.to_cow()?.into_owned(),
        storage,
        start,
        end,
        index,
    }))
}

/// A failed save as a Python exception. A bool byte other than 0 and 1 is about the caller's
/// array, not about a file: it gets its own message (the converter's suggests an option `save`
/// does not have).
fn save_error(py: Python<'_>, path: &Path, err: mmtensor_convert::Error) -> PyErr {
    match err {
        mmtensor_convert::Error::InvalidBool {
            tensor,
            index,
            value,
            ..
        } => raise(
            py,
            "ConvertError",
            format!(
                "save: tensor `{tensor}`: element {index} (C order) is the byte {value}, but a \
                 bool must be 0 or 1 (NumPy and PyTorch assume it): fix the array (`a != 0` is a \
                 bool array of 0s and 1s); nothing was written to {}",
                path.display()
            ),
            Some(path),
            Some(&tensor),
            None,
        ),
        other => convert_error(py, other),
    }
}

/// Reads the store (or `.safetensors`, or `.npy` file) at `path` into a dict of names to zero-copy
/// views of its tensors, in file order: read-only NumPy arrays (`output="numpy"`, bfloat16 and fp8
/// as ml_dtypes arrays), or torch tensors (`output="torch"`), the parity of safetensors'
/// `numpy.load_file` and `torch.load_file`.
///
/// A ragged tensor (one `save` wrote from a list of rows) comes as one entry, a RaggedTensor (its
/// offsets tensor `name.offsets` is not listed apart): a sequence of its rows, `t[i]` a zero-copy
/// read-only NumPy array (`t.row(i, output="torch")` a torch tensor), `len(t)` rows, `list(t)`
/// every row; it reads no row until asked, however many rows there are.
///
/// Nothing is copied: the file is memory-mapped as `mmtensor.open` maps it (read its docstring:
/// nobody may truncate or rewrite the file in place while the views live; `copy=True` reads it
/// into private memory instead), and each view keeps the mapping alive. Torch tensors are
/// copy-on-write views, as `Store.torch` gives: an in-place op changes that tensor alone, never
/// the file or another view.
///
/// Raises what `mmtensor.open` raises, ValueError for another `output`, and for a BOOL tensor
/// holding a byte other than 0 or 1, CorruptedFileError.
#[pyfunction]
#[pyo3(signature = (path, output="numpy", *, copy=false))]
pub(crate) fn load<'py>(
    py: Python<'py>,
    path: PathBuf,
    output: &str,
    copy: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let torch = match output {
        "numpy" => false,
        "torch" => true,
        other => {
            return Err(PyValueError::new_err(format!(
                "load: output must be \"numpy\" or \"torch\", not {other:?}"
            )))
        }
    };
    let store = py
        .detach(|| open_handle(&path, copy, None))
        .map_err(|e| load_error(py, e))?;
    let ragged = ragged_names(&store);
    let offsets: Vec<String> = ragged.iter().map(|n| offsets_name(n)).collect();
    let out = PyDict::new(py);
    for name in store.names() {
        if ragged.iter().any(|r| r == name) {
            let col = store.ragged(name).map_err(|e| load_error(py, e))?;
            out.set_item(name, RaggedTensor::new(col, &path))?;
            continue;
        }
        if offsets.iter().any(|o| o == name) {
            continue;
        }
        let tensor = Tensor::lookup(&store, name).map_err(|e| load_error(py, e))?;
        let view = if torch {
            tensor.torch(py)?
        } else {
            tensor.numpy(py, None)?
        };
        out.set_item(name, view)?;
    }
    Ok(out)
}
