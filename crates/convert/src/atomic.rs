//! The one way this crate replaces a file: a hidden sibling temporary file, fsynced, renamed over
//! the target, and the folder fsynced.

use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

use crate::{Error, Result};

/// Bytes of the target's name kept in the temporary file's name. The temporary name adds 16 bytes
/// (`.`, `.`, six random characters, `.partial`), so a legal 255-byte target name would overflow
/// `NAME_MAX`; 200 bytes keep the name recognisable and leave room.
const NAME_PART: usize = 200;

/// A file that appears under its target name only when it is complete.
///
/// [`AtomicFile::create`] makes a hidden temporary file beside the target,
/// `.NAME.XXXXXX.partial` (NAME shortened to its first 200 bytes, on a character boundary).
/// [`AtomicFile::commit`] fsyncs it, renames it over the target and fsyncs the folder. Until then
/// the target is untouched; dropping an uncommitted `AtomicFile` (an error, a panic, a
/// cancellation) deletes the temporary file, so only a `kill -9` can leave it behind
/// ([`AtomicFile::is_temp_of`] recognises it). A replaced target is renamed over, never truncated,
/// so a process that has the old file mapped keeps reading the old, complete file.
///
/// ```
/// use std::io::Write;
/// use mmtensor_convert::AtomicFile;
///
/// let dir = tempfile::tempdir()?;
/// let mut f = AtomicFile::create(dir.path().join("out.txt"))?;
/// f.file().write_all(b"complete")?;
/// assert!(!dir.path().join("out.txt").exists());
/// f.commit()?;
/// assert_eq!(std::fs::read(dir.path().join("out.txt"))?, b"complete");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct AtomicFile {
    target: PathBuf,
    tmp: NamedTempFile,
}

impl AtomicFile {
    /// Creates the temporary file beside `target`, with the mode any new file gets (0666 less the
    /// umask), not a temporary file's 0600.
    ///
    /// # Errors
    /// [`Error::Io`] when the temporary file cannot be created (the folder is missing or
    /// read-only).
    pub fn create(target: impl AsRef<Path>) -> Result<AtomicFile> {
        let target = target.as_ref().to_path_buf();
        let dir = parent_dir(&target);
        let mut builder = tempfile::Builder::new();
        let prefix = temp_prefix(&target);
        builder.prefix(&prefix).suffix(".partial");
        #[cfg(unix)]
        builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
        let tmp = builder
            .tempfile_in(&dir)
            .map_err(Error::io("cannot create a temporary file in", &dir))?;
        Ok(AtomicFile { target, tmp })
    }

    /// The temporary file, open for reading and writing (`&File` implements `Write` and `Seek`).
    pub fn file(&self) -> &File {
        self.tmp.as_file()
    }

    /// Where the bytes are until [`AtomicFile::commit`].
    pub fn temp_path(&self) -> &Path {
        self.tmp.path()
    }

    /// The path the file will have once committed.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Makes the file durable and moves it to the target: fsync, rename, fsync of the folder.
    ///
    /// # Errors
    /// [`Error::Io`] when the fsync or the rename fails: the temporary file is removed and the
    /// target is untouched. [`Error::NotDurable`] when only the folder's fsync fails: the rename
    /// has happened, so the target *is* the new file, but whether the rename survives a power cut
    /// is unknown. Callers report that one as a warning, not as a failed write.
    pub fn commit(self) -> Result<PathBuf> {
        self.tmp
            .as_file()
            .sync_all()
            .map_err(Error::io("cannot fsync", self.tmp.path()))?;
        let target = self.target;
        self.tmp.persist(&target).map_err(|e| {
            Error::io("cannot rename the finished file to", target.clone())(e.error)
        })?;
        let dir = parent_dir(&target);
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| Error::NotDurable {
                path: target.clone(),
                dir,
                source,
            })?;
        Ok(target)
    }

    /// True when `file_name`, a name in `target`'s folder, is the temporary file of an
    /// [`AtomicFile`] for `target` (one a killed process left behind, or one being written now).
    ///
    /// ```
    /// use std::ffi::OsStr;
    /// use mmtensor_convert::AtomicFile;
    ///
    /// assert!(AtomicFile::is_temp_of("d/x.mmt".as_ref(), OsStr::new(".x.mmt.a1B2c3.partial")));
    /// assert!(!AtomicFile::is_temp_of("d/x.mmt".as_ref(), OsStr::new(".x.mmt.partial")));
    /// ```
    pub fn is_temp_of(target: &Path, file_name: &OsStr) -> bool {
        let prefix = temp_prefix(target);
        let file = file_name.to_string_lossy();
        file.strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".partial"))
            .is_some_and(|r| r.len() == 6 && r.bytes().all(|b| b.is_ascii_alphanumeric()))
    }
}

/// `.NAME.`, with NAME cut to at most [`NAME_PART`] bytes on a character boundary.
fn temp_prefix(target: &Path) -> String {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "mmt".into());
    let mut end = name.len().min(NAME_PART);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!(".{}.", &name[..end])
}

/// The folder holding `path` (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_temp_name_of_a_255_byte_target_fits_name_max() {
        // 250 bytes, ending in a multi-byte character that the 200-byte cut must not split.
        let name = format!("{}é{}.mmt", "a".repeat(199), "b".repeat(45));
        assert_eq!(name.len(), 250);
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join(&name);
        let f = AtomicFile::create(&target).unwrap();
        let tmp = f.temp_path().file_name().unwrap().to_owned();
        assert!(tmp.len() <= 255, "{}", tmp.len());
        assert!(AtomicFile::is_temp_of(&target, &tmp));
        f.commit().unwrap();
        assert!(target.exists());
    }
}
