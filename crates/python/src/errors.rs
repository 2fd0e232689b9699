//! Rust errors as Python exceptions: one class per kind of failure, the CLI's message as the text.
//!
//! The classes live in the pure-Python module `mmtensor.errors`, so that they can inherit from both
//! `MmtError` and the matching builtin (`FileNotFoundError`, `KeyError`, `ValueError`, ...), which
//! PyO3's `create_exception!` (one base) cannot express.

use std::error::Error as StdError;
use std::path::Path;

use mmtensor_format::Error as FormatError;
use pyo3::prelude::*;

/// The text of an error and its causes on one line, skipping a cause whose text is already there.
/// This is exactly how `mmt` prints errors (`message` in crates/cli/src/errors.rs), so a Python user
/// and a CLI user see the same sentence.
pub(crate) fn message(err: &(dyn StdError + 'static)) -> String {
    let mut out = String::new();
    let mut cause: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cause {
        let text = e.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        cause = e.source();
    }
    out
}

/// A shape as messages and reprs print it: `[2, 3]`.
pub(crate) fn shape_text(shape: &[u64]) -> String {
    let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
    format!("[{}]", dims.join(", "))
}

/// Builds an exception of class `class` (a name in `mmtensor.errors`) with `message`, and sets its
/// `path` and `tensor` attributes (None when unknown) and, for OS errors, `errno`.
pub(crate) fn raise(
    py: Python<'_>,
    class: &str,
    message: String,
    path: Option<&Path>,
    tensor: Option<&str>,
    errno: Option<i32>,
) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let cls = py.import("mmtensor.errors")?.getattr(class)?;
        let exc = cls.call1((message.clone(),))?;
        exc.setattr("path", path.map(|p| p.display().to_string()))?;
        exc.setattr("tensor", tensor)?;
        if let Some(errno) = errno {
            exc.setattr("errno", errno)?;
        }
        Ok(PyErr::from_value(exc))
    };
    // Only a broken installation (mmtensor.errors missing) lands here; the message still gets out.
    build().unwrap_or_else(|e| e)
}

/// The exception class for an I/O error: `FileNotFoundError`- and `PermissionError`-compatible
/// ones where Python has them.
fn io_class(source: &std::io::Error) -> &'static str {
    match source.kind() {
        std::io::ErrorKind::NotFound => "StoreNotFoundError",
        std::io::ErrorKind::PermissionDenied => "StorePermissionError",
        _ => "MmtOSError",
    }
}

/// `EISDIR` (21 on Linux, macOS and the BSDs), the errno Python's `IsADirectoryError` stands for.
const EISDIR: i32 = 21;

/// The exception for a loader error.
pub(crate) fn load_error(py: Python<'_>, err: mmtensor::Error) -> PyErr {
    load_error_from(py, err, None)
}

/// The exception for a loader error about something fetched from `origin` (a URL), whose message
/// starts with it: the loader's own names only the local cache file.
fn load_error_from(py: Python<'_>, err: mmtensor::Error, origin: Option<&str>) -> PyErr {
    use mmtensor::Error as E;
    let mut text = match origin {
        Some(url) => format!("{url}: {}", message(&err)),
        None => message(&err),
    };
    // The loader words this for the command line; Python converts with `mmtensor.convert`.
    if let E::UnsupportedCast { tensor, to, .. } = &err {
        text = text.replacen(
            &format!("`mmt convert --dtype {tensor}={to}`"),
            &format!(
                "mmtensor.convert(..., dtype={{{tensor:?}: \"{}\"}})",
                to.numpy_name()
            ),
            1,
        );
    }
    // A streamed dataset's batch that could not be fetched: the remote error's class, with the
    // loader's message (the dataset, the batch, then the remote error naming the URL).
    if let E::Gate { source, .. } = &err {
        if let Some(remote) = source.downcast_ref::<mmtensor_remote::Error>() {
            return raise(py, remote_class(remote), text, None, None, None);
        }
    }
    let mut errno = None;
    let (class, path, tensor): (&str, Option<&Path>, Option<&str>) = match &err {
        E::Io { path, source, .. } => {
            errno = source.raw_os_error();
            (io_class(source), Some(path), None)
        }
        E::TooLarge { path, .. } => ("MmtOSError", Some(path), None),
        E::IsADirectory { path, .. } => {
            errno = Some(EISDIR);
            ("StoreIsADirectoryError", Some(path), None)
        }
        // The file was truncated or rewritten in place under the mapping: not corruption of the
        // data as written, but an OS-level event the caller must handle (reopen).
        E::Shrank { path, .. } => ("MmtOSError", Some(path), None),
        E::NotAFile { path } => ("InvalidFileError", Some(path), None),
        // A pickled store reopened (in a worker) found another file at its path.
        E::Changed { path, .. } | E::ChangedWhileRead { path } => {
            ("StoreChangedError", Some(path), None)
        }
        E::UnknownFormat { path, .. } | E::Safetensors { path, .. } => {
            ("InvalidFileError", Some(path), None)
        }
        E::Format { path, source } => match source {
            FormatError::RowRange { tensor, .. } | FormatError::Scalar { tensor } => {
                ("RowRangeError", Some(path), Some(tensor.as_str()))
            }
            _ => ("InvalidFileError", Some(path), None),
        },
        // A gather's index past the rows (the binding checks first; this is the loader's guard).
        E::RowIndex { path, tensor, .. } => ("RowRangeError", Some(path), Some(tensor.as_str())),
        E::UnsupportedDtype { path, tensor, .. } => {
            ("UnsupportedDtypeError", Some(path), Some(tensor.as_str()))
        }
        // A `dtype=` of take or Loader that the gather does not cast to.
        E::UnsupportedCast { path, tensor, .. } => {
            ("UnsupportedDtypeError", Some(path), Some(tensor.as_str()))
        }
        E::NpyVoid { path, .. } => ("UnsupportedDtypeError", Some(path), None),
        E::NotFound { path, tensor, .. } => {
            ("TensorNotFoundError", Some(path), Some(tensor.as_str()))
        }
        E::DtypeMismatch { path, tensor, .. } => {
            ("DtypeMismatchError", Some(path), Some(tensor.as_str()))
        }
        E::Unaligned { path, tensor, .. } => ("UnalignedError", Some(path), Some(tensor.as_str())),
        // `verify()` and every typed export of a BOOL tensor (NumPy, torch, DLPack) report it:
        // corruption, as `mmt verify` counts it.
        E::InvalidBool { path, tensor, .. } => {
            ("CorruptedFileError", Some(path), Some(tensor.as_str()))
        }
        E::NeedsConvert { path, tensor, .. } => {
            ("NeedsConvertError", Some(path), Some(tensor.as_str()))
        }
        E::NoChecksums { path, .. } => ("NoChecksumsError", Some(path), None),
        E::ChecksumTable { path, .. } => ("ChecksumMismatchError", Some(path), None),
        E::ChecksumMismatch { path, tensor, .. } => {
            ("ChecksumMismatchError", Some(path), Some(tensor.as_str()))
        }
        E::NonZeroPadding { path, .. } => ("CorruptedFileError", Some(path), None),
        // A Loader's options: what the order refuses, and columns that cannot be read together.
        E::Order { path, .. } | E::NoColumns { path } | E::Prefetch { path, .. } => {
            ("LoaderError", Some(path), None)
        }
        E::DuplicateColumn { path, column }
        | E::ColumnRows { path, column, .. }
        | E::CastColumn { path, column, .. } => ("LoaderError", Some(path), Some(column.as_str())),
        // A weighted mixture: what its order refuses (weights, rows, a resume state), and sources
        // that cannot be read as one.
        E::Mix { path, .. } => ("LoaderError", Some(path), None),
        E::Mixture { path, column, .. } => ("LoaderError", Some(path), column.as_deref()),
        E::Buffers { path, .. } | E::LoaderStopped { path, .. } | E::Gate { path, .. } => {
            ("MmtError", Some(path), None)
        }
        E::ShardNotOpen { path, .. } => ("ShardNotOpenError", Some(path), None),
        // A ragged tensor or column read as a fixed-shape one or the reverse, or a row longer
        // than a padded gather's `pad_to`.
        E::RaggedColumn { path, column }
        | E::NotRagged { path, column }
        | E::RowTooLong { path, column, .. } => ("RaggedError", Some(path), Some(column.as_str())),
        // Sequence windows the loader cannot cut as asked (`seq_len`).
        E::Windows { path, column, .. } => ("LoaderError", Some(path), Some(column.as_str())),
        _ => ("MmtError", None, None),
    };
    raise(py, class, text, path, tensor, errno)
}

/// UnsupportedDtypeError for column `column` of `dtype`, which NumPy has no type for without
/// ml_dtypes (bf16, fp8).
pub(crate) fn no_ml_dtypes(
    py: Python<'_>,
    path: &Path,
    column: &str,
    dtype: mmtensor::Dtype,
) -> PyErr {
    raise(
        py,
        "UnsupportedDtypeError",
        format!(
            "{}: column `{column}` holds {dtype}, which NumPy has no type for without ml_dtypes: \
             `pip install ml_dtypes`, or use output=\"torch\"",
            path.display(),
        ),
        Some(path),
        Some(column),
        None,
    )
}

/// The exception for a conversion error.
pub(crate) fn convert_error(py: Python<'_>, err: mmtensor_convert::Error) -> PyErr {
    use mmtensor_convert::Error as E;
    // A view that failed while exporting: the loader's error, classed as the loader's are.
    let err = match err {
        E::Load(e) => return load_error(py, e),
        other => other,
    };
    let mut text = message(&err);
    // The converter words these for the command line; Python spells the argument and the
    // command its own way.
    match &err {
        E::ShardSize { .. } => text = text.replacen("--shard-size", "shard_size", 1),
        E::DatasetExists { .. } => text = text.replacen("`mmt append`", "mmtensor.append", 1),
        _ => {}
    }
    let mut errno = None;
    let (class, path, tensor): (&str, Option<&Path>, Option<&str>) = match &err {
        E::Io { path, source, .. } => {
            errno = source.raw_os_error();
            (io_class(source), Some(path), None)
        }
        E::Npy { path, .. }
        | E::Zip { path, .. }
        | E::Safetensors { path, .. }
        | E::Arrow { path, .. }
        | E::UnsupportedInput { path, .. } => ("InvalidFileError", Some(path), None),
        E::DataSize { path, tensor, .. } => ("InvalidFileError", Some(path), Some(tensor.as_str())),
        E::NeedsInputDtype { path, tensor, .. } | E::InputDtypeSize { path, tensor, .. } => {
            ("UnsupportedDtypeError", Some(path), Some(tensor.as_str()))
        }
        E::UnsupportedCast { tensor, .. } | E::ValueOutOfRange { tensor, .. } => {
            ("ConvertError", None, Some(tensor.as_str()))
        }
        E::ShardMismatch { tensor, path, .. } => {
            ("InvalidFileError", Some(path), Some(tensor.as_str()))
        }
        E::Format { path, .. } | E::Cancelled { path } => ("ConvertError", Some(path), None),
        E::InvalidBool { path, tensor, .. } => {
            ("InvalidFileError", Some(path), Some(tensor.as_str()))
        }
        // The new file is in place; only the folder's fsync failed (the CLI warns). An OSError,
        // with the errno, so that a caller who accepts the risk can catch exactly it.
        E::NotDurable { path, source, .. } => {
            errno = source.raw_os_error();
            ("MmtOSError", Some(path), None)
        }
        E::ExportDtype { path, tensor, .. } => {
            ("UnsupportedDtypeError", Some(path), Some(tensor.as_str()))
        }
        // A tensor name whose `.npy` file name would exceed NAME_MAX: the name, not the file.
        E::ExportName { path, tensor, .. } => ("ConvertError", Some(path), Some(tensor.as_str())),
        E::Poisoned { path } => ("ConvertError", Some(path), None),
        // An .mmt input whose bytes do not match its checksums.
        E::InputChecksum { path, tensor, .. } => {
            ("CorruptedFileError", Some(path), tensor.as_deref())
        }
        E::InputPadding { path, .. } => ("CorruptedFileError", Some(path), None),
        E::NotEnded { tensor, .. } => ("ConvertError", None, Some(tensor.as_str())),
        _ => ("ConvertError", None, None),
    };
    raise(py, class, text, path, tensor, errno)
}

/// An object-storage fetch's error as a Python exception: a missing object or manifest is a
/// StoreNotFoundError, refused credentials a StorePermissionError, bytes that are not what they
/// should be a CorruptedFileError (InvalidFileError for what is not a store or manifest at all).
pub(crate) fn remote_error(py: Python<'_>, err: mmtensor_remote::Error) -> PyErr {
    use mmtensor_remote::Error as E;
    let err = match err {
        E::Open { url, source } => return load_error_from(py, *source, Some(&url)),
        other => other,
    };
    let text = message(&err);
    raise(py, remote_class(&err), text, None, None, None)
}

/// The exception class of a remote error.
fn remote_class(err: &mmtensor_remote::Error) -> &'static str {
    use mmtensor_remote::Error as E;
    match err {
        E::NotFound { .. } => "StoreNotFoundError",
        E::AccessDenied { .. } => "StorePermissionError",
        E::TableChecksum { .. } | E::BlockChecksum { .. } | E::Padding { .. } => {
            "CorruptedFileError"
        }
        E::Manifest { .. } | E::Format { .. } | E::InvalidUrl { .. } => "InvalidFileError",
        // A shard on the server that is not the one its manifest lists: the dataset changed.
        E::NotAsListed { .. } => "StoreChangedError",
        _ => "MmtOSError",
    }
}
