//! Reading a dataset's manifest (the loader's own reader) and replacing it atomically, the last
//! step of every dataset write.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use mmtensor_format::{Manifest, MANIFEST_FILE};

use crate::{AtomicFile, Error, Progress, Result};

/// Reads and validates the manifest of the dataset in `dir` with the loader's
/// `mmtensor::Dataset::read_manifest` (the one public reader), so reader and writer refuse the
/// same manifests; its error is wrapped as [`Error::Load`].
pub(crate) fn read_manifest(dir: impl AsRef<Path>) -> Result<Manifest> {
    mmtensor::Dataset::read_manifest(dir).map_err(Error::Load)
}

/// The last step of every dataset write: unless cancelled, `manifest` replaces the folder's
/// manifest atomically. Until then no reader sees anything of the write.
pub(super) fn finish_manifest(
    dir: &Path,
    manifest: &Manifest,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<()> {
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Cancelled {
            path: dir.to_path_buf(),
        });
    }
    progress.finish();
    write_manifest(dir, manifest)?;
    Ok(())
}

/// Replaces the manifest of the dataset in `dir` by `manifest`, atomically (temporary file, fsync,
/// rename, folder fsync).
///
/// # Errors
/// [`Error::Io`]; [`Error::NotDurable`] when only the folder's fsync failed (the new manifest is in
/// place).
pub fn write_manifest(dir: impl AsRef<Path>, manifest: &Manifest) -> Result<PathBuf> {
    let target = dir.as_ref().join(MANIFEST_FILE);
    let tmp = AtomicFile::create(&target)?;
    tmp.file()
        .write_all(&manifest.encode())
        .map_err(Error::io("cannot write to", tmp.temp_path()))?;
    tmp.commit()
}
