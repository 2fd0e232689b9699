//! The one error type of this crate.

use std::path::PathBuf;

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
    /// Tensors must be written in the order they were planned.
    #[error("writer expected {}, not tensor `{got}`", expected_text(.expected))]
    OutOfOrder {
        /// The tensor the writer expects next, if any.
        expected: Option<String>,
        /// The tensor asked for.
        got: String,
    },
    /// Bytes were given while no tensor was open.
    #[error("no tensor is open for writing: call begin_tensor first")]
    NoOpenTensor,
}

fn expected_text(expected: &Option<String>) -> String {
    match expected {
        Some(name) => format!("tensor `{name}` next"),
        None => "no more tensors (all planned tensors are written)".to_owned(),
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
