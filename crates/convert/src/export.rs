//! A store's tensors back out as `.npy` files (one per tensor) or one `.safetensors` file.
//!
//! Every file is written through an [`AtomicFile`], like a store, so a failure leaves no partial
//! output under a target name. The bytes come from the views of an open [`mmtensor::Store`]: the
//! caller opened it (for a mapped store, with `unsafe` and its promise that nobody truncates the
//! file meanwhile), so this module itself maps nothing.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use mmtensor::Store;
use mmtensor_format::{npy, Dtype};

use crate::{AtomicFile, Error, Result};

/// Size of the buffer each exported file is written through.
const BUFFER: usize = 1 << 20;

/// The longest file name (in bytes) the common file systems accept (`NAME_MAX` on Linux, macOS and
/// Windows alike).
pub const NAME_MAX: usize = 255;

/// What [`export()`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExportFormat {
    /// A folder (created if missing) holding `NAME.npy` per tensor, the name made safe by
    /// [`npy_file_name`]. A tensor whose file name would exceed [`NAME_MAX`] bytes is refused
    /// before anything is written.
    Npy,
    /// One `.safetensors` file, with the store's metadata as its `__metadata__`.
    Safetensors,
}

/// What a finished export wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExportSummary {
    /// The folder or file written.
    pub path: PathBuf,
    /// Tensors written.
    pub tensors: usize,
    /// Tensor data bytes written (without headers).
    pub bytes: u64,
}

/// Writes every tensor of `store` to `output` as `format`.
///
/// `store` is already open: opening a mapped store is `unsafe` (`mmtensor::Store::open`, whose
/// caller promises the file is not truncated or modified while it is open), and that promise
/// stays with the caller; `mmtensor::Store::read` gives a store this function can read with no
/// promise at all. Each output file is complete or absent: it is written to a hidden temporary
/// file and renamed over its target ([`AtomicFile`]). For [`ExportFormat::Npy`], files already
/// renamed stay when a later tensor fails, but every file name is checked first: a name too long
/// for the file system fails the export before the folder or any file is created.
///
/// # Errors
/// [`Error::ExportName`] when a tensor's `.npy` file name would be longer than [`NAME_MAX`] bytes
/// (nothing is written), [`Error::Load`] when a tensor's view fails, [`Error::ExportDtype`] when safetensors cannot hold
/// a tensor's dtype (`Dtype::to_safetensors` decides), [`Error::Io`] for the folder or a file,
/// [`Error::NotDurable`] as in [`AtomicFile::commit`].
///
/// # Examples
/// ```
/// use mmtensor_convert::export::{export, ExportFormat};
/// use mmtensor_convert::StoreWriter;
/// use mmtensor_format::{Dtype, LayoutBuilder};
///
/// let dir = tempfile::tempdir()?;
/// let mut plan = LayoutBuilder::new();
/// plan.tensor("x", Dtype::U8, &[3])?;
/// let mut w = StoreWriter::create(dir.path().join("s.mmt"), plan.build()?)?;
/// w.write_tensor("x", &[1, 2, 3])?;
/// w.finish()?;
///
/// // `read` copies the file, so no promise about it is needed.
/// let store = mmtensor::Store::read(dir.path().join("s.mmt"))?;
/// let done = export(&store, ExportFormat::Npy, dir.path().join("out"))?;
/// assert_eq!(done.tensors, 1);
/// assert!(dir.path().join("out/x.npy").exists());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn export(
    store: &Store,
    format: ExportFormat,
    output: impl AsRef<Path>,
) -> Result<ExportSummary> {
    let output = output.as_ref();
    let bytes = match format {
        ExportFormat::Npy => to_npy(store, output)?,
        ExportFormat::Safetensors => to_safetensors(store, output)?,
    };
    Ok(ExportSummary {
        path: output.to_path_buf(),
        tensors: store.tensors().len(),
        bytes,
    })
}

/// The file name for a tensor: its name with path separators and other unsafe characters
/// percent-encoded, so `enc/layer.0` becomes `enc%2Flayer.0.npy` and never escapes the folder.
///
/// Encoding triples the bytes of each such character, so the result may exceed [`NAME_MAX`];
/// [`export()`] refuses such a tensor up front rather than shortening its name.
///
/// ```
/// use mmtensor_convert::export::npy_file_name;
///
/// assert_eq!(npy_file_name("enc/layer.0"), "enc%2Flayer.0.npy");
/// assert_eq!(npy_file_name("../etc"), "%2E.%2Fetc.npy");
/// ```
pub fn npy_file_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        let unsafe_char =
            matches!(c, '/' | '\\' | '%' | ':' | '\0') || c.is_control() || (i == 0 && c == '.');
        if unsafe_char {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out.push_str(".npy");
    out
}

fn to_npy(store: &Store, dir: &Path) -> Result<u64> {
    // Every name is checked before the first byte is written: a name the file system refuses would
    // otherwise fail only at the rename, after its whole file was written, and after the files of
    // the tensors before it.
    let names = store
        .tensors()
        .map(|t| {
            let name = npy_file_name(t.name());
            if name.len() > NAME_MAX {
                return Err(Error::ExportName {
                    path: dir.to_path_buf(),
                    tensor: t.name().to_owned(),
                    len: name.len(),
                    max: NAME_MAX,
                });
            }
            Ok(name)
        })
        .collect::<Result<Vec<_>>>()?;
    std::fs::create_dir_all(dir).map_err(Error::io("cannot create", dir))?;
    let mut total = 0;
    for (t, name) in store.tensors().zip(names) {
        let target = dir.join(name);
        let bytes = t.bytes().map_err(Error::Load)?;
        let file = AtomicFile::create(&target)?;
        {
            let mut w = BufWriter::with_capacity(BUFFER, file.file());
            w.write_all(&npy::encode_header(t.dtype(), t.shape()))
                .and_then(|()| w.write_all(bytes))
                .and_then(|()| w.flush())
                .map_err(Error::io("cannot write to", file.temp_path()))?;
        }
        file.commit()?;
        total += bytes.len() as u64;
    }
    Ok(total)
}

fn to_safetensors(store: &Store, target: &Path) -> Result<u64> {
    use ::safetensors::tensor::{Metadata, TensorInfo};
    let refuse = |name: &str, dtype: Dtype| Error::ExportDtype {
        path: target.to_path_buf(),
        tensor: name.to_owned(),
        dtype,
    };
    // The safetensors crate's own order: descending dtype, then name (large elements first keeps
    // every tensor aligned to its element size).
    let mut tensors = Vec::with_capacity(store.tensors().len());
    for t in store.tensors() {
        let st = t
            .dtype()
            .to_safetensors()
            .ok_or_else(|| refuse(t.name(), t.dtype()))?;
        let bytes = t.bytes().map_err(Error::Load)?;
        tensors.push((st, t, bytes));
    }
    tensors.sort_by(|(da, a, _), (db, b, _)| db.cmp(da).then(a.name().cmp(b.name())));
    let mut infos = Vec::with_capacity(tensors.len());
    let mut offset = 0usize;
    for (st, t, bytes) in &tensors {
        let shape = t
            .shape()
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|_| Error::InvalidInput {
                input: t.name().to_owned(),
                reason: "its shape does not fit in this machine's memory sizes".into(),
            })?;
        let end = offset
            .checked_add(bytes.len())
            .ok_or_else(|| Error::InvalidInput {
                input: t.name().to_owned(),
                reason: "the tensors' total size overflows".into(),
            })?;
        infos.push((
            t.name().to_owned(),
            TensorInfo {
                dtype: *st,
                shape,
                data_offsets: (offset, end),
            },
        ));
        offset = end;
    }
    let metadata =
        (!store.metadata().is_empty()).then(|| store.metadata().clone().into_iter().collect());
    let bad = |message: String| Error::Safetensors {
        path: target.to_path_buf(),
        message,
    };
    let meta = Metadata::new(metadata, infos).map_err(|e| bad(e.to_string()))?;
    let mut header = serde_json::to_vec(&meta).map_err(|e| bad(e.to_string()))?;
    // The format pads the header with spaces to a multiple of 8 bytes.
    header.resize(header.len().next_multiple_of(8), b' ');

    let file = AtomicFile::create(target)?;
    {
        let mut w = BufWriter::with_capacity(BUFFER, file.file());
        let io = Error::io("cannot write to", file.temp_path());
        let mut write = || -> std::io::Result<()> {
            w.write_all(&(header.len() as u64).to_le_bytes())?;
            w.write_all(&header)?;
            for (_, _, bytes) in &tensors {
                w.write_all(bytes)?;
            }
            w.flush()
        };
        write().map_err(io)?;
    }
    file.commit()?;
    Ok(offset as u64)
}

#[cfg(test)]
mod tests {
    use super::{export, npy_file_name, ExportFormat, NAME_MAX};
    use crate::{Error, StoreWriter};
    use mmtensor_format::{Dtype, LayoutBuilder};

    /// Exports a store of one-byte tensors named `names` to `out` in a new folder.
    fn export_names(names: &[&str]) -> (tempfile::TempDir, crate::Result<super::ExportSummary>) {
        let dir = tempfile::tempdir().unwrap();
        let mut plan = LayoutBuilder::new();
        for n in names {
            plan.tensor(n, Dtype::U8, &[1]).unwrap();
        }
        let mut w = StoreWriter::create(dir.path().join("s.mmt"), plan.build().unwrap()).unwrap();
        for n in names {
            w.write_tensor(n, &[7]).unwrap();
        }
        w.finish().unwrap();
        let store = mmtensor::Store::read(dir.path().join("s.mmt")).unwrap();
        let r = export(&store, ExportFormat::Npy, dir.path().join("out"));
        (dir, r)
    }

    #[test]
    fn regression_long_tensor_names_failed_at_the_rename_after_writing() {
        // 252 bytes + ".npy" (the shortest plain name over NAME_MAX), and 90 `/` that encode to
        // 270 bytes.
        let long = "w".repeat(NAME_MAX - 3);
        let slashes = "/".repeat(90);
        for bad in [long.as_str(), slashes.as_str()] {
            let (dir, r) = export_names(&["a", bad]);
            let err = r.unwrap_err();
            assert!(
                matches!(&err, Error::ExportName { tensor, len, max: NAME_MAX, .. }
                    if tensor == bad && *len == npy_file_name(bad).len()),
                "{err}"
            );
            assert!(err.to_string().contains("255"), "{err}");
            // Refused before anything was written: not even `a.npy`, the tensor before it.
            assert!(!dir.path().join("out").exists());
        }
        // The longest name that fits is exported.
        let fits = "w".repeat(NAME_MAX - 4);
        let (dir, r) = export_names(&[&fits]);
        r.unwrap();
        assert!(dir.path().join("out").join(format!("{fits}.npy")).exists());
    }

    #[test]
    fn file_names_never_escape_the_folder() {
        assert_eq!(npy_file_name("x"), "x.npy");
        assert_eq!(npy_file_name("enc/layer.0"), "enc%2Flayer.0.npy");
        assert_eq!(npy_file_name("../etc"), "%2E.%2Fetc.npy");
        assert_eq!(npy_file_name("a%b"), "a%25b.npy");
    }
}
